"""The one training loop: :func:`train` turns a :class:`RunSpec` into a :class:`RunResult`.

Every task runs through the same loop::

    run = TrainingRun(spec)            # task, model, data, optimizer, schedule
    for epoch in range(run.epochs):
        for inputs, targets in run.batches(epoch):
            run.step(inputs, targets)  # schedule -> forward -> backward -> optimizer step
            ... evaluate when the task's schedule says so ...

What it guarantees:

- Deterministic: the same spec gives the same numbers (in the same
  process set-up: same thread count, same device). Model initialisation
  draws from ``torch.manual_seed(spec.seed)`` and the data order (and any
  augmentation) from a ``torch.Generator`` seeded with ``spec.seed``; the
  caller's global random state is left as it was.
- History: one row per evaluation, before the first step, then every
  epoch (or every ``task.eval_every`` examples), and after the last step.
  A row holds ``epoch`` (fractional: steps / steps per epoch), ``step``,
  ``examples``, ``lr`` (of the first param group, for the latest step),
  ``train_loss`` (mean of the training batches' losses since the previous
  row; in the first row, the initial model's loss on the whole training
  set), ``valid_loss`` and ``valid_metric`` (on the task's validation data,
  or its whole training set when it holds none out: what tuning selects
  on), ``test_loss`` and ``metric`` (on the test data: what tables report)
  and ``wall_time`` (training seconds so far, evaluation excluded).
- Evaluation point: an optimizer with ``eval()`` and ``train()`` methods
  (Schedule-Free's, which trains at one point and is evaluated at another)
  is switched to ``eval()`` for every evaluation and back to ``train()``
  after (:func:`evaluation_point`).
- Divergence: a non-finite training, validation or test loss stops the run
  with status ``"diverged"``; the history up to and including that point is kept.
- Threads: ``threads=``, else the ``OPTLAB_NUM_THREADS`` environment
  variable, else the task's ``threads`` (1 for the small built-in tasks;
  torch's current setting for MNIST and CIFAR-10) set torch's intra-op
  thread count for the run, restored afterwards. Floating-point reductions
  can depend on the thread count, so runs are identical only at the same
  count (parallel study workers use 1 each).
- Progress: a tqdm bar on stderr when stderr is a terminal (``progress=None``),
  none when ``progress=False``, or a callback receiving a
  :class:`ProgressUpdate` after every evaluation.

Tasks that are not "one model, one batch loss" plug into the same loop
through the hooks of :class:`~optlab.lab.tasks.Problem`: a language model's
``forward`` carries its recurrent state between windows and its
``batch_order`` keeps the windows of each text stream consecutive (truncated
BPTT); ``clip_grad_norm`` clips before each step; a GAN names the networks
that get an optimizer each (``optimized``, all built from the spec's
optimizer and hyper-parameters, all on the schedule) and supplies its own
``train_step``; ``measure`` replaces the evaluation and may add diagnostics
(extra keys of the history rows, e.g. ``modes``).

Distributed training wraps rather than rewrites this loop: a subclass of
:class:`TrainingRun` may replace ``run.model`` with a wrapper (e.g.
``DistributedDataParallel(run.module)``) before :meth:`TrainingRun.run`,
override :meth:`TrainingRun.shard_batch` to keep this rank's share of each
global batch, and set ``is_main`` so only one process reports progress.
Evaluation always uses the unwrapped ``run.module``.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..optim import create_optimizer
from .diagnostics import step_size_row
from .runs import RunResult, RunSpec
from .schedules import make_schedule
from .tasks import Problem, Task, evaluate, evaluate_metrics, get_task, measure_part

__all__ = [
    "THREADS_ENV",
    "ProgressUpdate",
    "TrainingRun",
    "batch_indices",
    "evaluation_point",
    "num_threads",
    "resolve_schedule",
    "train",
]

#: Environment variable that sets the thread count of every run.
THREADS_ENV = "OPTLAB_NUM_THREADS"


@dataclass(frozen=True)
class ProgressUpdate:
    """What a progress callback receives after every evaluation.

    Attributes:
        spec: the run.
        step: optimizer steps taken so far.
        total_steps: steps the run will take if it does not diverge.
        row: the history row just recorded.
        done: whether this is the run's last row.
    """

    spec: RunSpec
    step: int
    total_steps: int
    row: dict[str, float]
    done: bool


ProgressCallback = Callable[[ProgressUpdate], None]


# --------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------


def _requested_threads(threads: int | None) -> int | None:
    if threads is None:
        value = os.environ.get(THREADS_ENV, "").strip()
        if not value:
            return None
        try:
            threads = int(value)
        except ValueError:
            raise ValueError(f"{THREADS_ENV} must be a positive integer, got {value!r}") from None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    return threads


@contextlib.contextmanager
def num_threads(threads: int | None) -> Iterator[int]:
    """Run the block with ``threads`` torch threads (``None``: env, else unchanged); restore."""
    previous = torch.get_num_threads()
    wanted = _requested_threads(threads)
    if wanted is not None and wanted != previous:
        torch.set_num_threads(wanted)
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


# --------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------


def batch_indices(
    size: int, batch_size: int, generator: torch.Generator, *, drop_last: bool = False
) -> Iterator[Tensor]:
    """Index tensors of one epoch's batches, in an order drawn from ``generator``."""
    order = torch.randperm(size, generator=generator)
    stop = size - size % batch_size if drop_last else size
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


