"""Compact optimizer state against full precision: each compact arm against its own baseline.

An arm that keeps its optimizer's moments compact (``state_dtype`` ``"bfloat16"`` or
``"int8"``, see :mod:`optlab.optim._lowp`) is paired with the study's arm of the same
optimizer, the same fixed hyper-parameters, search space and family values, and
full-precision state (:func:`baseline_pairs`). Per task, from the final test metric of the
seeds (seed k of both arms starts from the same weights and sees the same batches; the
stochastic rounding of compact state uses its own counter-based hash, not the seeded
generators):

- the **paired difference** compact - full on the seeds finite in both, its 95 % Student t
  interval and the two-sided paired t test (:func:`optlab.lab.stats.paired_comparison`,
  ``scipy.stats.ttest_rel``);
- an **equivalence test** (TOST, Schuirmann 1987): the one-sided t tests of
  ``mean(d) <= -margin`` and ``mean(d) >= +margin``, p = the larger of the two; the margin is
  :data:`RELATIVE_MARGIN` (1 %) of the magnitude of the full-precision arm's mean final metric
  on the task, stated before the data (:func:`margin_of`);
- **Holm** over a family of comparisons, once for the difference tests and once for the
  equivalence tests (:func:`judge`; the report uses the compact arms of one task as the
  family, as the lab's comparisons with the best arm do, and says which verdicts also hold
  with the whole study as one family);
- the **verdict** (:func:`verdict`): ``"better"`` / ``"worse"`` where Holm rejects "no
  difference" (the sign oriented by the task's direction); ``"indistinguishable"`` only where
  the 95 % interval holds 0 *and* Holm rejects "the difference is at least the margin";
  ``"inconclusive"`` otherwise. ``within_margin`` says whether the equivalence test passed,
  so "worse" within the margin reads: a real difference, smaller than the margin.

Edge cases (the conventions of :mod:`optlab.lab.stats`): a seed that diverged in either arm is
left out (``n`` says how many count, the verdict says how many diverged); fewer than two paired
seeds: no test, inconclusive; every difference equal: difference p 1 (all zero) or 0, TOST p 0
when that difference lies strictly inside the margin, else 1; no margin (the baseline's mean is
0 or missing): TOST p nan, never passing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats

from optlab.lab import stats

__all__ = [
    "ALPHA",
    "RELATIVE_MARGIN",
    "Comparison",
    "EquivalenceTest",
    "Pair",
    "PrecisionReport",
    "analyze",
    "baseline_pairs",
    "equivalence_test",
    "judge",
    "margin_of",
    "precision_report",
    "state_dtype_of",
    "verdict",
]

#: Family-wise error rate of each family of tests (Holm).
ALPHA = 0.05
#: The equivalence margin: this share of the magnitude of the full-precision arm's mean
#: final metric (1 %: about one point of accuracy near 97 %, 0.02 bits per character
#: near 2.3, 1 % of a loss).
RELATIVE_MARGIN = 0.01
NAN = math.nan


def state_dtype_of(hparams: Mapping[str, Any]) -> str | None:
    """The canonical ``state_dtype`` of an arm's hyper-parameters (``None``: full precision)."""
    from optlab.optim._lowp import parse_state_dtype

    value = hparams.get("state_dtype")
    if isinstance(value, str) and value.lower() == "none":
        return None
    return parse_state_dtype(value)


@dataclass(frozen=True)
class Pair:
    """A compact arm (by label) and its full-precision baseline arm."""

    compact: str
    baseline: str
    optimizer: str
    state_dtype: str  # "bfloat16" or "int8"


def _without_state_dtype(arm: Any) -> tuple[Any, ...]:
    hparams = {k: v for k, v in arm.hparams.items() if k != "state_dtype"}
    families = {f: dict(v) for f, v in arm.family_hparams.items()}
    return (arm.optimizer, hparams, tuple(arm.tune), families)


