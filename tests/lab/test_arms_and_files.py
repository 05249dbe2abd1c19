"""Arms, search dimensions, study files and the reproduce command: parsing against
hand-written expectations, round trips, refusals before anything trains."""

from __future__ import annotations

import argparse
import math
import shlex

import pytest

from optlab.lab.arms import Arm, Dim
from optlab.lab.checks import validate_study
from optlab.lab.spec import StudySpec, default_study
from optlab.lab.studyfile import (
    StudyFileError,
    add_study_arguments,
    compare_command,
    dump_toml,
    load_toml,
    study_from_args,
)

# ---------------------------------------------------------------- search dimensions


def test_a_log_range_defaults_to_half_decade_points_and_a_linear_one_to_five():
    assert Dim.parse("lr=1e-4..1").grid() == (1e-4, 0.000316228, 0.001, 0.00316228, 0.01,
                                             0.0316228, 0.1, 0.316228, 1.0)  # fmt: skip
    assert Dim.parse("lr=1e-4..10:log:6").grid() == (1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0)
    assert Dim.parse("momentum=0..0.9:linear").grid() == (0.0, 0.225, 0.45, 0.675, 0.9)
    assert Dim.parse("momentum=0.5..0.9:linear:3").grid() == (0.5, 0.7, 0.9)
    assert Dim.parse("eps=1e-6,1e-8").grid() == (1e-8, 1e-6)  # smallest first
    assert Dim.parse("lr") == Dim("lr", 1e-4, 10.0)


@pytest.mark.parametrize(
    "text",
    ["lr=1e-05..1.0:log", "eps=1e-16..1e-06:log:6", "m=0.0..0.9:linear:4", "eps=1e-08,1e-06"],
)
def test_a_dimension_reads_back_its_own_text(text):
    dim = Dim.parse(text)
    assert Dim.parse(dim.text()) == dim


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lr=1..1e-3", "low < high"),
        ("lr=0..1", "a log range must be positive"),
        ("lr=1e-3..1:cubic", "scale must be one of log, linear"),
        ("lr=1e-3..1:log:1", ">= 2 points"),
        ("eps=1e-8,1e-8", "must not repeat"),
    ],
)
def test_bad_ranges_are_refused_with_the_value(text, message):
    with pytest.raises(ValueError, match=message):
        Dim.parse(text).check()


def test_a_range_that_is_not_a_range_is_refused_when_read():
    for text in ("eps", "eps=small", "2x=1..2"):
        with pytest.raises(ValueError, match="tune"):
            Dim.parse(text)


# ------------------------------------------------------------------------------ arms


def test_an_arm_reads_its_label_its_fixed_values_and_its_own_ranges():
    arm = Arm.parse("belief-e8=AdaBelief:eps=1e-8,betas=(0.9,0.99),weight_decay~1e-5..1e-3")
    assert arm.label == "belief-e8" and arm.optimizer == "adabelief"
    assert dict(arm.hparams) == {"betas": (0.9, 0.99), "eps": 1e-8}
    assert arm.tune == (Dim("weight_decay", 1e-5, 1e-3),)
    assert Arm.parse(arm.text()) == arm


def test_an_arm_without_a_label_is_labelled_with_its_own_text():
    assert Arm.parse("adam").label == "adam"
    assert Arm.parse("adam:eps=1e-16").label == "adam:eps=1e-16"


def test_the_study_space_of_an_arm_takes_its_own_ranges_first_and_skips_what_it_lacks():
    study = StudySpec(
        "digits-mlp",
        ("adam", "sgd", "wide=adam:eps~1e-10..1e-4:log:4"),
        tune=("lr=1e-3..1e-1:log:3", "eps=1e-8,1e-6"),
    )
    adam, sgd, wide = study.arms
    assert [d.name for d in study.space(adam)] == ["lr", "eps"]
    assert [d.name for d in study.space(sgd)] == ["lr"]  # SGD has no eps
    assert study.space(wide)[1] == Dim("eps", 1e-10, 1e-4, points=4)
    assert study.budget(adam) == 3 * 2 and study.budget(sgd) == 3 and study.budget(wide) == 12
    grid = study.grid_specs("digits-mlp", adam)
    assert [(s.hparams["lr"], s.hparams["eps"]) for s in grid] == [
        (1e-3, 1e-8), (1e-3, 1e-6), (1e-2, 1e-8), (1e-2, 1e-6), (0.1, 1e-8), (0.1, 1e-6)
    ]  # fmt: skip
    assert {s.seed for s in grid} == {0}


