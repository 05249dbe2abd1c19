"""PNG plots of a study, drawn from stored results only (matplotlib, Agg backend).

- :func:`plot_curves`: train loss, test loss and the test metric against
  epochs, one line per optimizer (mean over seeds) with a ±1 sample-std
  band (ddof 1, as in the tables). Losses and gap metrics use a log scale.
- :func:`plot_lr_sensitivity`: what tuning selected on (the final
  validation metric, ``valid_metric``) of every tuning run against its
  learning rate (log scale), the chosen point starred and diverged runs
  marked with an ``x`` on the axis edge.
- :func:`plot_profiles`: performance profiles (Dolan & Moré 2002) of the
  arms across a suite's tasks, on the final metric and on time to target.

Every optimizer keeps its colour and line style across plots
(:func:`optimizer_style`); AdaBelief is drawn thick and black. A study's arms
take their styles from :func:`arm_styles`: 20 distinct colour and line-style
pairs in the study's arm order, the same in every figure of the study.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from optlab.lab import stats
from optlab.lab.runs import RunResult
from optlab.lab.store import finite

__all__ = [
    "arm_styles",
    "curve_band",
    "optimizer_color",
    "optimizer_style",
    "plot_curves",
    "plot_lr_sensitivity",
    "plot_profiles",
    "plot_step_sizes",
]


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


_LINESTYLES = ("-", "--", ":", "-.")


def arm_styles(labels: Sequence[str]) -> dict[str, dict[str, Any]]:
    """One style per arm, fixed by its position in ``labels`` (the study's arm order).

    An arm labelled ``adabelief`` is thick and black; the others take tab10 colours
    (black never) with a solid line for the first ten, dashed for the next ten, then
    dotted and dash-dotted: up to 40 arms are told apart, 20 by colour and line
    style. When every label is one of the twelve core optimizers, each keeps its
    :func:`optimizer_style`, so a plain comparison looks as it always did.
    """
    import matplotlib

    from optlab.lab.spec import CORE_OPTIMIZERS

    if all(label in CORE_OPTIMIZERS for label in labels):
        return {label: optimizer_style(label) for label in labels}
    styles: dict[str, dict[str, Any]] = {}
    index = 0
    for label in labels:
        if label == "adabelief":
            styles[label] = optimizer_style("adabelief")
            continue
        color = matplotlib.colormaps["tab10"](index % 10)
        linestyle = _LINESTYLES[(index // 10) % len(_LINESTYLES)]
        styles[label] = {"color": color, "linestyle": linestyle, "linewidth": 1.6, "zorder": 3}
        index += 1
    return styles


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
    styles: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """Draw train loss, test loss and ``metric`` against epochs into ``path``.

    Args:
        groups: ``(optimizer name, its runs over seeds)`` pairs, in legend order.
        path: the PNG to write.
        title: figure title.
        metric: the name of the task's test metric, for the axis label.
        log_metric: log scale for the metric (a gap to the optimum, a loss).
        styles: label -> line style (:func:`arm_styles`); by default each name's
            :func:`optimizer_style`.
    """
    plt = _pyplot()
    styles = styles or {}
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
            style = styles.get(name) or optimizer_style(name)
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
    styles: dict[str, dict[str, Any]] | None = None,
    connect: bool = True,
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
        styles: label -> line style (:func:`arm_styles`).
        connect: join an arm's points by lines; off when other hyper-parameters were
            tuned too (neighbouring learning rates then differ in more than lr).
    """
    plt = _pyplot()
    styles = styles or {}
    figure, axis = plt.subplots(figsize=(9, 5.4), layout="constrained")
    finite_values: list[float] = []
    diverged: list[tuple[str, float]] = []
    for name, runs, chosen_lr in groups:
        points = sorted(
            ((float(run.spec.hparams["lr"]), run) for run in runs if "lr" in run.spec.hparams),
            key=lambda point: point[0],  # several runs share an lr when more was tuned
        )
        if not points:
            continue
        style = styles.get(name) or optimizer_style(name)
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
        line = style if connect else {**style, "linestyle": "none"}
        axis.plot(lrs, values, marker="o", markersize=3.5 if connect else 5, label=name, **line)
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
            color = (styles.get(name) or optimizer_style(name))["color"]
            axis.plot([lr], [edge], marker="x", markersize=8, color=color)
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
    note = "one seed per point" + ("" if connect else "; other tuned values vary")
    axis.set_title(f"{title}: learning-rate sensitivity ({note})")
    return _save(figure, path)


def plot_profiles(
    panels: Sequence[tuple[str, dict[str, dict[str, float]]]],
    path: str | Path,
    *,
    title: str,
    styles: dict[str, dict[str, Any]],
    r_max: float = 4.0,
) -> Path:
    """Performance profiles: per panel ``(caption, ratios[task][arm])``, the fraction of
    tasks on which each arm is within a factor tau of the best, tau on a log axis from 1
    to beyond the largest finite ratio (at least ``r_max``, marked)."""
    from matplotlib.ticker import NullFormatter

    plt = _pyplot()
    figure, axes = plt.subplots(
        1, len(panels), figsize=(7 * len(panels), 4.8), layout="constrained"
    )
    axes = np.atleast_1d(axes)
    for axis, (caption, ratios) in zip(axes, panels, strict=True):
        tasks = list(ratios)
        finite_ratios = [r for t in tasks for r in ratios[t].values() if math.isfinite(r)]
        top = max([r_max, *finite_ratios]) * 1.25
        for label, style in styles.items():
            steps = sorted(r for t in tasks if math.isfinite(r := ratios[t].get(label, math.inf)))
            taus = [1.0, *steps, top]
            (fractions,) = stats.performance_profile(
                {t: {label: ratios[t].get(label, math.inf)} for t in tasks}, taus
            ).values()
            axis.step(taus, fractions, where="post", label=label, **style)
        axis.axvline(r_max, color="gray", linewidth=0.8, linestyle=":")
        axis.set_xscale("log")
        axis.set_xlim(1.0, top)
        ticks = [t for t in (1, 1.25, 1.5, 2, 3, 4, 6, 10, 20, 50, 100) if t <= top]
        axis.set_xticks(ticks, [f"{t:g}" for t in ticks])
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_ylim(-0.02, 1.02)
        axis.set_xlabel("tau: within this factor of the best arm's cost (log scale)")
        axis.set_ylabel(f"fraction of the {len(tasks)} tasks")
        axis.set_title(caption)
        axis.grid(True, which="major", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside right center", frameon=False)
    figure.suptitle(f"{title}: performance profiles (Dolan & Moré 2002)")
    return _save(figure, path)


def plot_step_sizes(
    groups: Sequence[tuple[str, Sequence[RunResult]]],
    path: str | Path,
    *,
    title: str,
    styles: dict[str, dict[str, Any]],
    prefix: str = "",
) -> Path:
    """The diagnostics of :mod:`optlab.lab.diagnostics` against epochs, mean over seeds
    (``prefix``: a network's role, ``"generator."``, in runs with several optimizers):
    the median per-coordinate step size with its 5-95 % range, the spread log10(q95/q05)
    (0 for SGD with momentum, one step size for all), and the share of coordinates whose
    denominator eps dominates."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(17, 4.8), layout="constrained")
    for name, runs in groups:
        style = styles.get(name) or optimizer_style(name)
        epochs, median, _ = curve_band(runs, prefix + "step_q50")
        if not np.any(np.isfinite(median)):
            continue
        _, low, _ = curve_band(runs, prefix + "step_q05")
        _, high, _ = curve_band(runs, prefix + "step_q95")
        axes[0].plot(epochs, median, label=name, **style)
        axes[0].fill_between(epochs, low, high, color=style["color"], alpha=0.12, linewidth=0)
        _, spread, _ = curve_band(runs, prefix + "step_spread")
        axes[1].plot(epochs, spread, **style)
        _, share, _ = curve_band(runs, prefix + "eps_dominant")
        axes[2].plot(epochs, share, **style)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("per-coordinate step size: median, 5-95 % (log scale)")
    axes[1].axhline(0.0, color="gray", linewidth=1.0, linestyle=":")
    axes[1].text(0.01, 0.02, "SGD with momentum: 0", transform=axes[1].transAxes, color="gray")
    axes[1].set_ylabel("spread: log10(q95 / q05)")
    axes[2].set_ylabel("share of coordinates where eps dominates")
    axes[2].set_ylim(-0.02, 1.02)
    for axis in axes:
        axis.set_xlabel("epoch")
        axis.grid(True, which="major", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside right center", frameon=False)
    role = f" of the {prefix.rstrip('.')}" if prefix else ""
    figure.suptitle(f"{title}: effective step sizes{role} at the chosen settings (mean over seeds)")
    return _save(figure, path)


def _save(figure: Any, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(figure)
    return path
