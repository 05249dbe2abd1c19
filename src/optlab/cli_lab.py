"""``optlab tasks``, ``optlab compare`` and ``optlab report``: the lab's commands.

A thin shell over :mod:`optlab.lab`: parse, check, run the study, print the
summary table and where the report is. The study's arguments are added by
:func:`add_study_arguments` and turned into a :class:`StudySpec` by
:func:`study_from_args`, so other commands (and options such as a future
``--nproc``) can reuse them.
"""

from __future__ import annotations

import argparse
import ast
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
  optlab compare                      # the default study: digits-mlp, 12 optimizers, defaults
  optlab compare --task cancer-logreg --optimizers adam,adabelief,sgd --seeds 3
  optlab compare --task digits-cnn --optimizers adam,adabelief --tune lr --jobs 2
  optlab compare --task quadratic-deep --optimizers adam,adabelief --tune lr \\
      --tuner optuna --trials 12 --epochs 20
  optlab compare --optimizers adam,adabelief --lr 3e-3 --set 'betas=(0.9,0.99)' \\
      --schedule cosine --out results/betas
  optlab compare --task cancer-logreg --optimizers adam,adabelief --nproc 2
  torchrun --nproc-per-node 2 -m optlab.cli compare --task cancer-logreg --optimizers adam

Results go to --out (default results/<task>-<hash of the arguments>); running
the same command again resumes, skipping finished runs."""


# ------------------------------------------------------------ argument types


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None


def _name_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"must be a comma-separated list of names, got {text!r}")
    return names


def _number_list(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated numbers like 1e-4,1e-3,1e-2, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError(f"must hold at least one number, got {text!r}")
    return values


_WORDS = {"true": True, "false": False, "none": None}


def parse_set(text: str) -> tuple[str, Any]:
    """``name=value`` with ``value`` a Python literal (number, True/False, None, tuple)."""
    name, sep, raw = text.partition("=")
    name, raw = name.strip(), raw.strip()
    if not sep or not name.isidentifier() or not raw:
        raise argparse.ArgumentTypeError(f"expects name=value (e.g. eps=1e-8), got {text!r}")
    if raw.lower() in _WORDS:
        return name, _WORDS[raw.lower()]
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        raise argparse.ArgumentTypeError(
            f"value of {name} must be a Python literal (a number, True/False or a tuple such "
            f"as (0.9,0.99)), got {raw!r}"
        ) from None
    if isinstance(value, list):
        value = tuple(value)
    if not isinstance(value, (int, float, bool, tuple)) and value is not None:
        raise argparse.ArgumentTypeError(
            f"value of {name} must be a number, True/False, None or a tuple, got {raw!r}"
        )
    return name, value


# ---------------------------------------------------------------- arguments


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments that define a study (shared by every command that runs one)."""
    from optlab.lab.schedules import list_schedules
    from optlab.lab.study import TUNABLE, TUNERS, default_study

    default = default_study()
    group = parser.add_argument_group("study")
    group.add_argument("--task", help=f"task to train (default {default.task}; see optlab tasks)")
    group.add_argument(
        "--optimizers",
        type=_name_list,
        metavar="A,B,...",
        help="optimizers to compare (default: the twelve core ones; see optlab list)",
    )
    group.add_argument(
        "--seeds",
        type=_positive_int,
        metavar="N",
        help=f"seeds per optimizer, 0..N-1 (default {len(default.seeds)})",
    )
    group.add_argument("--epochs", type=_positive_int, help="epochs per run (default: the task's)")
    group.add_argument(
        "--batch-size", type=_positive_int, metavar="B", help="batch size (default: the task's)"
    )
    group.add_argument("--lr", type=_number, help="learning rate for every optimizer")
    group.add_argument(
        "--set",
        type=parse_set,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="fix a hyper-parameter for every optimizer, e.g. --set eps=1e-8 "
        "--set 'betas=(0.9,0.99)' (repeatable; quote values with parentheses)",
    )
    group.add_argument(
        "--schedule",
        choices=list_schedules(),
        default="constant",
        help="learning-rate schedule (default constant)",
    )
    group.add_argument("--data-dir", metavar="D", help="data of file-backed tasks (MNIST, CIFAR)")
    tuning = parser.add_argument_group("tuning (DeepOBS protocol)")
    tuning.add_argument(
        "--tune",
        choices=TUNABLE,
        help="tune the learning rate per optimizer (one seed per point, best final "
        "validation metric; the training objective on tasks without held-out data), then "
        "rerun the best with every seed and report test metrics",
    )
    tuning.add_argument(
        "--tuner", choices=TUNERS, default="grid", help="log grid, or Optuna TPE (default grid)"
    )
    tuning.add_argument(
        "--lr-grid",
        type=_number_list,
        metavar="X,Y,...",
        help="learning rates of the grid; with --tuner optuna its min and max bound the "
        "search (default 1e-4 to 10 in half decades)",
    )
    tuning.add_argument(
        "--trials", type=_positive_int, default=20, help="Optuna trials per optimizer (default 20)"
    )