def test_the_label_is_not_part_of_a_run_key_but_every_hyper_parameter_is():
    study = StudySpec("digits-mlp", ("a=adam:eps=1e-8", "b=adam:eps=1e-8", "c=adam:eps=1e-7"))
    a, b, c = study.arms
    key = [study.run_spec("digits-mlp", arm, study.fixed(arm), 0).key() for arm in (a, b, c)]
    assert key[0] == key[1] != key[2]


# ------------------------------------------------------------------------- study files

EXAMPLE = """\
# a study file as a user writes it
tasks = ["digits-mlp", "cancer-logreg"]
seeds = 5
epochs = 3
tune = ["lr=1e-4..1:log:5"]
tuner = "optuna"
trials = 7

[[arms]]
optimizer = "adam"

[[arms]]
label = "belief-e8"
optimizer = "adabelief"
hparams = { eps = 1e-8, betas = [0.9, 0.99] }
tune = ["weight_decay=1e-5..1e-3:log"]

[hparams]
weight_decay = 0.0

[task_options.digits-mlp]
hidden = [32]
"""


def test_a_study_file_reads_every_field(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text(EXAMPLE)
    study = load_toml(path)
    assert study.tasks == ("digits-mlp", "cancer-logreg")
    assert study.seeds == (0, 1, 2, 3, 4) and study.epochs == 3
    assert study.tuner == "optuna" and study.trials == 7
    assert [arm.label for arm in study.arms] == ["adam", "belief-e8"]
    assert dict(study.arms[1].hparams) == {"eps": 1e-8, "betas": (0.9, 0.99)}
    assert study.tune == (Dim("lr", 1e-4, 1.0, points=5),)
    assert study.arms[1].tune == (Dim("weight_decay", 1e-5, 1e-3),)
    assert dict(study.hparams) == {"weight_decay": 0.0}
    assert dict(study.task_options["digits-mlp"]) == {"hidden": (32,)}


def test_a_written_study_file_reads_back_the_same_study(tmp_path):
    path = tmp_path / "in.toml"
    path.write_text(EXAMPLE)
    study = load_toml(path)
    (tmp_path / "out.toml").write_text(dump_toml(study))
    assert load_toml(tmp_path / "out.toml") == study
    default = tmp_path / "default.toml"
    default.write_text(dump_toml(default_study()))
    assert load_toml(default) == default_study()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tasks = ['digits-mlp']\nseed = 3\n", "line 2: unknown key 'seed'; valid keys:"),
        ("seeds = 0\n", "line 1: seeds: must be an integer >= 1, got 0"),
        ("\n\ntune = ['lr=1..0.1']\n", None),  # read fine, refused by the checks
        ("epochs = 'many'\n", "line 1: epochs: must be an integer >= 1, got 'many'"),
        ("tuner = 'random'\n", "tuner: must be one of grid, optuna, got 'random'"),
        ("tasks = ['a']\nsuite = 'small'\n", "--task and --suite exclude each other"),
        ("arms = [{optimizer = 'adam', lr = 0.1}]\n", "an arm table takes optimizer"),
        ("tasks = [\n", "not valid TOML"),
    ],
)
def test_a_bad_study_file_is_one_line_naming_the_key_and_its_line(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    if message is None:
        with pytest.raises(ValueError, match="low < high"):
            validate_study(load_toml(path))
        return
    with pytest.raises(StudyFileError) as info:
        load_toml(path)
    assert message in str(info.value) and str(path) in str(info.value)
    assert "\n" not in str(info.value)


# ---------------------------------------------------- one table, two spellings


def _parse(argv: list[str]) -> StudySpec:
    parser = argparse.ArgumentParser()
    add_study_arguments(parser)
    parser.add_argument("--out")
    return study_from_args(parser.parse_args(argv))


def test_flags_and_a_file_spell_the_same_study(tmp_path):
    argv = ["--task", "digits-mlp,cancer-logreg", "--seeds", "5", "--epochs", "3"]
    argv += ["--arm", "adam", "--arm", "belief-e8=adabelief:eps=1e-8,betas=(0.9,0.99),"
             "weight_decay~1e-5..1e-3:log"]  # fmt: skip
    argv += ["--tune", "lr=1e-4..1:log:5", "--tuner", "optuna", "--trials", "7"]
    argv += ["--set", "weight_decay=0.0", "--task-option", "digits-mlp.hidden=(32,)"]
    path = tmp_path / "study.toml"
    path.write_text(EXAMPLE)
    assert _parse(argv) == load_toml(path)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--optimizers", "adam,sgd", "--lr", "0.01", "--schedule", "cosine"],
        ["--suite", "small", "--arm", "x=adam:eps~1e-9..1e-5", "--tune", "none", "--seeds", "2"],
        ["--task", "digits-mlp", "--lr-grid", "1e-3,1e-2", "--set", "betas=(0.9,0.99)"],
    ],
)
def test_the_reproduce_command_spells_the_same_study(argv):
    study = _parse(argv)
    command = compare_command(study, "results/x")
    parts = shlex.split(command)
    assert parts[:2] == ["optlab", "compare"] and parts[-2:] == ["--out", "results/x"]
    assert _parse(parts[2:-2]) == study