def baseline_pairs(arms: Sequence[Any]) -> list[Pair]:
    """Every arm with compact state paired with the first full-precision arm that differs
    from it only in ``state_dtype`` (optimizer, hyper-parameters, own search space and
    family values equal); compact arms without such an arm are left out."""
    pairs = []
    for arm in arms:
        try:
            dtype = state_dtype_of(arm.hparams)
        except ValueError:
            continue
        if dtype is None:
            continue
        for other in arms:
            try:
                full = state_dtype_of(other.hparams) is None
            except ValueError:
                continue
            if full and _without_state_dtype(other) == _without_state_dtype(arm):
                pairs.append(Pair(arm.label, other.label, arm.optimizer, dtype))
                break
    return pairs


# ------------------------------------------------------------------------ tests


@dataclass(frozen=True)
class EquivalenceTest:
    """Compact minus full over the paired seeds: interval, difference test, equivalence test."""

    n: int
    difference: stats.Interval  # 95 % t interval of mean(compact - full)
    p_value: float  # two-sided paired t test of mean(d) = 0; nan when n < 2
    margin: float  # the equivalence margin (absolute, in the metric's units)
    tost_p: float  # TOST p of |mean(d)| >= margin; nan when n < 2 or no margin


def margin_of(baseline_mean: float, relative: float = RELATIVE_MARGIN) -> float:
    """``relative`` x |baseline mean|; nan when the mean is missing or 0 (no margin)."""
    if not math.isfinite(baseline_mean) or baseline_mean == 0:
        return NAN
    return relative * abs(baseline_mean)


def equivalence_test(
    compact: Mapping[int, float],
    baseline: Mapping[int, float],
    margin: float,
    confidence: float = 0.95,
) -> EquivalenceTest:
    """``compact - baseline`` paired by seed (seeds finite in both), with TOST at ``margin``."""
    paired = stats.paired_comparison(compact, baseline, confidence)
    seeds = [s for s in compact if s in baseline]
    d = np.asarray([float(compact[s]) - float(baseline[s]) for s in seeds], dtype=float)
    d = d[np.isfinite(d)]
    if paired.n < 2 or not (math.isfinite(margin) and margin > 0):
        tost = NAN
    elif np.all(d == d[0]):  # sd 0: scipy's t is meaningless; the difference is known exactly
        tost = 0.0 if abs(d[0]) < margin else 1.0
    else:
        lower = scipy.stats.ttest_1samp(d, -margin, alternative="greater").pvalue
        upper = scipy.stats.ttest_1samp(d, margin, alternative="less").pvalue
        tost = float(max(lower, upper))
    return EquivalenceTest(paired.n, paired.difference, paired.p_value, margin, tost)


def verdict(
    test: EquivalenceTest,
    adjusted_p: float,
    adjusted_tost_p: float,
    higher_is_better: bool,
    alpha: float = ALPHA,
) -> tuple[str, bool]:
    """The verdict and whether the difference lies within the margin, from Holm-adjusted
    p-values (see the module docstring)."""
    within = adjusted_tost_p <= alpha  # False for nan
    if test.n >= 2 and adjusted_p <= alpha:
        improves = test.difference.mean > 0 if higher_is_better else test.difference.mean < 0
        return ("better" if improves else "worse"), within
    if within and test.difference.contains(0.0):
        return "indistinguishable", within
    return "inconclusive", within


# ------------------------------------------------------------------ the analysis


@dataclass
class Comparison:
    """One compact arm against its baseline on one task."""

    task: str
    metric: str
    higher_is_better: bool
    pair: Pair
    test: EquivalenceTest
    baseline_mean: float
    compact_mean: float
    baseline_seeds: int = 0  # finished (finite) seeds of each arm
    compact_seeds: int = 0
    baseline_diverged: int = 0
    compact_diverged: int = 0
    baseline_lr: float = NAN
    compact_lr: float = NAN
    same_hparams: bool = True  # the two arms trained with the same hyper-parameters but state
    adjusted_p: float = NAN
    adjusted_tost_p: float = NAN
    verdict: str = ""
    within_margin: bool = False
    study_adjusted_p: float = NAN  # Holm over every comparison of the study
    study_adjusted_tost_p: float = NAN
    study_verdict: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def relative(self) -> float:
        """The mean difference as a share of the baseline's mean (signed)."""
        if not math.isfinite(self.baseline_mean) or self.baseline_mean == 0:
            return NAN
        return self.test.difference.mean / abs(self.baseline_mean)