def study_from_args(args: argparse.Namespace):  # -> StudySpec
    """The study the arguments describe; :class:`CommandLineError` when they are inconsistent."""
    from optlab.lab.study import DEFAULT_LR_GRID, StudySpec, default_study, validate_study

    default = default_study()
    hparams: dict[str, Any] = {}
    for name, value in args.set:
        if name in hparams and hparams[name] != value:
            raise CommandLineError(f"--set {name} given twice ({hparams[name]!r} and {value!r})")
        hparams[name] = value
    if args.lr is not None:
        if "lr" in hparams and hparams["lr"] != args.lr:
            raise CommandLineError(f"--lr {args.lr} and --set lr={hparams['lr']} disagree")
        hparams["lr"] = args.lr
    if args.tune and "lr" in hparams:
        raise CommandLineError(
            "--tune lr and a fixed learning rate (--lr or --set lr) exclude each other"
        )
    if not args.tune and args.lr_grid:
        raise CommandLineError("--lr-grid needs --tune lr")
    study = StudySpec(
        task=args.task or default.task,
        optimizers=tuple(args.optimizers or default.optimizers),
        hparams=hparams,
        seeds=tuple(range(args.seeds)) if args.seeds else default.seeds,
        epochs=args.epochs if args.epochs is not None else default.epochs,
        schedule=args.schedule,
        batch_size=args.batch_size,
        data_dir=str(Path(args.data_dir).resolve()) if args.data_dir else None,
        tune=args.tune,
        tuner=args.tuner,
        lr_grid=tuple(args.lr_grid) if args.lr_grid else DEFAULT_LR_GRID,
        trials=args.trials,
    )
    from optlab.lab.data import DatasetNotFoundError
    from optlab.lab.tasks import get_task

    try:
        if get_task(study.task).needs_data_dir and not study.data_dir:
            raise CommandLineError(
                f"task {study.task} reads its data from files: give --data-dir DIR "
                "(see optlab tasks)"
            )
        # Everything that could fail later (data files, batch size, options) fails here,
        # before the results directory is touched.
        return validate_study(study)
    except (ValueError, DatasetNotFoundError) as error:
        raise CommandLineError(str(error).splitlines()[0]) from None


def default_out(study: Any) -> Path:
    """``results/<task>-<hash>``: the same arguments always resume in the same directory."""
    digest = hashlib.sha256(json.dumps(study.to_dict(), sort_keys=True).encode()).hexdigest()
    return Path(RESULTS_ROOT) / f"{study.task}-{digest[:8]}"


def default_jobs() -> int:
    """One process. Each spawned worker first spends about 5 s of CPU importing torch,
    torch._dynamo and scikit-learn, which is what the default study's 36 runs (about
    0.7 s each) would save on two cores: measured on the shared 2-core machine, --jobs 2
    took 27-80 s and --jobs 1 23-56 s (identical records). Larger studies (tuning grids,
    bigger tasks) gain from --jobs N."""
    return 1


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


