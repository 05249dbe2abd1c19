"""Pictures of trajectories: a contour plot, an animated GIF, the paper's panel figure.

Figures are built with :class:`matplotlib.figure.Figure` on an Agg canvas,
never through pyplot, so nothing global changes (no backend switch, no open
figure windows) and the functions are safe in worker processes. Sizes are
exact: an image is ``figsize * dpi`` pixels (no tight bounding box), and the
legend sits outside the axes so it never hides a path.

Every optimizer has one colour everywhere: :func:`path_style` takes it from
the lab's :func:`optlab.lab.plots.optimizer_style` (AdaBelief thick and black,
the others tab10 in catalogue order), so a name looks the same in the
contour plot, the GIF, the paper figure and the lab's curves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image

from optlab.lab.plots import optimizer_style

from .functions import TestFunction
from .run import Trajectory

__all__ = ["animate_paths", "path_style", "plot_panels", "plot_paths"]

GRID_POINTS = 300


def path_style(name: str, linewidth: float = 1.6) -> dict[str, Any]:
    """Colour, line style and width of ``name``'s path: the lab's style for that name,
    its width scaled so that ``linewidth`` is an ordinary optimizer's."""
    style = optimizer_style(name)
    return {
        "color": style["color"],
        "linestyle": style["linestyle"],
        "linewidth": linewidth * style["linewidth"] / _ORDINARY_WIDTH,
    }


_ORDINARY_WIDTH = optimizer_style("adam")["linewidth"]


def _figure(figsize: tuple[float, float], dpi: int) -> Figure:
    figure = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _fmt(value: float) -> str:
    return f"{value:g}"


def _start_text(function: TestFunction) -> str:
    return "(" + ", ".join(_fmt(v) for v in function.start) + ")"


def label_for(trajectory: Trajectory) -> str:
    """Legend text: name, learning rate and where it came from."""
    lr = trajectory.lr
    lr_text = "lr n/a" if lr is None else f"lr={lr:.3g}"
    if trajectory.lr_source in ("tuned", "default"):
        lr_text += f" ({trajectory.lr_source})"
    text = f"{trajectory.optimizer}, {lr_text}"
    if trajectory.diverged_at is not None:
        text += f", diverged at step {trajectory.diverged_at}"
    return text


def _draw_landscape(axes, function: TestFunction) -> None:
    """Contours of a 2-D function (log-spaced levels where it spans decades), or the 1-D curve."""
    (x_low, x_high), (y_low, y_high) = function.window
    if function.dim == 1:
        xs = np.linspace(x_low, x_high, 400)
        with torch.no_grad():
            ys = function(torch.from_numpy(xs)[:, None]).numpy()
        axes.plot(xs, ys, color="0.55", linewidth=1.2, zorder=1)
        axes.set_xlim(x_low, x_high)
        axes.set_ylim(y_low, y_high)
        axes.set_xlabel("x")
        axes.set_ylabel("f(x)")
        for minimum in function.minima:
            axes.plot(
                minimum[0],
                function.min_value,
                marker="*",
                markersize=14,
                color="gold",
                markeredgecolor="black",
                zorder=5,
                linestyle="none",
            )
        return
    xs = np.linspace(x_low, x_high, GRID_POINTS)
    ys = np.linspace(y_low, y_high, GRID_POINTS)
    grid_x, grid_y = np.meshgrid(xs, ys)
    with torch.no_grad():
        values = function(torch.from_numpy(np.stack([grid_x, grid_y], axis=-1))).numpy()
    if function.log_levels:
        # shift so the minimum value maps to 0, then space the levels by decades
        shifted = values - (function.min_value if function.min_value is not None else 0.0)
        high = float(shifted.max())
        low = max(float(shifted[shifted > 0].min()), high * 1e-9)
        levels = np.logspace(math.log10(low), math.log10(high), 30)
        axes.contourf(
            grid_x,
            grid_y,
            np.clip(shifted, low, None),
            levels=levels,
            norm=LogNorm(low, high),
            cmap="Greys_r",
            alpha=0.45,
            zorder=0,
        )
        axes.contour(
            grid_x,
            grid_y,
            np.clip(shifted, low, None),
            levels=levels,
            norm=LogNorm(low, high),
            colors="0.35",
            linewidths=0.4,
            zorder=0,
        )
    else:
        axes.contourf(grid_x, grid_y, values, levels=30, cmap="Greys_r", alpha=0.45, zorder=0)
        axes.contour(grid_x, grid_y, values, levels=30, colors="0.35", linewidths=0.4, zorder=0)
    for minimum in function.minima:
        axes.plot(
            *minimum,
            marker="*",
            markersize=14,
            color="gold",
            markeredgecolor="black",
            zorder=5,
            linestyle="none",
        )
    axes.set_xlim(x_low, x_high)
    axes.set_ylim(y_low, y_high)
    axes.set_xlabel("x")
    axes.set_ylabel("y")


