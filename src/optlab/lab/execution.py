"""Training RunSpecs: in this process or in a pool of spawned workers; the caller stores.

Every run, in a worker or not, trains with one torch thread, so results do not
depend on ``jobs``; the parent process alone writes records, in completion
order, so the store's guarantees (atomic records, resume, lock) hold.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from optlab.lab.runs import RunResult, RunSpec
from optlab.lab.store import Store

__all__ = ["Progress", "Runner", "Trainer", "execute", "one_thread"]

#: ``progress(stage, done, total, result)``: called in the parent after each run
#: of a stage ("tune" or "final") is stored, and once with ``result=None`` when
#: a stage starts (``done`` = runs already in the store).
Progress = Callable[[str, int, int, "RunResult | None"], None]
Trainer = Callable[[RunSpec], RunResult]


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


class Runner:
    """Trains RunSpecs in this process (``jobs=1``) or in ``jobs`` spawned workers."""

    def __init__(self, jobs: int, trainer: Trainer | None) -> None:
        self.jobs = jobs
        self.trainer = trainer
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def run(self, specs: Sequence[RunSpec], on_result: Callable[[RunResult], None]) -> None:
        """Train every spec; ``on_result`` gets each result as soon as it exists.

        If a run raises, runs already started still finish and reach ``on_result``
        (no finished work is lost), pending ones are cancelled, and the first
        error is raised.
        """
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
    runner: Runner,
    store: Store,
    stage: str,
    specs: Iterable[RunSpec],
    progress: Progress | None,
) -> None:
    """Train the specs the store does not hold yet (each once), storing each as it finishes."""
    specs = list({spec.key(): spec for spec in specs}.values())
    todo = [spec for spec in specs if spec not in store]
    done = len(specs) - len(todo)
    if progress:
        progress(stage, done, len(specs), None)

    def on_result(result: RunResult) -> None:
        nonlocal done
        store.put(result)
        done += 1
        if progress:
            progress(stage, done, len(specs), result)

    runner.run(todo, on_result)
