"""The study's tables as text: the terminal, ``report.md`` and the CSV files.

Per task (:func:`format_table`, :func:`markdown_table`, ``summary.csv``) one
line per arm; across tasks (:func:`format_across`, ``across-tasks.csv``) the
mean rank, the wins and the performance-profile areas. The terminal and the
markdown share :func:`table_rows`, so they always say the same.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from optlab.lab.store import finite
from optlab.lab.summary import CrossTask, SummaryRow

__all__ = [
    "format_across",
    "format_table",
    "format_value",
    "markdown_across",
    "markdown_table",
    "table_rows",
    "write_across_csv",
    "write_summary_csv",
]


def format_value(value: Any) -> str:
    """Compact text of a hyper-parameter or statistic."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(format_value(v) for v in value) + ")"
    return str(value)


def _metric_text(mean: float, std: float, metric: str) -> str:
    if not finite(mean):
        return "-"
    spec = ".4f" if metric == "accuracy" else ".3g"
    text = format(mean, spec)
    if finite(std):
        text += " ± " + format(std, spec)
    return text


def _shown_hparams(row: SummaryRow) -> str:
    """Non-lr hyper-parameters for the terminal: explicit ones always, defaults unless 0/off."""
    parts = []
    for name, value in row.hparams.items():
        if name == "lr":
            continue
        if name not in row.explicit and (value is None or value is False or value == 0):
            continue
        parts.append(f"{name}={format_value(value)}")
    return " ".join(parts) or "-"


def _target_text(row: SummaryRow) -> str:
    if row.target is None or row.seeds - row.diverged == 0:
        return "-"
    if row.reached == 0:
        return "never"
    text = f"{row.epochs_to_target_mean:.3g}"
    if row.reached < row.seeds - row.diverged:
        text += f" ({row.reached}/{row.seeds - row.diverged})"
    return text


def _verdict_text(row: SummaryRow) -> str:
    if row.verdict == "best":
        return "best"
    if row.verdict == "indistinguishable":
        return f"≈ p={row.p_value:.2g}" if finite(row.p_value) else f"≈ ({row.verdict_reason})"
    if row.verdict == "worse":
        return f"worse p={row.p_value:.2g}"
    return "-"


def _ci_text(row: SummaryRow) -> str:
    if not (finite(row.final_ci_low) and finite(row.final_ci_high)):
        return "-" if row.seeds - row.diverged != 1 else "(1 seed)"
    spec = ".4f" if row.metric == "accuracy" else ".3g"
    return f"[{format(row.final_ci_low, spec)}, {format(row.final_ci_high, spec)}]"


