"""Lab runs on several processes equal the 1-process run (optlab.lab.distributed).

The oracle is :func:`optlab.lab.train.train` in this process, one torch
thread. A 2-process run (DDP over gloo) must give the same history rows:
counters exactly, losses and metrics to float32 rounding (the two half-batch
gradients are summed in another order than one full-batch gradient).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from optlab.cli import main
from optlab.lab import distributed
from optlab.lab.runs import RunSpec
from optlab.lab.store import Store
from optlab.lab.train import train

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="this torch build has no torch.distributed with the gloo backend",
)

EXACT = ("epoch", "step", "examples", "lr")
ROUNDED = ("train_loss", "test_loss", "metric")


def assert_same_history(actual, expected) -> None:
    assert actual.status == expected.status
    assert len(actual.history) == len(expected.history)
    for index, (row, oracle) in enumerate(zip(actual.history, expected.history, strict=True)):
        for key in EXACT:
            assert row[key] == oracle[key], f"row {index} {key}: {row[key]} != {oracle[key]}"
        for key in ROUNDED:
            assert math.isclose(row[key], oracle[key], rel_tol=1e-5, abs_tol=1e-7), (
                f"row {index} {key}: {row[key]!r} != {oracle[key]!r}"
            )


def one_process(spec: RunSpec):
    return train(spec, progress=False, threads=1)


def test_shard_bounds_split_like_tensor_split():
    for size in (0, 1, 2, 5, 7, 32, 33):
        for world in (1, 2, 3, 4):
            expected = [len(part) for part in torch.tensor_split(torch.arange(size), world)]
            bounds = [distributed.shard_bounds(size, rank, world) for rank in range(world)]
            assert [stop - start for start, stop in bounds] == expected
            assert [start for start, _ in bounds] == [sum(expected[:r]) for r in range(world)]


SPECS = {
    # equal shares (32 = 16 + 16), accuracy metric
    "digits-mlp-equal-shares": RunSpec("digits-mlp", "adabelief", {"lr": 3e-3}, seed=0, epochs=1),
    # odd batch (4 + 3) and an odd last batch, evaluation every 200 examples
    "diabetes-unequal-shares": RunSpec(
        "diabetes-linreg", "adam", {"lr": 1e-2}, seed=1, epochs=2, batch_size=7
    ),
    # a parameter penalty added to every rank's loss; a cosine schedule
    "cancer-penalty-schedule": RunSpec(
        "cancer-logreg",
        "momentum",
        {"lr": 0.1},
        seed=2,
        epochs=2,
        batch_size=33,
        schedule="cosine",
    ),  # fmt: skip
    # no targets, drop_last
    "quadratic-no-targets": RunSpec("quadratic-deep", "yogi", {}, seed=0, epochs=1),
    # batch of one: rank 1's share is empty every step
    "diabetes-empty-share": RunSpec(
        "diabetes-linreg", "sgd", {"lr": 1e-2}, seed=0, epochs=1, batch_size=1
    ),
}


@pytest.fixture(scope="module")
def two_process_results():
    session = distributed.start(nproc=2, timeout=timedelta(minutes=3))  # fail, never hang
    assert session is not None and session.is_driver and session.world_size == 2
    try:
        # First a run that fails to set up: it raises on the driver, the follower
        # keeps serving, and the runs after it train as usual.
        try:
            session.train(BAD_SPEC)
            failure = None
        except ValueError as error:
            failure = str(error)
        results = {label: session.train(spec) for label, spec in SPECS.items()}
    finally:
        session.close()
    return {
        "results": results,
        "failure": failure,
        "exitcodes": [process.exitcode for process in session._followers],
    }


BAD_SPEC = RunSpec("cancer-logreg", "adam", {"lr": -1.0}, seed=0, epochs=1)


@pytest.mark.slow
def test_a_run_that_fails_to_set_up_raises_on_the_driver_and_the_followers_keep_serving(
    two_process_results,
):
    assert two_process_results["failure"] is not None and "lr" in two_process_results["failure"]
    assert len(two_process_results["results"]) == len(SPECS)  # every later run trained
    assert two_process_results["exitcodes"] == [0]  # told to leave at the end, not terminated


@pytest.mark.slow
@pytest.mark.parametrize("label", list(SPECS))
def test_two_process_run_equals_the_one_process_run(two_process_results, label):
    result = two_process_results["results"][label]
    assert result.info["world_size"] == 2
    assert result.spec == SPECS[label]
    assert_same_history(result, one_process(SPECS[label]))


def test_start_with_one_process_needs_no_group():
    assert distributed.start(nproc=1) is None
    assert distributed.start() is None
    assert not dist.is_initialized()


def test_start_refuses_nproc_under_torchrun(monkeypatch):
    for name, value in {
        "RANK": "0",
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "1",
    }.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="--nproc-per-node"):
        distributed.start(nproc=2)


@pytest.mark.parametrize("nproc", [0, -1, 1.5, True])
def test_start_refuses_a_bad_process_count(nproc):
    with pytest.raises(ValueError, match="nproc must be an integer >= 1"):
        distributed.start(nproc=nproc)


def test_train_distributed_without_a_group_says_how_to_get_one():
    with pytest.raises(RuntimeError, match="distributed.start"):
        distributed.train_distributed(SPECS["quadratic-no-targets"])


def test_close_after_an_interrupted_run_ends_the_followers_without_raising(monkeypatch):
    """The driver interrupted mid-run: followers wait inside a collective forever, so
    close() must not broadcast to them (gloo raised "Connection closed by peer")."""
    session = distributed.start(nproc=2, timeout=timedelta(minutes=3))
    assert session is not None
    follower = session._followers[0]

    def interrupted(spec, **_):  # the follower got the spec and waits in the first step
        raise KeyboardInterrupt

    monkeypatch.setattr(distributed, "train_distributed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        session.train(SPECS["digits-mlp-equal-shares"])
    started = time.monotonic()
    session.close()
    assert time.monotonic() - started < 60
    assert not follower.is_alive()
    assert not dist.is_initialized()


def test_compare_refuses_jobs_with_nproc(capsys):
    code = main(["compare", "--task", "cancer-logreg", "--jobs", "2", "--nproc", "2"])
    assert code == 2
    assert "--jobs 2 cannot be combined with --nproc" in capsys.readouterr().err


# --------------------------------------------------------------------------
# The command line: --nproc and torchrun, same entry point
# --------------------------------------------------------------------------

STUDY = ["--task", "cancer-logreg", "--optimizers", "adam,adabelief", "--seeds", "1"]
STUDY += ["--tune", "none"]
STUDY += ["--epochs", "2", "--batch-size", "25", "-q"]


def _run_cli(command: list[str], out: Path, *extra: str) -> None:
    env = {**os.environ, "OPTLAB_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        env.pop(name, None)
    completed = subprocess.run(
        [*command, "compare", *STUDY, "--out", str(out), *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]


def _assert_store_equals_one_process(out: Path) -> None:
    results = Store.open_existing(out).results()
    assert sorted(r.spec.optimizer for r in results) == ["adabelief", "adam"]
    for result in results:
        assert result.info["world_size"] == 2
        assert_same_history(result, one_process(result.spec))


@pytest.mark.slow
def test_compare_with_nproc_2_stores_the_one_process_results(tmp_path):
    _run_cli([sys.executable, "-m", "optlab.cli"], tmp_path / "nproc", "--nproc", "2")
    _assert_store_equals_one_process(tmp_path / "nproc")


@pytest.mark.slow
def test_compare_under_torchrun_stores_the_one_process_results(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run"]  # what `torchrun` runs
    _run_cli(
        [*torchrun, "--standalone", "--nproc-per-node", "2", "-m", "optlab.cli"],
        tmp_path / "torchrun",
    )
    _assert_store_equals_one_process(tmp_path / "torchrun")


# Ctrl-C: the terminal sends SIGINT to the whole foreground process group. The
# interrupt must land while run 2 trains: 60 epochs make that about 7 s on a
# 2-core machine (12 epochs took 1.5 s, a window a loaded machine could miss).
INTERRUPTED_STUDY = ["--task", "digits-mlp", "--optimizers", "adam,sgd", "--seeds", "1"]
INTERRUPTED_STUDY += ["--tune", "none"]
INTERRUPTED_STUDY += ["--epochs", "60", "-q", "--nproc", "2"]


def _as_a_shell_job() -> None:
    """In the child before exec: SIGINT at its default and unblocked, as a shell starts a job.

    Both survive exec, so otherwise the child would inherit whatever the test
    process has; in one full-suite run the CLI ignored the interrupt and
    finished (exit 0), which an inherited SIG_IGN or blocked SIGINT explains.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@pytest.mark.slow
