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
        (["compare", "--lr", "-0.1", "--optimizers", "adam"], "lr"),
        (["compare", "--epochs", "1.5"], "--epochs: must be an integer >= 1"),
        (["compare", "--optimizers", "adam,sgd", "--set", "betas=(0.9,0.99)"], "'sgd'"),
        (["compare", "--set", "eps"], "expects name=value"),
        (["compare", "--set", "eps=tiny"], "must be a Python literal"),
        (["compare", "--tune", "lr", "--lr", "0.1"], "exclude each other"),
        (["compare", "--tune", "momentum"], "invalid choice: 'momentum'"),
        (["compare", "--schedule", "sometimes"], "invalid choice: 'sometimes'"),
        (["compare", "--lr-grid", "1e-3,1e-2"], "--lr-grid needs --tune lr"),
        (["compare", "--task", "mnist-cnn", "--optimizers", "adam"], "--data-dir"),
        (["compare", "--bogus"], "unrecognized arguments: --bogus"),
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
    for name in list_tasks():
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert get_task(name).metric in line and f"{get_task(name).target:g}" in line


def test_parse_set_reads_python_literals():
    assert parse_set("betas=(0.9,0.99)") == ("betas", (0.9, 0.99))
    assert parse_set("eps=1e-8") == ("eps", 1e-8)
    assert parse_set("nesterov=true") == ("nesterov", True)
    assert parse_set("amsgrad=False") == ("amsgrad", False)
    assert parse_set("momentum=0") == ("momentum", 0)


def test_report_on_a_foreign_or_missing_directory_exits_2_and_changes_nothing(tmp_path, capsys):
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    assert main(["report", str(tmp_path)]) == 2
    assert "not an optlab results directory" in one_line_error(capsys)
    assert main(["compare", "--optimizers", "adam", "--out", str(tmp_path)]) == 2
    assert "not an optlab results directory" in one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv"]
    assert (tmp_path / "data.csv").read_text() == "a,b\n1,2\n"
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in one_line_error(capsys)


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


def test_default_study_is_digits_with_the_twelve_core_optimizers():
    from optlab.lab.study import default_study

    study = default_study()
    assert study.task == "digits-mlp"
    assert study.optimizers == tuple(
        "sgd momentum nag adagrad adadelta rmsprop adam adamw amsgrad yogi eadam adabelief".split()
    )
    assert len(study.seeds) >= 3 and study.hparams == {} and study.tune is None


def test_missing_data_files_are_one_line_before_anything_is_written(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    argv = ["compare", "--task", "mnist-cnn", "--optimizers", "adam"]
    argv += ["--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert "MNIST files missing" in one_line_error(capsys)
    assert not (tmp_path / "out").exists()
