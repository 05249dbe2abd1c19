"""``optlab tasks``, ``compare``, ``run`` and ``report``: the lab's commands.

A thin shell over :mod:`optlab.lab`: parse, check, run the study, print the
tables and where the report is. The study's flags come from the fields table
of :mod:`optlab.lab.studyfile` (the same one ``optlab run FILE`` reads study
files with), so flags, files and the reproduce command cannot drift apart.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from optlab.cli import CommandLineError

__all__ = ["add_study_arguments", "parse_set", "register", "study_from_args"]

RESULTS_ROOT = "results"

COMPARE_EXAMPLE = """\
examples:
  optlab compare                      # the default study: digits-mlp, 12 optimizers, lr tuned
  optlab compare --task cancer-logreg --optimizers adam,adabelief,sgd --seeds 5
  optlab compare --arm adabelief --arm 'adabelief-e8=adabelief:eps=1e-8' \\
      --arm 'adam:eps=1e-16' --tune 'lr=1e-5..1:log'
  optlab compare --suite small --optimizers adam,adabelief,momentum,eadam \\
      --tune 'lr=1e-4..1:log' --tune 'eps=1e-16..1e-6:log' --tuner optuna --trials 12
  optlab compare --task text-lstm --task-option layers=2 --optimizers adam,adabelief
  optlab compare --suite domains --preset adabelief-paper --tune none   # see optlab presets
  optlab compare --optimizers adam,adabelief --lr 3e-3 --set 'betas=(0.9,0.99)' \\
      --schedule cosine --out results/betas
  optlab compare --task cancer-logreg --optimizers adam,adabelief --nproc 2
  torchrun --nproc-per-node 2 -m optlab.cli compare --task cancer-logreg --optimizers adam
  optlab compare --suite small --executor ray --ray-address auto    # on a Ray cluster

Results go to --out (default results/<task>-<hash of the arguments>); running
the same command again resumes, skipping finished runs."""

RUN_EXAMPLE = """\
examples:
  optlab run study.toml --out results/mine --jobs 2
  optlab run results/mine/study.toml --out results/mine     # resume / reproduce

A study file (every key optional; unknown keys are refused):
  tasks = ["digits-mlp", "cancer-logreg"]      # or: suite = "small"
  seeds = 5
  tune = ["lr=1e-4..1:log:5", "eps=1e-16..1e-6:log:3"]
  arms = ["adam", "adabelief-e8=adabelief:eps=1e-8"]
  [hparams]
  weight_decay = 0.0"""


# ------------------------------------------------------------ argument types


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def parse_set(text: str) -> tuple[str, Any]:
    """``name=value`` with ``value`` a Python literal (number, True/False, None, tuple)."""
    from optlab.lab.spec import parse_literal

    name, sep, raw = text.partition("=")
    name, raw = name.strip(), raw.strip()
    if not sep or not name.isidentifier() or not raw:
        raise argparse.ArgumentTypeError(f"expects name=value (e.g. eps=1e-8), got {text!r}")
    try:
        return name, parse_literal(name, raw)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# ---------------------------------------------------------------- arguments


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments that define a study (shared by every command that runs one)."""
    from optlab.lab.studyfile import add_study_arguments as add

    add(parser)


def _checked(study: Any) -> Any:
    """The study validated against the catalogue, or :class:`CommandLineError`."""
    from optlab.lab.checks import validate_study
    from optlab.lab.data import DatasetNotFoundError
    from optlab.lab.tasks import get_task

    try:
        for task in study.tasks:
            if get_task(task).needs_data_dir and not study.data_dir:
                raise CommandLineError(
                    f"task {task} reads its data from files: give --data-dir DIR (see optlab tasks)"
                )
        # Everything that could fail later (data files, batch size, options) fails here,
        # before the results directory is touched.
        return validate_study(study)
    except (ValueError, DatasetNotFoundError) as error:
        raise CommandLineError(str(error).splitlines()[0]) from None


def study_from_args(args: argparse.Namespace):  # -> StudySpec
    """The study the arguments describe; :class:`CommandLineError` when they are inconsistent."""
    from optlab.lab.studyfile import study_from_args as from_args

    try:
        study = from_args(args)
    except ValueError as error:
        raise CommandLineError(str(error).splitlines()[0]) from None
    return _checked(study)


