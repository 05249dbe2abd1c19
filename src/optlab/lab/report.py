"""Tables, plots and ``report.md`` of a results directory, from stored records only.

:func:`write_report` reads a results directory (see :mod:`optlab.lab.store`)
and writes, next to the records:

- ``summary.csv``: one row per task and arm (see
  :func:`optlab.lab.tables.write_summary_csv`): every hyper-parameter used, mean,
  sample std and 95 % confidence interval over seeds, the verdict against the
  task's best arm with its Holm-adjusted p-value, times to target;
- ``across-tasks.csv`` (suites only): mean rank, wins, performance-profile areas;
- ``plots/<task>-curves.png``: train/test loss and test metric against epochs,
  mean ± sample std bands per arm;
- ``plots/<task>-lr-sensitivity.png``: the selection metric (final validation
  metric, or training objective for tasks without held-out data) against
  learning rate from the tuning runs (tuned studies only);
- ``plots/profiles.png`` (suites only): performance profiles on the final
  metric and on time to target;
- ``report.md``: the tables and plots with the exact command, versions and
  machine.

Nothing is trained: ``optlab report DIR`` redraws everything at any time.
Statistics (:mod:`optlab.lab.stats`): means and sample standard deviations
(ddof 1) over the seeds that did not diverge; Student t intervals; each arm
against the task's best by a paired t test over the seeds (seed k of every
arm shares its initial weights and data order), Holm's correction over the
arms at a family-wise 5 %.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from optlab.lab import tables
from optlab.lab.execution import failure_records
from optlab.lab.runs import RunResult
from optlab.lab.selection import ArmOutcome, StudyOutcome, TaskOutcome, resolve_study
from optlab.lab.spec import Arm, StudySpec
from optlab.lab.store import Store, atomic_write_text
from optlab.lab.study import load_study
from optlab.lab.summary import (
    ALPHA,
    SummaryRow,
    TaskFacts,
    across_tasks,
    summarize,
    summarize_runs,
    task_facts,
)

__all__ = ["Report", "SummaryRow", "format_table", "summarize", "summarize_runs", "write_report"]

format_table = tables.format_table


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


def _outcome_from_records(results: Sequence[RunResult]) -> StudyOutcome:
    """Without a study file: one arm per optimizer and setting, per task."""
    by_task: dict[str, dict[tuple[str, str], list[RunResult]]] = {}
    for result in results:
        setting = json.dumps(
            {
                "hparams": dict(result.spec.hparams),
                "epochs": result.spec.epochs,
                "schedule": result.spec.schedule,
                "batch_size": result.spec.batch_size,
                "task_options": dict(result.spec.task_options),
            },
            sort_keys=True,
            default=list,
        )
        by_task.setdefault(result.spec.task, {}).setdefault(
            (result.spec.optimizer, setting), []
        ).append(result)
    arms: dict[str, Arm] = {}
    task_outcomes = []
    for task, groups in sorted(by_task.items()):
        outcomes = []
        for (optimizer, _), runs in sorted(groups.items()):
            runs = sorted(runs, key=lambda run: run.spec.seed)
            arm = Arm("", optimizer, dict(runs[0].spec.hparams))
            label = arm.text(with_label=False)
            if (
                label in arms and arms[label] != arm or any(o.label == label for o in outcomes)
            ):  # the same optimizer and hyper-parameters with other epochs or schedule
                label += f" #{sum(o.optimizer == optimizer for o in outcomes) + 1}"
            arm = Arm(label, optimizer, dict(runs[0].spec.hparams))
            arms.setdefault(label, arm)
            outcomes.append(ArmOutcome(task, arm, dict(arm.hparams), [], runs))
        task_outcomes.append(TaskOutcome(task, outcomes))
    study = StudySpec(tasks=tuple(by_task), arms=tuple(arms.values()))
    return StudyOutcome(study, task_outcomes)


def _has_step_sizes(runs: Sequence[RunResult], prefix: str = "") -> bool:
    return any(prefix + "step_q50" in row for run in runs for row in run.history)


def _step_size_prefixes(groups: Sequence[tuple[str, Sequence[RunResult]]]) -> list[str]:
    """The step-size diagnostics the runs recorded: ``""`` for one optimizer, else each
    network's role prefix (``"generator."``), in order of appearance."""
    found: dict[str, None] = {}
    for _, runs in groups:
        for run in runs:
            for key in run.history[-1] if run.history else ():
                if key.endswith("step_q50"):
                    found[key[: -len("step_q50")]] = None
    return list(found)


def _all_runs(task: TaskOutcome) -> list[RunResult]:
    return [run for o in task.arms for run in (*o.runs, *o.tuning)]


