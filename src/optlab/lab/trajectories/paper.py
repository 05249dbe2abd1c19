"""The AdaBelief paper's toy comparison (Zhuang et al., NeurIPS 2020, Fig. 3).

SGD with momentum 0.9, Adam and AdaBelief, every one with the same learning
rate and otherwise its registry defaults, run from the same start on the
paper's six toy cases. The paper reports AdaBelief reaching the optimum
fastest in every case; this module measures the number of steps each
optimizer needs to come within a tolerance of the optimum and reports what
it finds.

Starts are those used by public reproductions of the figure (the paper does
not list them), with one change: the reproductions start ``|x| + |y|`` at
(-2.5, 0), on the kink ``y = 0``, where the subgradient autograd returns for
``|y|`` is 0, so y never moves and the 2-D case collapses to 1-D. optlab
starts it (and ``|x|/10 + |y|``, for which no start is published) at
(-2.5, 0.5). Every start is a parameter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .functions import TestFunction, get_function
from .run import Trajectory, run_optimizer, steps_to_tolerance

__all__ = [
    "PAPER_CASES",
    "PAPER_OPTIMIZERS",
    "PaperCase",
    "paper_functions",
    "paper_table",
    "run_paper",
]

#: SGD with momentum (registry alias ``momentum`` = SGD, momentum 0.9), Adam, AdaBelief.
PAPER_OPTIMIZERS: tuple[str, ...] = ("momentum", "adam", "adabelief")


@dataclass(frozen=True)
class PaperCase:
    """One panel: a function, the start and the window it is drawn in."""

    label: str
    function: str
    start: tuple[float, float]
    window: tuple[tuple[float, float], tuple[float, float]]

    def build(self) -> TestFunction:
        return get_function(self.function).with_start(self.start).with_window(self.window)


PAPER_CASES: tuple[PaperCase, ...] = (
    PaperCase("(a)", "abs", (-2.5, 0.5), ((-3.0, 3.0), (-3.0, 3.0))),
    PaperCase("(b)", "abs-rotated", (2.5, 0.0), ((-3.0, 3.0), (-3.0, 3.0))),
    PaperCase("(c)", "quadratic-rotated", (2.5, 0.0), ((-3.0, 3.0), (-3.0, 3.0))),
    PaperCase("(d)", "abs-scaled", (-2.5, 0.5), ((-3.0, 3.0), (-3.0, 3.0))),
    PaperCase("(e)", "beale", (-2.5, -2.5), ((-4.0, 4.0), (-4.0, 4.0))),
    PaperCase("(f)", "rosenbrock", (-4.0, -4.0), ((-6.0, 6.0), (-6.0, 20.0))),
)


def paper_functions() -> list[tuple[PaperCase, TestFunction]]:
    return [(case, case.build()) for case in PAPER_CASES]


def run_paper(
    *,
    lr: float,
    steps: int,
    optimizers: Sequence[str] = PAPER_OPTIMIZERS,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    cases: Sequence[PaperCase] = PAPER_CASES,
    clip_grad_norm: float | None = None,
) -> list[tuple[PaperCase, TestFunction, list[Trajectory]]]:
    """Every optimizer on every case with the same ``lr``; ``options`` per optimizer name."""
    options = options or {}
    results = []
    for case in cases:
        function = case.build()
        trajectories = [
            run_optimizer(
                function,
                name,
                steps=steps,
                lr=lr,
                hparams=options.get(name, {}),
                clip_grad_norm=clip_grad_norm,
            )
            for name in optimizers
        ]
        results.append((case, function, trajectories))
    return results


def paper_table(
    results: Sequence[tuple[PaperCase, TestFunction, Sequence[Trajectory]]],
    tolerance: float,
) -> tuple[list[str], list[list[str]], list[dict[str, Any]]]:
    """Steps to within ``tolerance`` of the optimum: columns, text rows, plain records.

    A cell is the first step at which the distance falls below the
    tolerance, ``never`` if it does not within the run, or ``diverged``.
    The last column names the fastest optimizer (ties listed together).
    """
    if not results:
        return [], [], []
    names = [t.optimizer for t in results[0][2]]
    columns = ["case", "f", "start", *names, "fastest"]
    rows: list[list[str]] = []
    records: list[dict[str, Any]] = []
    for case, function, trajectories in results:
        reached: dict[str, int | None] = {}
        cells = []
        for trajectory in trajectories:
            step = steps_to_tolerance(trajectory.distances(function), tolerance)
            reached[trajectory.optimizer] = step
            if step is not None:
                cells.append(str(step))
            elif trajectory.diverged_at is not None:
                cells.append(f"diverged ({trajectory.diverged_at})")
            else:
                cells.append("never")
            records.append(
                {
                    "case": case.label,
                    "function": function.name,
                    "start": list(case.start),
                    "optimizer": trajectory.optimizer,
                    "lr": trajectory.lr,
                    "hparams": dict(
                        trajectory.effective_hparams
                        if trajectory.effective_hparams is not None
                        else trajectory.hparams
                    ),
                    "steps": trajectory.steps,
                    "steps_to_tolerance": step,
                    "diverged_at": trajectory.diverged_at,
                }
            )
        finished = {name: step for name, step in reached.items() if step is not None}
        if finished:
            best = min(finished.values())
            fastest = ", ".join(name for name, step in finished.items() if step == best)
        else:
            fastest = "none"
        start = "(" + ", ".join(f"{v:g}" for v in case.start) + ")"
        rows.append([case.label, function.formula, start, *cells, fastest])
    return columns, rows, records
