"""Training RunSpecs: in this process, in a pool of spawned workers, or on a Ray cluster.

Every run, in a worker or not, trains with one torch thread, so results do not
depend on ``jobs`` or on the executor; the parent process (the driver) alone
writes records, in completion order, so the store's guarantees (atomic
records, resume, lock) hold whichever executor trained them.

An executor is a :class:`BaseRunner`: ``run(specs, on_result, on_failure)``
trains specs and hands each result back as soon as it exists. :class:`Runner`
is the local one (``--jobs``); :class:`optlab.lab.ray_executor.RayRunner` sends
every run to Ray (``--executor ray``). :func:`execute` and the tuners only see
this interface, so nothing else in the lab knows which executor ran.

A run whose worker died (and that the executor gave up retrying) is not a
result: it is written to ``failed/<key>.json`` with the reason
(:func:`record_failure`), the stage's other runs go on, and then
:class:`RunsFailed` is raised. Running the study again retries it; a later
success removes its failure record.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from optlab.lab.runs import RunResult, RunSpec
from optlab.lab.store import Store, atomic_write_text

__all__ = [
    "FAILED_DIR",
    "BaseRunner",
    "Failure",
    "Progress",
    "Runner",
    "RunsFailed",
    "Trainer",
    "clear_failure",
    "execute",
    "failure_recorder",
    "failure_records",
    "one_thread",
    "record_failure",
]

#: ``progress(stage, done, total, result)``: called in the parent after each run
#: of a stage ("tune" or "final") is stored, and once with ``result=None`` when
#: a stage starts (``done`` = runs already in the store).
Progress = Callable[[str, int, int, "RunResult | None"], None]
Trainer = Callable[[RunSpec], RunResult]
#: ``on_failure(spec, reason)``: a run the executor gave up on (its worker died every try).
Failure = Callable[[RunSpec, str], None]

#: Where the driver records runs that failed for good: ``failed/<key>.json``.
FAILED_DIR = "failed"


class RunsFailed(RuntimeError):
    """Runs whose workers died on every try; each is recorded in ``failed/``.

    ``failures`` is ``[(spec, reason), ...]``. Finished runs are in the store,
    so running the study again retries only these.
    """

    def __init__(self, failures: Sequence[tuple[RunSpec, str]]) -> None:
        self.failures = list(failures)
        first = self.failures[0][1] if self.failures else ""
        count = len(self.failures)
        super().__init__(f"{count} run{'s' if count != 1 else ''} failed on every try ({first})")


def record_failure(store: Store, spec: RunSpec, reason: str) -> None:
    """Write ``failed/<key>.json`` (atomically): the spec and why it failed."""
    from datetime import datetime, timezone

    folder = store.root / FAILED_DIR
    folder.mkdir(exist_ok=True)
    data = {
        "key": spec.key(),
        "spec": spec.to_dict(),
        "reason": reason,
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_text(folder / f"{spec.key()}.json", json.dumps(data, indent=1) + "\n")


def failure_recorder(store: Store) -> tuple[list[tuple[RunSpec, str]], Failure]:
    """A list and an ``on_failure`` that records each failure in ``store`` and the list."""
    failed: list[tuple[RunSpec, str]] = []

    def on_failure(spec: RunSpec, reason: str) -> None:
        record_failure(store, spec, reason)
        failed.append((spec, reason))

    return failed, on_failure


def clear_failure(store: Store, spec: RunSpec) -> None:
    """Remove the failure record of ``spec`` (it has now finished)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(store.root / FAILED_DIR / f"{spec.key()}.json")


