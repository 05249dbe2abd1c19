"""Tables, plots and ``report.md`` of a results directory, from stored records only.

:func:`write_report` reads a results directory (see :mod:`optlab.lab.store`)
and writes, next to the records:

- ``summary.csv``: one row per task and optimizer: every hyper-parameter used
  (``hp_<name>`` columns: the values stored in the runs' records, defaults
  included; options that only choose an implementation, ``foreach``,
  ``fused``, ``capturable``, ``differentiable``, only when given explicitly),
  the number of seeds and of diverged runs, final and best test metric and
  final validation metric as mean and sample std over seeds, epochs and
  seconds to reach the task's target, seconds per epoch;
- ``plots/<task>-curves.png``: train/test loss and test metric against
  epochs, mean ± sample std bands per optimizer;
- ``plots/<task>-lr-sensitivity.png``: the selection metric (final
  validation metric, or training objective for tasks without held-out data)
  against learning rate from the tuning runs (tuned studies only);
- ``report.md``: the tables and plots with the exact command, versions and
  machine.

Nothing is trained: ``optlab report DIR`` redraws everything at any time.
Statistics: mean and sample standard deviation (ddof 1) over the seeds that
did not diverge; a run "reaches the target" at its first evaluation whose
metric is at least as good as the task's target.
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from optlab.lab.runs import RunResult
from optlab.lab.store import Store, atomic_write_text, finite
from optlab.lab.study import OptimizerOutcome, StudyOutcome, StudySpec, load_study, resolve_study

__all__ = [
    "Report",
    "SummaryRow",
    "format_table",
    "summarize",
    "write_report",
]

#: Options that choose an implementation, not the algorithm (results are equal): shown
#: only when a study sets them explicitly (``--set foreach=False``), where the
#: seconds per epoch of the implementations may be what is being compared.
#: ``maximize`` changes the algorithm and is shown like any hyper-parameter.
IMPLEMENTATION_FLAGS = frozenset(
    {"foreach", "fused", "capturable", "differentiable", "print_change_log"}
)


# -------------------------------------------------------------------- numbers


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = [v for v in values if finite(v)]
    if not values:
        return math.nan, math.nan
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else math.nan
    return mean, std


def _recorded_hparams(runs: Sequence[RunResult]) -> dict[str, Any] | None:
    """The hyper-parameters a run stored (``info["hparams"]``: the optimizer's first param
    group as it trained), from the first run that has them."""
    for run in runs:
        recorded = run.info.get("hparams") if isinstance(run.info, Mapping) else None
        if isinstance(recorded, Mapping) and recorded:
            return dict(recorded)
    return None


def effective_hparams(
    optimizer: str, explicit: Mapping[str, Any], runs: Sequence[RunResult] = ()
) -> dict[str, Any]:
    """Every hyper-parameter the runs used: the values stored in their records when they
    have them, else the registry's current defaults; ``explicit`` on top.

    Implementation flags (:data:`IMPLEMENTATION_FLAGS`) appear only when explicit.
    """
    from optlab.optim.registry import get_spec

    try:
        defaults = get_spec(optimizer).defaults()
    except ValueError:  # an optimizer this optlab does not know: show what was stored
        defaults = {}
    recorded = _recorded_hparams(runs)
    if recorded is None:
        values = defaults
    else:  # the registry's order (records store names sorted), then names it lacks
        values = {name: recorded[name] for name in defaults if name in recorded}
        values.update(recorded)
    values.update(explicit)
    return {
        name: tuple(value) if isinstance(value, list) else value
        for name, value in values.items()
        if name not in IMPLEMENTATION_FLAGS or name in explicit
    }


def _reached(value: Any, target: float, higher_is_better: bool) -> bool:
    if not finite(value):
        return False
    return float(value) >= target if higher_is_better else float(value) <= target


def _best(run: RunResult) -> float:
    values = [float(row["metric"]) for row in run.history if finite(row.get("metric"))]
    if not values:
        return math.nan
    return max(values) if run.higher_is_better else min(values)


@dataclass
class SummaryRow:
    """One optimizer's line of a task's summary table."""

    task: str
    optimizer: str
    hparams: dict[str, Any]
    explicit: dict[str, Any]
    metric: str
    higher_is_better: bool
    target: float | None
    seeds: int = 0
    diverged: int = 0
    missing: int = 0
    final_mean: float = math.nan
    final_std: float = math.nan
    best_mean: float = math.nan
    best_std: float = math.nan
    reached: int = 0
    epochs_to_target_mean: float = math.nan
    epochs_to_target_std: float = math.nan
    seconds_to_target_mean: float = math.nan
    seconds_per_epoch: float = math.nan
    final_train_loss: float = math.nan
    final_test_loss: float = math.nan
    final_valid_mean: float = math.nan
    final_valid_std: float = math.nan
    validation: str = ""
    tuned: str = ""
    note: str = ""

    def sort_key(self) -> tuple[int, float]:
        if not finite(self.final_mean):
            return (1, 0.0)
        return (0, -self.final_mean if self.higher_is_better else self.final_mean)


def summarize_runs(
    task: str,
    optimizer: str,
    explicit: Mapping[str, Any],
    runs: Sequence[RunResult],
    *,
    target: float | None,
    metric: str,
    higher_is_better: bool,
    missing: int = 0,
    tuned: str = "",
    note: str = "",
    validation: str = "",
) -> SummaryRow:
    """The statistics of one optimizer's runs over seeds."""
    ok = [run for run in runs if run.status == "ok"]
    row = SummaryRow(
        task=task,
        optimizer=optimizer,
        hparams=effective_hparams(optimizer, explicit, runs),
        explicit=dict(explicit),
        metric=metric,
        higher_is_better=higher_is_better,
        target=target,
        seeds=len(runs),
        diverged=len(runs) - len(ok),
        missing=missing,
        tuned=tuned,
        note=note,
        validation=validation,
    )
    row.final_mean, row.final_std = _mean_std([run.final.get("metric", math.nan) for run in ok])
    row.final_valid_mean, row.final_valid_std = _mean_std(
        [run.final.get("valid_metric", math.nan) for run in ok]
    )
    row.best_mean, row.best_std = _mean_std([_best(run) for run in ok])
    row.final_train_loss, _ = _mean_std([run.final.get("train_loss", math.nan) for run in ok])
    row.final_test_loss, _ = _mean_std([run.final.get("test_loss", math.nan) for run in ok])
    row.seconds_per_epoch, _ = _mean_std([run.seconds_per_epoch for run in runs])
    if target is not None:
        epochs, seconds = [], []
        for run in ok:
            hit = next(
                (h for h in run.history if _reached(h.get("metric"), target, higher_is_better)),
                None,
            )
            if hit is not None:
                epochs.append(float(hit.get("epoch", math.nan)))
                seconds.append(float(hit.get("wall_time", math.nan)))
        row.reached = len(epochs)
        row.epochs_to_target_mean, row.epochs_to_target_std = _mean_std(epochs)
        row.seconds_to_target_mean, _ = _mean_std(seconds)
    return row


