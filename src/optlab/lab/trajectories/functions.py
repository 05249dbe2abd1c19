"""Test functions for watching optimizers move: formulas, minima, windows, starts.

Each :class:`TestFunction` is a torch expression over the last dimension of
a tensor (``xy[..., 0]`` is x, ``xy[..., 1]`` is y), so one definition serves
autograd during a run, the contour grid of a plot and the loss column of a
table. Minima are analytic (Himmelblau's three irrational ones to double
precision, from Newton's method on the exact gradient); a function without a
minimum (the saddle) says so with an empty ``minima``.

Sources: Rosenbrock (1960), Rastrigin (1974), Beale (1958), Himmelblau
(1972), Booth, as catalogued by Surjanovic & Bingham's Virtual Library of
Simulation Experiments; the ill-conditioned quadratic is the example of
d2l.ai's optimisation chapter; the last four 2-D cases are the toy problems
of the AdaBelief paper (Zhuang et al., NeurIPS 2020, Fig. 3).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

__all__ = ["FUNCTIONS", "TestFunction", "get_function", "list_functions"]


@dataclass(frozen=True)
class TestFunction:
    """One test function.

    Attributes:
        name: registry name used on the command line, e.g. ``"rosenbrock"``.
        formula: the formula as text, for titles and ``--list``.
        expression: ``f(xy) -> Tensor`` over the last dimension of ``xy``.
        dim: 1 or 2.
        minima: the global minimisers (nearest one is the target); empty
            when the function has no minimum.
        min_value: the value at every listed minimum (``None`` if none).
        window: plotting window ``((x_low, x_high), (y_low, y_high))``; for
            ``dim == 1`` the second pair is the range of f shown.
        start: default starting point.
        log_levels: draw contour levels on a log scale (the function spans
            decades over the window).
        smooth: twice differentiable everywhere (False for the ``|.|`` cases).
        note: one line shown by ``--list`` (what is special about it).
    """

    __test__ = False  # not a pytest test class, despite the name

    name: str
    formula: str
    expression: Callable[[Tensor], Tensor]
    dim: int
    minima: tuple[tuple[float, ...], ...]
    min_value: float | None
    window: tuple[tuple[float, float], tuple[float, float]]
    start: tuple[float, ...]
    log_levels: bool = False
    smooth: bool = True
    note: str = ""
    default_optimizers: tuple[str, ...] = field(default=("sgd", "momentum", "adam", "adabelief"))

    def __call__(self, xy: Tensor) -> Tensor:
        return self.expression(xy)

    def with_start(self, start: tuple[float, ...]) -> TestFunction:
        """The same function started elsewhere (the window grows to show the start)."""
        if len(start) != self.dim:
            raise ValueError(
                f"start for {self.name!r} must have {self.dim} coordinate(s), got {len(start)}"
            )
        if not all(math.isfinite(value) for value in start):
            raise ValueError(f"start must be finite numbers, got {start!r}")
        window = self.window
        if self.dim == 2:
            (x_low, x_high), (y_low, y_high) = window
            x, y = start
            margin_x = 0.05 * (x_high - x_low)
            margin_y = 0.05 * (y_high - y_low)
            window = (
                (min(x_low, x - margin_x), max(x_high, x + margin_x)),
                (min(y_low, y - margin_y), max(y_high, y + margin_y)),
            )
        else:
            (x_low, x_high), f_range = window
            margin = 0.05 * (x_high - x_low)
            window = ((min(x_low, start[0] - margin), max(x_high, start[0] + margin)), f_range)
        return replace(self, start=tuple(float(v) for v in start), window=window)

    def with_window(self, window: tuple[tuple[float, float], tuple[float, float]]) -> TestFunction:
        return replace(self, window=window)

    def distance_to_minimum(self, points: Tensor) -> Tensor | None:
        """Distance of each point (``[..., dim]``) to the nearest listed minimum; None if none."""
        if not self.minima:
            return None
        minima = torch.tensor(self.minima, dtype=points.dtype, device=points.device)
        differences = points.unsqueeze(-2) - minima  # [..., n_minima, dim]
        return differences.norm(dim=-1).min(dim=-1).values


def _x(xy: Tensor) -> Tensor:
    return xy[..., 0]


def _y(xy: Tensor) -> Tensor:
    return xy[..., 1]


def _rosenbrock(xy: Tensor) -> Tensor:
    x, y = _x(xy), _y(xy)
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def _rastrigin(xy: Tensor) -> Tensor:
    x, y = _x(xy), _y(xy)
    two_pi = 2 * math.pi
    return 20 + x**2 - 10 * torch.cos(two_pi * x) + y**2 - 10 * torch.cos(two_pi * y)


def _beale(xy: Tensor) -> Tensor:
    x, y = _x(xy), _y(xy)
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


def _himmelblau(xy: Tensor) -> Tensor:
    x, y = _x(xy), _y(xy)
    return (x**2 + y - 11) ** 2 + (x + y**2 - 7) ** 2


def _booth(xy: Tensor) -> Tensor:
    x, y = _x(xy), _y(xy)
    return (x + 2 * y - 7) ** 2 + (2 * x + y - 5) ** 2


def _saddle(xy: Tensor) -> Tensor:
    return _x(xy) ** 2 - _y(xy) ** 2


def _ill_conditioned(xy: Tensor) -> Tensor:
    return 0.1 * _x(xy) ** 2 + 2 * _y(xy) ** 2


def _parabola(xy: Tensor) -> Tensor:
    return _x(xy) ** 2


def _abs_sum(xy: Tensor) -> Tensor:
    return _x(xy).abs() + _y(xy).abs()


def _abs_rotated(xy: Tensor) -> Tensor:
    x, y = _x(xy), _y(xy)
    return (x + y).abs() + (x - y).abs() / 10


def _quadratic_rotated(xy: Tensor) -> Tensor:
    x, y = _x(xy), _y(xy)
    return (x + y) ** 2 + (x - y) ** 2 / 10


def _abs_scaled(xy: Tensor) -> Tensor:
    return _x(xy).abs() / 10 + _y(xy).abs()


_PAPER = "AdaBelief paper toy case"

FUNCTIONS: dict[str, TestFunction] = {
    f.name: f
    for f in (
        TestFunction(
            "rosenbrock",
            "(1-x)² + 100(y-x²)²",
            _rosenbrock,
            2,
            minima=((1.0, 1.0),),
            min_value=0.0,
            window=((-2.3, 2.0), (-1.0, 3.2)),
            start=(-2.0, 2.0),
            log_levels=True,
            note="curved narrow valley; the AdaBelief paper starts it at (-4, -4)",
        ),
        TestFunction(
            "rastrigin",
            "20 + x² - 10cos(2πx) + y² - 10cos(2πy)",
            _rastrigin,
            2,
            minima=((0.0, 0.0),),
            min_value=0.0,
            window=((-4.5, 4.5), (-4.5, 4.5)),
            start=(-2.0, 3.5),
            note="many local minima; only the global one at the origin is listed",
        ),
        TestFunction(
            "beale",
            "(1.5-x+xy)² + (2.25-x+xy²)² + (2.625-x+xy³)²",
            _beale,
            2,
            minima=((3.0, 0.5),),
            min_value=0.0,
            window=((-4.5, 4.5), (-4.5, 4.5)),
            start=(1.0, 1.5),
            log_levels=True,
            note="flat plateaus and steep walls; the AdaBelief paper starts it at (-2.5, -2.5)",
        ),
        TestFunction(
            "himmelblau",
            "(x²+y-11)² + (x+y²-7)²",
            _himmelblau,
            2,
            minima=(
                (3.0, 2.0),
                (-2.805118086952745, 3.131312518250573),
                (-3.779310253377747, -3.2831859912861696),
                (3.5844283403304917, -1.8481265269644034),
            ),
            min_value=0.0,
            window=((-5.0, 5.0), (-5.0, 5.0)),
            start=(0.0, 0.0),
            log_levels=True,
            note="four global minima; distance is to the nearest",
        ),
        TestFunction(
            "booth",
            "(x+2y-7)² + (2x+y-5)²",
            _booth,
            2,
            minima=((1.0, 3.0),),
            min_value=0.0,
            window=((-10.0, 10.0), (-10.0, 10.0)),
            start=(-6.0, -6.0),
            log_levels=True,
            note="a convex quadratic with condition number 9",
        ),
        TestFunction(
            "saddle",
            "x² - y²",
            _saddle,
            2,
            minima=(),
            min_value=None,
            window=((-1.5, 1.5), (-1.5, 1.5)),
            start=(1.0, 1e-3),
            note="unbounded below; starts just off the ridge y = 0",
        ),
        TestFunction(
            "ill-conditioned",
            "0.1x² + 2y²",
            _ill_conditioned,
            2,
            minima=((0.0, 0.0),),
            min_value=0.0,
            window=((-5.5, 1.0), (-3.0, 1.0)),
            start=(-5.0, -2.0),
            log_levels=True,
            note="condition number 20 (d2l.ai's example)",
        ),
        TestFunction(
            "parabola",
            "x²",
            _parabola,
            1,
            minima=((0.0,),),
            min_value=0.0,
            window=((-6.0, 6.0), (-1.0, 30.0)),
            start=(5.0,),
            note="1-D; the textbook RMSProp demo starts at x = 5",
            default_optimizers=("rmsprop", "sgd", "adam", "adabelief"),
        ),
        TestFunction(
            "abs",
            "|x| + |y|",
            _abs_sum,
            2,
            minima=((0.0, 0.0),),
            min_value=0.0,
            window=((-3.0, 3.0), (-3.0, 3.0)),
            start=(-2.5, 0.5),
            smooth=False,
            note=_PAPER + " (a)",
        ),
        TestFunction(
            "abs-rotated",
            "|x+y| + |x-y|/10",
            _abs_rotated,
            2,
            minima=((0.0, 0.0),),
            min_value=0.0,
            window=((-3.0, 3.0), (-3.0, 3.0)),
            start=(2.5, 0.0),
            smooth=False,
            note=_PAPER + " (b)",
        ),
        TestFunction(
            "quadratic-rotated",
            "(x+y)² + (x-y)²/10",
            _quadratic_rotated,
            2,
            minima=((0.0, 0.0),),
            min_value=0.0,
            window=((-3.0, 3.0), (-3.0, 3.0)),
            start=(2.5, 0.0),
            log_levels=True,
            note=_PAPER + " (c)",
        ),
        TestFunction(
            "abs-scaled",
            "|x|/10 + |y|",
            _abs_scaled,
            2,
            minima=((0.0, 0.0),),
            min_value=0.0,
            window=((-3.0, 3.0), (-3.0, 3.0)),
            start=(-2.5, 0.5),
            smooth=False,
            note=_PAPER + " (d)",
        ),
    )
}


def list_functions() -> list[str]:
    """Registry names in catalogue order."""
    return list(FUNCTIONS)


def get_function(name: str) -> TestFunction:
    """The function registered as ``name``; ``ValueError`` listing the valid names."""
    try:
        return FUNCTIONS[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(
            f"unknown function {name!r}; valid names: {', '.join(list_functions())}"
        ) from None
