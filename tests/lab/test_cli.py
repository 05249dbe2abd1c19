"""``optlab tasks / compare / report``: one-line errors with exit code 2, examples in --help,
a real small comparison end to end, the demo entry point."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from optlab.cli import main
from optlab.cli_lab import parse_set
from optlab.lab.store import MANIFEST_NAME


def one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["compare", "--task", "nope"], "unknown task 'nope'"),
        (["compare", "--optimizers", "adam,nope"], "unknown optimizer 'nope'"),
        (["compare", "--seeds", "-2"], "--seeds: must be an integer >= 1, got '-2'"),
        (["compare", "--seeds", "0"], "--seeds: must be an integer >= 1, got '0'"),
        (["compare", "--lr", "fast"], "--lr: must be a number, got 'fast'"),
        (
            ["compare", "--lr", "-0.1", "--optimizers", "adam"],
            "adam: lr must be a finite number >= 0, got -0.1",
        ),
        (["compare", "--epochs", "1.5"], "--epochs: must be an integer >= 1"),
        (["compare", "--optimizers", "adam,sgd", "--set", "betas=(0.9,0.99)"], "'sgd'"),
        (["compare", "--set", "eps"], "expects name=value"),
        (["compare", "--set", "eps=1e-8x"], "must be a Python literal"),
        (["compare", "--set", "eps=tiny"], "eps"),
        (["compare", "--tune", "lr", "--lr", "0.1"], "lr is both fixed (lr=0.1) and tuned"),
        (["compare", "--tune", "momentum"], "tune momentum needs a range"),
        (["compare", "--tune", "lr=1..0.1"], "the range must have low < high"),
        (["compare", "--schedule", "sometimes"], "invalid choice: 'sometimes'"),
        (["compare", "--lr-grid", "1e-3", "--tune", "lr=1e-3..1"], "both give the lr range"),
        (["compare", "--task", "digits-mlp", "--suite", "small"], "exclude each other"),
        (["compare", "--suite", "tiny"], "unknown suite 'tiny'"),
        (["compare", "--arm", "adam", "--arm", "adam"], "arm labels must be unique"),
        (["compare", "--arm", "adam:eps~1e-4..1e-8"], "tune eps: the range must have low < high"),
        (["compare", "--arm", "adam:epss=1e-8"], "has no hyper-parameter 'epss'"),
        (["compare", "--task-option", "bogus=1"], "has no option 'bogus'"),
        (["compare", "--task", "mnist-cnn", "--optimizers", "adam"], "--data-dir"),
        (["compare", "--bogus"], "unrecognized arguments: --bogus"),
        (
            ["compare", "--task", "quadratic-deep", "--optimizers", "adam", "--batch-size", "5000"],
            "batch_size must be at most 1000 (the training examples of task quadratic-deep",
        ),
        (
            ["compare", "--optimizers", "adam", "--lr-grid", "1e-3,-0.1"],
            "adam: lr must be a finite number >= 0, got -0.1",
        ),
    ],
)
def test_bad_compare_arguments_exit_2_with_one_line(argv, expected, capsys):
    assert exit_code(argv) == 2
    line = one_line_error(capsys)
    assert expected in line
    assert line.startswith("optlab") and "error:" in line


def exit_code(argv) -> int:
    """main's exit code, whether argparse exits (parse errors) or main returns it."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


