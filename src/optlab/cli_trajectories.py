"""``optlab trajectories``: watch optimizers move on 2-D test functions.

Runs each optimizer from the same start, records every iterate, and writes
a contour plot, an animated GIF, a table (terminal, CSV, Markdown) and a
JSON record to redraw from. ``--paper`` runs the AdaBelief paper's toy
comparison; ``--list`` lists the functions.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import sys
from pathlib import Path
from typing import Any

from optlab.cli import CommandLineError

DEFAULT_STEPS = 500
DEFAULT_PAPER_STEPS = 3000
DEFAULT_PAPER_LR = 1e-3
DEFAULT_TOLERANCE = 1e-2

EPILOG = """\
examples:
  optlab trajectories --list
  optlab trajectories --function rosenbrock --optimizers sgd,adam,adabelief --tune
  optlab trajectories --function beale --optimizers adam,adabelief --lr 0.05 --start=-2.5,-2.5
  optlab trajectories --function parabola --optimizers rmsprop --lr 0.4 --steps 40
  optlab trajectories --paper
  optlab trajectories --paper --option adabelief.rectify=False --out results/paper-norectify

Negative --start values need the '=' form: --start=-2,2.
Outputs go to --out (default results/trajectories/<function>, or .../paper):
trajectories.png, trajectories.gif, table.csv, table.md, trajectories.json
(--paper: paper.png, paper.md, paper.csv, paper.json). --redraw DIR redraws
the pictures from the JSON without running again. --out must be new, empty,
or hold earlier trajectories output (its files are replaced).
"""


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _frames(text: str) -> int:
    value = _positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected at least 2 frames, got {text!r}")
    return value


def _point(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as -2,2, got {text!r}"
        ) from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got {text!r}")
    return values


def _lr_grid(text: str) -> list[float]:
    parts = text.split(",")
    try:
        low, high, count = float(parts[0]), float(parts[1]), int(parts[2])
        if len(parts) != 3:
            raise ValueError
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(
            f"expected LOW,HIGH,COUNT such as 1e-4,10,21, got {text!r}"
        ) from None
    if not (0 < low <= high and math.isfinite(high) and count >= 1):
        raise argparse.ArgumentTypeError(f"expected 0 < LOW <= HIGH and COUNT >= 1, got {text!r}")
    if count == 1:
        return [low]
    ratio = (high / low) ** (1 / (count - 1))
    return [low * ratio**i for i in range(count)]


def _names(text: str) -> list[str]:
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated optimizer names, got {text!r}")
    return names


def _check_optimizers(names: list[str]) -> None:
    from optlab.optim.registry import get_spec

    for name in names:
        try:
            get_spec(name)
        except ValueError as error:
            raise CommandLineError(str(error)) from None
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise CommandLineError(f"optimizer listed twice: {', '.join(duplicates)}")


def _parse_options(items: list[str], optimizers: list[str]) -> dict[str, dict[str, Any]]:
    """``NAME.KEY=VALUE`` settings, checked against each optimizer's hyper-parameters."""
    from optlab.optim.registry import get_spec

    options: dict[str, dict[str, Any]] = {}
    for item in items:
        target, equals, raw = item.partition("=")
        name, dot, key = target.partition(".")
        if not (equals and dot and name and key):
            raise CommandLineError(
                f"--option must look like NAME.KEY=VALUE (e.g. adabelief.eps=1e-8), got {item!r}"
            )
        name, key = name.lower(), key.strip()
        if name not in optimizers:
            raise CommandLineError(
                f"--option {item!r} names {name!r}, which is not among the optimizers run "
                f"({', '.join(optimizers)})"
            )
        if key == "lr":
            raise CommandLineError("set the learning rate with --lr or --tune, not --option")
        accepted = get_spec(name).hparam_names()
        if key not in accepted:
            raise CommandLineError(
                f"optimizer {name!r} does not take {key!r}; valid hyper-parameters: "
                f"{', '.join(k for k in accepted if k != 'lr')}"
            )
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            raise CommandLineError(
                f"--option {item!r}: value {raw!r} is not a number, True/False or a tuple"
            ) from None
        options.setdefault(name, {})[key] = value
    return options


def _progress(message: str) -> None:
    if sys.stderr.isatty():
        print(message, file=sys.stderr, flush=True)


