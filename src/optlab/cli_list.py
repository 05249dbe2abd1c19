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


_HIDDEN = frozenset({"maximize", "foreach", "fused"})


def _defaults_text(name: str, *, show_off: bool) -> str:
    from optlab.optim.registry import get_spec

    return ", ".join(
        f"{key}={_format(value)}"
        for key, value in get_spec(name).defaults().items()
        if key not in _HIDDEN and (show_off or (value is not False and value is not None))
    )


def markdown_table(names: list[str]) -> str:
    """The catalogue as the README's Markdown table (``optlab list --markdown``).

    An alias (an entry with overrides) is described as its class's plain entry
    plus the overrides: ``as adam, amsgrad=True``.
    """
    from optlab.optim.registry import get_spec

    plain = {}
    for name in names:
        spec = get_spec(name)
        if not spec.overrides:
            plain.setdefault(spec.cls, name)
    lines = [
        "| name | class | defaults | where the defaults come from | paper |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        spec = get_spec(name)
        base = plain.get(spec.cls)
        if spec.overrides and base is not None:
            changed = ", ".join(f"{k}={_format(v)}" for k, v in spec.overrides.items())
            defaults = f"as {base}, {changed}"
        else:
            defaults = _defaults_text(name, show_off=False)
        cells = [f"`{name}`", f"`{spec.cls.__name__}`", defaults, spec.defaults_source, spec.paper]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from optlab.optim.registry import OptimizerEntryPointWarning, get_spec, list_optimizers

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
    if args.markdown:
        print(markdown_table(names))
        return 0
    width = max(map(len, names))
    classes = max(len(get_spec(name).cls.__name__) for name in names)
    for name in names:
        spec = get_spec(name)
        defaults = _defaults_text(name, show_off=args.all)
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
    parser.add_argument(
        "--markdown", action="store_true", help="print the catalogue as the README's Markdown table"
    )
    parser.set_defaults(func=run)
