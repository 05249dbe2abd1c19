"""The ``optlab`` command line: a thin shell over :mod:`optlab.lab` and :mod:`optlab.optim`.

Each sub-command lives in its own module exposing ``register(subparsers)``,
which adds an argparse parser whose ``func`` default runs the command and
returns an exit code. Bad arguments print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

__all__ = ["CommandLineError", "OneLineParser", "main"]

#: Modules that each register one or more sub-commands, in help order.
COMMAND_MODULES: tuple[str, ...] = (
    "optlab.cli_list",
    "optlab.cli_lab",
    "optlab.cli_ablate",
    "optlab.cli_trajectories",
    "optlab.cli_speed",
)


class CommandLineError(Exception):
    """A user error found after parsing (unknown optimizer, bad value): one line, exit 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (no usage dump) and exits 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="optlab",
        description="Adaptive gradient optimizers for PyTorch, and a lab to compare them.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  optlab list\n  optlab <command> --help",
    )
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=OneLineParser
    )
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below
        return code
    except CommandLineError as error:
        print(f"optlab {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"optlab {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`optlab report DIR | head`): not an error of ours.
        # Point stdout at devnull so the interpreter's final flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    # `python -m optlab.cli`: run the imported module, whose CommandLineError is
    # the class the sub-command modules raise (this file's copy in __main__ is not).
    from optlab.cli import main as _main

    sys.exit(_main())