def test_the_default_tunes_lr_unless_a_learning_rate_is_fixed():
    assert [d.name for d in _parse(["--optimizers", "adam"]).tune] == ["lr"]
    assert _parse(["--optimizers", "adam", "--lr", "0.1"]).tune == ()
    assert _parse(["--arm", "adam:lr=0.1", "--arm", "sgd"]).tune == ()
    assert _parse(["--tune", "none"]).tune == ()


def test_lr_grid_is_the_lr_dimension_of_tune():
    assert _parse(["--tune", "lr", "--lr-grid", "1e-3,1e-2"]).tune == (
        Dim("lr", values=(1e-3, 1e-2)),
    )
    study = _parse(["--tune", "eps=1e-8,1e-6", "--lr-grid", "1e-3,1e-2"])
    assert [d.name for d in study.tune] == ["eps", "lr"]


def test_optimizers_and_arms_together_keep_both():
    study = _parse(["--optimizers", "adam,sgd", "--arm", "adam-e16=adam:eps=1e-16"])
    assert [arm.label for arm in study.arms] == ["adam", "sgd", "adam-e16"]


def test_a_task_option_without_a_task_needs_a_single_task():
    assert dict(_parse(["--task-option", "l2=0.1", "--task", "cancer-logreg"]).task_options) == {
        "cancer-logreg": {"l2": 0.1}
    }
    with pytest.raises(ValueError, match="needs exactly one task"):
        _parse(["--task-option", "l2=0.1", "--suite", "small"])


def test_a_study_json_of_the_single_task_format_still_reads():
    old = {
        "task": "digits-mlp", "optimizers": ["adam", "sgd"], "hparams": {}, "seeds": [0, 1],
        "epochs": 2, "schedule": "constant", "batch_size": None, "data_dir": None,
        "tune": "lr", "tuner": "grid", "lr_grid": [0.001, 0.01], "trials": 20,
    }  # fmt: skip
    study = StudySpec.from_dict(old)
    assert study.tasks == ("digits-mlp",) and [a.label for a in study.arms] == ["adam", "sgd"]
    assert study.tune[0].grid() == (0.001, 0.01)
    assert not math.isnan(study.budget(study.arms[0]))


# ------------------------------------------------------------------ shipped studies