def judge(comparisons: Sequence[Comparison], alpha: float = ALPHA, *, study: bool = False) -> None:
    """Holm over ``comparisons`` (one family) for both tests, then each one's verdict; sets
    ``adjusted_p``, ``adjusted_tost_p``, ``verdict``, ``within_margin`` (``study=True``: the
    ``study_*`` fields instead)."""
    adjusted = stats.holm_adjusted([c.test.p_value for c in comparisons])
    adjusted_tost = stats.holm_adjusted([c.test.tost_p for c in comparisons])
    for c, p, p_tost in zip(comparisons, adjusted, adjusted_tost, strict=True):
        word, within = verdict(c.test, p, p_tost, c.higher_is_better, alpha)
        if study:
            c.study_adjusted_p, c.study_adjusted_tost_p, c.study_verdict = p, p_tost, word
        else:
            c.adjusted_p, c.adjusted_tost_p = p, p_tost
            c.verdict, c.within_margin = word, within


def analyze(
    arms: Sequence[Any],
    rows_by_task: Mapping[str, Sequence[Any]],
    alpha: float = ALPHA,
    relative_margin: float = RELATIVE_MARGIN,
) -> list[Comparison]:
    """Every compact arm against its baseline on every task (rows: the report's
    :class:`~optlab.lab.summary.SummaryRow`), judged with Holm per task and over the study."""
    pairs = baseline_pairs(arms)
    results: list[Comparison] = []
    for task, rows in rows_by_task.items():
        by_arm = {row.arm: row for row in rows}
        family = []
        for pair in pairs:
            base, comp = by_arm.get(pair.baseline), by_arm.get(pair.compact)
            if base is None or comp is None:
                continue
            margin = margin_of(stats.mean_ci(base.final_by_seed.values()).mean, relative_margin)
            test = equivalence_test(comp.final_by_seed, base.final_by_seed, margin)
            others = {k: v for k, v in base.hparams.items() if k != "state_dtype"}
            mine = {k: v for k, v in comp.hparams.items() if k != "state_dtype"}
            c = Comparison(
                task=task,
                metric=base.metric,
                higher_is_better=base.higher_is_better,
                pair=pair,
                test=test,
                baseline_mean=stats.mean_ci(base.final_by_seed.values()).mean,
                compact_mean=stats.mean_ci(comp.final_by_seed.values()).mean,
                baseline_seeds=len(base.final_by_seed),
                compact_seeds=len(comp.final_by_seed),
                baseline_diverged=base.diverged,
                compact_diverged=comp.diverged,
                baseline_lr=_float(base.hparams.get("lr")),
                compact_lr=_float(comp.hparams.get("lr")),
                same_hparams=others == mine,
            )
            c.notes = _notes(c, base, comp)
            family.append(c)
        judge(family, alpha)
        results += family
    judge(results, alpha, study=True)
    return results


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return NAN


def _notes(c: Comparison, base: Any, comp: Any) -> list[str]:
    notes = []
    for label, row in ((c.pair.baseline, base), (c.pair.compact, comp)):
        if row.diverged:
            notes.append(f"{label}: {row.diverged} of {row.seeds} seeds diverged")
        if row.missing:
            notes.append(f"{label}: {row.missing} seeds missing")
    if c.test.n < 2:
        notes.append(f"{c.test.n} paired seed{'s' if c.test.n != 1 else ''}: no test")
    if not math.isfinite(c.test.margin):
        notes.append("no margin (the baseline's mean is 0 or missing)")
    if not c.same_hparams:
        notes.append("the two arms chose different hyper-parameters")
    return notes


# ------------------------------------------------------------------------ words


def _num(value: float, metric: str, signed: bool = False) -> str:
    if not math.isfinite(value):
        return "nan"
    spec = ".4f" if metric == "accuracy" and not signed else ".3g"
    return format(value, ("+" if signed else "") + spec)


def _p(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.2g}"


def _interval(c: Comparison) -> str:
    i = c.test.difference
    if not i.has_interval:
        return f"{_num(i.mean, c.metric, True)} (n={i.n}, no interval)"
    return f"{_num(i.mean, c.metric, True)} [{_num(i.low, c.metric, True)}, {_num(i.high, c.metric, True)}]"


