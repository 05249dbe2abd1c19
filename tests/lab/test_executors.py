"""Where a study runs, without Ray: the execution flags and study-file keys, what is
refused (one line, exit 2), runs whose workers died (recorded in ``failed/``, retried on
resume), what the report says about the executor. The Ray cluster itself: test_ray.py."""

from __future__ import annotations

import json
import sys
import types

import pytest

from optlab.cli import main
from optlab.cli_lab import default_out
from optlab.lab.execution import FAILED_DIR, BaseRunner, Runner, RunsFailed, failure_records
from optlab.lab.report import write_report
from optlab.lab.store import Store
from optlab.lab.study import StudySpec, run_study
from optlab.lab.studyfile import (
    StudyFileError,
    dump_toml,
    execution_settings,
    load_study_file,
    load_toml,
)

from .test_cli import one_line_error
from .test_study import CountingTrainer, peaked_trainer, stored

STUDY = StudySpec("digits-mlp", ("adam", "sgd"), seeds=(0, 1), epochs=2)


@pytest.fixture
def no_ray(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError


@pytest.fixture
def fake_ray(monkeypatch):
    ray = types.ModuleType("ray")
    ray.is_initialized = lambda: False
    monkeypatch.setitem(sys.modules, "ray", ray)


# ------------------------------------------------------------------ refused


def test_executor_ray_without_ray_says_how_to_install_it_and_writes_nothing(
    no_ray, tmp_path, capsys
):
    out = tmp_path / "out"
    argv = ["compare", "--optimizers", "adam", "--tune", "none", "--executor", "ray"]
    assert main([*argv, "--out", str(out)]) == 2
    line = one_line_error(capsys)
    assert "--executor ray needs Ray" in line and "pip install 'optlab[ray]'" in line
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--ray-address", "auto"], "--ray-address goes with --executor ray"),
        (["--gpus-per-run", "1"], "--gpus-per-run goes with --executor ray"),
        (["--executor", "ray", "--gpus-per-run", "-1"], "--gpus-per-run: must be a number >= 0"),
        (["--executor", "ray", "--jobs", "2"], "--jobs 2 is for the local executor"),
        (["--executor", "dask"], "invalid choice: 'dask'"),
        (
            ["--executor", "ray", "--nproc", "2", "--task", "gan-ring"],
            "task gan-ring runs in one process",
        ),
    ],
)
def test_inconsistent_execution_flags_give_one_line_and_exit_2(
    fake_ray, extra, expected, tmp_path, capsys
):
    argv = ["compare", "--optimizers", "adam", "--tune", "none", "--out", str(tmp_path / "o")]
    try:
        code = main([*argv, *extra])
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    assert code == 2
    assert expected in one_line_error(capsys)
    assert not (tmp_path / "o").exists()


def test_an_unreachable_cluster_is_one_line_at_once_and_writes_nothing(fake_ray, tmp_path, capsys):
    from optlab.lab.distributed import free_port

    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    out = tmp_path / "out"
    argv = ["compare", "--optimizers", "adam", "--tune", "none", "--executor", "ray"]
    assert main([*argv, "--ray-address", address, "--out", str(out)]) == 2
    line = one_line_error(capsys)
    assert f"cannot reach Ray at {address}: nothing answers" in line
    assert not out.exists()


# -------------------------------------------------------------- study files


def test_study_file_execution_keys_are_read_and_kept_out_of_the_study(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(
        'tasks = ["digits-mlp"]\narms = ["adam"]\nseeds = 2\nexecutor = "ray"\n'
        'ray_address = "ray://head:10001"\ngpus_per_run = 0.5\n'
    )
    study, execution = load_study_file(path)
    assert execution == {"executor": "ray", "ray_address": "ray://head:10001", "gpus_per_run": 0.5}
    plain = tmp_path / "plain.toml"
    plain.write_text('tasks = ["digits-mlp"]\narms = ["adam"]\nseeds = 2\n')
    # Not part of the study: same study, same default results directory, same study.toml.
    assert study == load_toml(plain) == load_toml(path)
    assert default_out(study) == default_out(load_toml(plain))
    assert "executor" not in dump_toml(study)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('executor = "spark"', "s.toml line 2: executor: must be one of local, ray"),
        ("gpus_per_run = -1", "s.toml line 2: gpus_per_run: must be a number >= 0"),
        ("executors = 1", "unknown key 'executors'; valid keys: "),
    ],
)
def test_bad_execution_keys_give_one_line(tmp_path, line, expected):
    path = tmp_path / "s.toml"
    path.write_text(f'tasks = ["digits-mlp"]\n{line}\n')
    with pytest.raises(StudyFileError, match=expected) as caught:
        load_study_file(path)
    assert "\n" not in str(caught.value)
    if "unknown key" in expected:
        assert "executor, ray_address, gpus_per_run" in str(caught.value)