def _list() -> int:
    from optlab.lab.trajectories.functions import FUNCTIONS

    for function in FUNCTIONS.values():
        minima = (
            "no minimum"
            if not function.minima
            else "min "
            + ", ".join("(" + ", ".join(f"{v:.4g}" for v in m) + ")" for m in function.minima)
        )
        start = "(" + ", ".join(f"{v:g}" for v in function.start) + ")"
        print(f"{function.name:<18} {function.formula}")
        print(f"{'':<18} start {start}; {minima}; {function.note}")
    return 0


def _usable_out(out: Path) -> Path:
    """``out``, created if needed; refused when it holds files but no output of ours.

    As ``optlab compare``: a new or empty directory, or one holding a
    trajectories.json / paper.json (re-running or redrawing there replaces our
    own files), never someone else's files.
    """
    from optlab.lab.trajectories.outputs import OUR_RECORDS

    if out.is_dir() and any(out.iterdir()) and not any((out / n).is_file() for n in OUR_RECORDS):
        raise CommandLineError(
            f"output directory {str(out)!r} is not empty and holds no optlab trajectories "
            f"output ({' or '.join(OUR_RECORDS)}); refusing to write into it: choose a new "
            "or empty directory"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CommandLineError(f"cannot create output directory {str(out)!r}: {error}") from None
    return out


def _out_dir(args: argparse.Namespace, default: str) -> Path:
    return _usable_out(Path(args.out) if args.out else Path("results") / "trajectories" / default)


def _run_function(args: argparse.Namespace) -> int:
    from optlab.lab.trajectories import outputs, plots
    from optlab.lab.trajectories.functions import get_function
    from optlab.lab.trajectories.run import DEFAULT_LR_GRID, run_optimizer, tune_lr

    try:
        function = get_function(args.function)
        if args.start is not None:
            function = function.with_start(args.start)
    except ValueError as error:
        raise CommandLineError(str(error)) from None
    if args.lr_grid is not None and not args.tune:
        raise CommandLineError("--lr-grid only makes sense with --tune")
    if args.tune and not function.minima:
        raise CommandLineError(
            f"function {function.name!r} has no minimum to tune towards; give --lr instead"
        )
    optimizers = args.optimizers or list(function.default_optimizers)
    _check_optimizers(optimizers)
    options = _parse_options(args.option, optimizers)
    steps = args.steps or DEFAULT_STEPS
    grid = args.lr_grid or list(DEFAULT_LR_GRID)
    out = _out_dir(args, function.name)

    trajectories = []
    try:
        for name in optimizers:
            _progress(f"running {name} on {function.name} ({steps} steps)")
            common = dict(
                steps=steps, hparams=options.get(name, {}), clip_grad_norm=args.clip_grad_norm
            )
            if args.tune:
                trajectories.append(tune_lr(function, name, grid=grid, **common))
            else:
                trajectories.append(run_optimizer(function, name, lr=args.lr, **common))
    except ValueError as error:
        raise CommandLineError(str(error)) from None

    settings = {
        "steps": steps,
        "lr": args.lr,
        "tune": bool(args.tune),
        "lr_grid": grid if args.tune else None,
        "clip_grad_norm": args.clip_grad_norm,
        "options": options,
    }
    rows = outputs.table_rows(function, trajectories, args.tol)
    table = outputs.format_table(rows)
    files = [
        plots.plot_paths(function, trajectories, out / "trajectories.png"),
        outputs.write_csv(out / "table.csv", rows),
        outputs.write_markdown(
            out / "table.md",
            f"{function.name}: f = {function.formula}",
            table,
            _notes(function, steps, args),
        ),
        outputs.write_json(
            out / "trajectories.json",
            outputs.document(function, trajectories, tolerance=args.tol, settings=settings),
        ),
    ]
    if not args.no_gif:
        files.insert(
            1,
            plots.animate_paths(
                function, trajectories, out / "trajectories.gif", frames=args.frames
            ),
        )
    print(
        f"{function.name}: f = {function.formula}, start {_fmt_point(function.start)}, "
        f"{steps} steps, tolerance {args.tol:g}"
    )
    print(table)
    for note in _notes(function, steps, args)[2:]:
        print(note)
    print("wrote " + ", ".join(str(path) for path in files))
    return 0


def _fmt_point(point: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in point) + ")"


def _notes(function, steps: int, args: argparse.Namespace) -> list[str]:
    notes = [
        f"start {_fmt_point(function.start)}, {steps} steps; "
        f"'steps to tol' is the first step with distance to the nearest minimum < {args.tol:g}",
        "gradient clipping: "
        + (f"norm {args.clip_grad_norm:g}" if args.clip_grad_norm else "none"),
    ]
    if not function.minima:
        notes.append(f"{function.name} has no minimum: distances and steps to tol are n/a")
    if args.tune:
        notes.append(
            "lr tuned per optimizer: the grid value with the smallest final distance "
            "(the sweep is in trajectories.json)"
        )
    return notes


def _run_paper(args: argparse.Namespace) -> int:
    from optlab.lab.trajectories import outputs, plots
    from optlab.lab.trajectories.paper import PAPER_OPTIMIZERS, paper_table, run_paper

    if args.tune or args.start is not None or args.lr_grid is not None:
        raise CommandLineError(
            "--paper uses one learning rate and the paper's starts; "
            "--tune, --lr-grid and --start do not apply"
        )
    optimizers = args.optimizers or list(PAPER_OPTIMIZERS)
    _check_optimizers(optimizers)
    options = _parse_options(args.option, optimizers)
    lr = args.lr or DEFAULT_PAPER_LR
    steps = args.steps or DEFAULT_PAPER_STEPS
    out = _out_dir(args, "paper")
    _progress(f"running {', '.join(optimizers)} on the paper's 6 toy cases ({steps} steps each)")
    try:
        results = run_paper(
            lr=lr,
            steps=steps,
            optimizers=optimizers,
            options=options,
            clip_grad_norm=args.clip_grad_norm,
        )
    except ValueError as error:
        raise CommandLineError(str(error)) from None
    columns, rows, records = paper_table(results, args.tol)
    table = outputs.format_table(rows, columns)
    defaults = (
        "; ".join(f"{name} {options[name]}" for name in optimizers if name in options)
        or "registry defaults otherwise"
    )
    title = _paper_title(optimizers, lr, steps, options)
    panels = [
        (function, trajectories, f"{case.label} {function.formula}")
        for case, function, trajectories in results
    ]
    notes = [
        f"lr={lr:g} for every optimizer, {steps} steps; {defaults}",
        f"cell: first step with distance to the optimum < {args.tol:g}; 'never' within the run; "
        "'diverged (k)': not finite or escaped at step k",
        "gradient clipping: "
        + (f"norm {args.clip_grad_norm:g}" if args.clip_grad_norm else "none"),
    ]
    document = {
        "lr": lr,
        "steps": steps,
        "tolerance": args.tol,
        "optimizers": optimizers,
        "options": options,
        "clip_grad_norm": args.clip_grad_norm,
        "table": records,
        "cases": [
            {"label": case.label, **outputs.document(function, trajectories, tolerance=args.tol)}
            for case, function, trajectories in results
        ],
    }
    files = [
        plots.plot_panels(panels, out / "paper.png", title=title),
        outputs.write_markdown(
            out / "paper.md", "Steps to the optimum, AdaBelief paper toy cases", table, notes
        ),
        outputs.write_json(out / "paper.json", document),
    ]
    csv_path = out / "paper.csv"
    with csv_path.open("w", encoding="utf-8", newline="") as handle:
        import csv

        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(
            {
                **r,
                "start": " ".join(f"{v:g}" for v in r["start"]),
                "hparams": json.dumps(r["hparams"], sort_keys=True),
            }
            for r in records
        )
    files.append(csv_path)
    print(title)
    print(table)
    for note in notes[1:]:
        print(note)
    print("wrote " + ", ".join(str(path) for path in files))
    return 0


def _paper_title(optimizers: list[str], lr: float, steps: int, options: dict) -> str:
    settings = "; ".join(f"{name} {options[name]}" for name in optimizers if name in options)
    return (
        f"AdaBelief paper toy cases: {', '.join(optimizers)}, lr={lr:g}, {steps} steps "
        f"({settings or 'registry defaults otherwise'})"
    )


def _redraw(args: argparse.Namespace) -> int:
    from optlab.lab.trajectories import outputs, plots

    path = Path(args.redraw)
    if path.is_dir():
        path = next(
            (path / n for n in ("trajectories.json", "paper.json") if (path / n).exists()),
            path / "trajectories.json",
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        out = _usable_out(Path(args.out)) if args.out else path.parent
        if "cases" in data:
            panels = [
                (
                    outputs.function_from(case["function"]),
                    outputs.trajectories_from(case["trajectories"]),
                    f"{case['label']} {case['function']['formula']}",
                )
                for case in data["cases"]
            ]
            title = _paper_title(data["optimizers"], data["lr"], data["steps"], data["options"])
            files = [plots.plot_panels(panels, out / "paper.png", title=title)]
        else:
            function = outputs.function_from(data["function"])
            trajectories = outputs.trajectories_from(data["trajectories"])
            files = [plots.plot_paths(function, trajectories, out / "trajectories.png")]
            if not args.no_gif:
                files.append(
                    plots.animate_paths(
                        function, trajectories, out / "trajectories.gif", frames=args.frames
                    )
                )
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CommandLineError(f"cannot redraw from {str(path)!r}: {error}") from None
    print("wrote " + ", ".join(str(p) for p in files))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.list:
        return _list()
    if args.redraw:
        return _redraw(args)
    if args.paper:
        if args.function:
            raise CommandLineError("give either --function or --paper, not both")
        return _run_paper(args)
    if not args.function:
        raise CommandLineError("give --function F (see --list), --paper or --list")
    return _run_function(args)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "trajectories",
        help="watch optimizers move on 2-D test functions; the AdaBelief paper's toy cases",
        description=(
            "Run each optimizer from the same start on a test function, record every "
            "iterate, and write a contour plot, an animated GIF, a table and a JSON record."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = parser.add_argument_group("what to run")
    what.add_argument("--function", "-f", metavar="F", help="test function (see --list)")
    what.add_argument(
        "--paper",
        action="store_true",
        help="the AdaBelief paper's toy comparison (momentum, adam, adabelief)",
    )
    what.add_argument("--list", action="store_true", help="list the test functions and exit")
    what.add_argument(
        "--redraw",
        metavar="JSON",
        help="redraw the pictures from a trajectories.json (or its directory)",
    )
    what.add_argument(
        "--optimizers",
        "-o",
        type=_names,
        metavar="A,B,C",
        help="registry names (default: the function's suggestion)",
    )
    lr = what.add_mutually_exclusive_group()
    lr.add_argument(
        "--lr",
        type=_positive_float,
        metavar="X",
        help="one learning rate for every optimizer (default: each one's own; "
        f"--paper: {DEFAULT_PAPER_LR:g})",
    )
    lr.add_argument(
        "--tune",
        action="store_true",
        help="per optimizer, pick the lr on a log grid that ends nearest the minimum",
    )
    what.add_argument(
        "--lr-grid",
        type=_lr_grid,
        metavar="LOW,HIGH,N",
        help="the --tune grid, N log-spaced values (default 1e-4,10,21)",
    )
    what.add_argument(
        "--steps",
        type=_positive_int,
        metavar="N",
        help=f"optimizer steps (default {DEFAULT_STEPS}; --paper {DEFAULT_PAPER_STEPS})",
    )
    what.add_argument(
        "--start",
        type=_point,
        metavar="X,Y",
        help="starting point (default: the function's); write --start=-2,2",
    )
    what.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="NAME.KEY=VALUE",
        help="a hyper-parameter for one optimizer, e.g. adabelief.eps=1e-8 (repeatable)",
    )
    what.add_argument(
        "--clip-grad-norm",
        type=_positive_float,
        metavar="C",
        help="clip each gradient to norm C (off by default; recorded)",
    )
    what.add_argument(
        "--tol",
        type=_positive_float,
        default=DEFAULT_TOLERANCE,
        metavar="T",
        help=f"distance counted as reaching the minimum (default {DEFAULT_TOLERANCE:g})",
    )
    where = parser.add_argument_group("output")
    where.add_argument(
        "--out", metavar="DIR", help="output directory (default results/trajectories/<function>)"
    )
    where.add_argument(
        "--frames",
        type=_frames,
        default=48,
        metavar="N",
        help="about N frames in the GIF (default 48)",
    )
    where.add_argument("--no-gif", action="store_true", help="skip the animated GIF")
    parser.set_defaults(func=run)