def _lr(c: Comparison) -> str:
    if c.baseline_lr == c.compact_lr or not (
        math.isfinite(c.baseline_lr) or math.isfinite(c.compact_lr)
    ):
        return "same" + (f" ({c.compact_lr:g})" if math.isfinite(c.compact_lr) else "")
    return f"{c.compact_lr:g} vs {c.baseline_lr:g}"


def verdict_text(c: Comparison) -> str:
    """The verdict, with "within margin" for a difference real but smaller than the margin."""
    text = c.verdict
    if c.verdict in ("better", "worse") and c.within_margin:
        text += ", within margin"
    elif c.verdict == "inconclusive" and c.within_margin:
        text += " (within margin, but the 95 % CI excludes 0)"
    return text


COLUMNS = [
    "compact arm", "full", "compact", "compact - full [95% CI]", "rel.", "margin", "n", "lr",
    "p (Holm)", "p TOST (Holm)", "verdict",
]  # fmt: skip


def _cells(c: Comparison) -> list[str]:
    return [
        c.pair.compact,
        _num(c.baseline_mean, c.metric),
        _num(c.compact_mean, c.metric),
        _interval(c),
        f"{100 * c.relative:+.2g}%" if math.isfinite(c.relative) else "nan",
        "±" + _num(c.test.margin, c.metric) if math.isfinite(c.test.margin) else "none",
        str(c.test.n),
        _lr(c),
        _p(c.adjusted_p),
        _p(c.adjusted_tost_p),
        verdict_text(c),
    ]


def _by_task(comparisons: Sequence[Comparison]) -> dict[str, list[Comparison]]:
    grouped: dict[str, list[Comparison]] = {}
    for c in comparisons:
        grouped.setdefault(c.task, []).append(c)
    return grouped


def _matrix(comparisons: Sequence[Comparison]) -> tuple[list[str], list[list[str]]]:
    """Compact arms down, tasks across, the verdict in each cell ("-" where not compared)."""
    tasks = list(_by_task(comparisons))
    arms = list(dict.fromkeys(c.pair.compact for c in comparisons))
    cell = {(c.pair.compact, c.task): c for c in comparisons}
    rows = []
    for arm in arms:
        rows.append(
            [arm] + [verdict_text(cell[(arm, t)]) if (arm, t) in cell else "-" for t in tasks]
        )
    return ["compact arm", *tasks], rows


def _study_changes(comparisons: Sequence[Comparison]) -> list[str]:
    return [
        f"{c.pair.compact} on {c.task}: {c.verdict} -> {c.study_verdict}"
        for c in comparisons
        if c.study_verdict != c.verdict
    ]


def format_text(comparisons: Sequence[Comparison]) -> str:
    """The verdict matrix as aligned text (the terminal)."""
    from optlab.lab.tables import _aligned

    header, cells = _matrix(comparisons)
    title = (
        "compact state against full precision (compact - full paired by seed, Holm per task; "
        f"indistinguishable: 95% CI holds 0 and TOST at ±{RELATIVE_MARGIN:.0%} of the full arm)"
    )
    return _aligned(header, cells, title)


