"""Studies on a Ray cluster (``--executor ray``): every run a Ray task, the driver alone writes.

:class:`RayRunner` is an executor like the local pool
(:class:`optlab.lab.execution.Runner`): :func:`~optlab.lab.execution.execute`
and the tuners hand it specs and get each result back as soon as it exists,
so the rest of the lab does not know where a run trained.

- **Where**: ``address=None`` starts a local Ray instance (on loopback, no
  dashboard, a 200 MB object store); ``"auto"`` joins the cluster this
  machine is part of (``RAY_ADDRESS`` or the one ``ray start`` began here);
  ``"HOST:6379"`` a cluster's head (the driver runs on a node of it);
  ``"ray://HOST:10001"`` a head's Ray Client server (the driver may run
  anywhere). Every node needs optlab installed with the same versions
  (``pip install 'optlab[ray]'``).
- **What a run asks for**: one CPU (``cpus_per_run``), or ``nproc`` CPUs when each
  run trains with DDP over ``nproc`` processes of its node; ``gpus_per_run``
  GPUs (fractions share one) and then trains on CUDA.
- **The store**: tasks return the result as data; the driver writes every
  record (atomic, in completion order), holds the directory's lock, asks and
  tells Optuna. Killing the driver loses only the runs in flight: running the
  same command again resumes with every finished run kept.
- **Failures**: a task whose worker process died or whose node went away is
  retried by Ray up to ``max_retries`` times (default 3), then handed to
  ``on_failure`` (recorded in ``failed/`` with the reason; the study stops
  with :class:`~optlab.lab.execution.RunsFailed` after the stage's other runs).
  An exception raised by the run itself is not retried (it would raise
  again): it is raised in the driver, as with ``--jobs``.

Ray is imported only here and only when a RayRunner connects, so optlab
works without it; :func:`require_ray` says how to install it.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

from optlab.lab.execution import BaseRunner, Failure, RunsFailed, Trainer, one_thread
from optlab.lab.runs import RunResult, RunSpec

__all__ = [
    "DEFAULT_RETRIES",
    "INSTALL_HINT",
    "LOCAL_OBJECT_STORE_BYTES",
    "RayRunner",
    "RayUnavailable",
    "require_ray",
]

INSTALL_HINT = "pip install 'optlab[ray]'"
#: How many times Ray retries a run whose worker died, before it is recorded as failed.
DEFAULT_RETRIES = 3
#: Object store of a local instance: results are small, the default (30 % of RAM) is not.
LOCAL_OBJECT_STORE_BYTES = 200 * 1024**2


class RayUnavailable(RuntimeError):
    """Ray is not installed (the message says how to install it)."""


def require_ray() -> Any:
    """The ``ray`` module, or :class:`RayUnavailable` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise RayUnavailable(
            f"--executor ray needs Ray, which is not installed here: {INSTALL_HINT}"
        ) from None
    return ray


def _probe(address: str, timeout: float = 10.0) -> None:
    """``ConnectionError`` at once when nothing listens at the address's ``HOST:PORT``
    (Ray itself retries an absent head for minutes). ``auto`` without ``RAY_ADDRESS``
    is left to Ray."""
    text = os.environ.get("RAY_ADDRESS", "") if address == "auto" else address
    text = text.removeprefix("ray://")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as error:
        raise ConnectionError(
            f"cannot reach Ray at {address}: nothing answers at {host}:{port} "
            f"({error.strerror or error}); is the head node up (ray start --head)?"
        ) from None


# ------------------------------------------------------------------ on a worker

_SESSION: Any = None  # the DDP session of this worker process (nproc > 1), kept between runs


def _train_nproc(spec: RunSpec, nproc: int) -> RunResult:
    """Train ``spec`` with DDP over ``nproc`` processes of this node (the Ray worker is
    rank 0; its followers are spawned once and kept for the worker's next runs)."""
    global _SESSION
    from optlab.lab import distributed

    if _SESSION is None or _SESSION.world_size != nproc:
        if _SESSION is not None:
            _SESSION.close()
        _SESSION = distributed.start(nproc)
    try:
        return _SESSION.train(spec)
    except BaseException:
        _SESSION.close()
        _SESSION = None
        raise


def _train_task(
    trainer: Trainer | None, spec_data: dict[str, Any], gpus: float, nproc: int
) -> dict[str, Any]:
    """The Ray task: one run, its result as plain data (the driver stores it)."""
    spec = RunSpec.from_dict(spec_data)
    if trainer is not None:
        with one_thread():
            result = trainer(spec)
    elif nproc > 1:
        result = _train_nproc(spec, nproc)
    else:
        from optlab.lab.train import train

        device = None
        if gpus:
            import torch

            if not torch.cuda.is_available():
                raise RuntimeError(
                    f"--gpus-per-run {gpus:g}: Ray placed the run on a node where torch sees "
                    "no CUDA device (a CPU build of torch?)"
                )
            device = "cuda"
        result = train(spec, progress=False, threads=1, device=device)
    return result.to_dict()


# ------------------------------------------------------------------ the driver


def _reason(error: BaseException, tries: int) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    return f"{type(error).__name__} after {tries} tries: {text}"[:500]