def write_report(root: str | os.PathLike[str]) -> Report:
    """(Re)write ``summary.csv``, the plots and ``report.md`` of the results directory ``root``.

    Uses only what the directory holds; trains nothing. Works on a partial
    study (runs still missing are counted in the table).
    """
    from optlab.lab import plots

    store = Store.open_existing(root)
    study, study_data = load_study(store)
    outcome = (
        resolve_study(study, store) if study is not None else _outcome_from_records(store.results())
    )
    report = Report(Path(root), complete=outcome.complete)
    plot_dir = report.root / "plots"
    styles = plots.arm_styles([arm.label for arm in outcome.study.arms])
    rows_by_task = summarize(outcome)
    sections = []
    for task in outcome.tasks:
        rows = rows_by_task[task.task]
        report.rows.extend(rows)
        facts = task_facts(task.task, _all_runs(task))
        title = f"{task.task}: {facts.description}" if facts.description else task.task
        report.tables[task.task] = tables.format_table(rows, title=title)
        images = []
        groups = [(o.label, o.runs) for o in task.arms if o.runs]
        if groups:
            path = plots.plot_curves(
                groups,
                plot_dir / f"{task.task}-curves.png",
                title=task.task,
                metric=facts.metric,
                log_metric=facts.metric == "gap",
                styles=styles,
            )
            images.append(("Training curves", path))
        tuning = [(o.label, o.tuning, (o.hparams or {}).get("lr")) for o in task.arms if o.tuning]
        if tuning and any("lr" in run.spec.hparams for _, runs, _ in tuning for run in runs):
            path = plots.plot_lr_sensitivity(
                tuning,
                plot_dir / f"{task.task}-lr-sensitivity.png",
                title=task.task,
                label=facts.selection,
                higher_is_better=facts.higher_is_better,
                log_metric=facts.metric == "gap",
                styles=styles,
                connect=all(len(outcome.study.space(o.arm)) == 1 for o in task.arms),
            )
            images.append(("Learning-rate sensitivity", path))
        for prefix in _step_size_prefixes(groups):
            stepped = [(label, runs) for label, runs in groups if _has_step_sizes(runs, prefix)]
            name = f"{task.task}-step-sizes{'-' + prefix.rstrip('.') if prefix else ''}.png"
            path = plots.plot_step_sizes(
                stepped, plot_dir / name, title=task.task, styles=styles, prefix=prefix
            )
            role = f" ({prefix.rstrip('.')})" if prefix else ""
            images.append((f"Effective step sizes{role}", path))
        report.files.extend(path for _, path in images)
        sections.append(_task_section(outcome.study, task, rows, images, facts, report.root))
    csv_path = tables.write_summary_csv(report.rows, report.root / "summary.csv")
    report.files.insert(0, csv_path)
    if len(outcome.tasks) > 1:
        cross = across_tasks(rows_by_task)
        report.tables["across tasks"] = tables.format_across(cross)
        report.files.append(tables.write_across_csv(cross, report.root / "across-tasks.csv"))
        profile = plots.plot_profiles(
            [
                ("final test metric (cost: error rate or loss)", cross.ratios),
                ("time to the task's target (median over seeds)", cross.time_ratios),
            ],
            plot_dir / "profiles.png",
            title=f"{len(cross.tasks)} tasks",
            styles={arm: styles[arm] for arm in cross.arms if arm in styles},
            r_max=cross.r_max,
        )
        report.files.append(profile)
        sections.append(_across_section(cross, profile, report.root))
    factorial = _factorial(outcome, rows_by_task)
    if factorial:
        from optlab.lab.factorial import format_factorial, verdicts

        report.tables["factorial"] = "belief / eps factorial:\n" + "\n".join(
            f"- {sentence}" for result in factorial for sentence in verdicts(result)
        )
        sections.append(_factorial_section(factorial, format_factorial))
    from optlab.lab.precision import precision_report

    compact = precision_report(outcome.study.arms, rows_by_task, report.root)
    if compact is not None:  # arms with compact optimizer state and their baselines
        report.tables["compact state"] = compact.text
        report.files.append(compact.csv)
        sections.append(compact.markdown)
    used = {r.spec.key() for o in outcome.arm_outcomes() for r in (*o.runs, *o.tuning)}
    markdown = _markdown(report, study, study_data, sections, len(store), len(used))
    atomic_write_text(report.report_path, markdown)
    report.files.insert(0, report.report_path)
    return report


# -------------------------------------------------------------------------- markdown