def test_the_shipped_studies_read_and_give_every_cell_the_same_budget():
    from optlab.cli_ablate import list_studies, study_path
    from optlab.lab.factorial import cell_of
    from optlab.lab.tasks import get_task

    assert "belief-eps" in list_studies()
    for quick in (False, True):
        study = load_toml(study_path("belief-eps", quick))
        for task in study.tasks:
            get_task(task)  # every task exists
        cells = {cell_of(arm.optimizer, arm.hparams) for arm in study.arms}
        assert len(cells) == 6 and None not in cells  # the whole 2 x 3 layout
        assert len({study.budget(arm) for arm in study.arms}) == 1
        assert all({d.name for d in study.space(arm)} == {"lr", "eps"} for arm in study.arms)
    full = load_toml(study_path("belief-eps"))
    assert len(full.seeds) >= 5
    assert {"digits-cnn", "text-lstm", "text-transformer", "gan-ring", "gan-digits"} <= set(
        full.tasks
    )
    assert full.tasks[1] in ("cancer-logreg", "quadratic-deep")


def test_ablate_lists_the_shipped_studies_and_refuses_an_unknown_one(capsys):
    from optlab.cli import main

    assert main(["ablate", "--list"]) == 0
    assert "belief-eps" in capsys.readouterr().out
    assert main(["ablate", "nope"]) == 2
    assert "unknown study 'nope'; shipped studies: belief-eps" in capsys.readouterr().err


# ------------------------------------------------------- per-task recipes, schedules


def test_a_task_recipe_reaches_the_arms_that_have_it_and_an_arms_own_value_wins():
    study = _parse(
        ["--task", "gan-ring,cancer-logreg", "--arm", "adam", "--arm", "sgd",
         "--arm", "b9=adam:betas=(0.9,0.99)", "--task-set", "gan-ring.betas=(0.5,0.999)",
         "--lr", "0.001"]
    )  # fmt: skip
    adam, sgd, b9 = study.arms
    assert study.fixed(adam, "gan-ring") == {"lr": 0.001, "betas": (0.5, 0.999)}
    assert study.fixed(adam, "cancer-logreg") == {"lr": 0.001}
    assert study.fixed(sgd, "gan-ring") == {"lr": 0.001}  # SGD has no betas
    assert study.fixed(b9, "gan-ring")["betas"] == (0.9, 0.99)
    (spec,) = study.final_specs("gan-ring", adam, study.fixed(adam, "gan-ring"))[:1]
    assert spec.hparams["betas"] == (0.5, 0.999)
    command = compare_command(study, "out")
    assert _parse(shlex.split(command)[2:-2]) == study


def test_a_recipe_for_a_task_outside_the_study_or_a_name_no_arm_has_is_refused():
    with pytest.raises(ValueError, match="task_hparams names gan-ring, which is not a task"):
        validate_study(StudySpec("cancer-logreg", ("adam",), task_hparams={"gan-ring": {"lr": 1}}))
    with pytest.raises(ValueError, match="no arm's optimizer has a hyper-parameter 'momentum'"):
        validate_study(
            StudySpec("cancer-logreg", ("adam",), task_hparams={"cancer-logreg": {"momentum": 0.9}})
        )


def test_each_task_runs_its_own_default_schedule_unless_the_study_names_one():
    default = StudySpec(("text-transformer", "digits-mlp"), ("adam",))
    (arm,) = default.arms
    assert default.run_spec("text-transformer", arm, {}, 0).schedule == "warmup-cosine"
    assert default.run_spec("digits-mlp", arm, {}, 0).schedule == "constant"
    constant = StudySpec(("text-transformer",), ("adam",), schedule="constant")
    assert constant.run_spec("text-transformer", arm, {}, 0).schedule == "constant"


def test_nproc_on_a_gan_task_is_refused_before_any_process_starts(tmp_path, capsys):
    from optlab.cli import main

    argv = ["compare", "--task", "gan-ring", "--optimizers", "adam", "--nproc", "2"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert "runs in one process" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
