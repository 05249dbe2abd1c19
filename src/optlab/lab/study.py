"""Studies: optimizers x hyper-parameters x seeds, tuned the DeepOBS way, resumable.

A :class:`StudySpec` names one task, the optimizers to compare, the
hyper-parameters fixed for all of them (``--lr``, ``--set``), the seeds and,
optionally, what to tune. :func:`run_study` expands it into
:class:`~optlab.lab.runs.RunSpec` s, trains those the store does not hold yet
and writes each result as soon as it finishes; running the same study again
resumes where it stopped. :func:`resolve_study` reads the same plan back from
the store without training (what ``optlab report`` uses).

Tuning follows the DeepOBS protocol (Schneider et al., ICLR 2019):

1. per optimizer, train once (first seed) at every learning rate of a log
   grid (``tuner="grid"``), or at ``trials`` learning rates proposed by
   Optuna's TPE sampler on the grid's range (``tuner="optuna"``, its study
   kept in ``optuna.sqlite3`` in the results directory);
2. pick the run with the best *final validation* metric (``valid_metric`` of
   the last history row: a held-out part of the training data, or the
   training objective for tasks that hold nothing out; never the test set).
   The task says whether higher is better; a diverged run or a non-finite
   metric always loses; ties go to the smaller learning rate;
3. rerun the chosen setting with every seed and report their *test* metrics.
   The chosen point's first-seed run is the very same RunSpec as its tuning
   run, so it is reused.

Runs may execute in worker processes (``jobs > 1``; spawn start method). Every
run, in a worker or not, trains with one torch thread, so results do not
depend on ``jobs``; the parent process alone writes records, in completion
order.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import math
import multiprocessing
import os
import platform
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any

from optlab.lab.runs import RunResult, RunSpec
from optlab.lab.store import Store, StoreError, finite

__all__ = [
    "CORE_OPTIMIZERS",
    "DEFAULT_LR_GRID",
    "OptimizerOutcome",
    "StudyOutcome",
    "StudySpec",
    "default_study",
    "environment",
    "resolve_study",
    "run_study",
    "select_best",
    "validate_study",
]

#: The twelve optimizers of the default study, in catalogue order.
CORE_OPTIMIZERS: tuple[str, ...] = (
    "sgd",
    "momentum",
    "nag",
    "adagrad",
    "adadelta",
    "rmsprop",
    "adam",
    "adamw",
    "amsgrad",
    "yogi",
    "eadam",
    "adabelief",
)

#: Learning rates tried by ``tune="lr"``: 1e-4 ... 10 in half-decade steps (11 points).
#: One absolute grid for every optimizer, as in DeepOBS, so that no method is
#: favoured by where its grid is centred.
DEFAULT_LR_GRID: tuple[float, ...] = tuple(float(f"{10 ** (k / 2):.6g}") for k in range(-8, 3))

TUNERS = ("grid", "optuna")
TUNABLE = ("lr",)
OPTUNA_FILE = "optuna.sqlite3"

#: ``progress(stage, done, total, result)``: called in the parent after each run
#: of a stage ("tune" or "final") is stored, and once with ``result=None`` when
#: a stage starts (``done`` = runs already in the store).
Progress = Callable[[str, int, int, "RunResult | None"], None]
Trainer = Callable[[RunSpec], RunResult]


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(sorted((mapping or {}).items())))


@dataclass(frozen=True)
class StudySpec:
    """One study: a task, optimizers, fixed hyper-parameters, seeds, optional tuning.

    Attributes:
        task: task registry name.
        optimizers: optimizer registry names.
        hparams: hyper-parameters fixed for every optimizer (the rest take each
            optimizer's defaults; ``lr`` is tuned instead when ``tune="lr"``).
        seeds: the seeds of the final runs; tuning uses the first.
        epochs: epochs per run; ``None`` means the task's default.
        schedule: learning-rate schedule name.
        batch_size: ``None`` means the task's default.
        data_dir: data of file-backed tasks.
        tune: ``None`` or ``"lr"``.
        tuner: ``"grid"`` or ``"optuna"``.
        lr_grid: the grid (``tuner="grid"``) or, by its smallest and largest
            value, the log-uniform range Optuna samples from.
        trials: Optuna trials per optimizer.
    """

    task: str
    optimizers: tuple[str, ...]
    hparams: Mapping[str, Any] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int | None = None
    schedule: str = "constant"
    batch_size: int | None = None
    data_dir: str | None = None
    tune: str | None = None
    tuner: str = "grid"
    lr_grid: tuple[float, ...] = DEFAULT_LR_GRID
    trials: int = 20

    def __post_init__(self) -> None:
        object.__setattr__(self, "optimizers", tuple(self.optimizers))
        object.__setattr__(self, "seeds", tuple(self.seeds))
        object.__setattr__(self, "lr_grid", tuple(sorted(float(lr) for lr in self.lr_grid)))
        object.__setattr__(self, "hparams", _frozen(self.hparams))

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["hparams"] = dict(self.hparams)
        return json.loads(json.dumps(data, default=list))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StudySpec:
        data = dict(data)
        data["hparams"] = {
            name: tuple(value) if isinstance(value, list) else value
            for name, value in dict(data.get("hparams") or {}).items()
        }
        return cls(**data)

    def run_spec(self, optimizer: str, hparams: Mapping[str, Any], seed: int) -> RunSpec:
        return RunSpec(
            task=self.task,
            optimizer=optimizer,
            hparams=hparams,
            seed=seed,
            epochs=self.epochs,
            schedule=self.schedule,
            batch_size=self.batch_size,
            data_dir=self.data_dir,
        )

    def final_specs(self, optimizer: str, hparams: Mapping[str, Any]) -> list[RunSpec]:
        return [self.run_spec(optimizer, hparams, seed) for seed in self.seeds]

    def grid_specs(self, optimizer: str) -> list[RunSpec]:
        """The tuning grid of ``optimizer``, smallest learning rate first."""
        return [
            self.run_spec(optimizer, {**self.hparams, "lr": lr}, self.seeds[0])
            for lr in self.lr_grid
        ]


def default_study() -> StudySpec:
    """The built-in study of ``optlab compare`` without arguments and ``make demo``:
    digits-mlp, the twelve core optimizers with their defaults, three seeds."""
    return StudySpec(task="digits-mlp", optimizers=CORE_OPTIMIZERS, seeds=(0, 1, 2))


# ------------------------------------------------------------------ checking


def validate_study(study: StudySpec) -> StudySpec:
    """Check everything that can be checked before training; return the study with
    canonical (lower-case registry) optimizer names.

    Raises:
        ValueError: one line saying what is wrong, the value, and what is allowed.
    """

    from optlab.lab import tasks
    from optlab.optim.registry import get_spec

    tasks.get_task(study.task)  # raises ValueError naming the valid tasks
    if not study.optimizers:
        raise ValueError("optimizers must name at least one optimizer")
    names = [get_spec(name).name for name in study.optimizers]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"optimizers must not repeat, got {', '.join(duplicates)} twice")
    if not study.seeds:
        raise ValueError("seeds must hold at least one seed")
    for seed in study.seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seeds must be integers >= 0, got {seed!r}")
    if len(set(study.seeds)) != len(study.seeds):
        raise ValueError(f"seeds must not repeat, got {list(study.seeds)}")
    for name, value in (("epochs", study.epochs), ("batch_size", study.batch_size)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    _check_schedule(study.schedule)
    if study.tune is not None:
        if study.tune not in TUNABLE:
            raise ValueError(f"tune must be one of {', '.join(TUNABLE)}, got {study.tune!r}")
        if "lr" in study.hparams:
            raise ValueError(
                f"lr is both fixed (lr={study.hparams['lr']!r}) and tuned; give one of them"
            )
    if study.tuner not in TUNERS:
        raise ValueError(f"tuner must be one of {', '.join(TUNERS)}, got {study.tuner!r}")
    if not study.lr_grid or not all(finite(lr) and lr > 0 for lr in study.lr_grid):
        raise ValueError(f"lr_grid must hold finite learning rates > 0, got {list(study.lr_grid)}")
    if (
        study.tune
        and study.tuner == "optuna"
        and (len(study.lr_grid) < 2 or study.lr_grid[0] == study.lr_grid[-1])
    ):
        raise ValueError(
            f"the optuna tuner needs an lr range (two different values), got {list(study.lr_grid)}"
        )
    if isinstance(study.trials, bool) or not isinstance(study.trials, int) or study.trials < 1:
        raise ValueError(f"trials must be an integer >= 1, got {study.trials!r}")
    lrs = [study.lr_grid[0], study.lr_grid[-1]] if study.tune else [None]
    for name in names:
        for lr in lrs:
            hparams = dict(study.hparams) | ({"lr": lr} if lr is not None else {})
            _probe_optimizer(name, hparams)
    _check_run_size(study)
    return replace(study, optimizers=tuple(names))


def _probe_optimizer(name: str, hparams: Mapping[str, Any]) -> None:
    """Build the optimizer and take one step on a tiny tensor: options that are only
    checked when stepping (e.g. an implementation this machine lacks) fail here, not
    in the middle of a study."""
    import torch

    from optlab.optim.registry import create_optimizer

    probe = torch.zeros(2, requires_grad=True)
    try:
        optimizer = create_optimizer([probe], name, **hparams)
        probe.grad = torch.ones(2)
        optimizer.step()
    except (ValueError, TypeError, RuntimeError) as error:
        message = " ".join(str(error).split()) or type(error).__name__
        raise ValueError(f"{name}: {message}") from None


def _check_run_size(study: StudySpec) -> None:
    """Epochs, batch size and schedule against the task's training data (built once, cached).

    A file-backed task whose files are missing raises
    :class:`~optlab.lab.data.DatasetNotFoundError` here, before anything is written.
    """
    from optlab.lab import tasks

    task = tasks.get_task(study.task)
    if task.needs_data_dir and not study.data_dir:
        raise ValueError(
            f"task {study.task} reads its data from files: give data_dir (--data-dir on "
            "the command line); see optlab tasks"
        )
    problem = task.build(study.seeds[0], study.data_dir)
    size = len(problem.train)
    batch_size = task.batch_size if study.batch_size is None else study.batch_size
    if problem.drop_last and batch_size > size:
        raise ValueError(
            f"batch_size must be at most {size} (the training examples of task {study.task}, "
            f"which drops incomplete batches), got {batch_size}"
        )


def _check_schedule(schedule: str) -> None:
    from optlab.lab.schedules import list_schedules

    names = list_schedules()
    if schedule not in names:
        raise ValueError(f"unknown schedule {schedule!r}; valid schedules: {', '.join(names)}")


# ----------------------------------------------------------------- selecting


#: The history column tuning selects on.
SELECTION_COLUMN = "valid_metric"


def final_metric(result: RunResult, column: str = "metric") -> float:
    """The run's last value of ``column`` (default: the test metric), NaN when it has none."""
    value = result.final.get(column, math.nan)
    return float(value) if finite(value) else math.nan


def selection_metric(result: RunResult) -> float:
    """What tuning compares: the run's final validation metric, NaN when it has none."""
    return final_metric(result, SELECTION_COLUMN)


def usable(result: RunResult) -> bool:
    """A run that can win a tuning comparison: not diverged, finite final validation metric."""
    return result.status == "ok" and finite(selection_metric(result))


def select_best(results: Sequence[RunResult]) -> RunResult | None:
    """The run with the best final validation metric; ``None`` when every run diverged.

    Direction comes from each result's ``higher_is_better``. Diverged runs and
    non-finite metrics lose. Ties go to the smaller learning rate, then to the
    earlier run in ``results``.
    """
    best: RunResult | None = None
    best_key: tuple[float, float] | None = None
    for result in results:
        if not usable(result):
            continue
        value = selection_metric(result)
        score = -value if result.higher_is_better else value
        key = (score, float(result.spec.hparams.get("lr", 0.0)))
        if best_key is None or key < best_key:
            best, best_key = result, key
    return best


# ------------------------------------------------------------------ outcomes


@dataclass
class OptimizerOutcome:
    """One optimizer's part of a study, as far as the store holds it.

    Attributes:
        optimizer: registry name.
        hparams: the explicit hyper-parameters of the final runs (fixed ones
            plus the chosen ``lr`` when tuned); ``None`` while tuning is incomplete
            or when every tuning run diverged.
        tuning: the tuning runs found (grid: smallest lr first; optuna: trial order).
        runs: the final runs found, in seed order.
        missing: final runs not in the store yet (plus tuning runs, before a choice).
        note: why there is no result, when there is none.
    """

    optimizer: str
    hparams: dict[str, Any] | None
    tuning: list[RunResult] = field(default_factory=list)
    runs: list[RunResult] = field(default_factory=list)
    missing: int = 0
    note: str = ""


@dataclass
class StudyOutcome:
    study: StudySpec
    optimizers: list[OptimizerOutcome]

    @property
    def complete(self) -> bool:
        return all(outcome.missing == 0 for outcome in self.optimizers)

    def results(self) -> list[RunResult]:
        return [run for outcome in self.optimizers for run in outcome.runs]


def _lookup(store: Store, specs: Iterable[RunSpec]) -> tuple[list[RunResult], int]:
    found, missing = [], 0
    for spec in specs:
        result = store.get(spec)
        if result is None:
            missing += 1
        else:
            found.append(result)
    return found, missing


def _outcome(
    study: StudySpec, store: Store, optimizer: str, tuning: list[RunResult], tuning_missing: int
) -> OptimizerOutcome:
    if not study.tune:
        hparams: dict[str, Any] | None = dict(study.hparams)
        note = ""
    elif tuning_missing:
        hparams, note = None, f"tuning incomplete ({tuning_missing} runs missing)"
    else:
        best = select_best(tuning)
        hparams = dict(best.spec.hparams) if best is not None else None
        note = "" if best is not None else "diverged at every learning rate tried"
    if hparams is None:
        missing = tuning_missing + (len(study.seeds) if tuning_missing else 0)
        return OptimizerOutcome(optimizer, None, tuning, [], missing, note)
    runs, missing = _lookup(store, study.final_specs(optimizer, hparams))
    return OptimizerOutcome(optimizer, hparams, tuning, runs, missing, note)


def resolve_study(study: StudySpec, store: Store) -> StudyOutcome:
    """What ``store`` holds of ``study``: tuning runs, the choice, the final runs. Trains nothing."""
    outcomes = []
    for optimizer in study.optimizers:
        if study.tune and study.tuner == "optuna":
            tuning, tuning_missing = _optuna_results(study, store, optimizer)
        elif study.tune:
            tuning, tuning_missing = _lookup(store, study.grid_specs(optimizer))
        else:
            tuning, tuning_missing = [], 0
        outcomes.append(_outcome(study, store, optimizer, tuning, tuning_missing))
    return StudyOutcome(study, outcomes)


# ----------------------------------------------------------------- executing


def _set_one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
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


class _Runner:
    """Trains RunSpecs in this process or in a pool of spawned workers; the caller stores."""

    def __init__(self, jobs: int, trainer: Trainer | None) -> None:
        self.jobs = jobs
        self.trainer = trainer
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> _Runner:
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
                with _one_thread():
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


def _execute(
    runner: _Runner,
    store: Store,
    stage: str,
    specs: Iterable[RunSpec],
    progress: Progress | None,
) -> None:
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


# -------------------------------------------------------------------- optuna


def _optuna_name(study: StudySpec, optimizer: str) -> str:
    # Everything that shapes the objective, but not the number of trials: asking
    # for more trials later continues the same Optuna study.
    basis = study.run_spec(optimizer, study.hparams, study.seeds[0]).to_dict()
    basis["lr_range"] = [study.lr_grid[0], study.lr_grid[-1]]
    digest = hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:12]
    return f"{study.task}/{optimizer}/{digest}"