@dataclass(frozen=True)
class TaskFacts:
    """What the report says about a task: from the catalogue, else from the records."""

    metric: str
    higher_is_better: bool
    target: float | None
    description: str
    validation: str  # "held-out", "train", or "" when unknown

    @property
    def selection(self) -> str:
        """What tuning selects on, in words (axis labels, report text)."""
        if self.validation == "train":
            return f"final {self.metric} on the training set"
        return f"final validation {self.metric}"


def _task_facts(task_name: str, runs: Sequence[RunResult]) -> TaskFacts:
    recorded = {run.info.get("validation") for run in runs if isinstance(run.info, Mapping)}
    recorded.discard(None)
    try:
        from optlab.lab.tasks import get_task

        task = get_task(task_name)
        return TaskFacts(
            task.metric,
            task.higher_is_better,
            float(task.target),
            task.description,
            task.validation,
        )
    except (ValueError, ImportError):
        validation = recorded.pop() if len(recorded) == 1 else ""
        if runs:
            return TaskFacts(runs[0].metric, runs[0].higher_is_better, None, "", validation)
        return TaskFacts("metric", True, None, "", validation)


def summarize(outcome: StudyOutcome) -> list[SummaryRow]:
    """One row per optimizer of a study, best final metric first."""
    study = outcome.study
    all_runs = [run for o in outcome.optimizers for run in (*o.runs, *o.tuning)]
    facts = _task_facts(study.task, all_runs)
    rows = []
    for o in outcome.optimizers:
        tuned = ""
        if study.tune and o.hparams is not None:
            tuned = f"lr by {study.tuner} ({len(o.tuning)} runs)"
        row = summarize_runs(
            study.task,
            o.optimizer,
            o.hparams if o.hparams is not None else dict(study.hparams),
            o.runs,
            target=facts.target,
            metric=facts.metric,
            higher_is_better=facts.higher_is_better,
            missing=o.missing,
            tuned=tuned,
            note=o.note,
            validation=facts.validation,
        )
        if study.tune and o.hparams is None:
            row.hparams["lr"] = None  # not chosen (yet): the default would mislead
        rows.append(row)
    return sorted(rows, key=SummaryRow.sort_key)


