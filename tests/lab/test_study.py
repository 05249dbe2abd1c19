"""Studies: expansion, DeepOBS selection, resuming after a crash or a kill, --jobs equality,
Optuna determinism; oracles are hand-computed expectations and uninterrupted runs."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from optlab.lab.runs import RunResult, RunSpec
from optlab.lab.store import Store
from optlab.lab.study import (
    DEFAULT_LR_GRID,
    Dim,
    StudySpec,
    resolve_study,
    run_study,
    select_best,
    validate_study,
)


def lr_grid(*values: float) -> tuple[Dim, ...]:
    """``tune``: the learning rate on an explicit grid (``--tune lr=X,Y,...``)."""
    return (Dim("lr", values=values),)


def parts(outcome):
    """The arms' outcomes of a one-task study."""
    (task,) = outcome.tasks
    return task.arms


# ----------------------------------------------------------------- fakes


def result_for(
    spec: RunSpec,
    final: float,
    *,
    status: str = "ok",
    higher: bool = True,
    test: float | None = None,
):
    """A fake run whose validation metric rises to ``final`` (and its test metric to
    ``test``, by default the same)."""
    epochs = spec.epochs or 2
    test = final if test is None else test
    history = [
        {
            "epoch": float(e),
            "step": 10 * e,
            "examples": 100 * e,
            "lr": spec.hparams.get("lr", 1e-3),
            "train_loss": 1.0 / (e + 1),
            "valid_loss": 1.05 / (e + 1),
            "valid_metric": final * e / epochs,
            "test_loss": 1.1 / (e + 1),
            "metric": test * e / epochs,
            "wall_time": 0.01 * e,
        }
        for e in range(epochs + 1)
    ]
    if status != "ok":
        history[-1]["train_loss"] = math.nan
    return RunResult(spec, history, "accuracy", higher, status, 0.01, {"fake": True})


def peaked_trainer(spec: RunSpec) -> RunResult:
    """Final metric peaks at lr = 1e-2 (0.9 there); every lr above 1 diverges."""
    lr = spec.hparams.get("lr", 1e-3)
    if lr > 1.0:
        return result_for(spec, math.nan, status="diverged")
    return result_for(spec, 0.9 - 0.05 * (math.log10(lr) + 2) ** 2 + 0.001 * spec.seed)