def _steps_per_epoch(size: int, batch_size: int, drop_last: bool) -> int:
    return size // batch_size if drop_last else math.ceil(size / batch_size)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def _json_safe(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return repr(value)


def resolve_schedule(task: Task, schedule: str | None) -> str:
    """The schedule a run of ``task`` uses when its spec says ``schedule``: the task's
    own default (``Task.schedule``: ``warmup-cosine`` for the Transformer) for ``None``,
    any name as given (so ``"constant"`` is constant on every task)."""
    return task.schedule if schedule is None else schedule


# --------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------


class TrainingRun:
    """One run, set up and ready: model, data, optimizer, schedule, random generator.

    Attributes:
        spec, task, problem: what is trained.
        module: the model being trained (unwrapped; evaluated).
        model: what the forward pass calls; ``module`` unless a distributed
            wrapper replaced it.
        optimizer: built by :func:`optlab.create_optimizer` from ``spec``.
        optimizers: every optimizer of the run by role (``{"model": optimizer}``
            unless the task names several networks, e.g. a GAN's generator and
            discriminator); ``optimizer`` is the first.
        epochs, batch_size, steps_per_epoch, total_steps: the run's size.
        generator: CPU generator of the data order and augmentation.
        is_main: whether this process reports progress (one per run).
    """

    def __init__(self, spec: RunSpec, *, device: torch.device | str | None = None) -> None:
        self.spec = spec
        self.task: Task = get_task(spec.task)
        self.epochs = _positive_int(
            "epochs", self.task.epochs if spec.epochs is None else spec.epochs
        )
        self.batch_size = _positive_int(
            "batch_size", self.task.batch_size if spec.batch_size is None else spec.batch_size
        )
        self.device = torch.device(device or "cpu")
        # Checked before the (possibly slow) build so mistakes fail fast.
        self.task.resolve_options(spec.task_options)
        self.schedule_name = resolve_schedule(self.task, spec.schedule)
        make_schedule(self.schedule_name, 1)

        problem: Problem = self.task.build(spec.seed, spec.data_dir, spec.task_options)
        problem.model.to(self.device)
        problem.train = problem.train.to(self.device)
        problem.test = problem.test.to(self.device)
        if problem.valid is not None:
            problem.valid = problem.valid.to(self.device)
        self.problem = problem
        self.module: nn.Module = problem.model
        self.model: nn.Module = problem.model

        self.steps_per_epoch = _steps_per_epoch(
            len(problem.train), self.batch_size, problem.drop_last
        )
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"batch_size {self.batch_size} is larger than the {len(problem.train)} training "
                f"examples of task {self.task.name!r}, which drops incomplete batches"
            )
        self.total_steps = self.epochs * self.steps_per_epoch
        networks = problem.optimized or {"model": self.module}
        self.optimizers = {
            role: create_optimizer(network, spec.optimizer, **spec.hparams)
            for role, network in networks.items()
        }
        self.optimizer = next(iter(self.optimizers.values()))
        self.schedule = make_schedule(self.schedule_name, self.total_steps)
        self.base_lrs = [
            [float(group["lr"]) for group in optimizer.param_groups]
            for optimizer in self.optimizers.values()
        ]
        self.generator = torch.Generator().manual_seed(spec.seed)
        self.is_main = True
        self.steps_done = 0
        self.examples_seen = 0
        self.lr = self.base_lrs[0][0] * self.schedule(0)

    # -- the pieces a distributed wrapper may override -----------------------

    def batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor | None]]:
        """The global batches of one epoch (augmented when the task augments)."""
        problem = self.problem
        if problem.batch_order is not None:
            order = problem.batch_order(len(problem.train), self.batch_size, self.generator)
        else:
            order = batch_indices(
                len(problem.train), self.batch_size, self.generator, drop_last=problem.drop_last
            )
        for index in order:
            inputs, targets = problem.train.batch(index.to(self.device))
            if problem.augment is not None:
                inputs = problem.augment(inputs, self.generator)
            yield inputs, targets

    def shard_batch(self, inputs: Tensor, targets: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """This process's share of a global batch (all of it when not distributed)."""
        return inputs, targets

    def set_lr(self, step: int) -> float:
        """Set every group's learning rate (of every optimizer) for step ``step``; the first's."""
        factor = self.schedule(step)
        for optimizer, base_lrs in zip(self.optimizers.values(), self.base_lrs, strict=True):
            for group, base_lr in zip(optimizer.param_groups, base_lrs, strict=True):
                lr = base_lr * factor
                if isinstance(group["lr"], Tensor):
                    group["lr"].fill_(lr)
                else:
                    group["lr"] = lr
        return self.base_lrs[0][0] * factor

    def batch_loss(self, loss: Tensor) -> Tensor:
        """The global batch's loss from this process's (detached; the same when not distributed)."""
        return loss.detach()

    def backward(self, loss: Tensor) -> None:
        """Gradients of this process's share of the batch loss."""
        loss.backward()

    def step(self, inputs: Tensor, targets: Tensor | None) -> Tensor:
        """One optimizer step on a global batch; returns the batch loss (detached).

        When the loss is not finite the step is not taken. A task with its own
        ``train_step`` (GANs) steps its optimizers itself.
        """
        self.lr = self.set_lr(self.steps_done)
        global_batch = len(inputs)
        inputs, targets = self.shard_batch(inputs, targets)
        problem = self.problem
        if problem.train_step is not None:
            reported = problem.train_step(
                self.model, self.optimizers, inputs, targets, self.generator
            )
        else:
            self.optimizer.zero_grad(set_to_none=True)
            outputs = (
                self.model(inputs)
                if problem.forward is None
                else problem.forward(self.model, inputs)
            )
            loss = problem.objective(self.model, outputs, targets)
            reported = self.batch_loss(loss)
            if torch.isfinite(reported).all():
                self.backward(loss)
                if problem.clip_grad_norm is not None:
                    nn.utils.clip_grad_norm_(self.module.parameters(), problem.clip_grad_norm)
                self.optimizer.step()
        self.steps_done += 1
        self.examples_seen += global_batch
        return reported

    def evaluate(self) -> dict[str, float]:
        """``valid_loss``, ``valid_metric``, ``test_loss`` and ``metric`` of the current model."""
        return evaluate_metrics(self.problem, self.module)

    def initial_train_loss(self, metrics: dict[str, float]) -> float:
        """The untrained model's loss on the whole training set."""
        if self.problem.measure is not None:
            return measure_part(self.problem, self.module, "train")["loss"]
        if self.problem.train is self.problem.test:
            return metrics["test_loss"]
        if self.problem.valid is None:  # validation is the training objective
            return metrics["valid_loss"]
        return evaluate(self.problem, self.module, self.problem.train)["loss"]

    # -- the loop ------------------------------------------------------------

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run(self, progress: bool | ProgressCallback | None = None) -> RunResult:
        """Train to the end (or to divergence) and return the result."""
        spec, task = self.spec, self.task
        reporter = _Reporter(self, progress)
        history: list[dict[str, float]] = []
        train_seconds = 0.0
        eval_seconds = 0.0
        loss_sum = 0.0
        loss_examples = 0

        def finite(row: dict[str, float]) -> bool:
            return all(math.isfinite(row[key]) for key in ("train_loss", "valid_loss", "test_loss"))

        def record(train_loss: float) -> dict[str, float]:
            nonlocal eval_seconds
            start = time.perf_counter()
            with evaluation_point(self.optimizers.values()):
                metrics = self.evaluate()
                if not history:
                    train_loss = self.initial_train_loss(metrics)
            eval_seconds += time.perf_counter() - start
            row = {
                "epoch": self.steps_done / self.steps_per_epoch,
                "step": self.steps_done,
                "examples": self.examples_seen,
                "lr": self.lr,
                "train_loss": train_loss,
                "valid_loss": metrics["valid_loss"],
                "valid_metric": metrics["valid_metric"],
                "test_loss": metrics["test_loss"],
                "metric": metrics["metric"],
                "wall_time": train_seconds,
                **{key: value for key, value in metrics.items() if key not in _EVALUATED},
                **step_size_row(self.optimizers),
            }
            history.append(row)
            reporter.row(row, done=not finite(row) or self.steps_done == self.total_steps)
            return row

        self.module.train()
        diverged = not finite(record(math.nan))
        for epoch in range(self.epochs):
            if diverged:
                break
            start = time.perf_counter()
            for inputs, targets in self.batches(epoch):
                before = self.examples_seen
                loss = float(self.step(inputs, targets))
                reporter.advance()
                loss_sum += loss * (self.examples_seen - before)
                loss_examples += self.examples_seen - before
                last = self.steps_done == self.total_steps
                due = (
                    task.eval_every is not None
                    and not last
                    and self.examples_seen // task.eval_every != before // task.eval_every
                )
                if math.isfinite(loss) and not due:
                    continue
                self._synchronize()
                train_seconds += time.perf_counter() - start
                diverged = not finite(record(loss_sum / loss_examples))
                loss_sum, loss_examples = 0.0, 0
                if diverged:
                    break
                start = time.perf_counter()
            else:
                self._synchronize()
                train_seconds += time.perf_counter() - start
                if task.eval_every is None or self.steps_done == self.total_steps:
                    diverged = not finite(record(loss_sum / loss_examples))
                    loss_sum, loss_examples = 0.0, 0
        status = "diverged" if diverged else "ok"
        reporter.close()

        epochs_done = self.steps_done / self.steps_per_epoch
        return RunResult(
            spec=spec,
            history=history,
            metric=task.metric,
            higher_is_better=task.higher_is_better,
            status=status,
            seconds_per_epoch=train_seconds / epochs_done if epochs_done else math.nan,
            info=self.info(train_seconds=train_seconds, eval_seconds=eval_seconds),
        )

    def info(self, **timings: float) -> dict[str, Any]:
        """Settings and environment worth keeping with the result."""
        from .. import __version__

        hparams = self._hparams(self.optimizer, self.base_lrs[0][0])
        if len(self.optimizers) > 1:
            roles = {
                role: {
                    "optimizer_class": type(optimizer).__name__,
                    "hparams": self._hparams(optimizer, base_lrs[0]),
                    "parameters": sum(p.numel() for p in self._params(optimizer)),
                }
                for (role, optimizer), base_lrs in zip(
                    self.optimizers.items(), self.base_lrs, strict=True
                )
            }
            extra: dict[str, Any] = {"optimizers": roles}
        else:
            extra = {}
        if self.problem.clip_grad_norm is not None:
            extra["clip_grad_norm"] = self.problem.clip_grad_norm
        return {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "steps": self.steps_done,
            "total_steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "train_examples": len(self.problem.train),
            "valid_examples": len(
                self.problem.train if self.problem.valid is None else self.problem.valid
            ),
            "test_examples": len(self.problem.test),
            "validation": self.task.validation,
            "optimizer_class": type(self.optimizer).__name__,
            "hparams": hparams,
            "task_options": {
                key: _json_safe(value)
                for key, value in self.task.resolve_options(self.spec.task_options).items()
            },
            "parameters": sum(p.numel() for p in self.module.parameters()),
            "schedule": self.schedule_name,
            **extra,
            **(self.problem.info or {}),
            **timings,
            "device": str(self.device),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "optlab": __version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
        }

    @staticmethod
    def _params(optimizer: torch.optim.Optimizer) -> list[Tensor]:
        return [p for group in optimizer.param_groups for p in group["params"]]

    @staticmethod
    def _hparams(optimizer: torch.optim.Optimizer, base_lr: float) -> dict[str, Any]:
        group = optimizer.param_groups[0]
        hparams = {
            key: _json_safe(value)
            for key, value in group.items()
            # The optimizer's options only: not a scheduler's initial_lr, nor the
            # counters an optimizer keeps in its groups (Schedule-Free's k, weight_sum).
            if key in optimizer.defaults and key != "params"
        }
        hparams["lr"] = base_lr
        return hparams


#: What :func:`~optlab.lab.tasks.evaluate_metrics` always returns (the rest are diagnostics).
_EVALUATED = frozenset({"valid_loss", "valid_metric", "test_loss", "metric"})


class _Reporter:
    """Progress for one run: a tqdm bar, a callback, or nothing."""

    def __init__(self, run: TrainingRun, progress: bool | ProgressCallback | None) -> None:
        self._run = run
        self._callback: ProgressCallback | None = None
        self._bar: Any = None
        if not run.is_main or progress is False:
            return
        if callable(progress):
            self._callback = progress
            return
        if progress is True or (progress is None and sys.stderr.isatty()):
            from tqdm.auto import tqdm

            spec = run.spec
            self._bar = tqdm(
                total=run.total_steps,
                desc=f"{spec.task} {spec.optimizer} seed {spec.seed}",
                unit="step",
                leave=False,
                file=sys.stderr,
                dynamic_ncols=True,
            )

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def row(self, row: dict[str, float], done: bool) -> None:
        if self._bar is not None:
            self._bar.set_postfix(
                {
                    "epoch": f"{row['epoch']:.2f}",
                    "train_loss": f"{row['train_loss']:.4g}",
                    f"test_{self._run.task.metric}": f"{row['metric']:.4g}",
                },
                refresh=False,
            )
        if self._callback is not None:
            self._callback(
                ProgressUpdate(
                    self._run.spec, self._run.steps_done, self._run.total_steps, row, done
                )
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@contextlib.contextmanager
def evaluation_point(optimizers: Iterable[torch.optim.Optimizer]) -> Iterator[None]:
    """Within it, the model's parameters are where its optimizers say to evaluate it.

    An optimizer with ``eval()`` and ``train()`` methods (Schedule-Free's,
    :class:`optlab.optim.schedule_free.AdamWScheduleFree`) trains at one point
    and is evaluated at another: ``eval()`` is called on entry and ``train()``
    on exit (also when the evaluation raises). Other optimizers are left alone.
    """
    switching = [
        optimizer
        for optimizer in optimizers
        if callable(getattr(optimizer, "eval", None))
        and callable(getattr(optimizer, "train", None))
    ]
    for optimizer in switching:
        optimizer.eval()
    try:
        yield
    finally:
        for optimizer in switching:
            optimizer.train()


@contextlib.contextmanager
def _deterministic(device: torch.device) -> Iterator[None]:
    """cuDNN's deterministic kernels for the run on CUDA (CPU kernels already are)."""
    if device.type != "cuda":
        yield
        return
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def train(
    spec: RunSpec,
    *,
    progress: bool | ProgressCallback | None = None,
    threads: int | None = None,
    device: torch.device | str | None = None,
    run_class: type[TrainingRun] = TrainingRun,
) -> RunResult:
    """Train ``spec`` and return its result (see the module docstring for the guarantees).

    Args:
        spec: the run.
        progress: ``None``: a progress bar when stderr is a terminal; ``False``:
            silent; ``True``: always a bar; a callable: called with a
            :class:`ProgressUpdate` after every evaluation.
        threads: torch threads for the run; ``None`` reads ``OPTLAB_NUM_THREADS``,
            else uses the task's ``threads`` (see :class:`~optlab.lab.tasks.Task`).
        device: where to train (default CPU).
        run_class: the :class:`TrainingRun` (sub)class to build, e.g.
            :class:`optlab.lab.distributed.DistributedTrainingRun` for DDP.

    Raises:
        ValueError: unknown task, optimizer, schedule or option; a bad
            hyper-parameter, epoch count or batch size.
        optlab.lab.data.DatasetNotFoundError / DatasetFormatError: a
            file-backed task's files are missing or malformed.
    """
    device = torch.device(device or "cpu")
    if _requested_threads(threads) is None:
        threads = get_task(spec.task).threads
    # Forking the accelerator's generator too keeps the caller's CUDA random state intact.
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    with num_threads(threads), _deterministic(device), torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(spec.seed)
        run = run_class(spec, device=device)
        return run.run(progress)