def format_markdown(comparisons: Sequence[Comparison], csv_name: str | None = None) -> str:
    """The report section: what was done, the verdict matrix, a table per task, notes."""
    from optlab.lab.tables import _markdown

    lines = [
        "## Compact state against full precision",
        "",
        "Each arm with compact optimizer state (`state_dtype` bfloat16 or int8) against the arm "
        "of the same optimizer and hyper-parameters with full-precision state, on the final test "
        "metric: d_k = compact - full on each seed k finished by both (seed k of both arms starts "
        "from the same weights and sees the same batches), its 95 % Student t interval, the "
        "two-sided paired t test of mean(d) = 0 and an equivalence test (TOST: two one-sided t "
        f"tests of mean(d) against ±margin, margin = {RELATIVE_MARGIN:.0%} of the full-precision "
        "arm's mean on the task). Holm over the compact arms of each task, separately for the "
        f"difference and the equivalence tests, at {ALPHA:g}. Verdict: **better** / **worse** "
        'where the corrected difference test rejects 0 ("within margin": the equivalence test '
        "passed as well, so the difference is real but smaller than the margin); "
        "**indistinguishable** only where the 95 % interval holds 0 and the corrected "
        "equivalence test passes; **inconclusive** otherwise (the data cannot tell). `lr`: the "
        'learning rate each arm\'s tuning chose ("same": the comparison is at the same '
        "hyper-parameters; otherwise the difference includes the different choice).",
        "",
    ]
    header, cells = _matrix(comparisons)
    lines += [_markdown(header, cells), ""]
    changes = _study_changes(comparisons)
    total = len(comparisons)
    if changes:
        lines += [
            f"With all {total} comparisons of the study as one Holm family (stricter): "
            + "; ".join(changes)
            + ".",
            "",
        ]
    elif comparisons:
        lines += [
            f"With all {total} comparisons of the study as one Holm family the verdicts stay "
            "the same.",
            "",
        ]
    for task, group in _by_task(comparisons).items():
        c0 = group[0]
        direction = "higher" if c0.higher_is_better else "lower"
        lines += [f"### {task}: final {c0.metric} ({direction} is better)", ""]
        lines += [_markdown(COLUMNS, [_cells(c) for c in group]), ""]
        notes = [f"{c.pair.compact}: " + "; ".join(c.notes) for c in group if c.notes]
        lines += [f"- {note}" for note in notes] + ([""] if notes else [])
    if csv_name:
        lines += [f"Every number of these tables, unrounded: `{csv_name}`.", ""]
    return "\n".join(lines)


CSV_COLUMNS = [
    "task", "compact_arm", "baseline_arm", "optimizer", "state_dtype", "metric",
    "higher_is_better", "baseline_mean", "compact_mean", "baseline_seeds", "compact_seeds",
    "baseline_diverged", "compact_diverged", "paired_seeds", "diff_mean", "diff_ci_low",
    "diff_ci_high", "relative_diff", "margin", "p", "p_holm", "p_tost", "p_tost_holm",
    "verdict", "within_margin", "p_holm_study", "p_tost_holm_study", "verdict_study",
    "baseline_lr", "compact_lr", "same_hparams", "notes",
]  # fmt: skip


def write_csv(comparisons: Sequence[Comparison], path: str | os.PathLike[str]) -> Path:
    """One row per comparison, every number unrounded (:data:`CSV_COLUMNS`)."""
    from optlab.lab.tables import _write_csv

    rows = []
    for c in comparisons:
        i = c.test.difference
        rows.append([
            c.task, c.pair.compact, c.pair.baseline, c.pair.optimizer, c.pair.state_dtype,
            c.metric, c.higher_is_better, c.baseline_mean, c.compact_mean, c.baseline_seeds,
            c.compact_seeds, c.baseline_diverged, c.compact_diverged, c.test.n, i.mean, i.low,
            i.high, c.relative, c.test.margin, c.test.p_value, c.adjusted_p, c.test.tost_p,
            c.adjusted_tost_p, c.verdict, c.within_margin, c.study_adjusted_p,
            c.study_adjusted_tost_p, c.study_verdict, c.baseline_lr, c.compact_lr,
            c.same_hparams, "; ".join(c.notes),
        ])  # fmt: skip
    return _write_csv(path, CSV_COLUMNS, rows)


@dataclass
class PrecisionReport:
    """What :func:`precision_report` made: the comparisons, the terminal text, the report
    section and the CSV file."""

    comparisons: list[Comparison]
    text: str
    markdown: str
    csv: Path


CSV_NAME = "state-dtype.csv"


def precision_report(
    arms: Sequence[Any], rows_by_task: Mapping[str, Sequence[Any]], root: str | os.PathLike[str]
) -> PrecisionReport | None:
    """The comparisons of a study with compact-state arms and their baselines (``None``
    when it has none), with ``root/state-dtype.csv`` written."""
    comparisons = analyze(arms, rows_by_task)
    if not comparisons:
        return None
    path = write_csv(comparisons, Path(root) / CSV_NAME)
    return PrecisionReport(
        comparisons, format_text(comparisons), format_markdown(comparisons, CSV_NAME), path
    )