def table_rows(rows: Sequence[SummaryRow]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of a task's table (shared by the terminal and report.md)."""
    if not rows:
        return [], []
    metric = rows[0].metric
    target = rows[0].target
    labelled = any(row.arm != row.optimizer for row in rows)
    header = ["arm", *(["optimizer"] if labelled else []), "lr", f"final {metric}", "95% CI"]
    header += [
        "vs best",
        f"best {metric}",
        f"epochs to {format_value(target)}" if target is not None else "epochs to target",
        "s/epoch",
        "seeds",
        "other hyper-parameters",
    ]
    cells = []
    for row in rows:
        seeds = str(row.seeds)
        if row.diverged:
            seeds += f" ({row.diverged} diverged)"
        if row.missing:
            seeds += f" ({row.missing} missing)"
        other = _shown_hparams(row)
        if row.tuned:
            other += f"  [{row.tuned}]"
        if row.note:
            other += f"  [{row.note}]"
        cells.append(
            [
                row.arm,
                *([row.optimizer] if labelled else []),
                "-" if row.hparams.get("lr") is None else format_value(row.hparams["lr"]),
                _metric_text(row.final_mean, row.final_std, metric),
                _ci_text(row),
                _verdict_text(row),
                _metric_text(row.best_mean, row.best_std, metric),
                _target_text(row),
                f"{row.seconds_per_epoch:.3g}" if finite(row.seconds_per_epoch) else "-",
                seeds,
                other,
            ]
        )
    return header, cells


def _aligned(header: Sequence[str], cells: Sequence[Sequence[str]], title: str | None) -> str:
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]
    lines = [title] if title else []
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    lines.append("  ".join("-" * w for w in widths))
    for line in cells:
        lines.append("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _markdown(header: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    def escape(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(escape(c) for c in line) + " |" for line in cells]
    return "\n".join(lines)


def format_table(rows: Sequence[SummaryRow], *, title: str | None = None) -> str:
    """A task's summary as an aligned plain-text table."""
    header, cells = table_rows(rows)
    if not header:
        return (title + "\n" if title else "") + "(no finished runs yet)"
    return _aligned(header, cells, title)


def markdown_table(rows: Sequence[SummaryRow]) -> str:
    header, cells = table_rows(rows)
    if not header:
        return "(no finished runs yet)"
    return _markdown(header, cells)


# --------------------------------------------------------------------- across tasks


def _area_text(value: float) -> str:
    return f"{value:.2f}" if finite(value) else "-"


def across_rows(cross: CrossTask) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the across-tasks table, best mean rank first."""
    header = ["arm", "mean rank", "wins", "≈ best", "profile area", "time-to-target area"]
    order = sorted(cross.arms, key=lambda arm: (cross.ranks[arm].mean, arm))
    cells = []
    for arm in order:
        rank = cross.ranks[arm]
        text = f"{rank.mean:.2f}" + (f" ± {rank.std:.2f}" if finite(rank.std) else "")
        wins = sum(arm in names for names in cross.winners.values())
        close = sum(arm in names for names in cross.indistinguishable.values())
        cells.append(
            [
                arm,
                text,
                f"{wins}/{len(cross.tasks)}",
                f"{close}/{len(cross.tasks)}",
                _area_text(cross.area[arm]),
                _area_text(cross.time_area[arm]),
            ]
        )
    return header, cells


def winner_rows(cross: CrossTask) -> tuple[list[str], list[list[str]]]:
    header = ["task", "best", "indistinguishable from the best"]
    cells = [
        [
            task,
            ", ".join(cross.winners.get(task, [])) or "-",
            ", ".join(a for a in cross.indistinguishable[task] if a not in cross.winners[task])
            or "-",
        ]
        for task in cross.tasks
    ]
    return header, cells


def format_across(cross: CrossTask) -> str:
    title = (
        f"across {len(cross.tasks)} tasks: mean rank ± sd over tasks, tasks won, tasks "
        f"where indistinguishable from the best, performance-profile areas (r_max {cross.r_max:g})"
    )
    return _aligned(*across_rows(cross), title) + "\n\n" + _aligned(*winner_rows(cross), None)


def markdown_across(cross: CrossTask) -> str:
    return _markdown(*across_rows(cross)) + "\n\n" + _markdown(*winner_rows(cross))


def write_across_csv(cross: CrossTask, path: str | os.PathLike[str]) -> Path:
    """``across-tasks.csv``: per arm the rank statistics, wins, areas and every ratio."""
    columns = ["arm", "mean_rank", "rank_std", "wins", "indistinguishable_tasks"]
    columns += ["profile_area", "time_profile_area"]
    columns += [f"ratio_{task}" for task in cross.tasks]
    columns += [f"time_ratio_{task}" for task in cross.tasks]
    rows = []
    for arm in cross.arms:
        values = {
            "arm": arm,
            "mean_rank": cross.ranks[arm].mean,
            "rank_std": cross.ranks[arm].std,
            "wins": sum(arm in names for names in cross.winners.values()),
            "indistinguishable_tasks": sum(arm in n for n in cross.indistinguishable.values()),
            "profile_area": cross.area[arm],
            "time_profile_area": cross.time_area[arm],
        }
        for task in cross.tasks:
            values[f"ratio_{task}"] = cross.ratios[task].get(arm, math.inf)
            values[f"time_ratio_{task}"] = cross.time_ratios[task].get(arm, math.inf)
        rows.append([_csv_cell(values[c]) for c in columns])
    return _write_csv(path, columns, rows)


def _write_csv(path: str | os.PathLike[str], columns: Sequence[str], rows: Sequence[Any]) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------- summary.csv

CSV_COLUMNS = [
    "task", "arm", "optimizer", "metric", "higher_is_better", "target", "seeds", "diverged",
    "missing", "final_mean", "final_std", "final_ci_low", "final_ci_high", "vs_best",
    "p_holm", "paired_seeds", "diff_mean", "diff_ci_low", "diff_ci_high", "best_mean",
    "best_std", "reached_target", "epochs_to_target_mean", "epochs_to_target_std",
    "seconds_to_target_mean", "seconds_to_target_median", "seconds_per_epoch",
    "final_train_loss", "final_test_loss", "final_valid_mean", "final_valid_std",
    "validation", "tuned", "budget", "at_edge", "note", "hparams",
]  # fmt: skip


def write_summary_csv(rows: Sequence[SummaryRow], path: str | os.PathLike[str]) -> Path:
    """``summary.csv``: the fixed columns above (``vs_best``: best, indistinguishable or
    worse; ``p_holm``: the Holm-adjusted p-value of the paired test against the task's
    best arm; ``diff_*``: the paired mean difference to the best and its 95 % interval),
    then one ``hp_<name>`` column per hyper-parameter used by any arm (empty where an
    arm's optimizer has none)."""
    hp_names = sorted({name for row in rows for name in row.hparams})
    columns = CSV_COLUMNS + [f"hp_{name}" for name in hp_names]
    lines = []
    for row in rows:
        difference = row.difference
        values = {
            "task": row.task,
            "arm": row.arm,
            "optimizer": row.optimizer,
            "metric": row.metric,
            "higher_is_better": row.higher_is_better,
            "target": "" if row.target is None else row.target,
            "seeds": row.seeds,
            "diverged": row.diverged,
            "missing": row.missing,
            "final_mean": row.final_mean,
            "final_std": row.final_std,
            "final_ci_low": row.final_ci_low,
            "final_ci_high": row.final_ci_high,
            "vs_best": row.verdict,
            "p_holm": row.p_value,
            "paired_seeds": row.paired_seeds,
            "diff_mean": difference.mean if difference else math.nan,
            "diff_ci_low": difference.low if difference else math.nan,
            "diff_ci_high": difference.high if difference else math.nan,
            "best_mean": row.best_mean,
            "best_std": row.best_std,
            "reached_target": row.reached,
            "epochs_to_target_mean": row.epochs_to_target_mean,
            "epochs_to_target_std": row.epochs_to_target_std,
            "seconds_to_target_mean": row.seconds_to_target_mean,
            "seconds_to_target_median": row.seconds_to_target_median,
            "seconds_per_epoch": row.seconds_per_epoch,
            "final_train_loss": row.final_train_loss,
            "final_test_loss": row.final_test_loss,
            "final_valid_mean": row.final_valid_mean,
            "final_valid_std": row.final_valid_std,
            "validation": row.validation,
            "tuned": row.tuned,
            "budget": row.budget,
            "at_edge": ",".join(row.at_edge),
            "note": row.note,
            "hparams": json.dumps(row.hparams, sort_keys=True, default=list),
        }
        for name in hp_names:
            value = row.hparams.get(name, "")
            values[f"hp_{name}"] = format_value(value) if isinstance(value, tuple) else value
        lines.append([_csv_cell(values[c]) for c in columns])
    return _write_csv(path, columns, lines)


def _csv_cell(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return ""
    return value