def failure_records(root: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The failure records in a results directory (``[]`` when there are none)."""
    from pathlib import Path

    records = []
    for path in sorted((Path(root) / FAILED_DIR).glob("*.json")):
        with contextlib.suppress(OSError, ValueError):
            records.append(json.loads(path.read_text(encoding="utf-8")))
    return records


def _set_one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _default_trainer(spec: RunSpec) -> RunResult:
    from optlab.lab.train import train

    return train(spec, progress=False, threads=1)


def _worker_run(trainer: Trainer | None, spec_data: dict[str, Any]) -> dict[str, Any]:
    result = (trainer or _default_trainer)(RunSpec.from_dict(spec_data))
    return result.to_dict()


class BaseRunner:
    """An executor: trains RunSpecs and hands back each result as soon as it exists.

    Use as a context manager (``__exit__`` releases workers or the cluster
    connection). :meth:`describe` is what the study records about where it ran.
    """

    def __enter__(self) -> BaseRunner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        """``executor``, ``nodes``, ``cpus`` and the executor's own settings (JSON-ready)."""
        raise NotImplementedError

    def run(
        self,
        specs: Sequence[RunSpec],
        on_result: Callable[[RunResult], None],
        on_failure: Failure | None = None,
    ) -> None:
        """Train every spec; ``on_result`` gets each result as soon as it exists.

        If a run raises, no finished work is lost (every result that exists
        reaches ``on_result``) and the first error is raised. A run whose worker
        died on every try goes to ``on_failure`` (the others go on); without
        ``on_failure`` it is raised as :class:`RunsFailed`.
        """
        raise NotImplementedError


class Runner(BaseRunner):
    """Trains RunSpecs in this process (``jobs=1``) or in ``jobs`` spawned workers."""

    def __init__(self, jobs: int, trainer: Trainer | None) -> None:
        self.jobs = jobs
        self.trainer = trainer
        self._pool: ProcessPoolExecutor | None = None

    def __exit__(self, *exc_info: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def describe(self) -> dict[str, Any]:
        return {"executor": "local", "jobs": self.jobs, "nodes": 1, "cpus": os.cpu_count()}

    def run(
        self,
        specs: Sequence[RunSpec],
        on_result: Callable[[RunResult], None],
        on_failure: Failure | None = None,
    ) -> None:
        """See :meth:`BaseRunner.run`. If a run raises, runs already started still
        finish and reach ``on_result``, pending ones are cancelled, and the first
        error is raised (``on_failure`` is not used: a local worker's death is an
        error like any other)."""
        if not specs:
            return
        if self.jobs <= 1 or len(specs) == 1:
            trainer = self.trainer or _default_trainer
            for spec in specs:
                with one_thread():
                    result = trainer(spec)
                on_result(result)
            return
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.jobs,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_set_one_thread,
            )
        pending: set[Future[dict[str, Any]]] = {
            self._pool.submit(_worker_run, self.trainer, spec.to_dict()) for spec in specs
        }
        error: BaseException | None = None
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    if future.cancelled():
                        continue
                    exception = future.exception()
                    if exception is not None:
                        if error is None:
                            error = exception
                            for other in pending:
                                other.cancel()
                        continue
                    on_result(RunResult.from_dict(future.result()))
        except BaseException:
            for other in pending:
                other.cancel()
            raise
        if error is not None:
            raise error


def execute(
    runner: BaseRunner,
    store: Store,
    stage: str,
    specs: Iterable[RunSpec],
    progress: Progress | None,
) -> None:
    """Train the specs the store does not hold yet (each once), storing each as it finishes.

    Raises:
        RunsFailed: after the other runs of the stage, when some runs failed for
            good (each recorded in ``failed/``).
    """
    specs = list({spec.key(): spec for spec in specs}.values())
    todo = [spec for spec in specs if spec not in store]
    done = len(specs) - len(todo)
    if progress:
        progress(stage, done, len(specs), None)

    def on_result(result: RunResult) -> None:
        nonlocal done
        store.put(result)
        clear_failure(store, result.spec)
        done += 1
        if progress:
            progress(stage, done, len(specs), result)

    failed, on_failure = failure_recorder(store)
    runner.run(todo, on_result, on_failure)
    if failed:
        raise RunsFailed(failed)