def _literal(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(_literal(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return repr(value)


def compare_command(study: Any, out: Path | str) -> str:
    """The ``optlab compare`` command line that reproduces (and resumes) ``study`` in ``out``."""
    from optlab.lab.study import DEFAULT_LR_GRID

    parts = ["optlab", "compare", "--task", study.task, "--optimizers", ",".join(study.optimizers)]
    parts += ["--seeds", str(len(study.seeds))]
    if study.epochs is not None:
        parts += ["--epochs", str(study.epochs)]
    if study.batch_size is not None:
        parts += ["--batch-size", str(study.batch_size)]
    for name, value in study.hparams.items():
        parts += (
            ["--lr", _literal(value)] if name == "lr" else ["--set", f"{name}={_literal(value)}"]
        )
    if study.schedule != "constant":
        parts += ["--schedule", study.schedule]
    if study.data_dir:
        parts += ["--data-dir", study.data_dir]
    if study.tune:
        parts += ["--tune", study.tune]
        if study.tuner != "grid":
            parts += ["--tuner", study.tuner, "--trials", str(study.trials)]
        if study.lr_grid != DEFAULT_LR_GRID:
            parts += ["--lr-grid", ",".join(repr(lr) for lr in study.lr_grid)]
    parts += ["--out", str(out)]
    return " ".join(shlex.quote(part) for part in parts)


def run_compare(args: argparse.Namespace) -> int:
    study = study_from_args(args)
    session = _distributed_session(args)
    if session is not None and not session.is_driver:
        session.serve()  # trains what rank 0 sends; rank 0 alone writes and prints
        return 0
    try:
        return _run_compare(args, study, session)
    finally:
        if session is not None:
            session.close()


def _distributed_session(args: argparse.Namespace) -> Any:
    """``--nproc N`` or torchrun: the process group each run trains on (``None``: one process)."""
    from optlab.lab import distributed

    if args.nproc is None and not distributed.launched_by_torchrun():
        return None
    if args.jobs not in (None, 1):
        raise CommandLineError(
            f"--jobs {args.jobs} cannot be combined with --nproc or torchrun: each run "
            "already trains on every process; leave --jobs out"
        )
    try:
        return distributed.start(args.nproc)
    except ValueError as error:
        raise CommandLineError(str(error)) from None


def _run_compare(args: argparse.Namespace, study: Any, session: Any) -> int:
    from optlab.lab.data import DatasetFormatError, DatasetNotFoundError
    from optlab.lab.report import write_report
    from optlab.lab.store import Store, StoreError
    from optlab.lab.study import run_study

    out = Path(args.out) if args.out else default_out(study)
    jobs = 1 if session is not None else args.jobs if args.jobs is not None else default_jobs()
    command = compare_command(study, out)
    try:
        Store.open(out)  # a foreign or damaged directory fails here, before any banner
    except StoreError as error:
        raise CommandLineError(str(error)) from None
    count = len(study.optimizers)
    print(
        f"optlab compare: {study.task}, {count} optimizer{'s' if count > 1 else ''} x "
        f"{len(study.seeds)} seed{'s' if len(study.seeds) > 1 else ''}"
        + (f", lr tuned by {study.tuner}" if study.tune else "")
        + f", {jobs} worker{'s' if jobs > 1 else ''}"
        + (f", DDP over {session.world_size} processes" if session is not None else "")
        + f" -> {out}",
        file=sys.stderr,
    )
    progress = _Progress(enabled=sys.stderr.isatty() and not args.quiet)
    try:
        run_study(
            study,
            out,
            jobs=jobs,
            progress=progress,
            command=command,
            trainer=session.train if session is not None else None,
        )
    except StoreError as error:
        raise CommandLineError(str(error)) from None
    except (DatasetNotFoundError, DatasetFormatError) as error:
        raise CommandLineError(str(error).splitlines()[0]) from None
    except KeyboardInterrupt:
        progress.close()
        print(
            f"optlab compare: interrupted; finished runs are kept in {out}: run the same "
            "command to resume",
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

    rows = [["task", "metric", "epochs", "batch", "target", "data", "tuned on", "description"]]
    for name in list_tasks():
        task = get_task(name)
        direction = "higher better" if task.higher_is_better else "lower better"
        rows.append(
            [
                name,
                f"{task.metric} ({direction})",
                str(task.epochs),
                str(task.batch_size),
                f"{task.target:g}",
                "--data-dir" if task.needs_data_dir else "built in",
                "validation split" if task.validation == "held-out" else "training objective",
                task.description,
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    tasks = subparsers.add_parser(
        "tasks",
        help="list the tasks the lab can train",
        description=(
            "List the lab's tasks: metric, default epochs and batch size, target, data, and\n"
            "what --tune lr selects on (a held-out validation split, or the training\n"
            "objective for tasks that hold no data out)."
        ),
        epilog="example:\n  optlab tasks",
        formatter_class=formatter,
    )
    tasks.set_defaults(func=run_tasks)

    compare = subparsers.add_parser(
        "compare",
        help="compare optimizers on a task (tables, plots, report)",
        description=(
            "Train every optimizer on a task over several seeds (optionally tuning the\n"
            "learning rate first), store every run as it finishes, then print a summary\n"
            "table and write summary.csv, plots and report.md into the results directory.\n"
            "Without arguments: the default study (digits-mlp, the twelve core optimizers\n"
            "with their defaults, 3 seeds)."
        ),
        epilog=COMPARE_EXAMPLE,
        formatter_class=formatter,
    )
    add_study_arguments(compare)
    execution = compare.add_argument_group("execution")
    execution.add_argument(
        "--jobs",
        type=_positive_int,
        metavar="N",
        help=f"worker processes, one torch thread each (default {default_jobs()}); "
        "results do not depend on it",
    )
    execution.add_argument(
        "--nproc",
        type=_positive_int,
        metavar="N",
        help="train each run with DDP over N processes on this machine (gloo); results "
        "equal one process's to float32 rounding. Under torchrun leave it out",
    )
    execution.add_argument("--out", metavar="DIR", help="results directory (resumable)")
    execution.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bar (never shown off a terminal)"
    )
    compare.set_defaults(func=run_compare)

    report = subparsers.add_parser(
        "report",
        help="redraw tables, plots and report.md from a results directory",
        description=(
            "Rewrite summary.csv, the plots and report.md of a results directory from its\n"
            "stored run records, without training, and print the summary table."
        ),
        epilog="example:\n  optlab report results/demo",
        formatter_class=formatter,
    )
    report.add_argument("directory", metavar="DIR", help="a results directory of optlab compare")
    report.set_defaults(func=run_report)