def _setup_line(study: StudySpec, task: TaskOutcome, facts: TaskFacts) -> str:
    items = [f"seeds {', '.join(map(str, study.seeds))}"]
    if study.epochs is not None:
        items.append(f"epochs {study.epochs}")
    else:
        epochs = {r.info.get("epochs") for r in _all_runs(task) if r.info.get("epochs")}
        items.append(f"epochs {epochs.pop() if len(epochs) == 1 else 'of the task'} (task default)")
    schedule = study.schedule_of(task.task)
    items.append(f"schedule {schedule}" + (" (task default)" if study.schedule is None else ""))
    if study.task_options.get(task.task):
        options = ", ".join(
            f"{k}={tables.format_value(v)}" for k, v in study.task_options[task.task].items()
        )
        items.append(f"task options {options}")
    if study.hparams:
        fixed = ", ".join(f"{k}={tables.format_value(v)}" for k, v in study.hparams.items())
        items.append(f"fixed for every arm: {fixed}")
    if study.task_hparams.get(task.task):
        recipe = ", ".join(
            f"{k}={tables.format_value(v)}" for k, v in study.task_hparams[task.task].items()
        )
        items.append(f"fixed on this task for the arms that have them: {recipe}")
    selection = facts.selection
    tuned = [o for o in task.arms if study.tuned(o.arm)]
    if tuned:
        spaces = {}
        for o in tuned:
            text = ", ".join(_space_text(study, dim) for dim in study.space(o.arm))
            spaces.setdefault(text, []).append(o.label)
        how = "Cartesian grid" if study.tuner == "grid" else "Optuna TPE (optuna.sqlite3)"
        budgets = sorted({o.budget for o in tuned})
        budget = (
            f"{budgets[0]} runs per arm"
            if len(budgets) == 1
            else "runs per arm: " + ", ".join(f"{o.label} {o.budget}" for o in tuned)
        )
        where = "; ".join(
            f"{text}" + (f" ({', '.join(labels)})" if len(spaces) > 1 else "")
            for text, labels in spaces.items()
        )
        items.append(
            f"tuned per arm by {how}: {where}; {budget} (seed {study.seeds[0]}, by the {selection})"
        )
    return "Setup: " + "; ".join(items) + "."


def _space_text(study: StudySpec, dim: Any) -> str:
    if study.tuner == "grid":
        return f"{dim.name} in {{{', '.join(tables.format_value(v) for v in dim.grid())}}}"
    low, high = dim.bounds
    scale = "log" if dim.log else "linear"
    return f"{dim.name} in [{tables.format_value(low)}, {tables.format_value(high)}] ({scale})"


def _task_section(
    study: StudySpec,
    task: TaskOutcome,
    rows: Sequence[SummaryRow],
    images: Sequence[tuple[str, Path]],
    facts: TaskFacts,
    root: Path,
) -> str:
    lines = [f"## {task.task}", ""]
    if facts.description:
        lines += [facts.description, ""]
    lines += [_setup_line(study, task, facts), "", tables.markdown_table(rows), ""]
    seeds = len(study.seeds)
    notes = [
        f"final and best: the test {facts.metric}, mean ± sample std (ddof 1) over the seeds "
        "that did not diverge; 95% CI: Student t interval of the mean"
        + (f" (with {seeds} seeds it is wide)" if seeds < 5 else ""),
        "vs best: each arm against the arm with the best mean, paired by seed (seed k of "
        "every arm starts from the same weights and sees the same batches), two-sided paired "
        f"t test, Holm's correction over the arms at {ALPHA:g}; ≈ marks arms the data cannot "
        "tell apart from the best (p is Holm-adjusted)",
        "epochs to target: mean first evaluation epoch at which the test metric reached "
        + (tables.format_value(facts.target) if facts.target is not None else "the target")
        + " (k/n when only k of n seeds did)",
        "other hyper-parameters: defaults that are 0 or off are left out here and listed "
        "in summary.csv",
    ]
    if any(row.at_edge for row in rows):
        edges = "; ".join(f"{row.arm}: {', '.join(row.at_edge)}" for row in rows if row.at_edge)
        notes.append(
            f"**chosen at the edge of the search range** ({edges}): the range was probably "
            "too small; widen it"
        )
    tuned = any(study.tuned(o.arm) for o in task.arms)
    if tuned and facts.validation == "held-out":
        notes.append(
            "the tuned hyper-parameters were chosen on held-out validation data, never on the "
            "test data the table reports"
        )
    elif tuned and facts.validation == "train":
        notes.append(
            f"{task.task} holds no data out: the tuned hyper-parameters were chosen on the "
            "training objective (the whole training set; see the task's description in "
            "optlab.lab.tasks)"
        )
    lines += ["- " + note for note in notes] + [""]
    for caption, path in images:
        lines += [f"### {caption}", "", f"![{caption}]({path.relative_to(root).as_posix()})", ""]
    diverged = {}
    for o in task.arms:
        for run in (*o.tuning, *o.runs):
            if run.status != "ok":
                hparams = ", ".join(
                    f"{k}={tables.format_value(v)}"
                    for k, v in run.spec.hparams.items()
                    if k not in study.fixed(o.arm, task.task)
                )
                diverged[run.spec.key()] = f"{o.label} {hparams} seed {run.spec.seed}".replace(
                    "  ", " "
                )
    if diverged:
        lines += ["Diverged runs: " + "; ".join(sorted(diverged.values())) + ".", ""]
    return "\n".join(lines)


