"""Studies on a real Ray cluster: a head and a worker node started with ``ray start`` on
loopback addresses (127.0.0.2 and 127.0.0.3), torn down after the module.

Proof of ``--executor ray``: the records equal ``--jobs 1`` bitwise (timings aside),
a tuned (Optuna) study included; a worker process killed mid-run is retried and the
study completes; a run whose worker dies on every try is recorded as failed, and
retried by the next run of the study; a driver killed with SIGKILL and started again
loses no finished run; without ``--ray-address`` a local instance is started.

Marked ``ray`` (deselected by default): ``make test-ray``, or
``pytest -p no:xdist -m ray tests/lab/test_ray.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from optlab.lab.distributed import free_port
from optlab.lab.execution import RunsFailed, failure_records
from optlab.lab.runs import RunResult, RunSpec
from optlab.lab.store import Store
from optlab.lab.study import StudySpec, run_study

from .test_distributed_lab import assert_same_history
from .test_study import stored, without_timing

pytestmark = pytest.mark.ray
ray = pytest.importorskip("ray")

from optlab.lab.ray_executor import RayRunner  # noqa: E402

RAY = str(Path(sys.executable).with_name("ray"))
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"
SMALL = StudySpec("digits-mlp", ("adam", "sgd"), seeds=(0, 1), epochs=1)
TUNED = StudySpec(
    "digits-mlp",
    ("adam", "sgd"),
    seeds=(0, 1),
    epochs=1,
    tune="lr=1e-3..1:log",
    tuner="optuna",
    trials=3,
)


# ------------------------------------------------------------------ the cluster


class Cluster:
    """``ray start`` processes, each in a process group of its own (killed whole after)."""

    def __init__(self) -> None:
        self.temp = tempfile.mkdtemp(prefix="optray-", dir="/tmp")  # short: socket paths
        self.port = free_port()
        self.address = f"{HEAD_IP}:{self.port}"
        self.client_address = f"ray://{HEAD_IP}:{free_port()}"  # the head's Ray Client server
        self.groups: list[int] = []
        self.env = dict(os.environ)  # the module's environment: see _hermetic_ray

    def start(self, *args: str) -> None:
        memory = ["--object-store-memory", str(100 * 1024**2), "--num-cpus", "1"]
        agent = ["--dashboard-agent-listen-port", str(free_port())]
        command = [RAY, "start", *args, *memory, *agent, "--disable-usage-stats"]
        process = subprocess.Popen(
            command,
            env=self.env,
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.groups.append(process.pid)  # its daemons stay in its process group
        output, _ = process.communicate(timeout=180)
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{output.decode()[-3000:]}")

    def stop(self) -> None:
        # SIGKILL at once: gcs_server and raylet take seconds over SIGTERM, and a test
        # cluster has nothing to save.
        for group in self.groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(map(_group_alive, self.groups)):
            time.sleep(0.1)
        shutil.rmtree(self.temp, ignore_errors=True)


def _group_alive(group: int) -> bool:
    """Whether a process of ``group`` still runs (zombies, left to init, do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[2]) == group and fields[0] != "Z":
                return True
    return False


