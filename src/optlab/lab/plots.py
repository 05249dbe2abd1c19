"""PNG plots of a study, drawn from stored results only (matplotlib, Agg backend).

- :func:`plot_curves`: train loss, test loss and the test metric against
  epochs, one line per optimizer (mean over seeds) with a ±1 sample-std
  band (ddof 1, as in the tables). Losses and gap metrics use a log scale.
- :func:`plot_lr_sensitivity`: what tuning selected on (the final
  validation metric, ``valid_metric``) of every tuning run against its
  learning rate (log scale), the chosen point starred and diverged runs
  marked with an ``x`` on the axis edge.

Every optimizer keeps its colour and line style across plots
(:func:`optimizer_style`); AdaBelief is drawn thick and black.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from optlab.lab.runs import RunResult
from optlab.lab.store import finite

__all__ = ["curve_band", "optimizer_color", "optimizer_style", "plot_curves", "plot_lr_sensitivity"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def optimizer_style(name: str) -> dict[str, Any]:
    """Line style fixed per optimizer: AdaBelief (optlab's centre) thick and black; the
    others take tab10 colours in catalogue order, dashed from the eleventh on."""
    import matplotlib

    from optlab.optim.registry import list_optimizers

    if name == "adabelief":
        return {"color": "black", "linestyle": "-", "linewidth": 2.4, "zorder": 5}
    others = [n for n in list_optimizers() if n != "adabelief"]
    index = others.index(name) if name in others else len(others) + sum(map(ord, name))
    color = matplotlib.colormaps["tab10"](index % 10)
    linestyle = "-" if index < 10 else "--"
    return {"color": color, "linestyle": linestyle, "linewidth": 1.5, "zorder": 3}


def optimizer_color(name: str) -> Any:
    """The colour of :func:`optimizer_style`."""
    return optimizer_style(name)["color"]


def curve_band(runs: Sequence[RunResult], column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epochs, mean and sample std (ddof 1) of ``column`` over ``runs``, aligned by
    evaluation index.

    Runs that stopped early (diverged) contribute to the rows they have;
    non-finite values are ignored. The mean is NaN where no value is finite,
    the std where fewer than two are.
    """
    length = max((len(run.history) for run in runs), default=0)
    values = np.full((len(runs), length), np.nan)
    epochs = np.full(length, np.nan)
    for i, run in enumerate(runs):
        for j, row in enumerate(run.history):
            value = row.get(column, math.nan)
            values[i, j] = float(value) if finite(value) else np.nan
            if math.isnan(epochs[j]) and finite(row.get("epoch")):
                epochs[j] = float(row["epoch"])
    counts = np.sum(~np.isnan(values), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        total = np.nansum(values, axis=0)
        mean = np.where(counts > 0, total / np.maximum(counts, 1), np.nan)
        squares = np.nansum((values - mean) ** 2, axis=0)
        std = np.where(counts > 1, np.sqrt(squares / np.maximum(counts - 1, 1)), np.nan)
    return epochs, mean, std


def _log_ok(series: Sequence[np.ndarray], *, forced: bool) -> bool:
    """Log scale for positive data that spans more than a decade (or whenever ``forced``)."""
    finite_values = [s[np.isfinite(s)] for s in series]
    values = np.concatenate(finite_values) if finite_values else np.array([])
    if values.size == 0 or not bool(np.all(values > 0)):
        return False
    return forced or float(values.max()) / float(values.min()) > 10.0


def plot_curves(
    groups: Sequence[tuple[str, Sequence[RunResult]]],
    path: str | Path,
    *,
    title: str,
    metric: str,
    log_metric: bool = False,
) -> Path:
    """Draw train loss, test loss and ``metric`` against epochs into ``path``.

    Args:
        groups: ``(optimizer name, its runs over seeds)`` pairs, in legend order.
        path: the PNG to write.
        title: figure title.
        metric: the name of the task's test metric, for the axis label.
        log_metric: log scale for the metric (a gap to the optimum, a loss).
    """
    plt = _pyplot()
    panels = (("train_loss", "train loss", False), ("test_loss", "test loss", False))
    panels += (("metric", f"test {metric}", log_metric),)
    figure, axes = plt.subplots(1, 3, figsize=(16, 4.8), layout="constrained")
    for axis, (column, label, log_scale) in zip(axes, panels, strict=True):
        bands = []
        for name, runs in groups:
            epochs, mean, std = curve_band(runs, column) if runs else (None, None, None)
            if mean is not None and np.any(np.isfinite(mean)):
                bands.append((name, len(runs), epochs, mean, std))
        log = _log_ok([band[3] for band in bands], forced=log_scale)
        for name, count, epochs, mean, std in bands:
            style = optimizer_style(name)
            color = style["color"]
            axis.plot(epochs, mean, label=name, **style)
            if count > 1:
                low, high = mean - std, mean + std  # NaN (no band) where < 2 seeds remain
                if log:  # a band reaching below zero is cut at the mean on a log axis
                    low = np.where(low > 0, low, mean)
                axis.fill_between(epochs, low, high, color=color, alpha=0.18, linewidth=0)
        if log:
            axis.set_yscale("log")
        axis.set_xlabel("epoch")
        axis.set_ylabel(label + (" (log scale)" if axis.get_yscale() == "log" else ""))
        axis.grid(True, which="major", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside right center", frameon=False)
    figure.suptitle(f"{title}: mean ± sample std (ddof 1) over seeds")
    return _save(figure, path)


def plot_lr_sensitivity(
    groups: Sequence[tuple[str, Sequence[RunResult], float | None]],
    path: str | Path,
    *,
    title: str,
    label: str,
    higher_is_better: bool,
    log_metric: bool = False,
    column: str = "valid_metric",
) -> Path:
    """The final value of ``column`` (what tuning selected on) against learning rate for
    every tuning run.

    Args:
        groups: ``(optimizer name, its tuning runs, chosen lr or None)``.
        path: the PNG to write.
        title: figure title.
        label: y-axis label, e.g. ``"final validation accuracy"``.
        higher_is_better: where diverged runs are drawn (the bad edge of the axis).
        log_metric: log scale for the metric.
        column: the history column plotted (default the selection metric).
    """
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(9, 5.4), layout="constrained")
    finite_values: list[float] = []
    diverged: list[tuple[str, float]] = []
    for name, runs, chosen_lr in groups:
        points = sorted(
            (float(run.spec.hparams["lr"]), run) for run in runs if "lr" in run.spec.hparams
        )
        if not points:
            continue
        style = optimizer_style(name)
        color = style["color"]
        lrs, values = [], []
        for lr, run in points:
            value = run.final.get(column, math.nan)
            if run.status == "ok" and finite(value):
                lrs.append(lr)
                values.append(float(value))
            else:
                diverged.append((name, lr))
        finite_values.extend(values)
        axis.plot(lrs, values, marker="o", markersize=3.5, label=name, **style)
        if chosen_lr is not None and chosen_lr in lrs:
            axis.plot(
                [chosen_lr],
                [values[lrs.index(chosen_lr)]],
                marker="*",
                markersize=13,
                color=color,
                markeredgecolor="black",
                linestyle="none",
            )
    if _log_ok([np.array(finite_values)], forced=log_metric) and log_metric:
        axis.set_yscale("log")
    if diverged and finite_values:
        low, high = min(finite_values), max(finite_values)
        edge = low if higher_is_better else high
        for name, lr in diverged:
            axis.plot([lr], [edge], marker="x", markersize=8, color=optimizer_color(name))
        axis.plot([], [], marker="x", color="gray", linestyle="none", label="diverged")
    axis.plot(
        [],
        [],
        marker="*",
        color="gray",
        markeredgecolor="black",
        linestyle="none",
        markersize=11,
        label="chosen",
    )
    axis.set_xscale("log")
    axis.set_xlabel("learning rate (log scale)")
    axis.set_ylabel(label + (" (log scale)" if axis.get_yscale() == "log" else ""))
    axis.grid(True, which="major", alpha=0.3)
    axis.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    axis.set_title(f"{title}: learning-rate sensitivity (one seed per point)")
    return _save(figure, path)


def _save(figure: Any, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(figure)
    return path