def default_out(study: Any, stem: str | None = None) -> Path:
    """``results/<task>-<hash>``: the same study always resumes in the same directory."""
    digest = hashlib.sha256(json.dumps(study.to_dict(), sort_keys=True).encode()).hexdigest()
    if stem is None:
        tasks = list(study.tasks)
        stem = "+".join(tasks) if len(tasks) <= 2 else f"{tasks[0]}+{len(tasks) - 1}-more"
    return Path(RESULTS_ROOT) / f"{stem}-{digest[:8]}"


def default_jobs(study: Any = None) -> int:
    """Two workers on a machine with two or more cores for a study of more than 48 runs,
    else one. Each spawned worker first spends about 5 s of CPU importing torch,
    torch._dynamo and scikit-learn, which a small study (36 runs of about 0.7 s) would
    not win back: measured on the shared 2-core machine, the untuned 12-optimizer study
    took 27-80 s with --jobs 2 and 23-56 s with --jobs 1 (identical records)."""
    import os

    if study is None:
        return 1
    runs = sum(len(study.tasks) * (study.budget(arm) + len(study.seeds)) for arm in study.arms)
    return 2 if runs > 48 and (os.cpu_count() or 1) >= 2 else 1


# ----------------------------------------------------------------- progress


class _Progress:
    """One tqdm bar per study stage on a terminal (stderr); silent otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.stage: str | None = None

    def __call__(self, stage: str, done: int, total: int, result: Any) -> None:
        if not self.enabled:
            return
        if stage != self.stage or self.bar is None:
            self.close()
            from tqdm import tqdm

            label = {"tune": "tuning runs", "final": "runs"}.get(stage, stage)
            self.bar = tqdm(total=total, initial=done, desc=label, unit="run", file=sys.stderr)
            self.stage = stage
        self.bar.total = total
        self.bar.n = done
        if result is not None:
            lr = result.spec.hparams.get("lr")
            self.bar.set_postfix_str(
                f"{result.spec.optimizer} seed {result.spec.seed}"
                + (f" lr {lr:.3g}" if isinstance(lr, float) else ""),
                refresh=False,
            )
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# ----------------------------------------------------------------- commands


def run_compare(args: argparse.Namespace) -> int:
    study = study_from_args(args)
    return _run_with_session(args, study, None, _execution(args, {}))


def run_file(args: argparse.Namespace) -> int:
    from optlab.lab.studyfile import StudyFileError, load_study_file

    try:
        study, execution = load_study_file(args.file)
    except StudyFileError as error:
        raise CommandLineError(str(error)) from None
    study = _checked(study)
    text = Path(args.file).read_text(encoding="utf-8")
    return _run_with_session(args, study, (Path(args.file), text), _execution(args, execution))


def _execution(args: argparse.Namespace, from_file: dict[str, Any]) -> dict[str, Any]:
    """The execution settings (flags over the study file); with Ray, Ray must be installed."""
    from optlab.lab.studyfile import execution_from_args

    try:
        settings = execution_from_args(args, from_file)
    except ValueError as error:
        raise CommandLineError(str(error)) from None
    if settings["executor"] == "ray":
        from optlab.lab.ray_executor import RayUnavailable, require_ray

        try:
            require_ray()
        except RayUnavailable as error:
            raise CommandLineError(str(error)) from None
        if args.jobs is not None:
            raise CommandLineError(
                f"--jobs {args.jobs} is for the local executor: on Ray every free CPU of the "
                "cluster trains a run; leave --jobs out"
            )
    return settings


def _run_with_session(
    args: argparse.Namespace, study: Any, source: Any, execution: dict[str, Any]
) -> int:
    if execution["executor"] == "ray":
        _check_nproc(args, study, ray=True)
        return _run(args, study, None, source, execution)
    session = _distributed_session(args, study)
    if session is not None and not session.is_driver:
        session.serve()  # trains what rank 0 sends; rank 0 alone writes and prints
        return 0
    try:
        return _run(args, study, session, source, execution)
    finally:
        if session is not None:
            session.close()


def _check_nproc(args: argparse.Namespace, study: Any, *, ray: bool = False) -> None:
    """Refuse --nproc / torchrun where they cannot work, before anything starts."""
    from optlab.lab import distributed
    from optlab.lab.tasks import get_task

    if ray and distributed.launched_by_torchrun():
        raise CommandLineError(
            "--executor ray under torchrun: Ray places the runs itself; run optlab once, "
            "with --nproc N for runs that need N processes each"
        )
    if ray and args.nproc in (None, 1):
        return
    single = [task for task in study.tasks if not getattr(get_task(task), "distributed", True)]
    if single:
        raise CommandLineError(
            f"task {', '.join(single)} runs in one process (its networks step in turn); "
            "drop --nproc / torchrun, or use --jobs N to run several runs at once"
        )
    if args.jobs not in (None, 1):
        raise CommandLineError(
            f"--jobs {args.jobs} cannot be combined with --nproc or torchrun: each run "
            "already trains on every process; leave --jobs out"
        )


def _distributed_session(args: argparse.Namespace, study: Any) -> Any:
    """``--nproc N`` or torchrun: the process group each run trains on (``None``: one process)."""
    from optlab.lab import distributed

    if args.nproc is None and not distributed.launched_by_torchrun():
        return None
    _check_nproc(args, study)
    try:
        return distributed.start(args.nproc)
    except ValueError as error:
        raise CommandLineError(str(error)) from None


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'s' if count != 1 else ''}"


def _banner(study: Any, jobs: int, session: Any, out: Path, cluster: Any = None) -> str:
    budgets = sorted({study.budget(arm) for arm in study.arms})
    tuned = [arm for arm in study.arms if study.tuned(arm)]
    text = (
        f"{_plural(len(study.tasks), 'task')} x {_plural(len(study.arms), 'arm')} x "
        f"{_plural(len(study.seeds), 'seed')}"
    )
    if tuned:
        names = sorted({dim.name for arm in tuned for dim in study.space(arm)})
        budget = "/".join(map(str, budgets))
        text += f", {'+'.join(names)} tuned by {study.tuner} ({budget} runs per arm and task)"
    else:
        text += ", untuned (every arm at its given hyper-parameters)"
    if cluster is not None:
        text += (
            f", on Ray ({_plural(cluster['nodes'], 'node')}, {_plural(cluster['cpus'], 'CPU')}"
            + (f", {_plural(cluster['gpus'], 'GPU')}" if cluster.get("gpus") else "")
            + f" at {cluster['address']})"
        )
        if cluster["cpus_per_run"] > 1:
            text += f", DDP over {cluster['cpus_per_run']} processes per run"
    else:
        text += f", {_plural(jobs, 'worker')}"
    if session is not None:
        text += f", DDP over {session.world_size} processes"
    return text + f" -> {out}"


def _ray_runner(args: argparse.Namespace, execution: dict[str, Any]) -> Any:
    """A connected :class:`~optlab.lab.ray_executor.RayRunner` (``CommandLineError`` when
    Ray cannot be reached)."""
    from optlab.lab.ray_executor import RayRunner

    runner = RayRunner(
        execution["ray_address"], gpus_per_run=execution["gpus_per_run"], nproc=args.nproc
    )
    try:
        return runner.connect()
    except ConnectionError as error:
        raise CommandLineError(str(error)) from None


def _execution_flags(execution: dict[str, Any]) -> str:
    """The flags that run the study where it ran (appended to the recorded command)."""
    if execution["executor"] != "ray":
        return ""
    parts = ["--executor", "ray"]
    if execution["ray_address"]:
        parts += ["--ray-address", execution["ray_address"]]
    if execution["gpus_per_run"]:
        parts += ["--gpus-per-run", f"{execution['gpus_per_run']:g}"]
    return " " + " ".join(shlex.quote(part) for part in parts)


def _run(
    args: argparse.Namespace, study: Any, session: Any, source: Any, execution: dict[str, Any]
) -> int:
    from optlab.lab.data import DatasetFormatError, DatasetNotFoundError
    from optlab.lab.execution import FAILED_DIR, RunsFailed
    from optlab.lab.report import write_report
    from optlab.lab.store import Store, StoreError
    from optlab.lab.study import run_study
    from optlab.lab.studyfile import STUDY_TOML, compare_command

    if args.out:
        out = Path(args.out)
    else:
        out = default_out(study, source[0].stem if source else None)
    jobs = 1 if session is not None else args.jobs if args.jobs is not None else default_jobs(study)
    if source is not None:
        command = f"optlab run {shlex.quote(str(out / STUDY_TOML))} --out {shlex.quote(str(out))}"
    else:
        command = compare_command(study, out) or (
            f"optlab run {shlex.quote(str(out / STUDY_TOML))} --out {shlex.quote(str(out))}"
        )
    command += _execution_flags(execution)
    try:
        runner = None
        if execution["executor"] == "ray":
            if out.exists() and (not out.is_dir() or any(out.iterdir())):
                Store.open(out)  # a foreign or damaged directory fails before Ray starts
            runner = _ray_runner(args, execution)
        Store.open(out)  # a new directory is created once Ray (if any) is reached
    except StoreError as error:
        raise CommandLineError(str(error)) from None
    cluster = runner.describe() if runner is not None else None
    banner = _banner(study, jobs, session, out, cluster)
    print(f"optlab {args.command}: {banner}", file=sys.stderr)
    progress = _Progress(enabled=sys.stderr.isatty() and not args.quiet)
    try:
        run_study(
            study,
            out,
            jobs=jobs,
            progress=progress,
            command=command,
            trainer=session.train if session is not None else None,
            study_file=source[1] if source is not None else None,
            runner=runner,
        )
    except StoreError as error:
        raise CommandLineError(str(error)) from None
    except RunsFailed as error:
        progress.close()
        count = _plural(len(error.failures), "run")
        print(
            f"optlab {args.command}: {count} failed on every try ({error.failures[0][1]}); "
            f"recorded in {out / FAILED_DIR}; the finished runs are kept: run the same "
            "command to retry",
            file=sys.stderr,
        )
        return 1
    except (DatasetNotFoundError, DatasetFormatError) as error:
        raise CommandLineError(str(error).splitlines()[0]) from None
    except KeyboardInterrupt:
        progress.close()
        print(
            f"optlab {args.command}: interrupted; finished runs are kept in {out}: run the "
            "same command to resume",
            file=sys.stderr,
        )
        return 130
    finally:
        progress.close()
    report = write_report(out)
    print(report.text())
    print(f"\nreport: {report.report_path}  (summary.csv, plots/ next to it)")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from optlab.lab.report import write_report
    from optlab.lab.store import StoreError

    try:
        report = write_report(args.directory)
    except StoreError as error:
        raise CommandLineError(str(error)) from None
    print(report.text())
    if not report.complete:
        print("\n(the study is not complete: run its command again to finish it)")
    print(f"\nreport: {report.report_path}")
    for path in report.files[1:]:
        print(f"        {path}")
    return 0


def run_tasks(args: argparse.Namespace) -> int:
    from optlab.lab.tasks import get_task, list_tasks

    header = ["task", "metric", "epochs", "batch", "target", "data", "tuned on", "default run"]
    rows = [[*header, "description"]]
    for name in list_tasks():
        task = get_task(name)
        direction = "higher better" if task.higher_is_better else "lower better"
        seconds = getattr(task, "default_seconds", None)
        rows.append(
            [
                name,
                f"{task.metric} ({direction})",
                str(task.epochs),
                str(task.batch_size),
                f"{task.target:g}",
                "--data-dir" if task.needs_data_dir else "built in",
                "validation split" if task.validation == "held-out" else "training objective",
                f"{seconds:.0f} s" if seconds else "-",
                task.description,
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]))
    print(
        "\ndefault run: one run at the task's defaults, Adam at its default lr, on one thread "
        "of a 2-core machine (measured; '-' where not measured)"
    )
    return 0


def run_presets(args: argparse.Namespace) -> int:
    from optlab.lab.presets import get_preset, list_presets

    for name in list_presets():
        preset = get_preset(name)
        print(f"{name}: {preset.description}")
        print(f"  arms: {', '.join(f'{a.label} ({a.optimizer})' for a in preset.arms)}")
        for family, source in preset.sources.items():
            print(f"  {family}: {source}")
        if args.verbose:
            for arm in preset.arms:
                print(f"  --arm '{arm.text()}'")
    return 0


def _add_execution_arguments(parser: argparse.ArgumentParser) -> None:
    execution = parser.add_argument_group("execution")
    execution.add_argument(
        "--jobs",
        type=_positive_int,
        metavar="N",
        help="worker processes, one torch thread each (default: 2 for studies of more than "
        "48 runs on a machine with 2+ cores, else 1); results do not depend on it",
    )
    execution.add_argument(
        "--nproc",
        type=_positive_int,
        metavar="N",
        help="train each run with DDP over N processes on this machine (gloo; with "
        "--executor ray: on the run's node, asking Ray for N CPUs); results equal one "
        "process's to float32 rounding. Under torchrun leave it out",
    )
    from optlab.lab.studyfile import add_execution_arguments

    add_execution_arguments(execution)
    execution.add_argument("--out", metavar="DIR", help="results directory (resumable)")
    execution.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bar (never shown off a terminal)"
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    tasks = subparsers.add_parser(
        "tasks",
        help="list the tasks the lab can train",
        description=(
            "List the lab's tasks: metric, default epochs and batch size, target, data,\n"
            "what tuning selects on (a held-out validation split, or the training\n"
            "objective for tasks that hold no data out) and the measured time of a default run."
        ),
        epilog="example:\n  optlab tasks",
        formatter_class=formatter,
    )
    tasks.set_defaults(func=run_tasks)

    presets = subparsers.add_parser(
        "presets",
        help="list the arm presets of optlab compare --preset",
        description=(
            "List the presets of optlab compare --preset: their arms and, per task family\n"
            "(optlab tasks shows each task's), where the hyper-parameters come from."
        ),
        epilog="example:\n  optlab presets --verbose",
        formatter_class=formatter,
    )
    presets.add_argument(
        "--verbose", action="store_true", help="also print every arm's --arm spelling"
    )
    presets.set_defaults(func=run_presets)

    compare = subparsers.add_parser(
        "compare",
        help="compare optimizers on tasks (tables, statistics, plots, report)",
        description=(
            "Train every arm (an optimizer with its hyper-parameters) on every task over\n"
            "several seeds, tuning first (by default the learning rate, per arm and task,\n"
            "on the validation data), store every run as it finishes, then print the tables\n"
            "(mean with 95 % confidence interval, arms indistinguishable from the best\n"
            "marked) and write summary.csv, plots and report.md into the results directory.\n"
            "Without arguments: the default study (digits-mlp, the twelve core optimizers,\n"
            "lr tuned on a decade grid, 3 seeds)."
        ),
        epilog=COMPARE_EXAMPLE,
        formatter_class=formatter,
    )
    add_study_arguments(compare)
    _add_execution_arguments(compare)
    compare.set_defaults(func=run_compare)

    run = subparsers.add_parser(
        "run",
        help="run a study file (TOML): the same fields as optlab compare's flags",
        description=(
            "Run the study a TOML file describes (the fields of optlab compare, spelled as\n"
            "keys; see optlab.lab.studyfile for the format). The results directory keeps\n"
            "the file as study.toml, and its report's command runs it again."
        ),
        epilog=RUN_EXAMPLE,
        formatter_class=formatter,
    )
    run.add_argument("file", metavar="FILE", help="the study file (.toml)")
    _add_execution_arguments(run)
    run.set_defaults(func=run_file)

    report = subparsers.add_parser(
        "report",
        help="redraw tables, plots and report.md from a results directory",
        description=(
            "Rewrite summary.csv, the plots and report.md of a results directory from its\n"
            "stored run records, without training, and print the summary tables."
        ),
        epilog="example:\n  optlab report results/demo",
        formatter_class=formatter,
    )
    report.add_argument("directory", metavar="DIR", help="a results directory of optlab compare")
    report.set_defaults(func=run_report)