@pytest.fixture(scope="module", autouse=True)
def _hermetic_ray():
    """Every Ray process here (nodes, drivers) ignores any cluster, token (~/.ray) and
    setting of the machine: loopback only, so without token authentication (Ray reads
    the mode when it is imported, before this fixture could give drivers a token)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "disabled")
        patch.setenv("RAY_USAGE_STATS_ENABLED", "0")
        patch.delenv("RAY_ADDRESS", raising=False)
        yield


@pytest.fixture(scope="module")
def cluster():
    cluster = Cluster()
    try:
        cluster.start(
            "--head",
            "--node-ip-address",
            HEAD_IP,
            "--port",
            str(cluster.port),
            "--temp-dir",
            cluster.temp,
            "--include-dashboard=false",
            "--dashboard-port",
            str(free_port()),
            "--ray-client-server-port",
            cluster.client_address.rpartition(":")[2],
        )
        cluster.start("--address", cluster.address, "--node-ip-address", WORKER_IP)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(autouse=True)
def _no_ray_left_connected():
    yield
    if ray.is_initialized():  # a test that failed half-way: the next one connects anew
        ray.shutdown()


def reference(study: StudySpec, root: Path) -> dict[str, dict]:
    run_study(study, root, jobs=1)
    return without_timing(stored(root))


@pytest.fixture(scope="module")
def small_reference(tmp_path_factory) -> dict[str, dict]:
    return reference(SMALL, tmp_path_factory.mktemp("small-jobs-1"))


# ------------------------------------------------------------- trainers (on workers)


class MarkingTrainer:
    """Trains for real after leaving ``<key>.<pid>`` in ``marks`` and pausing, so a test
    can find (and kill) the worker process of a run in the middle of it."""

    def __init__(self, marks: Path, pause: float = 1.0, die_on: str | None = None) -> None:
        self.marks = str(marks)
        self.pause = pause
        self.die_on = die_on

    def __call__(self, spec: RunSpec) -> RunResult:
        from optlab.lab.train import train

        Path(self.marks, f"{spec.key()}.{os.getpid()}").touch()
        if spec.key() == self.die_on:
            os.kill(os.getpid(), signal.SIGKILL)  # this run's worker dies on every try
        time.sleep(self.pause)
        return train(spec, progress=False, threads=1)


@pytest.fixture(scope="module", autouse=True)
def _trainers_by_value():
    # Workers cannot import this test module: send its trainers by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def marks(folder: Path) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for path in folder.iterdir():
        key, _, pid = path.name.partition(".")
        found.setdefault(key, []).append(int(pid))
    return found


# ------------------------------------------------------------------- the proofs


def test_a_study_on_two_nodes_equals_jobs_1_bitwise(cluster, tmp_path, small_reference):
    with RayRunner(cluster.address) as runner:
        described = runner.describe()
        run_study(SMALL, tmp_path / "ray", runner=runner)
    assert described["nodes"] == 2 and described["cpus"] == 2
    assert without_timing(stored(tmp_path / "ray")) == small_reference
    execution = json.loads((tmp_path / "ray" / "study.json").read_text())["execution"]
    assert execution["executor"] == "ray" and execution["address"] == cluster.address
    assert (execution["nodes"], execution["cpus"]) == (2, 2)


def test_optuna_tuning_on_ray_selects_what_jobs_1_selects(cluster, tmp_path):
    # Through the head's Ray Client server (ray://), as a driver off the cluster would.
    pytest.importorskip("optuna")
    expected = reference(TUNED, tmp_path / "jobs-1")
    with RayRunner(cluster.client_address) as runner:
        outcome = run_study(TUNED, tmp_path / "ray", runner=runner)
    assert without_timing(stored(tmp_path / "ray")) == expected
    local = run_study(TUNED, tmp_path / "jobs-1")  # resumed: trains nothing, same plan
    chosen = {(o.task, o.arm.label): o.hparams for o in outcome.arm_outcomes()}
    assert chosen == {(o.task, o.arm.label): o.hparams for o in local.arm_outcomes()}
    assert all(hparams is not None for hparams in chosen.values())


def test_a_worker_killed_mid_run_is_retried_and_the_study_completes(
    cluster, tmp_path, small_reference
):
    folder = tmp_path / "marks"
    folder.mkdir()
    killed: list[tuple[str, int]] = []

    def kill_the_first_run() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            for key, pids in marks(folder).items():
                os.kill(pids[0], signal.SIGKILL)  # mid-run: it is pausing before training
                killed.append((key, pids[0]))
                break
            time.sleep(0.02)

    killer = threading.Thread(target=kill_the_first_run, daemon=True)
    killer.start()
    trainer = MarkingTrainer(folder, pause=2.0)
    with RayRunner(cluster.address, trainer=trainer) as runner:
        run_study(SMALL, tmp_path / "out", runner=runner)
    killer.join()
    assert killed, "no run was seen starting"
    key, pid = killed[0]
    tries = marks(folder)[key]
    assert len(tries) >= 2 and pid in tries  # killed, then retried by Ray
    assert without_timing(stored(tmp_path / "out")) == small_reference
    assert failure_records(tmp_path / "out") == []


def test_a_run_whose_worker_dies_on_every_try_is_recorded_failed_then_retried(
    cluster, tmp_path, small_reference
):
    folder = tmp_path / "marks"
    folder.mkdir()
    out = tmp_path / "out"
    doomed = SMALL.run_spec("digits-mlp", SMALL.arms[1], {}, 1)
    dying = MarkingTrainer(folder, pause=0.0, die_on=doomed.key())
    with pytest.raises(RunsFailed) as caught:
        with RayRunner(cluster.address, trainer=dying, max_retries=1) as runner:
            run_study(SMALL, out, runner=runner)
    assert [spec for spec, _ in caught.value.failures] == [doomed]
    assert len(marks(folder)[doomed.key()]) == 2  # the try and one retry
    (record,) = failure_records(out)
    assert record["key"] == doomed.key() and record["spec"] == doomed.to_dict()
    assert record["reason"].startswith("WorkerCrashedError after 2 tries"), record
    assert len(Store.open_existing(out)) == 3  # the other runs finished and are stored

    with RayRunner(cluster.address) as runner:  # running the study again retries it
        run_study(SMALL, out, runner=runner)
    assert without_timing(stored(out)) == small_reference
    assert failure_records(out) == []


def _compare_command(out: Path, optimizers: str, seeds: int, *extra: str) -> list[str]:
    command = [sys.executable, "-m", "optlab.cli", "compare", "--task", "digits-mlp"]
    command += ["--optimizers", optimizers, "--seeds", str(seeds), "--epochs", "1"]
    return [*command, "--tune", "none", "--executor", "ray", "--out", str(out), *extra]


def test_a_driver_killed_with_sigkill_resumes_and_loses_no_finished_run(
    cluster, tmp_path, small_reference
):
    out = tmp_path / "killed"
    command = _compare_command(out, "adam,sgd", 2, "--ray-address", cluster.address, "-q")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if (out / "runs").is_dir() and len(list((out / "runs").glob("*.json"))) >= 2:
                break
            time.sleep(0.02)
        process.kill()  # SIGKILL: the driver runs no clean-up code
    finally:
        _, errors = process.communicate()
    before = {path.name: path.read_bytes() for path in (out / "runs").glob("*.json")}
    assert 2 <= len(Store.open_existing(out)) < 4, errors.decode()

    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert without_timing(stored(out)) == small_reference
    after = {path.name: path.read_bytes() for path in (out / "runs").glob("*.json")}
    assert all(after[name] == data for name, data in before.items())  # kept, not retrained
    assert "on Ray (2 nodes, 2 CPUs" in again.stderr
    report = (out / "report.md").read_text()
    assert "| executor | Ray 2.60.0 at" in report and "| nodes | 2 |" in report


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="a run on 2 processes needs 2 CPUs")
def test_without_an_address_a_local_instance_runs_each_run_on_nproc_processes(
    tmp_path, small_reference
):
    # The default address (a local instance of this machine's CPUs) and --nproc 2: every
    # run a Ray task of 2 CPUs training with DDP over 2 processes, equal to one process's
    # run to float32 rounding (as --nproc on one machine).
    out = tmp_path / "local"
    command = _compare_command(out, "adam", 2, "--nproc", "2", "-q")
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "on Ray (1 node" in done.stderr and "at local instance" in done.stderr
    assert "DDP over 2 processes per run" in done.stderr
    results = Store.open_existing(out).results()
    assert len(results) == 2 and all(result.info["world_size"] == 2 for result in results)
    for result in results:
        assert_same_history(result, SimpleNamespace(**small_reference[result.spec.key()]))
    execution = json.loads((out / "study.json").read_text())["execution"]
    assert execution["address"] == "local instance" and execution["nodes"] == 1
    assert execution["cpus_per_run"] == 2
