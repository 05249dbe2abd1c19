"""The numbers of a study's tables, from stored records: per arm, per task, across tasks.

:func:`summarize_task` gives one :class:`SummaryRow` per arm of a task: every
hyper-parameter the runs used (the values stored in their records, defaults
included; options that only choose an implementation, ``foreach``, ``fused``,
``capturable``, ``differentiable``, only when given explicitly), the number of
seeds and of diverged runs, the final and best test metric as mean, sample
std (ddof 1) and 95 % confidence interval over the seeds that did not
diverge, epochs and seconds to reach the task's target, seconds per epoch,
and the verdict against the best arm of the task (a paired t test over the
seeds, Holm's correction over the arms; see :mod:`optlab.lab.stats`).

:func:`across_tasks` summarises a suite: per arm the mean rank with its
spread, the tasks it wins, and performance profiles (Dolan & Moré 2002) on
the final metric and on time to the task's target, with the AlgoPerf-style
area under them.

A run "reaches the target" at its first evaluation whose metric is at least
as good as the task's target.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from optlab.lab import stats
from optlab.lab.runs import RunResult
from optlab.lab.selection import StudyOutcome, TaskOutcome
from optlab.lab.store import finite

__all__ = [
    "ALPHA",
    "IMPLEMENTATION_FLAGS",
    "CrossTask",
    "SummaryRow",
    "TaskFacts",
    "across_tasks",
    "effective_hparams",
    "summarize",
    "summarize_runs",
    "summarize_task",
    "task_facts",
]

#: Family-wise error rate of the comparisons with the best arm (Holm).
ALPHA = 0.05

#: Options that choose an implementation, not the algorithm (results are equal): shown
#: only when a study sets them explicitly (``--set foreach=False``), where the
#: seconds per epoch of the implementations may be what is being compared.
#: ``maximize`` changes the algorithm and is shown like any hyper-parameter.
IMPLEMENTATION_FLAGS = frozenset(
    {"foreach", "fused", "capturable", "differentiable", "print_change_log"}
)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = [v for v in values if finite(v)]
    if not values:
        return math.nan, math.nan
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else math.nan
    return mean, std


def _recorded_hparams(runs: Sequence[RunResult]) -> dict[str, Any] | None:
    """The hyper-parameters a run stored (``info["hparams"]``: the optimizer's first param
    group as it trained), from the first run that has them."""
    for run in runs:
        recorded = run.info.get("hparams") if isinstance(run.info, Mapping) else None
        if isinstance(recorded, Mapping) and recorded:
            return dict(recorded)
    return None


def effective_hparams(
    optimizer: str, explicit: Mapping[str, Any], runs: Sequence[RunResult] = ()
) -> dict[str, Any]:
    """Every hyper-parameter the runs used: the values stored in their records when they
    have them, else the registry's current defaults; ``explicit`` on top.

    Implementation flags (:data:`IMPLEMENTATION_FLAGS`) appear only when explicit.
    """
    from optlab.optim.registry import get_spec

    try:
        defaults = get_spec(optimizer).defaults()
    except ValueError:  # an optimizer this optlab does not know: show what was stored
        defaults = {}
    recorded = _recorded_hparams(runs)
    if recorded is None:
        values = defaults
    else:  # the registry's order (records store names sorted), then names it lacks
        values = {name: recorded[name] for name in defaults if name in recorded}
        values.update(recorded)
    values.update(explicit)
    return {
        name: tuple(value) if isinstance(value, list) else value
        for name, value in values.items()
        if name not in IMPLEMENTATION_FLAGS or name in explicit
    }


def _reached(value: Any, target: float, higher_is_better: bool) -> bool:
    if not finite(value):
        return False
    return float(value) >= target if higher_is_better else float(value) <= target


def _best(run: RunResult) -> float:
    values = [float(row["metric"]) for row in run.history if finite(row.get("metric"))]
    if not values:
        return math.nan
    return max(values) if run.higher_is_better else min(values)


@dataclass
class SummaryRow:
    """One arm's line of a task's summary table.

    ``final_ci_low`` / ``final_ci_high``: the 95 % t interval of the mean final test
    metric (NaN with fewer than two seeds). ``verdict`` against the task's best arm:
    ``"best"``, ``"indistinguishable"`` (Holm-corrected paired test not rejected, or no
    test possible: see ``verdict_reason``), ``"worse"``, or ``""`` (no finished seed).
    ``p_value`` is Holm-adjusted; ``difference`` the paired mean difference to the best
    with its interval. ``final_by_seed`` maps each finished seed to its final metric.
    """

    task: str
    optimizer: str
    hparams: dict[str, Any]
    explicit: dict[str, Any]
    metric: str
    higher_is_better: bool
    target: float | None
    arm: str = ""
    seeds: int = 0
    diverged: int = 0
    missing: int = 0
    final_mean: float = math.nan
    final_std: float = math.nan
    final_ci_low: float = math.nan
    final_ci_high: float = math.nan
    best_mean: float = math.nan
    best_std: float = math.nan
    reached: int = 0
    epochs_to_target_mean: float = math.nan
    epochs_to_target_std: float = math.nan
    seconds_to_target_mean: float = math.nan
    seconds_to_target_median: float = math.nan
    seconds_per_epoch: float = math.nan
    final_train_loss: float = math.nan
    final_test_loss: float = math.nan
    final_valid_mean: float = math.nan
    final_valid_std: float = math.nan
    validation: str = ""
    tuned: str = ""
    budget: int = 0
    at_edge: list[str] = field(default_factory=list)
    note: str = ""
    verdict: str = ""
    verdict_reason: str = ""
    p_value: float = math.nan
    paired_seeds: int = 0
    difference: stats.Interval | None = None
    final_by_seed: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.arm = self.arm or self.optimizer

    def sort_key(self) -> tuple[int, float]:
        if not finite(self.final_mean):
            return (1, 0.0)
        return (0, -self.final_mean if self.higher_is_better else self.final_mean)


def summarize_runs(
    task: str,
    optimizer: str,
    explicit: Mapping[str, Any],
    runs: Sequence[RunResult],
    *,
    target: float | None,
    metric: str,
    higher_is_better: bool,
    arm: str = "",
    missing: int = 0,
    tuned: str = "",
    note: str = "",
    validation: str = "",
) -> SummaryRow:
    """The statistics of one arm's runs over seeds (the verdict is added by
    :func:`summarize_task`, which sees every arm)."""
    ok = [run for run in runs if run.status == "ok"]
    row = SummaryRow(
        task=task,
        optimizer=optimizer,
        arm=arm,
        hparams=effective_hparams(optimizer, explicit, runs),
        explicit=dict(explicit),
        metric=metric,
        higher_is_better=higher_is_better,
        target=target,
        seeds=len(runs),
        diverged=len(runs) - len(ok),
        missing=missing,
        tuned=tuned,
        note=note,
        validation=validation,
    )
    finals = [run.final.get("metric", math.nan) for run in ok]
    row.final_by_seed = {
        run.spec.seed: float(value) for run, value in zip(ok, finals, strict=True) if finite(value)
    }
    row.final_mean, row.final_std = _mean_std(finals)
    interval = stats.mean_ci(row.final_by_seed.values())
    row.final_ci_low, row.final_ci_high = interval.low, interval.high
    row.final_valid_mean, row.final_valid_std = _mean_std(
        [run.final.get("valid_metric", math.nan) for run in ok]
    )
    row.best_mean, row.best_std = _mean_std([_best(run) for run in ok])
    row.final_train_loss, _ = _mean_std([run.final.get("train_loss", math.nan) for run in ok])
    row.final_test_loss, _ = _mean_std([run.final.get("test_loss", math.nan) for run in ok])
    row.seconds_per_epoch, _ = _mean_std([run.seconds_per_epoch for run in runs])
    if target is not None:
        epochs, seconds = [], []
        for run in ok:
            hit = next(
                (h for h in run.history if _reached(h.get("metric"), target, higher_is_better)),
                None,
            )
            if hit is not None:
                epochs.append(float(hit.get("epoch", math.nan)))
                seconds.append(float(hit.get("wall_time", math.nan)))
        row.reached = len(epochs)
        row.epochs_to_target_mean, row.epochs_to_target_std = _mean_std(epochs)
        row.seconds_to_target_mean, _ = _mean_std(seconds)
        if runs:  # a seed that diverged or never reached the target counts as infinitely slow
            never = [math.inf] * (len(runs) - len(seconds))
            row.seconds_to_target_median = statistics.median(seconds + never)
    return row


@dataclass(frozen=True)
class TaskFacts:
    """What the report says about a task: from the catalogue, else from the records."""

    metric: str
    higher_is_better: bool
    target: float | None
    description: str
    validation: str  # "held-out", "train", or "" when unknown

    @property
    def selection(self) -> str:
        """What tuning selects on, in words (axis labels, report text)."""
        if self.validation == "train":
            return f"final {self.metric} on the training set"
        return f"final validation {self.metric}"


def task_facts(task_name: str, runs: Sequence[RunResult]) -> TaskFacts:
    recorded = {run.info.get("validation") for run in runs if isinstance(run.info, Mapping)}
    recorded.discard(None)
    try:
        from optlab.lab.tasks import get_task

        task = get_task(task_name)
        return TaskFacts(
            task.metric,
            task.higher_is_better,
            float(task.target),
            task.description,
            task.validation,
        )
    except (ValueError, ImportError):
        validation = recorded.pop() if len(recorded) == 1 else ""
        if runs:
            return TaskFacts(runs[0].metric, runs[0].higher_is_better, None, "", validation)
        return TaskFacts("metric", True, None, "", validation)


def _tuned_text(outcome: Any, tuner: str, space: Sequence[Any]) -> str:
    if not space or outcome.hparams is None:
        return ""
    names = "+".join(dim.name for dim in space)
    text = f"{names} by {tuner} ({len(outcome.tuning)} runs)"
    if outcome.at_edge:
        text += f"; {', '.join(outcome.at_edge)} at the edge of its range"
    return text


def summarize_task(study: Any, task: TaskOutcome, alpha: float = ALPHA) -> list[SummaryRow]:
    """One row per arm of ``task``, best final metric first, with the verdicts against
    the best arm (paired by seed, Holm over the arms)."""
    all_runs = [run for o in task.arms for run in (*o.runs, *o.tuning)]
    facts = task_facts(task.task, all_runs)
    rows = []
    for o in task.arms:
        space = study.space(o.arm)
        row = summarize_runs(
            task.task,
            o.optimizer,
            o.hparams if o.hparams is not None else study.fixed(o.arm, task.task),
            o.runs,
            target=facts.target,
            metric=facts.metric,
            higher_is_better=facts.higher_is_better,
            arm=o.label,
            missing=o.missing,
            tuned=_tuned_text(o, study.tuner, space),
            note=o.note,
            validation=facts.validation,
        )
        row.budget, row.at_edge = o.budget, list(o.at_edge)
        if o.hparams is None:
            for dim in space:
                row.hparams[dim.name] = None  # not chosen (yet): the default would mislead
        rows.append(row)
    verdicts = stats.compare_with_best(
        {row.arm: row.final_by_seed for row in rows}, facts.higher_is_better, alpha
    )
    for row in rows:
        verdict = verdicts[row.arm]
        if not row.final_by_seed:
            row.verdict = ""
        elif verdict.is_best:
            row.verdict = "best"
        else:
            row.verdict = "indistinguishable" if verdict.indistinguishable else "worse"
        row.verdict_reason = verdict.reason
        row.p_value = verdict.adjusted_p
        row.paired_seeds = verdict.n
        row.difference = verdict.difference
    return sorted(rows, key=SummaryRow.sort_key)


def summarize(outcome: StudyOutcome, alpha: float = ALPHA) -> dict[str, list[SummaryRow]]:
    """Per task, one row per arm (best first)."""
    return {task.task: summarize_task(outcome.study, task, alpha) for task in outcome.tasks}


# --------------------------------------------------------------------- across tasks


@dataclass
class CrossTask:
    """A suite's summary: per arm its mean rank, wins and performance-profile scores.

    ``ratios`` (final metric) and ``time_ratios`` (median seconds to the task's
    target) are the Dolan & Moré ratios per task and arm; ``area`` and
    ``time_area`` the AlgoPerf-style normalised areas under the profiles on
    [1, ``r_max``]. ``winners`` lists per task the arm(s) with the best mean and
    ``indistinguishable`` those not told apart from it.
    """

    arms: list[str]
    tasks: list[str]
    ranks: dict[str, stats.RankSummary]
    winners: dict[str, list[str]]
    indistinguishable: dict[str, list[str]]
    ratios: dict[str, dict[str, float]]
    time_ratios: dict[str, dict[str, float]]
    area: dict[str, float]
    time_area: dict[str, float]
    r_max: float = 4.0


def across_tasks(rows: Mapping[str, Sequence[SummaryRow]], r_max: float = 4.0) -> CrossTask:
    """Ranks, winners and performance profiles over the tasks of ``rows``."""
    tasks = list(rows)
    arms = list(dict.fromkeys(row.arm for task_rows in rows.values() for row in task_rows))
    scores = {t: {row.arm: row.final_mean for row in rows[t]} for t in tasks}
    higher = {t: bool(rows[t][0].higher_is_better) if rows[t] else True for t in tasks}
    costs = {
        t: {
            row.arm: stats.cost_from_metric(row.final_mean, row.higher_is_better) for row in rows[t]
        }
        for t in tasks
    }
    times = {t: {row.arm: row.seconds_to_target_median for row in rows[t]} for t in tasks}
    ratios = stats.performance_ratios(costs)
    time_ratios = stats.performance_ratios(times)
    return CrossTask(
        arms=arms,
        tasks=tasks,
        ranks=stats.mean_ranks(scores, higher),
        winners=stats.winners(scores, higher),
        indistinguishable={
            t: [row.arm for row in rows[t] if row.verdict in ("best", "indistinguishable")]
            for t in tasks
        },
        ratios=ratios,
        time_ratios=time_ratios,
        area=stats.profile_area(ratios, r_max),
        time_area=stats.profile_area(time_ratios, r_max),
        r_max=r_max,
    )
