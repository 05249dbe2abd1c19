"""Suites, arms and statistics end to end: equal arms give equal records, the tables'
verdicts follow planted differences, cross-task summaries match hand computations, and a
tuned suite killed mid-run resumes to the tables of an uninterrupted one."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
import time

import pytest

from optlab.cli import main
from optlab.lab.plots import arm_styles
from optlab.lab.report import write_report
from optlab.lab.runs import RunResult, RunSpec
from optlab.lab.store import Store
from optlab.lab.study import StudySpec, run_study

# ---------------------------------------------------------------------- fakes

#: Final test accuracy per arm optimizer+eps (planted), plus per-seed noise below.
LEVELS = {("adam", 1e-8): 0.90, ("adam", 1e-6): 0.90, ("sgd", None): 0.80}
NOISE = [0.004, -0.003, 0.001, -0.002, 0.0]


def planted(spec: RunSpec) -> RunResult:
    """Accuracy rising to a planted level: adam (any eps) 0.90, sgd 0.80, on both tasks;
    the second task's levels are shifted down by 0.1. Validation follows the test."""
    level = LEVELS[(spec.optimizer, spec.hparams.get("eps"))] + NOISE[spec.seed]
    if spec.task == "digits-cnn":
        level -= 0.1
    epochs = spec.epochs or 2
    history = [
        {
            "epoch": float(e), "step": e, "examples": e, "lr": 0.1, "train_loss": 1.0 / (e + 1),
            "valid_loss": 1.0, "valid_metric": level * e / epochs, "test_loss": 1.0,
            "metric": level * e / epochs, "wall_time": 0.5 * e,
        }
        for e in range(epochs + 1)
    ]  # fmt: skip
    return RunResult(spec, history, "accuracy", True, "ok", 0.5, {})


def rows_by_arm(path) -> dict[str, dict[str, str]]:
    return {(row["task"], row["arm"]): row for row in csv.DictReader(open(path))}


# ------------------------------------------------------------------------- arms


def test_arms_with_equal_hyper_parameters_give_bitwise_equal_records(tmp_path):
    arms = ("a=adam:eps=1e-8", "b=adam:eps=1e-8")
    study = StudySpec("cancer-logreg", arms, hparams={"lr": 0.05}, seeds=(0, 1), epochs=2)
    together = run_study(study, tmp_path / "together")
    a, b = together.tasks[0].arms
    assert [r.to_dict() for r in a.runs] == [r.to_dict() for r in b.runs]
    # Trained apart, in two directories: the same numbers, bit for bit.
    apart = [
        run_study(
            StudySpec("cancer-logreg", (arm,), hparams={"lr": 0.05}, seeds=(0, 1), epochs=2),
            tmp_path / label,
        )
        .tasks[0]
        .arms[0]
        .runs  # fmt: skip
        for label, arm in zip("ab", arms, strict=True)
    ]

    def numbers(run: RunResult) -> list[dict]:
        return [{k: v for k, v in row.items() if k != "wall_time"} for row in run.history]

    assert [numbers(r) for r in apart[0]] == [numbers(r) for r in apart[1]]
    assert [numbers(r) for r in apart[0]] == [numbers(r) for r in a.runs]


def test_twenty_arms_get_twenty_distinct_styles_kept_in_every_figure():
    labels = [f"arm{k}" for k in range(19)] + ["adabelief"]
    styles = arm_styles(labels)
    pairs = {(tuple(style["color"]) if not isinstance(style["color"], str) else style["color"],
              style["linestyle"]) for style in styles.values()}  # fmt: skip
    assert len(pairs) == 20
    assert styles["adabelief"]["color"] == "black"
    assert arm_styles(labels) == styles  # the same study, the same styles


# ------------------------------------------------------------------ statistics


