"""Tables and the JSON record of a trajectories run (everything needed to redraw it).

The JSON holds the function (name, start, window), the settings (steps,
tolerance, clipping), and per optimizer the hyper-parameters given, every
effective hyper-parameter (defaults filled in, the learning rate included),
where the learning rate came from (given, tuned with the whole sweep, or the
default), every iterate and loss. The CSV carries the effective learning rate
and hyper-parameters too, so neither depends on today's defaults.

Markdown tables escape ``|`` inside cells (formulas such as ``|x| + |y|``). :func:`load_document` turns it back into the
function and :class:`~optlab.lab.trajectories.run.Trajectory` records the
plotting functions take, so pictures can be redrawn without running again.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .functions import TestFunction, get_function
from .run import Trajectory, summary_row

__all__ = [
    "OUR_RECORDS",
    "TABLE_COLUMNS",
    "document",
    "format_table",
    "load_document",
    "table_rows",
    "write_csv",
    "write_json",
    "write_markdown",
]

#: The JSON records this package writes; a directory holding one is trajectories output.
OUR_RECORDS = ("trajectories.json", "paper.json")

TABLE_COLUMNS = (
    "optimizer",
    "lr",
    "final point",
    "final distance",
    "final loss",
    "steps to tol",
    "status",
)


def _number(value: float | None, spec: str = ".3g") -> str:
    if value is None:
        return "n/a"
    return format(value, spec)


def table_rows(
    function: TestFunction, trajectories: Sequence[Trajectory], tolerance: float
) -> list[dict[str, Any]]:
    """One summary row per trajectory (numbers, not text)."""
    return [summary_row(function, t, tolerance) for t in trajectories]


def _cells(row: Mapping[str, Any]) -> list[str]:
    lr = row["lr"]
    lr_text = "n/a" if lr is None else f"{lr:.3g}"
    if row["lr_source"] in ("tuned", "default"):
        lr_text += f" ({row['lr_source']})"
    point = "(" + ", ".join(f"{v:.4g}" for v in row["final_point"]) + ")"
    return [
        row["optimizer"],
        lr_text,
        point,
        _number(row["final_distance"]),
        _number(row["final_loss"]),
        str(row["steps_to_tolerance"]),
        row["status"],
    ]


def format_table(
    rows: Sequence[Mapping[str, Any]] | Sequence[Sequence[str]],
    columns: Sequence[str] = TABLE_COLUMNS,
) -> str:
    """A Markdown table, columns padded so it also reads well on a terminal.

    ``|`` inside a cell is escaped (``\\|``), so formulas such as ``|x| + |y|``
    stay in their column.
    """
    cells = [
        [_escape(c) for c in (list(r) if not isinstance(r, Mapping) else _cells(r))] for r in rows
    ]
    columns = [_escape(c) for c in columns]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    separator = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(columns), separator, *(line(r) for r in cells)])


def _escape(cell: str) -> str:
    """A Markdown table cell: every ``|`` escaped, so it cannot end the cell."""
    return str(cell).replace("|", "\\|")


def write_markdown(path: str | Path, heading: str, table: str, notes: Sequence[str] = ()) -> Path:
    path = Path(path)
    text = f"# {heading}\n\n{table}\n"
    if notes:
        text += "\n" + "\n".join(f"- {note}" for note in notes) + "\n"
    path.write_text(text, encoding="utf-8")
    return path


def write_csv(
    path: str | Path, rows: Sequence[Mapping[str, Any]], extra: Mapping[str, Any] | None = None
) -> Path:
    """Rows as CSV with plain numbers (final point split into coordinates)."""
    path = Path(path)
    extra = dict(extra or {})
    fieldnames = [
        *extra,
        "optimizer",
        "lr",
        "lr_source",
        "hparams",
        "final_x",
        "final_y",
        "final_distance",
        "final_loss",
        "steps_to_tolerance",
        "status",
    ]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames)
        writer.writeheader()
        for row in rows:
            point = list(row["final_point"]) + [None]
            writer.writerow(
                {
                    **extra,
                    "optimizer": row["optimizer"],
                    "lr": row["lr"],
                    "lr_source": row["lr_source"],
                    "hparams": json.dumps(row["hparams"], sort_keys=True),
                    "final_x": point[0],
                    "final_y": point[1],
                    "final_distance": row["final_distance"],
                    "final_loss": row["final_loss"],
                    "steps_to_tolerance": row["steps_to_tolerance"],
                    "status": row["status"],
                }
            )
    return path


def _finite_or_none(values: np.ndarray) -> list:
    """A nested list of floats with None where a value is not finite (JSON has no inf/NaN)."""
    array = np.asarray(values, dtype=np.float64)
    plain = array.astype(object)
    plain[~np.isfinite(array)] = None
    return plain.tolist()


def _plain_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in hparams.items()}


def document(
    function: TestFunction,
    trajectories: Sequence[Trajectory],
    *,
    tolerance: float,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON-ready record of one function's run."""
    import torch

    import optlab

    rows = table_rows(function, trajectories, tolerance)
    return {
        "function": {
            "name": function.name,
            "formula": function.formula,
            "dim": function.dim,
            "start": list(function.start),
            "window": [list(pair) for pair in function.window],
            "minima": [list(m) for m in function.minima],
            "min_value": function.min_value,
        },
        "tolerance": tolerance,
        "settings": dict(settings or {}),
        "versions": {"optlab": optlab.__version__, "torch": torch.__version__},
        "trajectories": [
            {
                "optimizer": t.optimizer,
                "hparams": _plain_hparams(t.hparams),
                "effective_hparams": t.effective_hparams,
                "lr_source": t.lr_source,
                "tuning": t.tuning,
                "clip_grad_norm": t.clip_grad_norm,
                "steps": t.steps,
                "diverged_at": t.diverged_at,
                "points": _finite_or_none(t.points),
                "losses": _finite_or_none(t.losses(function)),
            }
            for t in trajectories
        ],
        "table": rows,
    }


def write_json(path: str | Path, data: Mapping[str, Any]) -> Path:
    path = Path(path)
    path.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    return path


def function_from(record: Mapping[str, Any]) -> TestFunction:
    """The test function a document's ``function`` entry describes."""
    function = get_function(record["name"]).with_start(tuple(record["start"]))
    return function.with_window(tuple(tuple(pair) for pair in record["window"]))


def trajectories_from(records: Sequence[Mapping[str, Any]]) -> list[Trajectory]:
    return [
        Trajectory(
            optimizer=r["optimizer"],
            hparams=dict(r["hparams"]),
            points=np.asarray(r["points"], dtype=np.float64),
            steps=int(r["steps"]),
            diverged_at=r["diverged_at"],
            lr_source=r["lr_source"],
            clip_grad_norm=r["clip_grad_norm"],
            tuning=r["tuning"],
            effective_hparams=r.get("effective_hparams"),
        )
        for r in records
    ]


def load_document(path: str | Path) -> tuple[TestFunction, list[Trajectory], dict[str, Any]]:
    """Read a ``trajectories.json``: the function, the paths and the whole record."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return function_from(data["function"]), trajectories_from(data["trajectories"]), data