def _optuna_storage(store: Store) -> str:
    return f"sqlite:///{(store.root / OPTUNA_FILE).resolve()}"


def _optuna_trials(study: StudySpec, store: Store, optimizer: str) -> list[Any]:
    """The Optuna study's trials in trial order, ``[]`` when it does not exist yet."""
    if not (store.root / OPTUNA_FILE).exists():
        return []
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        optuna_study = optuna.load_study(
            study_name=_optuna_name(study, optimizer), storage=_optuna_storage(store)
        )
    except KeyError:
        return []
    return sorted(optuna_study.get_trials(deepcopy=False), key=lambda trial: trial.number)


def _optuna_results(study: StudySpec, store: Store, optimizer: str) -> tuple[list[RunResult], int]:
    trials = [t for t in _optuna_trials(study, store, optimizer) if "lr" in t.params]
    specs = [
        study.run_spec(optimizer, {**study.hparams, "lr": t.params["lr"]}, study.seeds[0])
        for t in trials[: study.trials]
    ]
    found, missing = _lookup(store, specs)
    return found, missing + max(0, study.trials - len(trials))


def _tune_optuna(
    study: StudySpec, store: Store, runner: _Runner, progress: Progress | None
) -> None:
    """TPE over log(lr), one trial per optimizer per round, the round's runs in parallel.

    Trial ``n`` of an optimizer is asked with a sampler seeded by ``n``, so the
    proposals depend only on the trials before it: a resumed study proposes
    exactly what an uninterrupted one would. The seeds do not depend on the
    optimizer, so the random start-up trials try the same learning rates for every
    optimizer (a common starting set; TPE then follows each one's results). A trial
    asked but never told (the process was killed) is trained again, or told from its
    stored record.
    """
    import optuna

    from optlab.lab.tasks import get_task

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    higher_is_better = bool(get_task(study.task).higher_is_better)
    studies = {
        optimizer: optuna.create_study(
            study_name=_optuna_name(study, optimizer),
            storage=_optuna_storage(store),
            direction="maximize" if higher_is_better else "minimize",
            load_if_exists=True,
        )
        for optimizer in study.optimizers
    }
    total = len(study.optimizers) * study.trials
    while True:
        asked = _ask_round(study, studies)
        if not asked:
            return
        tell = _Teller(asked, worst=-math.inf if higher_is_better else math.inf)
        if progress:
            progress("tune", _finished_trials(study, studies), total, None)
        todo = []
        for spec, _ in asked.values():
            stored = store.get(spec)
            if stored is None:
                todo.append(spec)
            else:
                tell(stored)

        def on_result(result: RunResult, tell: _Teller = tell) -> None:
            store.put(result)
            tell(result)
            if progress:
                progress("tune", _finished_trials(study, studies), total, result)

        runner.run(todo, on_result)


