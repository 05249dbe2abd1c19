"""Statistics of a study: intervals, paired tests, Holm, performance profiles, ranks, contrasts.

Pure functions over plain data (``seed -> metric`` mappings, ``task -> arm -> value`` tables)
for the report code. Definitions (``EXPERIMENTS.md``):

- **Missing, not zero.** nan/inf (a diverged run) is dropped, never counted as 0; every result
  says how many values it used (``n``).
- **Intervals** (:func:`mean_ci`): Student t, ``mean ± t_{(1+c)/2, n-1} · sd / sqrt(n)`` (ddof
  1). One value: no interval (``low = high = nan``); all values equal: the point ``[mean, mean]``.
  Below 5 seeds the interval is wide: say so in the table.
- **Pairing by seed.** Seed k of every arm shares the initial weights and the data order, so
  arms are compared through ``d_k = a_k - b_k`` on the seeds finite in both (paired t interval,
  two-sided ``scipy.stats.ttest_rel``). All ``d_k == 0``: p = 1, indistinguishable (scipy gives
  nan); all ``d_k`` equal and nonzero: p = 0 (scipy warns and gives a meaningless t).
- **Holm.** Sort the m p-values; reject ``H_(i)`` while ``p_(i) <= alpha / (m - i + 1)``, stop at
  the first failure. Adjusted p: ``max_{j<=i} min(1, (m - j + 1) p_(j))``. A nan p-value (no
  test possible) is never rejected but counts in m: conservative, it makes the others'
  thresholds stricter as if that test had been done and failed.
- **Against the best** (:func:`compare_with_best`): each arm against the arm with the best mean,
  Holm over the m = arms - 1 tests. An arm with fewer than 2 seeds paired with the best cannot
  be told apart from it: "indistinguishable", with the reason.
- **Cost for profiles** (:func:`cost_from_metric`): ``1 - value`` for higher-is-better metrics in
  [0, 1] (accuracy -> error rate), the value itself for lower-is-better ones (a loss, or a gap
  to a known optimum), floored at 1e-12 so a zero cost gives finite ratios (every other arm's
  ratio is then huge: only arms that also reach 0 score on that task); nan/inf -> inf (failed).
- **Performance profiles** (Dolan & Moré 2002): ``r_{t,a} = c_{t,a} / min_a c_{t,a}``, inf for a
  failed arm and for every arm of a task where all failed; ``rho_a(tau)`` = fraction of tasks
  with ``r_{t,a} <= tau``; an arm absent from a task has failed there. :func:`profile_area` is
  AlgoPerf's ``1/(r_max - 1) ∫_1^{r_max} rho_a(tau) dtau``, exactly: the mean over tasks of
  ``max(0, r_max - r_{t,a}) / (r_max - 1)``.
- **Ranks**: per task 1 = best, ties averaged (``scipy.stats.rankdata``), failed arms (nan/inf
  or absent) tied last.
- **Contrasts** (the belief/eps factorial): per seed finite in every weighted cell,
  ``c_k = Σ w_cell · cell_k``, interval and one-sample t test of ``mean(c) = 0``; main effects
  and interactions of a two-factor layout are such contrasts (:func:`main_effects`).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
import scipy.stats

NAN = float("nan")
Table = Mapping[str, Mapping[str, float]]  # task -> arm -> value
Direction = Mapping[str, bool] | bool  # per task, or one for every task


@dataclass(frozen=True)
class Interval:
    """A mean with its confidence interval over ``n`` values.

    ``n < 2``: ``low = high = nan`` (no interval); no values: ``mean = nan`` too.
    """

    mean: float
    low: float
    high: float
    n: int
    confidence: float

    @property
    def has_interval(self) -> bool:
        return self.n >= 2

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in ``[low, high]`` (False when there is no interval)."""
        return self.has_interval and self.low <= value <= self.high


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")