# ----------------------------------------------------------------- formatting


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


def table_rows(rows: Sequence[SummaryRow]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the summary table (shared by the terminal and report.md)."""
    if not rows:
        return [], []
    metric = rows[0].metric
    target = rows[0].target
    header = [
        "optimizer",
        "lr",
        f"final {metric}",
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
                row.optimizer,
                "-" if row.hparams.get("lr") is None else format_value(row.hparams["lr"]),
                _metric_text(row.final_mean, row.final_std, metric),
                _metric_text(row.best_mean, row.best_std, metric),
                _target_text(row),
                f"{row.seconds_per_epoch:.3g}" if finite(row.seconds_per_epoch) else "-",
                seeds,
                other,
            ]
        )
    return header, cells


def format_table(rows: Sequence[SummaryRow], *, title: str | None = None) -> str:
    """The summary as an aligned plain-text table."""
    header, cells = table_rows(rows)
    if not header:
        return (title + "\n" if title else "") + "(no finished runs yet)"
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]
    lines = [title] if title else []
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    lines.append("  ".join("-" * w for w in widths))
    for line in cells:
        lines.append("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _markdown_table(rows: Sequence[SummaryRow]) -> str:
    header, cells = table_rows(rows)
    if not header:
        return "(no finished runs yet)"

    def escape(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(escape(c) for c in line) + " |" for line in cells]
    return "\n".join(lines)


# --------------------------------------------------------------- summary.csv

CSV_COLUMNS = [
    "task", "optimizer", "metric", "higher_is_better", "target", "seeds", "diverged",
    "missing", "final_mean", "final_std", "best_mean", "best_std", "reached_target",
    "epochs_to_target_mean", "epochs_to_target_std", "seconds_to_target_mean",
    "seconds_per_epoch", "final_train_loss", "final_test_loss", "final_valid_mean",
    "final_valid_std", "validation", "tuned", "note", "hparams",
]  # fmt: skip


def write_summary_csv(rows: Sequence[SummaryRow], path: str | os.PathLike[str]) -> Path:
    """``summary.csv``: the fixed columns above, then one ``hp_<name>`` column per
    hyper-parameter used by any optimizer (empty where an optimizer has none)."""
    hp_names = sorted({name for row in rows for name in row.hparams})
    columns = CSV_COLUMNS + [f"hp_{name}" for name in hp_names]
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            values = {
                "task": row.task,
                "optimizer": row.optimizer,
                "metric": row.metric,
                "higher_is_better": row.higher_is_better,
                "target": "" if row.target is None else row.target,
                "seeds": row.seeds,
                "diverged": row.diverged,
                "missing": row.missing,
                "final_mean": row.final_mean,
                "final_std": row.final_std,
                "best_mean": row.best_mean,
                "best_std": row.best_std,
                "reached_target": row.reached,
                "epochs_to_target_mean": row.epochs_to_target_mean,
                "epochs_to_target_std": row.epochs_to_target_std,
                "seconds_to_target_mean": row.seconds_to_target_mean,
                "seconds_per_epoch": row.seconds_per_epoch,
                "final_train_loss": row.final_train_loss,
                "final_test_loss": row.final_test_loss,
                "final_valid_mean": row.final_valid_mean,
                "final_valid_std": row.final_valid_std,
                "validation": row.validation,
                "tuned": row.tuned,
                "note": row.note,
                "hparams": json.dumps(row.hparams, sort_keys=True, default=list),
            }
            for name in hp_names:
                value = row.hparams.get(name, "")
                values[f"hp_{name}"] = format_value(value) if isinstance(value, tuple) else value
            writer.writerow([_csv_cell(values[c]) for c in columns])
    os.replace(tmp, path)
    return path


def _csv_cell(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return ""
    return value


# ---------------------------------------------------------------- the report


@dataclass
class Report:
    """What :func:`write_report` wrote, and the text tables it printed into report.md."""

    root: Path
    tables: dict[str, str] = field(default_factory=dict)
    rows: list[SummaryRow] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    complete: bool = True

    @property
    def report_path(self) -> Path:
        return self.root / "report.md"

    def text(self) -> str:
        return "\n\n".join(self.tables.values())


def _outcome_from_records(results: Sequence[RunResult]) -> list[StudyOutcome]:
    """Without a study file: one pseudo-study per task, one row per optimizer and setting."""
    by_task: dict[str, dict[tuple[str, str], list[RunResult]]] = {}
    for result in results:
        setting = json.dumps(
            {
                "hparams": dict(result.spec.hparams),
                "epochs": result.spec.epochs,
                "schedule": result.spec.schedule,
                "batch_size": result.spec.batch_size,
            },
            sort_keys=True,
            default=list,
        )
        by_task.setdefault(result.spec.task, {}).setdefault(
            (result.spec.optimizer, setting), []
        ).append(result)
    outcomes = []
    for task, groups in sorted(by_task.items()):
        optimizers = []
        for (optimizer, _), runs in sorted(groups.items()):
            runs = sorted(runs, key=lambda run: run.spec.seed)
            optimizers.append(OptimizerOutcome(optimizer, dict(runs[0].spec.hparams), [], runs))
        study = StudySpec(task=task, optimizers=tuple(o.optimizer for o in optimizers))
        outcomes.append(StudyOutcome(study, optimizers))
    return outcomes


def write_report(root: str | os.PathLike[str]) -> Report:
    """(Re)write ``summary.csv``, the plots and ``report.md`` of the results directory ``root``.

    Uses only what the directory holds; trains nothing. Works on a partial
    study (runs still missing are counted in the table).
    """
    from optlab.lab import plots

    store = Store.open_existing(root)
    study, study_data = load_study(store)
    if study is not None:
        outcomes = [resolve_study(study, store)]
    else:
        outcomes = _outcome_from_records(store.results())
    report = Report(Path(root))
    plot_dir = report.root / "plots"
    sections = []
    for outcome in outcomes:
        task = outcome.study.task
        rows = summarize(outcome)
        report.rows.extend(rows)
        report.complete = report.complete and outcome.complete
        all_runs = [r for o in outcome.optimizers for r in (*o.runs, *o.tuning)]
        facts = _task_facts(task, all_runs)
        metric, description = facts.metric, facts.description
        title = f"{task}: {description}" if description else task
        report.tables[task] = format_table(rows, title=title)
        images = []
        groups = [(o.optimizer, o.runs) for o in outcome.optimizers if o.runs]
        if groups:
            path = plots.plot_curves(
                groups,
                plot_dir / f"{task}-curves.png",
                title=task,
                metric=metric,
                log_metric=metric == "gap",
            )
            images.append(("Training curves", path))
        tuning = [
            (o.optimizer, o.tuning, (o.hparams or {}).get("lr"))
            for o in outcome.optimizers
            if o.tuning
        ]
        if tuning:
            path = plots.plot_lr_sensitivity(
                tuning,
                plot_dir / f"{task}-lr-sensitivity.png",
                title=task,
                label=facts.selection,
                higher_is_better=facts.higher_is_better,
                log_metric=metric == "gap",
            )
            images.append(("Learning-rate sensitivity", path))
        report.files.extend(path for _, path in images)
        sections.append(_task_section(outcome, rows, images, facts, report.root))
    csv_path = write_summary_csv(report.rows, report.root / "summary.csv")
    report.files.insert(0, csv_path)
    used = {
        r.spec.key() for o in outcomes for part in o.optimizers for r in (*part.runs, *part.tuning)
    }
    markdown = _markdown(report, study, study_data, sections, len(store), len(used))
    atomic_write_text(report.report_path, markdown)
    report.files.insert(0, report.report_path)
    return report


def _task_section(
    outcome: StudyOutcome,
    rows: Sequence[SummaryRow],
    images: Sequence[tuple[str, Path]],
    task_facts: TaskFacts,
    root: Path,
) -> str:
    study = outcome.study
    description, target = task_facts.description, task_facts.target
    lines = [f"## {study.task}", ""]
    if description:
        lines += [description, ""]
    selection = task_facts.selection
    facts = [f"seeds {', '.join(map(str, study.seeds))}"]
    if study.epochs is not None:
        facts.append(f"epochs {study.epochs}")
    else:
        all_runs = [r for o in outcome.optimizers for r in (*o.runs, *o.tuning)]
        epochs = {r.info.get("epochs") for r in all_runs if r.info.get("epochs") is not None}
        facts.append(f"epochs {epochs.pop() if len(epochs) == 1 else 'of the task'} (task default)")
    facts.append(f"schedule {study.schedule}")
    if study.hparams:
        fixed = ", ".join(f"{k}={format_value(v)}" for k, v in study.hparams.items())
        facts.append(f"fixed for every optimizer: {fixed}")
    if study.tune:
        if study.tuner == "grid":
            grid = ", ".join(format_value(lr) for lr in study.lr_grid)
            facts.append(f"lr tuned on the grid {grid} (seed {study.seeds[0]}, by the {selection})")
        else:
            facts.append(
                f"lr tuned by Optuna TPE, {study.trials} trials per optimizer in "
                f"[{format_value(study.lr_grid[0])}, {format_value(study.lr_grid[-1])}] "
                f"(seed {study.seeds[0]}, by the {selection}; study in optuna.sqlite3)"
            )
    lines += ["Setup: " + "; ".join(facts) + ".", ""]
    lines += [_markdown_table(rows), ""]
    notes = [
        f"Final and best: the test {task_facts.metric}, mean ± sample std (ddof 1) over the "
        "seeds that did not diverge",
        "epochs to target: mean first evaluation epoch at which the test metric reached "
        + (format_value(target) if target is not None else "the target")
        + " (k/n when only k of n seeds did)",
        "other hyper-parameters: defaults that are 0 or off are left out here and listed "
        "in summary.csv",
    ]
    if study.tune and task_facts.validation == "held-out":
        notes.append(
            "the learning rate was chosen on held-out validation data, never on the test "
            "data the table reports"
        )
    elif study.tune and task_facts.validation == "train":
        notes.append(
            f"{study.task} holds no data out: the learning rate was chosen on the training "
            "objective (the whole training set; see the task's description in optlab.lab.tasks)"
        )
    lines += ["- " + note for note in notes] + [""]
    for caption, path in images:
        lines += [f"### {caption}", "", f"![{caption}]({path.relative_to(root).as_posix()})", ""]
    diverged = [
        run for o in outcome.optimizers for run in (*o.tuning, *o.runs) if run.status != "ok"
    ]
    if diverged:
        seen = {}
        for run in diverged:
            seen[run.spec.key()] = (
                f"{run.spec.optimizer} lr={format_value(run.spec.hparams.get('lr', 'default'))} "
                f"seed {run.spec.seed}"
            )
        lines += ["Diverged runs: " + "; ".join(sorted(seen.values())) + ".", ""]
    return "\n".join(lines)


def _markdown(
    report: Report,
    study: StudySpec | None,
    study_data: Mapping[str, Any],
    sections: Sequence[str],
    record_count: int,
    used_count: int,
) -> str:
    lines = ["# optlab report", ""]
    command = study_data.get("command")
    if command:
        lines += [
            "Command (run it again to resume or to reproduce):",
            "",
            "```",
            command,
            "```",
            "",
        ]
    when = []
    for key in ("started", "resumed", "finished"):
        if study_data.get(key):
            when.append(f"{key} {study_data[key]}")
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    when.append(f"report generated {generated}")
    lines += ["; ".join(when) + ".", ""]
    if not report.complete:
        lines += ["**The study is not complete**: some runs are missing (see the tables).", ""]
    lines += list(sections)
    env = study_data.get("environment")
    if env:
        lines += ["## Versions and machine", "", "| | |", "|---|---|"]
        lines += [f"| {name} | {value} |" for name, value in env.items()]
        if study_data.get("jobs"):
            lines += [f"| worker processes | {study_data['jobs']} |"]
        lines.append("")
    lines += [
        "## Files",
        "",
        f"- `runs/<key>.json`: the {record_count} run records (one JSON file per run)"
        + (
            f", {used_count} of them part of this study (the others are from earlier studies "
            "run into this directory);"
            if used_count != record_count
            else ";"
        ),
        "  load them with `optlab.lab.store.load_records(DIR)` (one row per evaluation) or",
        "  `load_runs(DIR)` (one row per run) into pandas.",
        "- `summary.csv`: the tables above with every hyper-parameter used.",
        "- `plots/`: the figures; `optlab report DIR` redraws all of this from the records.",
        "",
    ]
    return "\n".join(lines)