def _xy(function: TestFunction, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Plot coordinates of iterates: (x, y) in 2-D, (x, f(x)) in 1-D."""
    if function.dim == 2:
        return points[:, 0], points[:, 1]
    with torch.no_grad():
        return points[:, 0], function(torch.from_numpy(points)).numpy()


def _draw_start(axes, function: TestFunction) -> None:
    start = np.asarray(function.start, dtype=float)[None, :]
    x, y = _xy(function, start)
    axes.plot(
        x,
        y,
        marker="o",
        markersize=8,
        color="white",
        markeredgecolor="black",
        zorder=6,
        linestyle="none",
    )


TICKS = 10


def _tick_every(steps: int) -> int:
    """Spacing of the small dots along a path, so that speed shows in a still picture."""
    return max(1, math.ceil(steps / TICKS))


def _draw_path(
    axes, function: TestFunction, trajectory: Trajectory, linewidth: float = 1.6
) -> None:
    style = path_style(trajectory.optimizer, linewidth)
    colour = style["color"]
    x, y = _xy(function, trajectory.points)
    axes.plot(x, y, **style, alpha=0.9, zorder=3)
    every = _tick_every(trajectory.steps)
    axes.plot(
        x[every:-1:every],
        y[every:-1:every],
        marker="o",
        markersize=3,
        color=colour,
        linestyle="none",
        zorder=4,
    )
    axes.plot(
        x[-1],
        y[-1],
        marker="o",
        markersize=6,
        color=colour,
        markeredgecolor="black",
        zorder=7,
        linestyle="none",
    )


def _note_divergence(axes, trajectories: Sequence[Trajectory]) -> None:
    lines = [
        f"{t.optimizer} diverged at step {t.diverged_at}"
        for t in trajectories
        if t.diverged_at is not None
    ]
    if lines:
        axes.text(
            0.02,
            0.02,
            "\n".join(lines),
            transform=axes.transAxes,
            fontsize=8,
            va="bottom",
            ha="left",
            zorder=8,
            bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "0.6"},
        )


def _legend_handles(trajectories: Sequence[Trajectory], function: TestFunction) -> list:
    handles = [
        Line2D([], [], **path_style(t.optimizer, 2.0), label=label_for(t)) for t in trajectories
    ]
    handles.append(
        Line2D(
            [],
            [],
            marker="o",
            color="white",
            markeredgecolor="black",
            linestyle="none",
            markersize=8,
            label="start",
        )
    )
    if function.minima:
        handles.append(
            Line2D(
                [],
                [],
                marker="*",
                color="gold",
                markeredgecolor="black",
                linestyle="none",
                markersize=12,
                label="minimum",
            )
        )
    return handles


def _tick_handle(steps: int) -> Line2D:
    return Line2D(
        [],
        [],
        marker="o",
        markersize=3,
        color="0.3",
        linestyle="none",
        label=f"every {_tick_every(steps)} steps",
    )


def _title(function: TestFunction, steps: int) -> str:
    return f"{function.name}: f = {function.formula}\n{steps} steps from {_start_text(function)}"


def plot_paths(
    function: TestFunction,
    trajectories: Sequence[Trajectory],
    path: str | Path,
    *,
    figsize: tuple[float, float] = (9.0, 6.0),
    dpi: int = 100,
) -> Path:
    """Write a PNG: the landscape, every path in its own colour, legend outside the axes.

    A 1-D function gets a second panel, the distance to the minimum against
    the step (log scale), since paths drawn on one curve hide each other.
    """
    figure = _figure(figsize, dpi)
    if function.dim == 1 and function.minima:
        axes, distance_axes = figure.subplots(1, 2)
    else:
        axes, distance_axes = figure.add_subplot(), None
    _draw_landscape(axes, function)
    for trajectory in trajectories:
        _draw_path(axes, function, trajectory)
    _draw_start(axes, function)
    steps = max((t.steps for t in trajectories), default=0)
    axes.set_title(_title(function, steps), fontsize=11)
    if distance_axes is not None:
        for trajectory in trajectories:
            distances = np.maximum(trajectory.distances(function), 1e-300)
            distance_axes.semilogy(distances, **path_style(trajectory.optimizer))
        distance_axes.set_xlabel("step")
        distance_axes.set_ylabel("distance to the minimum")
        distance_axes.set_title("distance to the minimum", fontsize=11)
        distance_axes.grid(True, which="major", alpha=0.3)
    handles = _legend_handles(trajectories, function)
    handles.append(_tick_handle(steps))
    figure.legend(handles=handles, loc="outside right upper", fontsize=9, frameon=False)
    path = Path(path)
    figure.savefig(path, dpi=dpi)
    return path


def _frame_indices(steps: int, frames: int) -> list[int]:
    """Steps to show: half spaced evenly, half geometrically (early moves are the fast ones)."""
    if steps <= frames:
        return list(range(steps + 1))
    even = np.linspace(0, steps, frames - frames // 2)
    early = np.geomspace(1, steps, frames // 2)
    return sorted({int(round(v)) for v in np.concatenate([[0], even, early])})


def animate_paths(
    function: TestFunction,
    trajectories: Sequence[Trajectory],
    path: str | Path,
    *,
    frames: int = 48,
    figsize: tuple[float, float] = (7.2, 4.8),
    dpi: int = 80,
    frame_ms: int = 90,
    hold_ms: int = 1500,
) -> Path:
    """Write an animated GIF of the paths growing (about ``frames`` frames, one palette)."""
    if frames < 2:
        raise ValueError(f"frames must be >= 2, got {frames}")
    figure = _figure(figsize, dpi)
    axes = figure.add_subplot()
    _draw_landscape(axes, function)
    _draw_start(axes, function)
    lines, heads, coordinates = [], [], []
    for trajectory in trajectories:
        style = path_style(trajectory.optimizer)
        colour = style["color"]
        coordinates.append(_xy(function, trajectory.points))
        lines.append(axes.plot([], [], **style, zorder=3)[0])
        heads.append(
            axes.plot(
                [],
                [],
                marker="o",
                markersize=6,
                color=colour,
                markeredgecolor="black",
                zorder=7,
                linestyle="none",
            )[0]
        )
    figure.legend(
        handles=_legend_handles(trajectories, function),
        loc="outside right upper",
        fontsize=8,
        frameon=False,
    )
    steps = max((t.steps for t in trajectories), default=0)

    def render(step: int) -> Image.Image:
        for line, head, (x, y) in zip(lines, heads, coordinates, strict=True):
            shown = min(step + 1, len(x))
            line.set_data(x[:shown], y[:shown])
            head.set_data(x[shown - 1 : shown], y[shown - 1 : shown])
        axes.set_title(
            f"{function.name}: f = {function.formula}\nstep {step} of {steps}", fontsize=10
        )
        figure.canvas.draw()
        return Image.fromarray(np.asarray(figure.canvas.buffer_rgba())[..., :3])

    # one palette for every frame, taken from the last (where every path is drawn)
    palette = render(steps).quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    images = [
        render(step).quantize(palette=palette, dither=Image.Dither.NONE)
        for step in _frame_indices(steps, frames)
    ]
    durations = [frame_ms] * (len(images) - 1) + [hold_ms]
    path = Path(path)
    images[0].save(
        path, save_all=True, append_images=images[1:], duration=durations, loop=0, optimize=True
    )
    return path


def plot_panels(
    panels: Sequence[tuple[TestFunction, Sequence[Trajectory], str]],
    path: str | Path,
    *,
    columns: int = 3,
    panel_size: tuple[float, float] = (4.6, 4.0),
    dpi: int = 100,
    title: str | None = None,
) -> Path:
    """Write a PNG with one panel per (function, paths, panel title); one shared legend below."""
    if not panels:
        raise ValueError("no panels to draw")
    rows = math.ceil(len(panels) / columns)
    figure = _figure((panel_size[0] * columns, panel_size[1] * rows + 0.6), dpi)
    axes_grid = figure.subplots(rows, columns, squeeze=False)
    for axes, (function, trajectories, panel_title) in zip(axes_grid.flat, panels, strict=False):
        _draw_landscape(axes, function)
        for trajectory in trajectories:
            _draw_path(axes, function, trajectory, 1.4)
        _draw_start(axes, function)
        _note_divergence(axes, trajectories)
        axes.set_title(panel_title, fontsize=10)
    for axes in list(axes_grid.flat)[len(panels) :]:
        axes.set_visible(False)
    first_function, first_trajectories, _ = panels[0]
    handles = [
        Line2D(
            [],
            [],
            **path_style(t.optimizer, 2.0),
            label=f"{t.optimizer}" + ("" if t.lr is None else f" (lr={t.lr:g})"),
        )
        for t in first_trajectories
    ]
    handles += _legend_handles([], first_function)
    handles.append(_tick_handle(max(t.steps for t in first_trajectories)))
    figure.legend(
        handles=handles, loc="outside lower center", ncols=len(handles), fontsize=10, frameon=False
    )
    if title:
        figure.suptitle(title, fontsize=12)
    path = Path(path)
    figure.savefig(path, dpi=dpi)
    return path