def _all_equal(values: np.ndarray) -> bool:
    # exact equality: a mean of equal floats need not equal them, so sd may come out 1e-17
    return bool(np.all(values == values[0]))


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> Interval:
    """Student t interval of the mean of the finite ``values`` (nan/inf are dropped)."""
    _check_fraction("confidence", confidence)
    finite = np.asarray([float(v) for v in values], dtype=float)
    finite = finite[np.isfinite(finite)]
    n = len(finite)
    if n == 0:
        return Interval(NAN, NAN, NAN, 0, confidence)
    mean = float(np.mean(finite))
    if n == 1:
        return Interval(mean, NAN, NAN, 1, confidence)
    if _all_equal(finite):
        return Interval(mean, mean, mean, n, confidence)
    low, high = scipy.stats.t.interval(confidence, n - 1, loc=mean, scale=scipy.stats.sem(finite))
    return Interval(mean, float(low), float(high), n, confidence)


@dataclass(frozen=True)
class PairedComparison:
    """A mean difference (or contrast) over paired seeds with its interval and t test."""

    n: int
    difference: Interval
    p_value: float  # two-sided; nan when n < 2


def _mean_test(values: np.ndarray, confidence: float, p_value_of) -> PairedComparison:
    """Interval and p-value of "mean = 0"; ``p_value_of()`` runs the scipy test when needed."""
    interval = mean_ci(values, confidence)
    if interval.n < 2:
        p_value = NAN
    elif _all_equal(values):
        p_value = 1.0 if values[0] == 0 else 0.0
    else:
        p_value = float(p_value_of())
    return PairedComparison(interval.n, interval, p_value)


def _common_seeds(series: Sequence[Mapping[int, float]]) -> list[int]:
    """Seeds finite in every mapping, in the first mapping's order."""
    return [s for s in series[0] if all(s in m and math.isfinite(float(m[s])) for m in series)]


def paired_comparison(
    a: Mapping[int, float], b: Mapping[int, float], confidence: float = 0.95
) -> PairedComparison:
    """``a - b`` paired on the seeds finite in both: paired t interval and ``ttest_rel``."""
    _check_fraction("confidence", confidence)
    seeds = _common_seeds([a, b])
    a_values = np.asarray([float(a[s]) for s in seeds])
    b_values = np.asarray([float(b[s]) for s in seeds])

    def p_value_of() -> float:
        return scipy.stats.ttest_rel(a_values, b_values).pvalue

    return _mean_test(a_values - b_values, confidence, p_value_of)


def _holm_order(p_values: Sequence[float]) -> list[int]:
    # nan sorts last: it never passes a threshold, and stopping there rejects nothing more
    return sorted(range(len(p_values)), key=lambda i: (math.isnan(p_values[i]), p_values[i]))


def holm(p_values: Sequence[float], alpha: float = 0.05) -> list[bool]:
    """Holm's step-down procedure: ``True`` where rejected; nan is kept and counts in m."""
    _check_fraction("alpha", alpha)
    p_values = [float(p) for p in p_values]
    m = len(p_values)
    rejected = [False] * m
    for rank, index in enumerate(_holm_order(p_values)):
        if not p_values[index] <= alpha / (m - rank):  # False for nan too
            break
        rejected[index] = True
    return rejected