class RayRunner(BaseRunner):
    """Trains RunSpecs as Ray tasks; results come back to this process (the driver).

    Args:
        address: ``None`` (a local instance), ``"auto"``, ``"HOST:PORT"`` or
            ``"ray://HOST:10001"`` (see the module docstring).
        trainer: ``RunSpec -> RunResult`` run on the workers (pickled with
            cloudpickle); :func:`optlab.lab.train.train` by default.
        gpus_per_run: GPUs each run asks Ray for (0: none, trains on the CPU).
        nproc: processes each run trains on with DDP (on one node); it asks for
            as many CPUs.
        max_retries: retries of a run whose worker or node died.
        num_cpus: CPUs of a local instance (default: this machine's).
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        trainer: Trainer | None = None,
        gpus_per_run: float = 0.0,
        nproc: int | None = None,
        max_retries: int = DEFAULT_RETRIES,
        num_cpus: int | None = None,
    ) -> None:
        if gpus_per_run < 0:
            raise ValueError(f"gpus_per_run must be >= 0, got {gpus_per_run!r}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries!r}")
        self.address = address
        self.trainer = trainer
        self.gpus_per_run = float(gpus_per_run)
        self.nproc = nproc or 1
        self.max_retries = max_retries
        self.num_cpus = num_cpus
        self._ray: Any = None
        self._owned = False

    # ------------------------------------------------------------ connecting

    def connect(self) -> RayRunner:
        """Start or join Ray (once); :class:`RayUnavailable` without Ray, ``ConnectionError``
        when the cluster cannot be reached."""
        if self._ray is not None:
            return self
        ray = require_ray()
        if not ray.is_initialized():
            options: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
            if self.address is None:
                # A local instance stays on loopback (Ray would advertise the machine's
                # address) and small; no usage statistics are sent from it.
                os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
                options.update(
                    address="local",
                    include_dashboard=False,
                    num_cpus=self.num_cpus,
                    object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                )
                if sys.platform.startswith("linux"):
                    options["_node_ip_address"] = "127.0.0.2"
            else:
                _probe(self.address)
                options["address"] = self.address
            try:
                ray.init(**options)
            except (ConnectionError, TimeoutError, ValueError, RuntimeError) as error:
                where = self.address or "a local instance"
                first = (str(error).strip().splitlines() or [type(error).__name__])[0]
                raise ConnectionError(f"cannot start or reach Ray at {where}: {first}") from None
            self._owned = True
        self._ray = ray
        return self

    def __enter__(self) -> RayRunner:
        return self.connect()

    def __exit__(self, *exc_info: object) -> None:
        if self._ray is not None and self._owned:
            self._ray.shutdown()
        self._ray = None
        self._owned = False

    def describe(self) -> dict[str, Any]:
        self.connect()
        ray = self._ray
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        resources = ray.cluster_resources()
        return {
            "executor": "ray",
            "address": self.address or "local instance",
            "nodes": len(nodes),
            "cpus": int(resources.get("CPU", 0)),
            "gpus": int(resources.get("GPU", 0)),
            "cpus_per_run": self.nproc,
            "gpus_per_run": self.gpus_per_run,
            "max_retries": self.max_retries,
            "ray": ray.__version__,
        }

    # ------------------------------------------------------------ running

    def run(
        self,
        specs: Sequence[RunSpec],
        on_result: Callable[[RunResult], None],
        on_failure: Failure | None = None,
    ) -> None:
        """See :meth:`~optlab.lab.execution.BaseRunner.run`. Every spec is submitted at
        once (Ray queues what the cluster cannot start yet); results are stored as
        they arrive. When a run raises, the runs not finished yet are cancelled and
        the run's own exception is raised."""
        if not specs:
            return
        self.connect()
        ray = self._ray
        from ray.exceptions import RayError, RayTaskError, TaskCancelledError

        task = ray.remote(_train_task).options(
            num_cpus=self.nproc,
            num_gpus=self.gpus_per_run,
            max_retries=self.max_retries,
            retry_exceptions=False,
            name="optlab-run",
        )
        trainer = ray.put(self.trainer) if self.trainer is not None else None
        spec_of = {
            task.remote(trainer, spec.to_dict(), self.gpus_per_run, self.nproc): spec
            for spec in specs
        }
        pending = list(spec_of)
        error: BaseException | None = None
        lost: list[tuple[RunSpec, str]] = []
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    spec = spec_of[ref]
                    try:
                        data = ray.get(ref)
                    except TaskCancelledError:
                        continue
                    except RayTaskError as raised:  # the run itself raised
                        if error is None:
                            cause = raised.cause
                            error = cause if isinstance(cause, BaseException) else raised
                            error.__cause__ = raised
                            for other in pending:
                                ray.cancel(other)
                        continue
                    except RayError as died:  # its worker or node died on every try
                        reason = _reason(died, self.max_retries + 1)
                        if on_failure is None:
                            lost.append((spec, reason))
                        else:
                            on_failure(spec, reason)
                        continue
                    on_result(RunResult.from_dict(data))
        except BaseException:
            for other in pending:
                ray.cancel(other, force=True)  # Ctrl-C: stop the runs in flight too
            raise
        if error is not None:
            raise error
        if lost:
            raise RunsFailed(lost)
