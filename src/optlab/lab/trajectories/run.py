"""Run optimizers on a test function and record every iterate.

:func:`simulate` runs one optimizer from one start for several learning
rates at once: each learning rate is a parameter group holding its own copy
of the point, and the loss is the sum of the copies' values. The gradients
of the copies do not mix (the sum separates) and every optlab optimizer
updates element by element, so each group follows exactly the path it would
follow alone; this makes a learning-rate sweep cost about one run.

There is no hidden gradient clipping: ``clip_grad_norm`` clips each run's
gradient (per copy, not across copies) only when asked, and the value is
written into the results. Iterates are float64. A run diverges at the first
step whose iterate is not finite or lies farther than :data:`ESCAPE_FACTOR`
window widths from the start (there it has left any picture and any
meaningful comparison); its path stops there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..train import evaluation_point
from .functions import TestFunction

__all__ = [
    "DEFAULT_LR_GRID",
    "Trajectory",
    "TuningResult",
    "effective_hparams",
    "run_optimizer",
    "simulate",
    "steps_to_tolerance",
    "summary_row",
    "tune_lr",
]

#: A run farther than this many window widths from its start has diverged.
ESCAPE_FACTOR = 1e6

#: Learning rates ``--tune`` tries: 1e-4 to 10, four per decade.
DEFAULT_LR_GRID: tuple[float, ...] = tuple(float(v) for v in np.logspace(-4, 1, 21))

OptimizerFactory = Callable[..., torch.optim.Optimizer]


@dataclass
class Trajectory:
    """One optimizer's path.

    Attributes:
        optimizer: the registry name (or a label for a custom factory).
        hparams: hyper-parameters given explicitly, ``lr`` included when one
            was given or tuned (otherwise the optimizer's default applies).
        effective_hparams: every option of the run's param group, defaults
            filled in (see :func:`effective_hparams`), so a record stays
            reproducible when defaults change; None in records written before.
        points: ``[n, dim]`` float64 iterates, ``points[0]`` the start; a
            diverged run stops at its last finite point.
        steps: the number of steps asked for.
        diverged_at: the first step whose iterate was not finite, else None.
        lr_source: ``"given"``, ``"tuned"`` or ``"default"``.
        clip_grad_norm: the per-run gradient-norm clip, None when off.
        tuning: the sweep behind a tuned lr (see :class:`TuningResult`).
    """

    optimizer: str
    hparams: dict[str, Any]
    points: np.ndarray
    steps: int
    diverged_at: int | None = None
    lr_source: str = "given"
    clip_grad_norm: float | None = None
    tuning: dict[str, Any] | None = field(default=None)
    effective_hparams: dict[str, Any] | None = None

    @property
    def lr(self) -> float | None:
        """The learning rate the run used: given, tuned, or the optimizer's default."""
        value = self.hparams.get("lr")
        if value is None and self.effective_hparams is not None:
            value = self.effective_hparams.get("lr")
        return None if value is None else float(value)

    def losses(self, function: TestFunction) -> np.ndarray:
        with torch.no_grad():
            return function(torch.from_numpy(self.points)).numpy()

    def distances(self, function: TestFunction) -> np.ndarray | None:
        distances = function.distance_to_minimum(torch.from_numpy(self.points))
        return None if distances is None else distances.numpy()


def _build(
    optimizer: str | OptimizerFactory,
    groups: list[dict[str, Any]],
    hparams: Mapping[str, Any],
) -> torch.optim.Optimizer:
    if isinstance(optimizer, str):
        from optlab.optim.registry import create_optimizer

        return create_optimizer(groups, optimizer, **hparams)
    return optimizer(groups, **hparams)


def _plain(value: Any) -> Any:
    """A JSON-ready copy of one option value (tuples become lists, tensors numbers)."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def effective_hparams(
    optimizer: str | OptimizerFactory,
    lr: float | None = None,
    hparams: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Every option a run of ``optimizer`` uses: its param group with the defaults filled in.

    Built the way :func:`simulate` builds the optimizer (``lr`` None keeps the
    default), on a throwaway parameter, and read back from ``param_groups``: what
    the optimizer itself filled in, not a copy of the defaults kept elsewhere.
    """
    probe = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    group = {"params": [probe], **({} if lr is None else {"lr": float(lr)})}
    built = _build(optimizer, [group], dict(hparams or {}))
    return {
        key: _plain(value)
        for key, value in sorted(built.param_groups[0].items())
        if key != "params"
    }


def simulate(
    function: TestFunction,
    optimizer: str | OptimizerFactory,
    lrs: Sequence[float | None],
    *,
    steps: int,
    start: Sequence[float] | None = None,
    hparams: Mapping[str, Any] | None = None,
    clip_grad_norm: float | None = None,
) -> tuple[np.ndarray, list[int | None]]:
    """Run ``optimizer`` from ``start`` once per learning rate, all in one loop.

    Args:
        function: the test function.
        optimizer: a registry name, or ``factory(param_groups, **hparams)``.
        lrs: one run per entry; ``None`` keeps the optimizer's default lr.
        steps: optimizer steps per run.
        start: starting point (default: the function's).
        hparams: the other hyper-parameters, shared by every run.
        clip_grad_norm: clip each run's gradient to this norm first.

    Returns:
        ``points`` of shape ``[steps + 1, len(lrs), dim]`` (float64; NaN
        after a run diverged) and, per run, the first step whose iterate
        was not finite (None if it never happened).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if clip_grad_norm is not None and not clip_grad_norm > 0:
        raise ValueError(f"clip_grad_norm must be > 0, got {clip_grad_norm!r}")
    start_point = torch.tensor(
        function.start if start is None else tuple(start), dtype=torch.float64
    )
    if start_point.shape != (function.dim,):
        raise ValueError(
            f"start for {function.name!r} must have {function.dim} coordinate(s), "
            f"got {tuple(start_point.tolist())}"
        )
    params = [start_point.clone().requires_grad_(True) for _ in lrs]
    groups = [
        {"params": [param], **({} if lr is None else {"lr": float(lr)})}
        for param, lr in zip(params, lrs, strict=True)
    ]
    opt = _build(optimizer, groups, dict(hparams or {}))
    points = torch.full((steps + 1, len(params), function.dim), math.nan, dtype=torch.float64)
    points[0] = start_point
    widths = [high - low for low, high in function.window[: function.dim]]
    escape = ESCAPE_FACTOR * max(widths)
    done = steps
    for step in range(1, steps + 1):
        opt.zero_grad(set_to_none=False)
        function(torch.stack(params)).sum().backward()
        if clip_grad_norm is not None:
            for param in params:
                torch.nn.utils.clip_grad_norm_([param], clip_grad_norm)
        opt.step()
        with torch.no_grad(), evaluation_point([opt]):  # Schedule-Free: the point x, not y
            torch.stack(params, out=points[step])
        if step % 64 == 0:
            offset = (points[step] - start_point).abs().amax(dim=-1)
            if not (offset <= escape).any():  # NaN compares False
                done = step  # every run has diverged: nothing left to watch
                break
    points_np = points[: done + 1].numpy().copy()
    if done < steps:
        points_np = np.concatenate(
            [points_np, np.full((steps - done, len(params), function.dim), np.nan)]
        )
    with np.errstate(invalid="ignore", over="ignore"):
        offset = np.abs(points_np - points_np[0]).max(axis=-1)
    finite = np.isfinite(points_np).all(axis=-1) & (offset <= escape)  # [steps + 1, runs]
    diverged_at: list[int | None] = []
    for run in range(len(params)):
        bad = np.flatnonzero(~finite[:, run])
        diverged_at.append(int(bad[0]) if bad.size else None)
    return points_np, diverged_at


@dataclass
class TuningResult:
    """A learning-rate sweep: the grid, the score of each lr, the winner."""

    grid: list[float]
    final_distances: list[float | None]  # None: diverged
    best_lr: float
    steps: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "criterion": "distance to the nearest minimum after `steps` steps",
            "steps": self.steps,
            "grid": self.grid,
            "final_distances": self.final_distances,
            "best_lr": self.best_lr,
        }


def _trajectory(
    name: str,
    hparams: Mapping[str, Any],
    lr: float | None,
    points: np.ndarray,
    diverged_at: int | None,
    steps: int,
    lr_source: str,
    clip_grad_norm: float | None,
    tuning: dict[str, Any] | None = None,
    optimizer: str | OptimizerFactory | None = None,
) -> Trajectory:
    kept = points if diverged_at is None else points[:diverged_at]
    full = dict(hparams)
    if lr is not None:
        full["lr"] = float(lr)
    return Trajectory(
        optimizer=name,
        hparams=full,
        points=np.ascontiguousarray(kept),
        steps=steps,
        diverged_at=diverged_at,
        lr_source=lr_source,
        clip_grad_norm=clip_grad_norm,
        tuning=tuning,
        effective_hparams=None if optimizer is None else effective_hparams(optimizer, lr, hparams),
    )


def tune_lr(
    function: TestFunction,
    optimizer: str | OptimizerFactory,
    *,
    steps: int,
    grid: Sequence[float] = DEFAULT_LR_GRID,
    start: Sequence[float] | None = None,
    hparams: Mapping[str, Any] | None = None,
    clip_grad_norm: float | None = None,
    label: str | None = None,
) -> Trajectory:
    """The path with the learning rate, among ``grid``, that ends nearest a minimum.

    Every lr in ``grid`` runs ``steps`` steps; the score is the final distance
    to the nearest minimum (a diverged run scores infinity). Ties go to the
    smaller lr. The sweep is kept in ``Trajectory.tuning``.
    """
    if not function.minima:
        raise ValueError(
            f"function {function.name!r} has no minimum, so there is nothing to tune "
            "the learning rate towards; give --lr instead"
        )
    if not grid:
        raise ValueError("the learning-rate grid is empty")
    grid = sorted(float(v) for v in grid)
    points, diverged = simulate(
        function,
        optimizer,
        grid,
        steps=steps,
        start=start,
        hparams=hparams,
        clip_grad_norm=clip_grad_norm,
    )
    final = function.distance_to_minimum(torch.from_numpy(points[-1])).numpy()
    scores = [math.inf if d is not None else float(f) for d, f in zip(diverged, final, strict=True)]
    scores = [s if math.isfinite(s) else math.inf for s in scores]
    best = min(range(len(grid)), key=lambda i: (scores[i], grid[i]))
    if math.isinf(scores[best]):
        raise ValueError(
            f"{label or optimizer} diverged at every learning rate in the grid "
            f"[{grid[0]:g}, {grid[-1]:g}] on {function.name!r}"
        )
    tuning = TuningResult(
        grid=grid,
        final_distances=[None if math.isinf(s) else s for s in scores],
        best_lr=grid[best],
        steps=steps,
    )
    return _trajectory(
        label or str(optimizer),
        hparams or {},
        grid[best],
        points[:, best],
        diverged[best],
        steps,
        "tuned",
        clip_grad_norm,
        tuning.to_dict(),
        optimizer,
    )


def run_optimizer(
    function: TestFunction,
    optimizer: str | OptimizerFactory,
    *,
    steps: int,
    lr: float | None = None,
    start: Sequence[float] | None = None,
    hparams: Mapping[str, Any] | None = None,
    clip_grad_norm: float | None = None,
    label: str | None = None,
) -> Trajectory:
    """One optimizer's path from ``start`` with learning rate ``lr`` (None: its default)."""
    points, diverged = simulate(
        function,
        optimizer,
        [lr],
        steps=steps,
        start=start,
        hparams=hparams,
        clip_grad_norm=clip_grad_norm,
    )
    return _trajectory(
        label or str(optimizer),
        hparams or {},
        lr,
        points[:, 0],
        diverged[0],
        steps,
        "default" if lr is None else "given",
        clip_grad_norm,
        optimizer=optimizer,
    )


def steps_to_tolerance(distances: np.ndarray | None, tolerance: float) -> int | None:
    """The first step whose distance to the minimum is below ``tolerance``.

    ``distances[0]`` is the start (step 0). Returns None when it never gets
    there; raises when there is no minimum to measure against.
    """
    if distances is None:
        raise ValueError("no minimum: steps to the optimum is undefined")
    below = np.flatnonzero(np.asarray(distances) < tolerance)
    return int(below[0]) if below.size else None


def summary_row(function: TestFunction, trajectory: Trajectory, tolerance: float) -> dict[str, Any]:
    """The table row for one path: final point, distance, loss, steps to tolerance, status."""
    final_point = trajectory.points[-1]
    final_loss = float(trajectory.losses(function)[-1])
    distances = trajectory.distances(function)
    if distances is None:
        final_distance: float | None = None
        reached: int | str = "n/a"
    else:
        final_distance = float(distances[-1])
        step = steps_to_tolerance(distances, tolerance)
        reached = "never" if step is None else step
    status = (
        "ok" if trajectory.diverged_at is None else f"diverged at step {trajectory.diverged_at}"
    )
    return {
        "optimizer": trajectory.optimizer,
        "lr": trajectory.lr,
        "lr_source": trajectory.lr_source,
        "hparams": dict(
            trajectory.effective_hparams
            if trajectory.effective_hparams is not None
            else trajectory.hparams
        ),
        "final_point": [float(v) for v in final_point],
        "final_distance": final_distance,
        "final_loss": final_loss,
        "steps_to_tolerance": reached,
        "status": status,
    }