def _across_section(cross: Any, profile: Path, root: Path) -> str:
    lines = ["## Across tasks", "", tables.markdown_across(cross), ""]
    lines += [
        "- mean rank: per task the arms ranked by mean final test metric (1 = best, ties "
        "averaged, arms without a result last), then mean ± sample std over the tasks",
        "- ≈ best: tasks on which the arm is the best or indistinguishable from it",
        "- profile area (AlgoPerf-style): the normalised area under the arm's performance "
        f"profile on [1, {cross.r_max:g}], 1 = best on every task. Cost of the final metric: "
        "1 - accuracy (the error rate) for accuracy, the metric itself for losses and gaps "
        "(floored at 1e-12); time to target: the median over seeds of the seconds to reach "
        "the task's target (a seed that never did counts as never)",
        "",
        f"![Performance profiles]({profile.relative_to(root).as_posix()})",
        "",
    ]
    return "\n".join(lines)


def _factorial(outcome: StudyOutcome, rows_by_task: Mapping[str, Sequence[SummaryRow]]) -> list:
    """The factorial analysis per task when at least four arms are cells of it."""
    from optlab.lab.factorial import analyze_task, cell_of

    cells = {
        arm.label: cell
        for arm in outcome.study.arms
        if (cell := cell_of(arm.optimizer, arm.hparams)) is not None
    }
    if len(set(cells.values())) < 4:
        return []
    results = []
    for task, rows in rows_by_task.items():
        if rows:
            by_label = {row.arm: row.final_by_seed for row in rows}
            results.append(
                analyze_task(task, rows[0].metric, rows[0].higher_is_better, by_label, cells)
            )
    return results


def _factorial_section(results: Sequence[Any], format_factorial: Any) -> str:
    lines = [
        "## Belief or eps: the factorial",
        "",
        "Contrasts of the cells' final test metric over the paired seeds, oriented so that "
        "+ is an improvement, with 95 % t intervals (per task and contrast, not corrected "
        "across them). Main effect: the mean over the other factor's levels of the difference "
        "of two levels; interaction: the difference of differences. AdaBelief's cell minus "
        "Adam's splits exactly into EAdam - Adam (eps moved inside and accumulated) plus "
        "AdaBelief - EAdam (the belief term). The sentences are generated from these numbers.",
        "",
        format_factorial(results),
    ]
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
    failed = failure_records(report.root)
    if failed:
        lines += [
            f"**{len(failed)} run{'s' if len(failed) != 1 else ''} failed on every try** "
            f"(the worker died; recorded in `failed/`): {failed[0].get('reason')}. Run the "
            "command again to retry.",
            "",
        ]
    lines += list(sections)
    env = study_data.get("environment")
    if env:
        lines += ["## Versions and machine", "", "| | |", "|---|---|"]
        lines += [f"| {name} | {value} |" for name, value in env.items()]
        lines += _execution_rows(study_data)
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
        "- `study.toml`: the study as a study file (`optlab run DIR/study.toml --out DIR`)."
        if study is not None
        else "- (no study file: the runs are grouped by optimizer and setting)",
        "- `summary.csv`: the tables above with every hyper-parameter used"
        + ("; `across-tasks.csv`: the across-tasks table." if len(report.tables) > 2 else "."),
        "- `plots/`: the figures; `optlab report DIR` redraws all of this from the records.",
        "",
    ]
    return "\n".join(lines)


def _execution_rows(study_data: Mapping[str, Any]) -> list[str]:
    """Where the runs trained: the executor, its nodes and CPUs (rows of the machine table)."""
    execution = study_data.get("execution") or {}
    if execution.get("executor") == "ray":
        rows = [
            f"| executor | Ray {execution.get('ray', '')} at {execution.get('address')} |",
            f"| nodes | {execution.get('nodes')} |",
            f"| CPUs | {execution.get('cpus')} ({execution.get('cpus_per_run', 1)} per run) |",
        ]
        if execution.get("gpus_per_run"):
            rows.append(
                f"| GPUs | {execution.get('gpus')} ({execution['gpus_per_run']:g} per run) |"
            )
        return rows
    if study_data.get("jobs"):
        rows = ["| executor | local |"] if execution else []
        return rows + [f"| worker processes | {study_data['jobs']} |"]
    return []