def test_the_tables_mark_the_best_the_indistinguishable_and_the_worse(tmp_path):
    # adam at eps 1e-8 and 1e-6 have identical planted results; sgd is 0.1 worse.
    arms = ("adam-e8=adam:eps=1e-8", "adam-e6=adam:eps=1e-6", "sgd")
    study = StudySpec(("digits-mlp", "digits-cnn"), arms, hparams={"lr": 0.1},
                      seeds=(0, 1, 2, 3, 4), epochs=2)  # fmt: skip
    run_study(study, tmp_path, trainer=planted)
    report = write_report(tmp_path)
    rows = rows_by_arm(tmp_path / "summary.csv")
    for task in ("digits-mlp", "digits-cnn"):
        assert rows[(task, "adam-e8")]["vs_best"] == "best"  # ties go to the first arm
        assert rows[(task, "adam-e6")]["vs_best"] == "indistinguishable"
        assert float(rows[(task, "adam-e6")]["p_holm"]) == 1.0  # every paired difference 0
        assert rows[(task, "sgd")]["vs_best"] == "worse"
        assert float(rows[(task, "sgd")]["diff_mean"]) == pytest.approx(-0.1)
        # t interval by hand: mean 0.9 (+ mean noise 0), sd of NOISE, t(0.975, 4) = 2.776
        sd = math.sqrt(sum(x * x for x in NOISE) / 4)
        shift = 0.1 if task == "digits-cnn" else 0.0
        assert float(rows[(task, "adam-e8")]["final_ci_low"]) == pytest.approx(
            0.9 - shift - 2.776445 * sd / math.sqrt(5), abs=1e-6
        )
    text = report.text()
    assert "≈ p=1" in text and "worse p=" in text and "95% CI" in text
    # Across tasks (hand computed): ranks per task adam-e8 1.5, adam-e6 1.5, sgd 3.
    # Costs digits-mlp 0.1/0.1/0.2, digits-cnn 0.2/0.2/0.3: sgd ratios 2 and 1.5, so its
    # area on [1, 4] is ((4 - 2) + (4 - 1.5)) / 2 / 3 = 0.75.
    across = {row["arm"]: row for row in csv.DictReader(open(tmp_path / "across-tasks.csv"))}
    assert float(across["adam-e8"]["mean_rank"]) == 1.5
    assert float(across["sgd"]["mean_rank"]) == 3.0
    assert float(across["adam-e8"]["profile_area"]) == pytest.approx(1.0)
    assert float(across["sgd"]["profile_area"]) == pytest.approx(0.75)
    assert float(across["sgd"]["ratio_digits-mlp"]) == pytest.approx(2.0)
    assert (tmp_path / "plots" / "profiles.png").stat().st_size > 10_000
    assert "## Across tasks" in (tmp_path / "report.md").read_text()


def test_one_seed_gives_no_interval_and_says_so(tmp_path):
    study = StudySpec("digits-mlp", ("adam:eps=1e-8", "sgd"), hparams={"lr": 0.1}, seeds=(0,),
                      epochs=2)  # fmt: skip
    run_study(study, tmp_path, trainer=planted)
    text = write_report(tmp_path).text()
    assert "(1 seed)" in text and "≈ (1 seed paired with the best: no test)" in text


# ------------------------------------------------------------- killing a suite

SUITE = ["--task", "digits-mlp,cancer-logreg", "--optimizers", "adam,sgd"]
SUITE += ["--tune", "lr=0.01,0.1", "--seeds", "2", "--epochs", "2"]
SUITE_RUNS = 2 * 2 * (2 + 1)  # tasks x arms x (grid + the second seed)


def _timing_free(path) -> list[dict[str, str]]:
    timing = ("seconds", "s/epoch", "time")
    return [
        {k: v for k, v in row.items() if not any(word in k for word in timing)}
        for row in csv.DictReader(open(path))
    ]