def test_ctrl_c_under_nproc_is_one_line_and_exit_130_and_the_same_command_resumes(tmp_path):
    out = tmp_path / "interrupted"
    command = [sys.executable, "-m", "optlab.cli", "compare", *INTERRUPTED_STUDY]
    command += ["--out", str(out)]
    env = {**os.environ, "OPTLAB_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        env.pop(name, None)
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell job has
        preexec_fn=_as_a_shell_job,
    )
    try:
        deadline = time.monotonic() + 180
        while not list((out / "runs").glob("*.json")):
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no run finished within 180 s"
            time.sleep(0.05)
        first = {path.name: path.read_bytes() for path in (out / "runs").glob("*.json")}
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C does
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    lines = [line for line in stderr.splitlines() if line.strip()]
    test_process = (signal.getsignal(signal.SIGINT), signal.pthread_sigmask(signal.SIG_BLOCK, []))
    assert process.returncode == 130, (stderr[-3000:], "SIGINT here (handler, mask):", test_process)
    assert lines[1:] == [
        f"optlab compare: interrupted; finished runs are kept in {out}: run the same "
        "command to resume"
    ], stderr[-3000:]
    assert lines[0].startswith("optlab compare: 1 task x 2 arms x 1 seed")
    assert sorted(path.name for path in (out / "runs").glob("*.json")) == sorted(first)

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    results = Store.open_existing(out).results()
    assert sorted(result.spec.optimizer for result in results) == ["adam", "sgd"]
    for name, content in first.items():  # the finished run was kept, not trained again
        assert (out / "runs" / name).read_bytes() == content
