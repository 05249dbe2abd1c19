"""``optlab list``: the optimizer catalogue with defaults and their sources.

It lists optlab's own optimizers, then those of installed packages (the
``optlab.optimizers`` entry points) and those registered in this process; an
entry point that cannot be loaded is skipped with one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
import warnings


def _format(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "(" + ", ".join(_format(v) for v in value) + ")"
    return str(value)


def run(args: argparse.Namespace) -> int:
    from optlab.optim.registry import OptimizerEntryPointWarning, get_spec, list_optimizers

    hidden = {"maximize", "foreach", "fused"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", OptimizerEntryPointWarning)
        names = list_optimizers()
    for warning in caught:
        if issubclass(warning.category, OptimizerEntryPointWarning):
            print(f"optlab list: {warning.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    width = max(map(len, names))
    classes = max(len(get_spec(name).cls.__name__) for name in names)
    for name in names:
        spec = get_spec(name)
        defaults = ", ".join(
            f"{key}={_format(value)}"
            for key, value in spec.defaults().items()
            if key not in hidden and (args.all or (value is not False and value is not None))
        )
        print(f"{name:<{width}} {spec.cls.__name__:<{classes}} {defaults}")
        if args.verbose:
            about = [spec.description] if spec.description else []
            if spec.defaults_source:
                about.append(f"defaults: {spec.defaults_source}")
            if about:
                print(f"{'':<{width}} {'; '.join(about)}")
            if spec.paper:
                print(f"{'':<{width}} paper: {spec.paper}")
            if not spec.builtin:
                print(f"{'':<{width}} from: {spec.origin}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "list",
        help="list the optimizers with their defaults",
        description="List every optimizer in the registry with its default hyper-parameters.",
        epilog="example:\n  optlab list --verbose",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="add papers and sources")
    parser.add_argument("--all", action="store_true", help="also show options that are off")
    parser.set_defaults(func=run)