@pytest.mark.slow
def test_a_tuned_suite_killed_mid_run_resumes_to_the_uninterrupted_tables(tmp_path):
    whole = tmp_path / "whole"
    assert main(["compare", *SUITE, "--jobs", "2", "--out", str(whole), "-q"]) == 0
    assert len(Store.open_existing(whole)) == SUITE_RUNS

    out = tmp_path / "killed"
    command = [sys.executable, "-m", "optlab.cli", "compare", *SUITE, "--jobs", "1"]
    process = subprocess.Popen(
        [*command, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if (out / "runs").is_dir() and len(list((out / "runs").glob("*.json"))) >= 3:
                break
            time.sleep(0.02)
        process.kill()  # SIGKILL: no clean-up code runs
    finally:
        _, errors = process.communicate()
    finished = len(Store.open_existing(out))
    assert 3 <= finished < SUITE_RUNS, f"the kill should land mid-study: {errors.decode()}"
    assert main(["compare", *SUITE, "--jobs", "1", "--out", str(out), "-q"]) == 0
    assert len(Store.open_existing(out)) == SUITE_RUNS
    assert _timing_free(out / "summary.csv") == _timing_free(whole / "summary.csv")
    assert _timing_free(out / "across-tasks.csv") == _timing_free(whole / "across-tasks.csv")


def test_a_study_file_runs_and_its_kept_copy_reproduces_it(tmp_path, capsys):
    path = tmp_path / "mine.toml"
    path.write_text(
        'tasks = ["cancer-logreg"]\nseeds = 2\nepochs = 1\ntune = []\n'
        'arms = ["adam", "b8=adabelief:eps=1e-8"]\n[hparams]\nlr = 0.05\n'
    )
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "-q"]) == 0
    assert "b8" in capsys.readouterr().out
    assert (out / "study.toml").read_text() == path.read_text()  # the file is kept as given
    markdown = (out / "report.md").read_text()
    command = f"optlab run {out / 'study.toml'} --out {out}"
    assert command in markdown
    before = {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir()}
    assert main(command.split()[1:] + ["-q"]) == 0  # run it again: nothing new to train
    assert {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir()} == before


def test_compare_keeps_its_study_as_a_file_that_runs_the_same_study(tmp_path):
    out = tmp_path / "out"
    argv = ["compare", "--task", "cancer-logreg", "--arm", "adam", "--arm", "s=sgd:momentum=0.9"]
    argv += ["--lr", "0.05", "--seeds", "2", "--epochs", "1", "--out", str(out), "-q"]
    assert main(argv) == 0
    before = sorted(p.name for p in (out / "runs").iterdir())
    assert main(["run", str(out / "study.toml"), "--out", str(out), "-q"]) == 0
    assert sorted(p.name for p in (out / "runs").iterdir()) == before


def test_a_two_dimensional_grid_is_reported_with_its_budget_and_points(tmp_path):
    def trainer(spec: RunSpec) -> RunResult:
        lr, eps = spec.hparams["lr"], spec.hparams["eps"]
        level = 0.9 - 0.02 * abs(math.log10(lr) + 2) - 0.001 * abs(math.log10(eps) + 8)
        return planted_like(spec, level + NOISE[spec.seed])

    study = StudySpec("digits-mlp", ("adam", "eadam"), seeds=(0, 1), epochs=2,
                      tune=("lr=1e-3..1e-1:log:3", "eps=1e-12..1e-4:log:3"))  # fmt: skip
    outcome = run_study(study, tmp_path, trainer=trainer)
    for part in outcome.tasks[0].arms:
        assert len(part.tuning) == 9 and part.hparams == {"lr": 0.01, "eps": 1e-8}
    write_report(tmp_path)
    markdown = (tmp_path / "report.md").read_text()
    assert "lr in {0.001, 0.01, 0.1}, eps in {1e-12, 1e-08, 0.0001}; 9 runs per arm" in markdown
    assert (tmp_path / "plots" / "digits-mlp-lr-sensitivity.png").is_file()


def planted_like(spec: RunSpec, level: float) -> RunResult:
    epochs = spec.epochs or 2
    history = [
        {
            "epoch": float(e), "step": e, "examples": e, "lr": 0.1, "train_loss": 1.0,
            "valid_loss": 1.0, "valid_metric": level * e / epochs, "test_loss": 1.0,
            "metric": level * e / epochs, "wall_time": 0.5 * e,
        }
        for e in range(epochs + 1)
    ]  # fmt: skip
    return RunResult(spec, history, "accuracy", True, "ok", 0.5, {})