class CountingTrainer:
    """Trains with ``peaked_trainer``, counting calls; raises after ``fail_after`` calls."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls: list[RunSpec] = []
        self.fail_after = fail_after

    def __call__(self, spec: RunSpec) -> RunResult:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.calls.append(spec)
        return peaked_trainer(spec)


def stored(root: Path) -> dict[str, dict]:
    return {r.spec.key(): r.to_dict() for r in Store.open_existing(root).results()}


def without_timing(records: dict[str, dict]) -> dict[str, dict]:
    """Records minus everything that measures time (it differs from run to run)."""
    clean = {}
    for key, data in records.items():
        history = [{k: v for k, v in row.items() if k != "wall_time"} for row in data["history"]]
        clean[key] = {
            "spec": data["spec"],
            "status": data["status"],
            "metric": data["metric"],
            "history": history,
        }
    return clean


# -------------------------------------------------------------- expanding


def test_study_expands_optimizers_seeds_and_lr_grid_into_run_specs():
    study = StudySpec(
        "digits-mlp",
        ("adam", "sgd"),
        hparams={"weight_decay": 1e-4},
        seeds=(0, 1, 2),
        epochs=3,
        tune=lr_grid(1e-2, 1e-3),
    )
    adam, sgd = study.arms
    finals = study.final_specs("digits-mlp", adam, {"lr": 0.5})
    assert [s.seed for s in finals] == [0, 1, 2]
    assert all(s.epochs == 3 and s.task == "digits-mlp" for s in finals)
    grid = study.grid_specs("digits-mlp", sgd)
    assert [s.hparams["lr"] for s in grid] == [1e-3, 1e-2]  # smallest first
    assert all(s.seed == 0 and s.hparams["weight_decay"] == 1e-4 for s in grid)
    assert DEFAULT_LR_GRID[0] == pytest.approx(1e-4) and DEFAULT_LR_GRID[-1] == pytest.approx(10)
    assert len(DEFAULT_LR_GRID) == 11


def test_study_spec_round_trips_through_its_dict():
    study = StudySpec("digits-mlp", ("adam",), hparams={"betas": (0.9, 0.99)}, tune="lr")
    again = StudySpec.from_dict(study.to_dict())
    assert again == study
    assert again.hparams["betas"] == (0.9, 0.99)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tasks": "nope"}, "unknown task 'nope'"),
        ({"tasks": ("digits-mlp", "digits-mlp")}, "tasks must not repeat"),
        ({"arms": ("adam", "nope")}, "unknown optimizer 'nope'"),
        ({"arms": ("adam", "ADAM")}, "arm labels must be unique"),
        ({"seeds": (0, -1)}, "seeds must be integers >= 0, got -1"),
        ({"seeds": ()}, "at least one seed"),
        ({"epochs": 0}, "epochs must be an integer >= 1, got 0"),
        ({"hparams": {"betas": (0.9, 0.99)}, "arms": ("adam", "sgd")}, "sgd"),
        ({"hparams": {"lr": -1.0}}, "adam: lr must be a finite number >= 0, got -1.0"),
        ({"tune": lr_grid(1e-3, -0.1)}, "adam: lr must be a finite number >= 0, got -0.1"),
        (
            {"tasks": "quadratic-deep", "batch_size": 5000},
            "batch_size must be at most 1000 (the training examples of task quadratic-deep",
        ),
        ({"tasks": "mnist-cnn"}, "task mnist-cnn reads its data from files: give data_dir"),
        ({"hparams": {"lr": 0.1}, "tune": "lr"}, "both fixed"),
        ({"tune": "lr=1..1e-3:log"}, "tune lr: the range must have low < high"),
        ({"tune": "lr=0..1:log"}, "a log range must be positive"),
        ({"tune": "lr=1e-3..1:log:1"}, "a range needs >= 2 points"),
        ({"tune": "momentum=0..0.9:linear"}, "no arm's optimizer has a hyper-parameter"),
        ({"arms": ("adam", "adam")}, "arm labels must be unique"),
        ({"arms": ("a=adam", "a=sgd")}, "arm labels must be unique, got 'a' twice"),
        ({"arms": ("x=adam:epz=1e-8",)}, "arm x: optimizer 'adam' has no hyper-parameter 'epz'"),
        ({"arms": ("x=adam:eps~1e-8..1e-4",), "tune": "eps=1e-9..1e-3"}, None),
        ({"arms": ("x=adam:eps=1e-8,eps~1e-8..1e-4",)}, "eps is both fixed"),
        ({"arms": ("x=nope",)}, "unknown optimizer 'nope'"),
        ({"schedule": "sometimes"}, "unknown schedule 'sometimes'"),
        ({"tuner": "random"}, "tuner must be one of grid, optuna"),
        ({"tune": lr_grid(0.1), "tuner": "optuna"}, "the optuna tuner needs a range for lr"),
    ],
)
def test_validate_study_rejects_bad_settings_with_one_clear_line(change, message):
    base = {"tasks": "digits-mlp", "arms": ("adam",)}
    if message is None:  # the arm's own range replaces the study's: valid
        study = validate_study(StudySpec(**(base | change)))
        assert study.space(study.arms[0]) == (Dim("eps", 1e-8, 1e-4),)
        return
    with pytest.raises(ValueError) as info:
        validate_study(StudySpec(**(base | change)))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_validate_study_canonicalises_optimizer_names():
    study = validate_study(StudySpec("digits-mlp", ("Adam", "NAG")))
    assert [arm.optimizer for arm in study.arms] == ["adam", "nag"]


# -------------------------------------------------------------- selecting


def _spec(lr: float, seed: int = 0) -> RunSpec:
    return RunSpec("digits-mlp", "adam", {"lr": lr}, seed=seed, epochs=2)


def test_select_best_maximises_or_minimises_the_final_metric():
    runs = [result_for(_spec(lr), value) for lr, value in [(1e-3, 0.7), (1e-2, 0.9), (1e-1, 0.8)]]
    assert select_best(runs).spec.hparams["lr"] == 1e-2
    lower = [result_for(_spec(lr), v, higher=False) for lr, v in [(1e-3, 0.7), (1e-2, 0.9)]]
    assert select_best(lower).spec.hparams["lr"] == 1e-3


def test_select_best_never_picks_a_diverged_run_or_a_nan_metric():
    runs = [
        result_for(_spec(1e-3), 0.5),
        result_for(_spec(1e-2), 0.99, status="diverged"),
        result_for(_spec(1e-1), math.nan),
    ]
    assert select_best(runs).spec.hparams["lr"] == 1e-3
    assert select_best(runs[1:]) is None


def test_select_best_chooses_on_the_validation_metric_never_the_test_metric():
    # The test metric would pick 1e-1; the validation metric picks 1e-2.
    runs = [
        result_for(_spec(1e-3), 0.70, test=0.75),
        result_for(_spec(1e-2), 0.90, test=0.80),
        result_for(_spec(1e-1), 0.85, test=0.95),
    ]
    assert select_best(runs).spec.hparams["lr"] == 1e-2
    # A run whose validation metric is not finite cannot win, whatever its test metric.
    runs.append(result_for(_spec(1.0), math.nan, test=0.99))
    assert select_best(runs).spec.hparams["lr"] == 1e-2


def test_grid_tuning_reruns_the_validation_winner_and_reports_its_test_metric(tmp_path):
    def trainer(spec: RunSpec) -> RunResult:
        lr = spec.hparams["lr"]
        # Validation peaks at 1e-2, test at 1e-1: tuning on the test set would choose 1e-1.
        valid = {1e-3: 0.6, 1e-2: 0.9, 1e-1: 0.7}[lr]
        test = {1e-3: 0.6, 1e-2: 0.8, 1e-1: 0.95}[lr] + 0.01 * spec.seed
        return result_for(spec, valid, test=test)

    study = StudySpec(
        "digits-mlp",
        ("adam",),
        seeds=(0, 1),
        epochs=2,
        tune=lr_grid(1e-3, 1e-2, 1e-1),
    )
    (part,) = parts(run_study(study, tmp_path / "out", trainer=trainer))
    assert part.hparams == {"lr": 1e-2}
    assert [run.final["metric"] for run in part.runs] == pytest.approx([0.8, 0.81])


def test_select_best_breaks_ties_towards_the_smaller_learning_rate():
    runs = [result_for(_spec(lr), 0.8) for lr in (1e-1, 1e-3, 1e-2)]
    assert select_best(runs).spec.hparams["lr"] == 1e-3


# ---------------------------------------------------------- running (fake)


def test_grid_tuning_picks_the_best_lr_and_reruns_it_with_every_seed(tmp_path):
    grid = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
    study = StudySpec("digits-mlp", ("adam", "sgd"), seeds=(0, 1, 2), epochs=2, tune=lr_grid(*grid))
    trainer = CountingTrainer()
    outcome = run_study(study, tmp_path / "out", trainer=trainer)
    for part in parts(outcome):
        assert part.hparams == {"lr": 1e-2}
        assert [run.spec.seed for run in part.runs] == [0, 1, 2]
        assert {run.spec.hparams["lr"] for run in part.runs} == {1e-2}
        assert [run.spec.hparams["lr"] for run in part.tuning] == list(grid)
        assert part.tuning[-1].status == "diverged"
    # The chosen point's seed-0 run is the tuning run: 6 grid + 2 more seeds per optimizer.
    assert len(trainer.calls) == 2 * (6 + 2)
    assert len(Store.open_existing(tmp_path / "out")) == 16
    assert outcome.complete


def test_every_lr_diverging_leaves_the_optimizer_without_final_runs(tmp_path):
    study = StudySpec("digits-mlp", ("adam",), epochs=2, tune=lr_grid(2.0, 5.0))
    outcome = run_study(study, tmp_path / "out", trainer=CountingTrainer())
    (part,) = parts(outcome)
    assert part.hparams is None and part.runs == []
    assert "diverged at every point tried" in part.note


def test_study_interrupted_by_an_error_keeps_finished_runs_and_resumes_to_the_same_result(
    tmp_path,
):
    study = StudySpec(
        "digits-mlp",
        ("adam", "sgd"),
        seeds=(0, 1),
        epochs=2,
        tune=lr_grid(1e-3, 1e-2),
    )
    reference = CountingTrainer()
    run_study(study, tmp_path / "whole", trainer=reference)

    crashing = CountingTrainer(fail_after=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_study(study, tmp_path / "resumed", trainer=crashing)
    assert len(Store.open_existing(tmp_path / "resumed")) == 3  # every finished run is on disk

    resuming = CountingTrainer()
    run_study(study, tmp_path / "resumed", trainer=resuming)
    assert len(resuming.calls) == len(reference.calls) - 3  # nothing done twice
    assert stored(tmp_path / "resumed") == stored(tmp_path / "whole")

    again = CountingTrainer()
    run_study(study, tmp_path / "resumed", trainer=again)
    assert again.calls == []  # a finished study trains nothing


def test_resolve_study_reports_missing_runs_without_training(tmp_path):
    study = StudySpec("digits-mlp", ("adam",), seeds=(0, 1, 2), epochs=2)
    with pytest.raises(RuntimeError):
        run_study(study, tmp_path / "out", trainer=CountingTrainer(fail_after=1))
    outcome = resolve_study(study, Store.open_existing(tmp_path / "out"))
    assert not outcome.complete
    assert parts(outcome)[0].missing == 2 and len(parts(outcome)[0].runs) == 1


def test_optuna_tuning_is_deterministic_resumable_and_kept_in_the_results_directory(tmp_path):
    pytest.importorskip("optuna")
    study = StudySpec(
        "digits-mlp",
        ("adam",),
        seeds=(0, 1),
        epochs=2,
        tune="lr=1e-4..10:log",
        tuner="optuna",
        trials=6,
    )
    whole = CountingTrainer()
    outcome = run_study(study, tmp_path / "whole", trainer=whole)
    assert (tmp_path / "whole" / "optuna.sqlite3").is_file()
    (part,) = parts(outcome)
    lrs = [run.spec.hparams["lr"] for run in part.tuning]
    assert len(lrs) == 6 and all(1e-4 <= lr <= 10.0 for lr in lrs)
    best = select_best(part.tuning)
    assert part.hparams == {"lr": best.spec.hparams["lr"]}
    assert [run.spec.seed for run in part.runs] == [0, 1]

    with pytest.raises(RuntimeError):
        run_study(study, tmp_path / "resumed", trainer=CountingTrainer(fail_after=3))
    run_study(study, tmp_path / "resumed", trainer=CountingTrainer())
    assert stored(tmp_path / "resumed") == stored(tmp_path / "whole")


# ---------------------------------------------------------- running (real)

REAL = StudySpec("digits-mlp", ("adam", "sgd", "adagrad"), seeds=(0, 1), epochs=2)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("uninterrupted")
    run_study(REAL, root, jobs=1)
    return without_timing(stored(root))


@pytest.mark.slow
def test_jobs_2_gives_the_same_results_as_jobs_1(tmp_path, uninterrupted):
    run_study(REAL, tmp_path / "two", jobs=2)
    assert without_timing(stored(tmp_path / "two")) == uninterrupted


@pytest.mark.slow
def test_killed_study_loses_no_finished_run_and_resumes_to_the_uninterrupted_result(
    tmp_path, uninterrupted
):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "optlab.cli", "compare", "--task", "digits-mlp"]
    command += ["--optimizers", "adam,sgd,adagrad", "--seeds", "2", "--epochs", "2"]
    command += ["--tune", "none", "--jobs", "1", "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if (out / "runs").is_dir() and len(list((out / "runs").glob("*.json"))) >= 2:
                break
            time.sleep(0.02)
        process.kill()  # SIGKILL: no clean-up code runs
    finally:
        _, errors = process.communicate()
    finished = len(Store.open_existing(out))  # every record on disk is complete and valid
    assert 2 <= finished < 6, f"the kill should land mid-study; stderr: {errors.decode()}"

    resuming = CountingReal()
    run_study(REAL, out, jobs=1, trainer=resuming)
    assert resuming.count == 6 - finished
    assert without_timing(stored(out)) == uninterrupted


class CountingReal:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self, spec: RunSpec) -> RunResult:
        from optlab.lab.train import train

        self.count += 1
        return train(spec, progress=False, threads=1)


def test_real_grid_study_picks_the_learning_rate_that_trains(tmp_path):
    # SGD on digits in 2 epochs: 1e-4 barely moves, 100 blows up, 0.1 learns (known answer).
    study = StudySpec(
        "digits-mlp",
        ("sgd",),
        seeds=(0, 1),
        epochs=2,
        tune=lr_grid(1e-4, 0.1, 100.0),
    )
    outcome = run_study(study, tmp_path / "out", jobs=1)
    (part,) = parts(outcome)
    assert part.hparams == {"lr": 0.1}
    assert len(part.runs) == 2 and all(run.final["metric"] > 0.5 for run in part.runs)
    assert len(Store.open_existing(tmp_path / "out")) == 4