def _finished_trials(study: StudySpec, studies: Mapping[str, Any]) -> int:
    return sum(
        min(study.trials, sum(t.state.is_finished() for t in s.get_trials(deepcopy=False)))
        for s in studies.values()
    )


def _ask_round(
    study: StudySpec, studies: Mapping[str, Any]
) -> dict[str, tuple[RunSpec, list[tuple[Any, int]]]]:
    """The next trial of every optimizer that needs one: ``{spec key: (spec, [(study, n)])}``."""
    import optuna
    from optuna.trial import TrialState

    low, high = study.lr_grid[0], study.lr_grid[-1]
    asked: dict[str, tuple[RunSpec, list[tuple[Any, int]]]] = {}
    for optimizer, optuna_study in studies.items():
        trials = sorted(optuna_study.get_trials(deepcopy=False), key=lambda t: t.number)
        stale = [t for t in trials if t.state == TrialState.RUNNING]
        if stale:
            trial_number, lr = stale[0].number, stale[0].params["lr"]
        elif len(trials) < study.trials:
            optuna_study.sampler = optuna.samplers.TPESampler(
                seed=len(trials), n_startup_trials=max(3, min(10, study.trials // 3))
            )
            trial = optuna_study.ask(
                {"lr": optuna.distributions.FloatDistribution(low, high, log=True)}
            )
            trial_number, lr = trial.number, trial.params["lr"]
        else:
            continue
        spec = study.run_spec(optimizer, {**study.hparams, "lr": lr}, study.seeds[0])
        asked.setdefault(spec.key(), (spec, []))[1].append((optuna_study, trial_number))
    return asked


class _Teller:
    """Tells Optuna the final validation metric of a finished run (the worst when it diverged)."""

    def __init__(
        self, asked: Mapping[str, tuple[RunSpec, list[tuple[Any, int]]]], worst: float
    ) -> None:
        self.asked = asked
        self.worst = worst

    def __call__(self, result: RunResult) -> None:
        value = selection_metric(result) if usable(result) else self.worst
        for optuna_study, trial_number in self.asked.get(result.spec.key(), (None, []))[1]:
            optuna_study.tell(trial_number, value, skip_if_finished=True)


# ----------------------------------------------------------------- the study


def environment() -> dict[str, Any]:
    """Versions and machine, for the report."""
    import torch

    from optlab import __version__

    info: dict[str, Any] = {
        "optlab": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
    }
    for distribution in ("numpy", "scikit-learn", "optuna"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            info[distribution] = importlib.metadata.version(distribution)
    return info


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def run_study(
    study: StudySpec,
    root: str | os.PathLike[str],
    *,
    jobs: int = 1,
    trainer: Trainer | None = None,
    progress: Progress | None = None,
    command: str | None = None,
) -> StudyOutcome:
    """Run ``study`` into the results directory ``root``, resuming what is there.

    Args:
        study: the study (checked with :func:`validate_study` first).
        root: results directory; created when new or empty (see :mod:`optlab.lab.store`).
        jobs: worker processes; 1 trains in this process. Workers are spawned, so a
            script calling this with ``jobs > 1`` needs the usual
            ``if __name__ == "__main__":`` guard.
        trainer: ``RunSpec -> RunResult``; :func:`optlab.lab.train.train` by default.
            With ``jobs > 1`` it must be importable by name (a module-level function).
        progress: see :data:`Progress`.
        command: the command line to record in the report.

    Returns:
        What the store holds of the study afterwards (see :func:`resolve_study`).
    """
    study = validate_study(study)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
    store = Store.open(root)
    with store.lock():
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        earlier = store.read_study() or {}
        data = {
            "study": study.to_dict(),
            "command": command,
            "environment": environment(),
            "started": now,
            "jobs": jobs,
        }
        if earlier.get("study") == data["study"] and earlier.get("started"):
            data["started"] = earlier["started"]  # resuming: the study began back then
            data["resumed"] = now
        store.write_study(data)
        with _Runner(jobs, trainer) as runner:
            if study.tune and study.tuner == "optuna":
                _tune_optuna(study, store, runner, progress)
            elif study.tune:
                specs = [spec for name in study.optimizers for spec in study.grid_specs(name)]
                _execute(runner, store, "tune", specs, progress)
            finals = [
                spec
                for outcome in resolve_study(study, store).optimizers
                if outcome.hparams is not None
                for spec in study.final_specs(outcome.optimizer, outcome.hparams)
            ]
            _execute(runner, store, "final", finals, progress)
        data = store.read_study() or {}
        data["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        store.write_study(data)
    return resolve_study(study, store)


def load_study(store: Store) -> tuple[StudySpec | None, dict[str, Any]]:
    """The study recorded in ``store`` (``None`` when there is none) and its study.json data."""
    data = store.read_study()
    if not data or "study" not in data:
        return None, data or {}
    try:
        return StudySpec.from_dict(data["study"]), data
    except (TypeError, ValueError, AttributeError) as error:
        raise StoreError(
            f"{str(store.root / 'study.json')!r} holds no valid study ({error}); "
            f"{store.study_file_remedy()}"
        ) from None