def holm_adjusted(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values ``max_{j<=i} min(1, (m-j+1) p_(j))``, nan stays nan, m counts nan."""
    p_values = [float(p) for p in p_values]
    m = len(p_values)
    adjusted = [NAN] * m
    running = 0.0
    for rank, index in enumerate(_holm_order(p_values)):
        if math.isnan(p_values[index]):
            break
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


@dataclass(frozen=True)
class ArmVerdict:
    """One arm of a task against the task's best arm (see :func:`compare_with_best`)."""

    label: str
    is_best: bool
    indistinguishable: bool  # from the best; True for the best itself
    n: int  # seeds used in the comparison with the best (the best: its finite seeds)
    p_value: float  # raw; nan for the best and for arms that could not be tested
    adjusted_p: float  # Holm-adjusted; nan likewise
    difference: Interval | None  # arm minus best; None for the best
    reason: str  # why no test was possible; "" when one was done


def compare_with_best(
    per_arm: Mapping[str, Mapping[int, float]],
    higher_is_better: bool,
    alpha: float = 0.05,
    confidence: float = 0.95,
) -> dict[str, ArmVerdict]:
    """Every arm of ``per_arm`` (label -> seed -> final metric) against the best, in input order.

    Best: the best mean over its finite seeds (ties: the first). Indistinguishable: Holm keeps
    "no difference", or no test was possible (``reason`` says why). An arm with no finite seeds
    is neither best nor indistinguishable.
    """
    _check_fraction("alpha", alpha)
    means = {label: mean_ci(seeds.values(), confidence).mean for label, seeds in per_arm.items()}
    finished = [label for label, mean in means.items() if not math.isnan(mean)]
    if not finished:
        failed = "no finished seeds"
        return {
            label: ArmVerdict(label, False, False, 0, NAN, NAN, None, failed) for label in per_arm
        }
    sign = 1.0 if higher_is_better else -1.0
    best = max(finished, key=lambda label: sign * means[label])  # ties: max keeps the first
    others = [label for label in per_arm if label != best]
    comparisons = {
        label: paired_comparison(per_arm[label], per_arm[best], confidence) for label in others
    }
    p_values = [comparisons[label].p_value for label in others]
    rejected = dict(zip(others, holm(p_values, alpha), strict=True))
    adjusted = dict(zip(others, holm_adjusted(p_values), strict=True))
    verdicts: dict[str, ArmVerdict] = {}
    for label in per_arm:
        if label == best:
            n_best = mean_ci(per_arm[best].values(), confidence).n
            verdicts[label] = ArmVerdict(label, True, True, n_best, NAN, NAN, None, "")
            continue
        comparison = comparisons[label]
        if math.isnan(means[label]):
            indistinguishable, reason = False, "no finished seeds"
        elif comparison.n < 2:
            indistinguishable = True
            seeds = "1 seed" if comparison.n == 1 else f"{comparison.n} seeds"
            reason = f"{seeds} paired with the best: no test"
        else:
            indistinguishable, reason = not rejected[label], ""
        verdicts[label] = ArmVerdict(
            label, False, indistinguishable, comparison.n, comparison.p_value,
            adjusted[label], comparison.difference, reason,
        )  # fmt: skip
    return verdicts


def cost_from_metric(value: float, metric_higher_is_better: bool, *, floor: float = 1e-12) -> float:
    """The profile cost of a final metric (lower better, >= ``floor``, inf = failed).

    ``1 - value`` for higher-is-better metrics in [0, 1], ``value`` for lower-is-better ones >= 0.
    """
    value = float(value)
    if not math.isfinite(value):
        return math.inf
    if metric_higher_is_better and not 0.0 <= value <= 1.0:
        raise ValueError(
            f"a higher-is-better metric must be in [0, 1] to become the cost 1 - value, got "
            f"{value!r}; compute the cost another way and pass it to performance_ratios"
        )
    if not metric_higher_is_better and value < 0.0:
        raise ValueError(
            f"a lower-is-better metric must be >= 0 to serve as a cost, got {value!r}; "
            f"use its gap to the known optimum instead"
        )
    return max(1.0 - value if metric_higher_is_better else value, floor)


def _arms(table: Table) -> list[str]:
    """Every arm of a task -> arm table, in order of first appearance."""
    return list(dict.fromkeys(arm for row in table.values() for arm in row))


def performance_ratios(costs: Table) -> dict[str, dict[str, float]]:
    """``costs[task][arm]`` (lower better, > 0, nan/inf = failed) -> ``c / min_a c`` per task."""
    ratios: dict[str, dict[str, float]] = {}
    for task, row in costs.items():
        row = {arm: float(c) if math.isfinite(float(c)) else math.inf for arm, c in row.items()}
        bad = [arm for arm, cost in row.items() if not cost > 0.0]
        if bad:
            raise ValueError(
                f"cost of {bad[0]!r} on {task!r} must be > 0, got {row[bad[0]]!r}; "
                f"map metrics to costs with cost_from_metric"
            )
        best = min(row.values(), default=math.inf)
        ratios[task] = {
            arm: cost / best if math.isfinite(best) else math.inf for arm, cost in row.items()
        }
    return ratios


def performance_profile(ratios: Table, taus: Sequence[float]) -> dict[str, list[float]]:
    """``rho_a(tau)``: fraction of tasks with ratio <= tau, for each tau (absent arm = failed)."""
    n_tasks = len(ratios)
    profile: dict[str, list[float]] = {}
    for arm in _arms(ratios):
        arm_ratios = [row.get(arm, math.inf) for row in ratios.values()]
        profile[arm] = [sum(r <= tau for r in arm_ratios) / n_tasks for tau in taus]
    return profile


def profile_area(ratios: Table, r_max: float = 4.0) -> dict[str, float]:
    """AlgoPerf score: ``1/(r_max-1) ∫_1^{r_max} rho_a``, exact from the step function, in [0, 1]."""
    if not r_max > 1.0:
        raise ValueError(f"r_max must be > 1, got {r_max!r}")
    n_tasks = len(ratios)
    # task t contributes 1/n_tasks to rho_a on [r_{t,a}, inf), i.e. r_max - r on [1, r_max]
    return {
        arm: sum(max(0.0, r_max - row.get(arm, math.inf)) for row in ratios.values())
        / ((r_max - 1.0) * n_tasks)
        for arm in _arms(ratios)
    }


@dataclass(frozen=True)
class RankSummary:
    """An arm's rank per task (1 = best) and their mean and sample std across tasks."""

    label: str
    mean: float
    std: float  # ddof 1; nan with one task
    ranks: dict[str, float]  # task -> rank


def _direction(higher_is_better: Direction, task: str) -> bool:
    if isinstance(higher_is_better, bool):
        return higher_is_better
    if task not in higher_is_better:
        raise KeyError(f"higher_is_better has no entry for task {task!r}")
    return bool(higher_is_better[task])


def _lower_is_better_keys(row: Mapping[str, float], arms: list[str], higher: bool) -> list[float]:
    """Scores as "lower is better" keys; failed (nan/inf) and absent arms become +inf."""
    scores = [float(row.get(arm, NAN)) for arm in arms]
    return [(-s if higher else s) if math.isfinite(s) else math.inf for s in scores]


def mean_ranks(scores: Table, higher_is_better: Direction) -> dict[str, RankSummary]:
    """Per task rank the arms by score (1 = best, ties averaged, failed last); summarise."""
    arms = _arms(scores)
    ranks: dict[str, dict[str, float]] = {arm: {} for arm in arms}
    for task, row in scores.items():
        keys = _lower_is_better_keys(row, arms, _direction(higher_is_better, task))
        for arm, rank in zip(arms, scipy.stats.rankdata(keys), strict=True):
            ranks[arm][task] = float(rank)
    summaries = {}
    for arm in arms:
        values = list(ranks[arm].values())
        std = float(np.std(values, ddof=1)) if len(values) > 1 else NAN
        summaries[arm] = RankSummary(arm, float(np.mean(values)), std, ranks[arm])
    return summaries


def winners(scores: Table, higher_is_better: Direction) -> dict[str, list[str]]:
    """Per task the arm(s) with the best finite score, in input order; [] when all failed."""
    result = {}
    for task, row in scores.items():
        arms = list(row)
        keys = _lower_is_better_keys(row, arms, _direction(higher_is_better, task))
        best = min(keys, default=math.inf)
        result[task] = [
            a for a, k in zip(arms, keys, strict=True) if math.isfinite(best) and k == best
        ]
    return result


def contrast(
    cells: Mapping[Hashable, Mapping[int, float]],
    weights: Mapping[Hashable, float],
    confidence: float = 0.95,
) -> PairedComparison:
    """``c_k = Σ weights[cell] · cells[cell][k]`` on the seeds finite in every weighted cell.

    Interval and ``scipy.stats.ttest_1samp`` of ``mean(c) = 0``, same edge cases as
    :func:`paired_comparison`. Cell names may be any hashable (:func:`main_effects` uses
    ``(a, b)`` tuples). Cells with weight 0 are ignored. A contrast's weights usually
    sum to 0 (not enforced).
    """
    _check_fraction("confidence", confidence)
    unknown = [cell for cell in weights if cell not in cells]
    if unknown:
        raise ValueError(f"contrast weights name unknown cells {unknown}; cells are {list(cells)}")
    used = [cell for cell, w in weights.items() if w != 0]
    if not used:
        raise ValueError(f"a contrast needs a nonzero weight, got {dict(weights)}")
    seeds = _common_seeds([cells[cell] for cell in used])
    values = np.asarray(
        [sum(weights[cell] * float(cells[cell][s]) for cell in used) for s in seeds], dtype=float
    )
    return _mean_test(values, confidence, lambda: scipy.stats.ttest_1samp(values, 0.0).pvalue)


def main_effects(
    cells: Mapping[tuple[str, str], Mapping[int, float]], confidence: float = 0.95
) -> dict[str, Any]:
    """Main effects and interactions of a full two-factor layout, as paired-seed contrasts.

    ``cells[(a, b)][seed]``: the metric of level ``a`` of factor A and ``b`` of factor B. Levels
    are ordered by first appearance; a pair key ``(x, y)`` always means "x minus y", with ``x``
    the later level, so listing the baseline level first (``g2``, ``outside``) gives effects of
    the change from it. Returns::

        {"levels": {"A": [a levels], "B": [b levels]},
         "A": {(a_j, a_i): mean over b of cell(a_j, b) - cell(a_i, b)},   # i < j
         "B": {(b_j, b_i): mean over a of cell(a, b_j) - cell(a, b_i)},
         "interaction": {((a_j, a_i), (b_j, b_i)):
             [cell(a_j, b_j) - cell(a_i, b_j)] - [cell(a_j, b_i) - cell(a_i, b_i)]}}

    each value a :class:`PairedComparison` over the seeds finite in every cell it uses.
    """
    cells = {tuple(key): seeds for key, seeds in cells.items()}
    a_levels = list(dict.fromkeys(a for a, _ in cells))
    b_levels = list(dict.fromkeys(b for _, b in cells))
    missing = [(a, b) for a in a_levels for b in b_levels if (a, b) not in cells]
    if missing:
        raise ValueError(f"main_effects needs every (A, B) combination; missing {missing}")

    def effect(weights: dict[tuple[str, str], float]) -> PairedComparison:
        return contrast(cells, weights, confidence)

    def main(levels: list[str], others: list[str], cell) -> dict[tuple[str, str], Any]:
        w = 1.0 / len(others)
        return {
            (hi, lo): effect({cell(hi, o): w for o in others} | {cell(lo, o): -w for o in others})
            for lo, hi in combinations(levels, 2)
        }

    interaction = {
        ((a_hi, a_lo), (b_hi, b_lo)): effect(
            {(a_hi, b_hi): 1.0, (a_lo, b_hi): -1.0, (a_hi, b_lo): -1.0, (a_lo, b_lo): 1.0}
        )
        for a_lo, a_hi in combinations(a_levels, 2)
        for b_lo, b_hi in combinations(b_levels, 2)
    }
    return {
        "levels": {"A": a_levels, "B": b_levels},
        "A": main(a_levels, b_levels, lambda level, other: (level, other)),
        "B": main(b_levels, a_levels, lambda level, other: (other, level)),
        "interaction": interaction,
    }
