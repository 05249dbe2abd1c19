"""``optlab list``: the optimizer catalogue with defaults and their sources."""

from __future__ import annotations

import argparse


def _format(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "(" + ", ".join(_format(v) for v in value) + ")"
    return str(value)


def run(args: argparse.Namespace) -> int:
    from optlab.optim.registry import get_spec, list_optimizers

    hidden = {"maximize", "foreach", "fused"}
    names = list_optimizers()
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
            print(f"{'':<{width}} {spec.description}; defaults: {spec.defaults_source}")
            print(f"{'':<{width}} paper: {spec.paper}")
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
