"""Choosing an arm's setting and reading a study back from the store.

Selection follows DeepOBS: among an arm's tuning runs on a task (first seed,
one run per point), the best *final validation* metric wins (``valid_metric``
of the last history row: a held-out part of the training data, or the
training objective for tasks that hold nothing out; never the test set). The
task says whether higher is better; a diverged run or a non-finite metric
always loses; ties go to the smaller learning rate, then to the earlier run.
The chosen point is rerun with every seed, and tables report those runs'
*test* metrics.

:func:`resolve_study` reads what the store holds of a study (tuning runs, the
choice, the final runs) without training: what ``optlab report`` uses.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from optlab.lab.runs import RunResult, RunSpec
from optlab.lab.spec import Arm, StudySpec
from optlab.lab.store import Store, finite

__all__ = [
    "SELECTION_COLUMN",
    "ArmOutcome",
    "StudyOutcome",
    "TaskOutcome",
    "final_metric",
    "resolve_study",
    "select_best",
    "selection_metric",
    "usable",
]

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


# ------------------------------------------------------------------------ outcomes


@dataclass
class ArmOutcome:
    """One arm's part of a study on one task, as far as the store holds it.

    Attributes:
        task: the task.
        arm: the arm.
        hparams: the explicit hyper-parameters of the final runs (fixed ones plus the
            chosen point when tuned); ``None`` while tuning is incomplete or when every
            tuning run diverged.
        tuning: the tuning runs found (grid order, or Optuna trial order).
        runs: the final runs found, in seed order.
        missing: final runs not in the store yet (plus tuning runs, before a choice).
        note: why there is no result, when there is none.
        budget: tuning runs this arm gets on this task (0 when untuned).
        at_edge: tuned hyper-parameters whose chosen value lies at the edge of its
            range (the range was probably too small).
    """

    task: str
    arm: Arm
    hparams: dict[str, Any] | None
    tuning: list[RunResult] = field(default_factory=list)
    runs: list[RunResult] = field(default_factory=list)
    missing: int = 0
    note: str = ""
    budget: int = 0
    at_edge: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.arm.label

    @property
    def optimizer(self) -> str:
        return self.arm.optimizer


@dataclass
class TaskOutcome:
    task: str
    arms: list[ArmOutcome]

    @property
    def complete(self) -> bool:
        return all(outcome.missing == 0 for outcome in self.arms)


@dataclass
class StudyOutcome:
    study: StudySpec
    tasks: list[TaskOutcome]

    @property
    def complete(self) -> bool:
        return all(task.complete for task in self.tasks)

    def arm_outcomes(self) -> list[ArmOutcome]:
        return [outcome for task in self.tasks for outcome in task.arms]

    def results(self) -> list[RunResult]:
        return [run for outcome in self.arm_outcomes() for run in outcome.runs]


def lookup(store: Store, specs: Iterable[RunSpec]) -> tuple[list[RunResult], int]:
    """The stored results of ``specs`` (in order) and how many are missing."""
    found, missing = [], 0
    for spec in specs:
        result = store.get(spec)
        if result is None:
            missing += 1
        else:
            found.append(result)
    return found, missing


def _at_edge(study: StudySpec, arm: Arm, chosen: dict[str, Any]) -> list[str]:
    edges = []
    for dim in study.space(arm):
        value = chosen.get(dim.name)
        if not isinstance(value, (int, float)):
            continue
        low, high = dim.bounds
        if study.tuner == "grid":
            if len(dim.grid()) >= 3 and value in (low, high):
                edges.append(dim.name)
            continue
        # Optuna: within 5 % of the (log) range of either end
        scale = (lambda x: math.log10(x)) if dim.log else (lambda x: x)
        span = scale(high) - scale(low)
        if span > 0 and min(scale(value) - scale(low), scale(high) - scale(value)) < 0.05 * span:
            edges.append(dim.name)
    return edges


def arm_outcome(
    study: StudySpec,
    store: Store,
    task: str,
    arm: Arm,
    tuning: list[RunResult],
    tuning_missing: int,
) -> ArmOutcome:
    """The choice and the final runs of ``arm`` on ``task``, given its tuning runs."""
    budget = study.budget(arm)
    if not study.tuned(arm):
        hparams: dict[str, Any] | None = study.fixed(arm, task)
        note = ""
    elif tuning_missing:
        hparams, note = None, f"tuning incomplete ({tuning_missing} runs missing)"
    else:
        best = select_best(tuning)
        hparams = dict(best.spec.hparams) if best is not None else None
        note = "" if best is not None else "diverged at every point tried"
    if hparams is None:
        missing = tuning_missing + (len(study.seeds) if tuning_missing else 0)
        return ArmOutcome(task, arm, None, tuning, [], missing, note, budget)
    runs, missing = lookup(store, study.final_specs(task, arm, hparams))
    edges = _at_edge(study, arm, hparams) if study.tuned(arm) else []
    return ArmOutcome(task, arm, hparams, tuning, runs, missing, note, budget, edges)


def resolve_study(study: StudySpec, store: Store) -> StudyOutcome:
    """What ``store`` holds of ``study``: tuning runs, the choice, the final runs. Trains nothing."""
    from optlab.lab import tuning

    tasks = []
    for task in study.tasks:
        outcomes = []
        for arm in study.arms:
            runs, missing = tuning.tuning_results(study, store, task, arm)
            outcomes.append(arm_outcome(study, store, task, arm, runs, missing))
        tasks.append(TaskOutcome(task, outcomes))
    return StudyOutcome(study, tasks)