def test_execution_settings_fill_defaults_and_refuse_ray_settings_without_ray():
    assert execution_settings({}) == {"executor": "local", "ray_address": None, "gpus_per_run": 0.0}
    with pytest.raises(ValueError, match="--ray-address goes with --executor ray"):
        execution_settings({"ray_address": "auto"})


def test_run_flags_override_the_study_file_keys(no_ray, tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text('tasks = ["cancer-logreg"]\narms = ["adam"]\nseeds = 1\ntune = []\n')
    path.write_text(path.read_text() + 'executor = "ray"\n')
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "-q"]) == 2
    assert "needs Ray" in one_line_error(capsys)
    # --executor local on the command line wins over the file's executor = "ray".
    assert main(["run", str(path), "--out", str(out), "-q", "--executor", "local"]) == 0
    assert len(Store.open_existing(out)) == 1
    assert json.loads((out / "study.json").read_text())["execution"]["executor"] == "local"


# ------------------------------------------------------- runs that failed


class DyingRunner(BaseRunner):
    """An executor whose workers die on every try for the specs of one seed."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def describe(self):
        return {"executor": "ray", "address": "test", "nodes": 3, "cpus": 12, "ray": "x"}

    def run(self, specs, on_result, on_failure=None):
        for spec in specs:
            if spec.seed == self.seed:
                on_failure(spec, "WorkerCrashedError after 4 tries: the worker died")
            else:
                on_result(peaked_trainer(spec))


def test_runs_that_failed_for_good_are_recorded_and_retried_on_resume(tmp_path):
    root = tmp_path / "out"
    study = StudySpec("digits-mlp", ("adam", "sgd"), seeds=(0, 1), epochs=2, tune="lr=1e-3,1e-2")
    with pytest.raises(RunsFailed) as caught:
        run_study(study, root, runner=DyingRunner(seed=0))
    # Tuning runs on seed 0: every one fails, nothing else could start; each is on record.
    assert len(caught.value.failures) == 4
    records = failure_records(root)
    assert len(records) == 4 and all("WorkerCrashedError" in r["reason"] for r in records)
    assert {r["key"] for r in records} == {spec.key() for spec, _ in caught.value.failures}
    report = (write_report(root).report_path).read_text()
    assert "**4 runs failed on every try**" in report and "| nodes | 3 |" in report
    assert "| CPUs | 12 (1 per run) |" in report and "| executor | Ray x at test |" in report

    resumed = CountingTrainer()
    run_study(study, root, trainer=resumed)  # the local executor picks up where Ray stopped
    assert len(resumed.calls) == 4 + 2  # the failed tuning runs, then seed 1 of each arm
    assert failure_records(root) == [] and not list((root / FAILED_DIR).iterdir())
    whole = tmp_path / "whole"
    run_study(study, whole, trainer=CountingTrainer())
    assert stored(root) == stored(whole)
    assert "failed on every try" not in write_report(root).report_path.read_text()


def test_failed_final_runs_let_the_stage_finish_first(tmp_path):
    root = tmp_path / "out"
    with pytest.raises(RunsFailed, match="2 runs failed on every try"):
        run_study(STUDY, root, runner=DyingRunner(1))
    assert len(Store.open_existing(root)) == 2  # seed 0 of both arms: stored
    assert len(failure_records(root)) == 2


def test_the_local_executor_is_recorded_with_its_workers(tmp_path):
    run_study(STUDY, tmp_path / "out", trainer=CountingTrainer(), runner=Runner(1, peaked_trainer))
    data = json.loads((tmp_path / "out" / "study.json").read_text())
    assert data["execution"]["executor"] == "local" and data["jobs"] == 1
    report = write_report(tmp_path / "out").report_path.read_text()
    assert "| executor | local |" in report and "| worker processes | 1 |" in report