def test_bad_arguments_from_the_real_command_line_print_no_traceback():
    completed = subprocess.run(
        [sys.executable, "-m", "optlab.cli", "compare", "--optimizers", "adam,adamm"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 2
    assert len(completed.stderr.strip().splitlines()) == 1, completed.stderr
    assert "unknown optimizer 'adamm'" in completed.stderr


@pytest.mark.parametrize("command", ["tasks", "compare", "report"])
def test_help_of_every_lab_command_shows_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out and f"optlab {command}" in out


def test_tasks_lists_every_task_with_metric_and_target(capsys):
    from optlab.lab.tasks import get_task, list_tasks

    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    held_out = {"digits-mlp", "digits-cnn", "mnist-cnn", "cifar10-resnet"}
    trained_on = {"diabetes-linreg", "cancer-logreg", "quadratic-deep"}
    for name in list_tasks():
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert get_task(name).metric in line and f"{get_task(name).target:g}" in line
        if name in held_out | trained_on:
            tuned_on = "validation split" if name in held_out else "training objective"
            assert tuned_on in line, line


def test_parse_set_reads_python_literals():
    assert parse_set("betas=(0.9,0.99)") == ("betas", (0.9, 0.99))
    assert parse_set("eps=1e-8") == ("eps", 1e-8)
    assert parse_set("nesterov=true") == ("nesterov", True)
    assert parse_set("amsgrad=False") == ("amsgrad", False)
    assert parse_set("momentum=0") == ("momentum", 0)


def test_report_on_a_foreign_or_missing_directory_exits_2_and_changes_nothing(tmp_path, capsys):
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    assert main(["report", str(tmp_path)]) == 2
    line = one_line_error(capsys)
    assert "not an optlab results directory" in line and "nothing to report" in line
    assert "refusing to write" not in line  # that is advice for compare
    assert main(["compare", "--optimizers", "adam", "--out", str(tmp_path)]) == 2
    assert "refusing to write into it: choose a new or empty directory" in one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv"]
    assert (tmp_path / "data.csv").read_text() == "a,b\n1,2\n"
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in one_line_error(capsys)
    assert main(["report", str(tmp_path / "data.csv")]) == 2
    line = one_line_error(capsys)
    assert "is a file, not a results directory" in line and "does not exist" not in line


def test_late_errors_are_caught_before_the_results_directory_is_created(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["compare", "--task", "quadratic-deep", "--optimizers", "adam", "--batch-size"]
    argv += ["5000", "--seeds", "1", "--epochs", "1", "--out", str(out)]
    assert main(argv) == 2
    assert "batch_size must be at most 1000" in one_line_error(capsys)
    assert not out.exists()


def test_a_damaged_study_file_is_one_line_with_a_remedy_before_any_banner(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["compare", "--optimizers", "adam", "--seeds", "1", "--epochs", "1", "--out", str(out)]
    assert main(argv) == 0
    capsys.readouterr()
    (out / "study.json").write_text("{damaged")
    assert main(argv) == 2
    line = one_line_error(capsys)  # no "optlab compare: digits-mlp ..." banner before it
    assert "study.json" in line and "move it away and run the command again" in line
    assert main(["report", str(out)]) == 2
    assert "move it away to report the run records without it" in one_line_error(capsys)


def test_compare_runs_a_small_study_and_names_every_hyper_parameter(tmp_path, capsys):
    out = tmp_path / "study"
    argv = ["compare", "--optimizers", "adam,adabelief", "--seeds", "2", "--epochs", "2"]
    argv += ["--set", "betas=(0.9,0.99)", "--lr", "0.003", "--jobs", "1", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "digits-mlp" in printed and str(out / "report.md") in printed
    assert "betas=(0.9,0.99)" in printed
    rows = {row["optimizer"]: row for row in csv.DictReader(open(out / "summary.csv"))}
    assert set(rows) == {"adam", "adabelief"}
    for row in rows.values():
        assert float(row["hp_lr"]) == 0.003 and row["hp_betas"] == "(0.9,0.99)"
        assert row["seeds"] == "2"
        assert 0.5 < float(row["final_mean"]) <= 1.0  # both learn digits in 2 epochs
    assert rows["adabelief"]["hp_eps"] == "1e-16" and rows["adam"]["hp_eps"] == "1e-08"
    assert (out / MANIFEST_NAME).is_file() and len(list((out / "runs").glob("*.json"))) == 4
    # The recorded command reproduces the study: running it again trains nothing new.
    markdown = (out / "report.md").read_text()
    command = next(line for line in markdown.splitlines() if line.startswith("optlab compare"))
    assert "--lr 0.003" in command and "--set 'betas=(0.9,0.99)'" in command
    before = {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir()}
    import shlex

    assert main(shlex.split(command)[1:] + ["--jobs", "1"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir()} == before


def test_demo_runs_the_default_study_into_results_demo(tmp_path, monkeypatch, capsys):
    from optlab import demo

    monkeypatch.chdir(tmp_path)
    assert (
        demo.main(["--optimizers", "sgd,adam", "--seeds", "1", "--epochs", "1", "--jobs", "1"]) == 0
    )
    assert (tmp_path / "results" / "demo" / "report.md").is_file()
    assert "results/demo/report.md" in capsys.readouterr().out


@pytest.mark.parametrize("form", [["--out=elsewhere"], ["--out", "elsewhere"]])
def test_demo_writes_where_out_says_in_either_form(tmp_path, monkeypatch, capsys, form):
    from optlab import demo

    monkeypatch.chdir(tmp_path)
    argv = ["--optimizers", "adam", "--seeds", "1", "--epochs", "1", "--jobs", "1", *form]
    assert demo.main(argv) == 0
    assert (tmp_path / "elsewhere" / "report.md").is_file()
    assert not (tmp_path / "results").exists()


def test_the_documented_set_examples_survive_a_posix_shell():
    import shlex
    from pathlib import Path

    from optlab.cli_lab import COMPARE_EXAMPLE

    readme = Path(__file__).resolve().parents[2] / "README.md"
    texts = [COMPARE_EXAMPLE] + ([readme.read_text()] if readme.is_file() else [])
    lines = [line for text in texts for line in text.splitlines() if "--set" in line]
    assert lines
    for line in lines:
        command = line.split("#")[0].rstrip(" \\")
        if not command.strip().startswith(("optlab", "torchrun", "python")):
            continue
        words = shlex.split(command)
        for i, word in enumerate(words):
            if word == "--set":
                parse_set(words[i + 1])  # what argparse would receive, shell quoting removed
        # bash refuses an unquoted "(" in a word: every parenthesis must be quoted.
        unquoted = "".join(part for k, part in enumerate(command.split("'")) if k % 2 == 0)
        assert "(" not in unquoted, line


def test_default_study_is_digits_with_the_twelve_core_optimizers():
    from optlab.lab.study import default_study

    study = default_study()
    assert study.tasks == ("digits-mlp",)
    assert [arm.optimizer for arm in study.arms] == (
        "sgd momentum nag adagrad adadelta rmsprop adam adamw amsgrad yogi eadam adabelief".split()
    )
    assert [arm.label for arm in study.arms] == [arm.optimizer for arm in study.arms]
    assert len(study.seeds) >= 3 and study.hparams == {}
    # A fair default: the learning rate tuned per arm (a decade grid), nothing else.
    ((dim,),) = {study.space(arm) for arm in study.arms}
    assert dim.name == "lr" and dim.grid() == (1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0)


def test_missing_data_files_are_one_line_before_anything_is_written(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    argv = ["compare", "--task", "mnist-cnn", "--optimizers", "adam"]
    argv += ["--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert "MNIST files missing" in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_a_bad_study_file_is_one_line_and_exit_2_before_anything_is_written(tmp_path, capsys):
    path = tmp_path / "study.toml"
    path.write_text('tasks = ["digits-mlp"]\narms = ["adam"]\nseeds = 3\nepoch = 2\n')
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    line = one_line_error(capsys)
    assert "line 4: unknown key 'epoch'" in line and "valid keys:" in line
    path.write_text('tasks = ["digits-mlp"]\narms = ["adam:eps~1..0.1"]\n')
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "tune eps: the range must have low < high" in one_line_error(capsys)
    assert not (tmp_path / "out").exists()
