"""The belief / eps factorial: main effects, interactions and verdicts computed from a study.

AdaBelief changes two things relative to Adam: the second-moment input (``g²``
becomes the belief ``(g - m)²``) and where eps goes (outside the root as in
Adam; inside it but not stored; inside and accumulated into the state as EAdam
and AdaBelief do). A study whose arms are cells of that 2 x 3 layout (see
:func:`cell_of`) gets, per task, from the final test metric of its seeds:

- the **main effect** of each factor: the mean over the other factor's levels of
  the difference between two levels, with its paired 95 % interval (seed k of
  every cell shares its initial weights and data order, so every contrast is a
  per-seed number; :func:`optlab.lab.stats.contrast`);
- the **interactions** (differences of differences);
- the **decomposition of AdaBelief's gain over Adam**: ``(belief, accumulated) -
  (g2, outside)`` = ``[(g2, accumulated) - (g2, outside)]`` (moving eps inside
  and accumulating it, which is EAdam) + ``[(belief, accumulated) - (g2,
  accumulated)]`` (the belief term, given that eps placement);
- **verdict sentences** generated from these numbers: a part is "distinguishable
  from zero" when its 95 % interval excludes 0, and nothing else decides.

Differences are oriented so that a positive number is an improvement (higher
accuracy, lower bits per character or loss). The intervals are per task and per
contrast, not corrected across tasks or contrasts: read a single verdict at
95 %, and many of them with that in mind.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from optlab.lab import stats

__all__ = [
    "EPS_LEVELS",
    "MOMENT_LEVELS",
    "FactorialResult",
    "analyze_task",
    "cell_of",
    "format_factorial",
    "verdicts",
]

#: The second-moment input: ``g2`` (Adam) or ``belief`` (AdaBelief).
MOMENT_LEVELS: tuple[str, ...] = ("g2", "belief")
#: Where eps goes: ``outside`` the root (Adam), ``inside`` it but not stored, or
#: ``accumulated`` into the state every step (EAdam, AdaBelief).
EPS_LEVELS: tuple[str, ...] = ("outside", "inside", "accumulated")

ADAM_CELL = ("g2", "outside")
EADAM_CELL = ("g2", "accumulated")
ADABELIEF_CELL = ("belief", "accumulated")


def cell_of(optimizer: str, hparams: Mapping[str, Any]) -> tuple[str, str] | None:
    """The (moment, eps) cell an arm trains, from its optimizer's options
    (:class:`optlab.optim.belief_eps.BeliefEps`: ``second_moment`` ``grad_sq`` or
    ``belief``, ``eps_mode``); ``None`` for an optimizer outside the factorial (an arm of
    another optimizer, or a rectified cell)."""
    from optlab.optim.registry import get_spec

    try:
        values = {**get_spec(optimizer).defaults(), **dict(hparams)}
    except ValueError:
        return None
    moment = {"grad_sq": "g2", "belief": "belief"}.get(values.get("second_moment"))
    eps = values.get("eps_mode")
    if moment is None or eps not in EPS_LEVELS or values.get("rectify"):
        return None
    return moment, eps


@dataclass
class Part:
    """One contrast: its oriented difference (positive = better) with interval and test."""

    name: str
    comparison: stats.PairedComparison

    @property
    def interval(self) -> stats.Interval:
        return self.comparison.difference

    @property
    def distinguishable(self) -> bool:
        """The 95 % interval excludes 0 (needs at least two paired seeds)."""
        i = self.interval
        return i.has_interval and (i.low > 0 or i.high < 0)


@dataclass
class FactorialResult:
    """The factorial analysis of one task."""

    task: str
    metric: str
    higher_is_better: bool
    cells: dict[tuple[str, str], str]  # cell -> arm label
    moment: dict[tuple[str, str], Part] = field(default_factory=dict)
    eps: dict[tuple[str, str], Part] = field(default_factory=dict)
    interaction: dict[Any, Part] = field(default_factory=dict)
    gain: Part | None = None
    gain_eps: Part | None = None
    gain_belief: Part | None = None
    missing: list[tuple[str, str]] = field(default_factory=list)
    #: The Adam cell's mean final metric (the scale the differences are read against).
    adam_mean: float = math.nan


def analyze_task(
    task: str,
    metric: str,
    higher_is_better: bool,
    by_label: Mapping[str, Mapping[int, float]],
    cells: Mapping[str, tuple[str, str]],
) -> FactorialResult:
    """The analysis of one task from each arm's final metric by seed.

    Args:
        by_label: arm label -> seed -> final test metric (diverged seeds left out).
        cells: arm label -> (moment level, eps level), for the arms that are cells.
    """
    sign = 1.0 if higher_is_better else -1.0
    oriented: dict[tuple[str, str], dict[int, float]] = {}
    labels: dict[tuple[str, str], str] = {}
    for label, cell in cells.items():
        if cell in labels:  # two arms of one cell: the first in study order counts
            continue
        labels[cell] = label
        oriented[cell] = {seed: sign * value for seed, value in by_label.get(label, {}).items()}
    result = FactorialResult(task, metric, higher_is_better, labels)
    adam = [value for value in by_label.get(labels.get(ADAM_CELL, ""), {}).values()]
    result.adam_mean = sum(adam) / len(adam) if adam else math.nan
    layout = [(m, e) for m in MOMENT_LEVELS for e in EPS_LEVELS]
    result.missing = [cell for cell in layout if not oriented.get(cell)]
    present = {cell: values for cell, values in oriented.items() if values}
    moments = [m for m in MOMENT_LEVELS if all((m, e) in present for e in _eps_present(present))]
    eps_levels = _eps_present(present)
    if len(moments) == 2 and len(eps_levels) >= 2:
        effects = stats.main_effects({(m, e): present[(m, e)] for m in moments for e in eps_levels})
        result.moment = {key: Part(f"{key[0]} - {key[1]}", c) for key, c in effects["A"].items()}
        result.eps = {key: Part(f"{key[0]} - {key[1]}", c) for key, c in effects["B"].items()}
        result.interaction = {
            key: Part(f"({key[0][0]} - {key[0][1]}) x ({key[1][0]} - {key[1][1]})", c)
            for key, c in effects["interaction"].items()
        }
    if all(cell in present for cell in (ADAM_CELL, EADAM_CELL, ADABELIEF_CELL)):
        cells_map = {cell: present[cell] for cell in (ADAM_CELL, EADAM_CELL, ADABELIEF_CELL)}
        named = {"adam": ADAM_CELL, "eadam": EADAM_CELL, "adabelief": ADABELIEF_CELL}
        values = {name: cells_map[cell] for name, cell in named.items()}
        result.gain = Part("AdaBelief - Adam", stats.contrast(values, {"adabelief": 1, "adam": -1}))
        result.gain_eps = Part(
            "eps moved inside and accumulated (EAdam - Adam)",
            stats.contrast(values, {"eadam": 1, "adam": -1}),
        )
        result.gain_belief = Part(
            "belief term (AdaBelief - EAdam)",
            stats.contrast(values, {"adabelief": 1, "eadam": -1}),
        )
    return result


def _eps_present(present: Mapping[tuple[str, str], Any]) -> list[str]:
    return [e for e in EPS_LEVELS if all((m, e) in present for m in MOMENT_LEVELS)]


# ------------------------------------------------------------------------ words


def _number(value: float) -> str:
    return "nan" if not math.isfinite(value) else f"{value:+.3g}"


def _interval_text(part: Part, scale: float = math.nan) -> str:
    """``+0.012 [+0.004, +0.02]``, and with ``scale`` (the Adam cell's mean) the mean as a
    share of it, so a difference that is certain but tiny reads as tiny."""
    i = part.interval
    relative = ""
    if math.isfinite(scale) and scale != 0 and math.isfinite(i.mean):
        relative = f" ({abs(i.mean / scale):.2%} of Adam's {_plain(scale)})"
    if not i.has_interval:
        return f"{_number(i.mean)} (n={i.n}, no interval){relative}"
    return f"{_number(i.mean)} [{_number(i.low)}, {_number(i.high)}]{relative}"


def _plain(value: float) -> str:
    return f"{value:.4g}"


def _judged(part: Part) -> str:
    if not part.interval.has_interval:
        return "cannot be judged with fewer than two seeds"
    return "distinguishable from zero" if part.distinguishable else "not distinguishable from zero"


def verdicts(result: FactorialResult) -> list[str]:
    """Sentences that say what the numbers of ``result`` show, and nothing more."""
    units = f"{result.metric} ({'higher' if result.higher_is_better else 'lower'} is better; "
    units += "differences oriented so that + is an improvement)"
    lines = []
    scale = result.adam_mean
    parts = [result.gain, *result.moment.values(), *result.eps.values()]
    tested = [part for part in parts if part is not None]
    if tested and not any(part.interval.has_interval for part in tested):
        seeds = max(part.comparison.n for part in tested)
        return [
            f"On {result.task}, the contrasts rest on {seeds} paired seed"
            f"{'s' if seeds != 1 else ''}: nothing can be judged yet (no interval with "
            "fewer than two)."
        ]
    if result.gain is not None:
        gain, eps_part, belief = result.gain, result.gain_eps, result.gain_belief
        assert eps_part is not None and belief is not None
        if gain.distinguishable:
            share = eps_part.interval.mean / gain.interval.mean if gain.interval.mean else math.nan
            lines.append(
                f"On {result.task}, AdaBelief's cell differs from Adam's by "
                f"{_interval_text(gain, scale)} in {units}; moving eps inside and accumulating it "
                f"accounts for {_interval_text(eps_part, scale)} ({share:.0%} of the difference, "
                f"{_judged(eps_part)}), the belief term for {_interval_text(belief, scale)} "
                f"({_judged(belief)})."
            )
        else:
            lines.append(
                f"On {result.task}, AdaBelief's cell and Adam's are not told apart "
                f"({_interval_text(gain, scale)} in {units}, {_judged(gain)}): there is no gain to "
                f"explain; moving eps inside and accumulating it changes the metric by "
                f"{_interval_text(eps_part, scale)} ({_judged(eps_part)}), the belief term by "
                f"{_interval_text(belief, scale)} ({_judged(belief)})."
            )
    for parts, what in (
        (result.moment, "the belief input instead of g²"),
        (result.eps, "the eps placement"),
    ):
        for part in parts.values():
            lines.append(
                f"On {result.task}, main effect of {what} ({part.name}, averaged over the other "
                f"factor): {_interval_text(part, scale)}, {_judged(part)}."
            )
    distinguishable = [p for p in result.interaction.values() if p.distinguishable]
    if result.interaction:
        lines.append(
            f"On {result.task}, "
            + (
                f"{len(distinguishable)} of {len(result.interaction)} interactions are "
                "distinguishable from zero: "
                + "; ".join(f"{p.name} {_interval_text(p)}" for p in distinguishable)
                if distinguishable
                else "no interaction of the two factors is distinguishable from zero"
            )
            + "."
        )
    if not lines:
        missing = ", ".join(f"({m}, {e})" for m, e in result.missing)
        lines.append(f"On {result.task}, the factorial is incomplete (missing cells: {missing}).")
    return lines


def format_factorial(results: Sequence[FactorialResult]) -> str:
    """Per task: the cells, the contrasts with their intervals, and the verdicts (markdown)."""
    lines = []
    for result in results:
        lines += [f"### {result.task}", ""]
        lines += [
            "| contrast | difference [95% CI] | paired seeds | verdict |",
            "|---|---|---|---|",
        ]
        parts = [result.gain, result.gain_eps, result.gain_belief]
        parts += [*result.moment.values(), *result.eps.values(), *result.interaction.values()]
        for part in parts:
            if part is not None:
                lines.append(
                    f"| {part.name} | {_interval_text(part)} | {part.comparison.n} | "
                    f"{_judged(part)} |"
                )
        lines += [""] + [f"- {sentence}" for sentence in verdicts(result)] + [""]
    return "\n".join(lines)
