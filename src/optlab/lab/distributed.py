"""Lab runs on several processes: every run trained with DDP, results equal to one process.

Two ways in, one mechanism:

- ``optlab compare ... --nproc N`` (or :func:`start` with ``nproc=N``): this
  process becomes rank 0 and spawns N - 1 local follower processes; they
  form a gloo process group on 127.0.0.1.
- ``torchrun`` (``--nproc-per-node``, and ``--nnodes M`` across machines):
  every process runs the same ``optlab compare`` command; :func:`start`
  joins the group torchrun describes (``RANK``, ``WORLD_SIZE``,
  ``MASTER_ADDR``, ``MASTER_PORT``). Rank 0 runs the study; every other rank
  follows.

Rank 0 is the *driver*: it runs the study as in one process (tuning,
resuming, writing the results store, the report) and, for each run it
trains, first broadcasts the :class:`~optlab.lab.runs.RunSpec` to the
followers; then every rank trains that run together
(:class:`DistributedTrainingRun`). Followers never touch the store; when the
driver closes the session they leave.

Ctrl-C: the terminal sends SIGINT to every process of the foreground group,
but only the driver decides. Followers ignore SIGINT (spawned ones from
birth). When the driver is interrupted in the middle of a run, the
followers are waiting inside a collective that will never complete, so
:meth:`Session.close` does not broadcast to them: it terminates the local
followers (``--nproc``); followers elsewhere (torchrun) see the driver's
connection close and leave quietly. Finished runs are already in the store,
so running the same command again resumes.

How a run is split so that N processes give the 1-process numbers (to
float32 rounding):

- every rank builds the same model and draws the same global batches (the
  trainer seeds both from the spec), then keeps its contiguous share of each
  batch (sizes differ by at most one example);
- DDP averages gradients over ranks; each rank scales its loss by
  ``N * local_examples / global_examples`` before the backward pass, so the
  average is the full-batch mean gradient even when shares are unequal (the
  factor is exactly 1 for equal shares, and nothing is scaled then); a rank
  whose share is empty (a batch smaller than N) runs one example with
  weight 0, so every rank takes part in every all-reduce;
- the reported training loss is the weighted sum of the ranks' losses (one
  all-reduce of a scalar per step), so the history rows and the divergence
  check are those of the whole batch, and every rank takes the same branch;
- evaluation runs on every rank on the unwrapped model (the parameters are
  identical everywhere, so are the numbers); no collective is needed.

Limits: layers whose output depends on the batch (BatchNorm) see only the
local share, as in any plain DDP training, and random layers (dropout) draw
different masks on different ranks; such runs are still correct DDP
training but not equal to the 1-process run. The built-in tasks with plain
MLPs, CNNs without normalisation, the linear and logistic models and the
noisy quadratic match it. The LSTM language model keeps one carried state per
rank for its share of the text streams (the shares never change within a
run). Tasks with their own training step and several optimizers (the GANs,
``Task.distributed`` false) are refused with a message saying so.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

from .runs import RunResult, RunSpec
from .train import TrainingRun, train

__all__ = [
    "DistributedTrainingRun",
    "Session",
    "free_port",
    "launched_by_torchrun",
    "shard_bounds",
    "start",
    "train_distributed",
]

logger = logging.getLogger(__name__)

#: How long a collective may wait before the group gives up (a rank died or hangs).
DEFAULT_TIMEOUT = timedelta(minutes=30)

_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun() -> bool:
    """Whether the environment describes a process group (torchrun sets these variables)."""
    return all(variable in os.environ for variable in _TORCHRUN_VARIABLES)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def shard_bounds(size: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of ``rank``'s contiguous share of ``size`` examples.

    The first ``size % world_size`` ranks take one example more, as
    :func:`torch.tensor_split` does; a share may be empty when
    ``size < world_size``.
    """
    base, extra = divmod(size, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


# --------------------------------------------------------------------------
# One run on every rank
# --------------------------------------------------------------------------


class DistributedTrainingRun(TrainingRun):
    """A :class:`~optlab.lab.train.TrainingRun` trained with DDP over the current process group.

    Needs an initialised default process group (see :func:`start`); every
    rank must construct it for the same spec at the same time.
    """

    def __init__(self, spec: RunSpec, *, device: torch.device | str | None = None) -> None:
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        error: BaseException | None = None
        try:
            super().__init__(spec, device=device)
        except Exception as caught:  # shared below, so that no rank waits for a failed one
            error = caught
        if error is None and not self.task.distributed:
            error = ValueError(
                f"task {spec.task!r} trains with its own step and optimizers "
                f"({', '.join(self.optimizers)}) and runs in one process; "
                "drop --nproc / torchrun for it (use --jobs to run runs in parallel)"
            )
        _agree_on_setup(error, spec)
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        self.model = DistributedDataParallel(self.module, device_ids=device_ids)
        self.is_main = self.rank == 0
        self._loss_factor = 1.0
        self._weight = 1.0

    def shard_batch(self, inputs: Tensor, targets: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """This rank's contiguous share; one weightless example when the share is empty."""
        size = len(inputs)
        start, stop = shard_bounds(size, self.rank, self.world_size)
        self._weight = (stop - start) / size
        self._loss_factor = self.world_size * (stop - start) / size
        if stop == start:
            start, stop = 0, 1  # computed and scaled by 0: the all-reduces stay in step
        return inputs[start:stop], None if targets is None else targets[start:stop]

    def batch_loss(self, loss: Tensor) -> Tensor:
        """The whole batch's loss: the ranks' losses weighted by their shares (same everywhere)."""
        batch_loss = (loss.detach().double() * self._weight).reshape(1)
        dist.all_reduce(batch_loss)
        return batch_loss[0].to(loss.dtype)

    def backward(self, loss: Tensor) -> None:
        """Backward of the loss scaled so that DDP's average is the full-batch mean gradient."""
        scaled = loss if self._loss_factor == 1.0 else loss * self._loss_factor
        scaled.backward()

    def info(self, **timings: float) -> dict[str, Any]:
        return {
            **super().info(**timings),
            "world_size": self.world_size,
            "backend": dist.get_backend(),
        }


def _agree_on_setup(error: BaseException | None, spec: RunSpec) -> None:
    """Raise on every rank if any rank failed to set the run up (no rank is left waiting)."""
    message = None if error is None else f"{type(error).__name__}: {error}"
    messages: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(messages, message)
    if error is not None:
        raise error
    for rank, other in enumerate(messages):
        if other is not None:
            raise RuntimeError(
                f"rank {rank} could not set up the run {spec.task}/{spec.optimizer} "
                f"seed {spec.seed}: {other}"
            )


def train_distributed(
    spec: RunSpec,
    *,
    progress: Any = False,
    threads: int | None = 1,
    device: torch.device | str | None = None,
) -> RunResult:
    """:func:`optlab.lab.train.train` with DDP over the current process group (every rank calls it).

    Rank 0's progress is reported as ``progress`` says; other ranks are silent.
    Every rank returns the same result; the caller keeps rank 0's.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "train_distributed needs an initialised process group; use "
            "optlab.lab.distributed.start() (or torch.distributed.init_process_group)"
        )
    if dist.get_rank() != 0:
        progress = False
    return train(
        spec, progress=progress, threads=threads, device=device, run_class=DistributedTrainingRun
    )


# --------------------------------------------------------------------------
# A session: rank 0 drives, the others follow
# --------------------------------------------------------------------------


class Session:
    """A process group that trains lab runs together; rank 0 drives, the others follow.

    On the driver, :meth:`train` is a ``RunSpec -> RunResult`` trainer for
    :func:`optlab.lab.study.run_study` (with ``jobs=1``). On a follower,
    :meth:`serve` trains whatever the driver sends until the driver closes.
    Use as a context manager, or call :meth:`close` on every rank.
    """

    def __init__(self, followers: list[Any] | None = None, *, threads: int | None = 1) -> None:
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.threads = threads
        self._followers = followers or []
        self._closed = False
        # Driver: whether every follower is waiting for the next message (not inside a run).
        self._followers_waiting = True

    @property
    def is_driver(self) -> bool:
        return self.rank == 0

    def train(self, spec: RunSpec) -> RunResult:
        """Driver only: train ``spec`` on every rank and return the result."""
        if not self.is_driver:
            raise RuntimeError("Session.train runs on rank 0; other ranks call serve()")
        self._followers_waiting = False
        _broadcast({"spec": spec.to_dict()})
        result = train_distributed(spec, progress=False, threads=self.threads)
        self._followers_waiting = True  # not reached when the run raised or was interrupted
        return result

    def serve(self) -> None:
        """Follower: train every run the driver sends; return when it closes the session.

        SIGINT is ignored while serving (the driver decides what Ctrl-C does). If
        the driver goes away without closing (interrupted, or failed), the next
        collective fails and the follower leaves quietly: the driver reports.
        """
        if self.is_driver:
            raise RuntimeError("Session.serve runs on ranks other than 0")
        with _sigint_ignored():
            failure: str | None = None
            while True:
                try:
                    message = _broadcast(None)
                except Exception as error:  # the driver left without closing the session
                    logger.info(
                        "rank %d: the driver left (%s)%s; leaving",
                        self.rank,
                        error,
                        "" if failure is None else f" during the run that failed: {failure}",
                    )
                    break
                if failure is not None:  # the driver went on: it saw the failure too
                    logger.warning("rank %d: %s", self.rank, failure)
                    failure = None
                if message is None:
                    break
                spec = RunSpec.from_dict(message["spec"])
                try:
                    train_distributed(spec, progress=False, threads=self.threads)
                except Exception as error:  # reported once we know whether the driver lives
                    failure = f"run {spec.key()} failed: {type(error).__name__}: {error}"
            self._closed = True
            _leave_group()

    def close(self) -> None:
        """Driver: let the followers go, leave the group. Safe after an interrupted run.

        Followers waiting for a message are told to leave. Followers caught inside
        a run (the driver was interrupted or failed mid-run) cannot be told, so
        local ones are terminated and remote ones leave when the connection closes.
        """
        if self._closed:
            return
        self._closed = True
        with _sigint_ignored():  # a second Ctrl-C must not leave followers behind
            told = False
            if self.is_driver and self._followers_waiting:
                try:
                    _broadcast(None)
                    told = True
                except Exception as error:  # a follower died: nothing to tell it
                    logger.info("closing the session: %s", error)
            if not told:
                for process in self._followers:
                    process.terminate()
            _leave_group()
            for process in self._followers:
                process.join(timeout=60)
                if process.is_alive():  # pragma: no cover - only when a follower hangs
                    process.kill()
                    process.join(timeout=10)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored inside (and in processes started inside: the setting is inherited).

    Only the main thread may change signal handlers; elsewhere nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _leave_group() -> None:
    """Destroy the default process group; a peer that already left is not an error here."""
    try:
        dist.destroy_process_group()
    except Exception as error:
        logger.info("leaving the process group: %s", error)


def _broadcast(message: dict[str, Any] | None) -> dict[str, Any] | None:
    """Rank 0's message on every rank (``None`` closes the session)."""
    box = [message]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _follower_main(
    rank: int, world_size: int, port: int, threads: int | None, timeout: timedelta
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited already; the driver decides
    store = dist.TCPStore("127.0.0.1", port, world_size=world_size, timeout=timeout)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size, timeout=timeout)
    Session(threads=threads).serve()


def start(
    nproc: int | None = None,
    *,
    threads: int | None = 1,
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> Session | None:
    """Join or create the process group lab runs train on; ``None`` when there is one process.

    Args:
        nproc: processes on this machine; this one becomes rank 0 and
            spawns ``nproc - 1`` followers (gloo, 127.0.0.1). Leave ``None``
            under torchrun, whose environment describes the group.
        threads: torch threads per process for each run.
        timeout: how long a collective waits for a missing rank.

    Raises:
        ValueError: ``nproc`` is not an integer >= 1, or is given under torchrun.
    """
    if nproc is not None and (isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1):
        raise ValueError(f"nproc must be an integer >= 1, got {nproc!r}")
    if launched_by_torchrun():
        if nproc is not None and nproc != 1:
            raise ValueError(
                f"nproc={nproc} spawns processes itself, but this process was launched by "
                "torchrun (RANK/WORLD_SIZE are set); choose the process count with torchrun's "
                "--nproc-per-node instead"
            )
        if int(os.environ["WORLD_SIZE"]) == 1:
            return None
        if not dist.is_initialized():
            # Lab runs train on the CPU; gloo is torch's CPU backend.
            dist.init_process_group("gloo", init_method="env://", timeout=timeout)
        return Session(threads=threads)
    if nproc is None or nproc == 1:
        return None
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed; nproc must be 1")
    # This process hosts the rendezvous store on a port the OS picks, so no
    # other program can take the port between choosing and binding it.
    store = dist.TCPStore(
        "127.0.0.1", 0, world_size=nproc, is_master=True, timeout=timeout, wait_for_workers=False
    )
    port = store.port
    context = mp.get_context("spawn")
    followers = [
        context.Process(
            target=_follower_main,
            args=(rank, nproc, port, threads, timeout),
            daemon=True,
            name=f"optlab-rank{rank}",
        )
        for rank in range(1, nproc)
    ]
    with _sigint_ignored():  # followers inherit it: a Ctrl-C while they import is not theirs
        for process in followers:
            process.start()
    try:
        dist.init_process_group("gloo", store=store, rank=0, world_size=nproc, timeout=timeout)
    except BaseException:
        for process in followers:
            process.terminate()
        raise
    return Session(followers, threads=threads)
