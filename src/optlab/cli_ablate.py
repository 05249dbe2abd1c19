"""``optlab ablate NAME``: run one of the studies that ship with optlab, by name.

Each is a study file in ``optlab/lab/studies/`` (``NAME.toml``, and
``NAME-quick.toml`` for ``--quick``), run exactly as ``optlab run FILE``
would: resumable, its report with the factorial analysis when its arms are
cells of the belief / eps factorial.
"""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

from optlab.cli import CommandLineError

__all__ = ["list_studies", "register", "study_path"]


def _studies_dir() -> Path:
    return Path(str(resources.files("optlab.lab") / "studies"))


def list_studies() -> list[str]:
    """The shipped studies' names (without the ``-quick`` variants)."""
    names = sorted(path.stem for path in _studies_dir().glob("*.toml"))
    return [name for name in names if not name.endswith("-quick")]


def study_path(name: str, quick: bool = False) -> Path:
    """The study file of ``name``; :class:`CommandLineError` naming the valid ones."""
    if name not in list_studies():
        raise CommandLineError(
            f"unknown study {name!r}; shipped studies: {', '.join(list_studies()) or 'none'}"
        )
    path = _studies_dir() / f"{name}{'-quick' if quick else ''}.toml"
    if not path.is_file():
        raise CommandLineError(f"study {name!r} has no --quick variant")
    return path


def run_ablate(args: argparse.Namespace) -> int:
    from optlab.cli_lab import run_file

    if args.list or args.name is None:
        for name in list_studies():
            first = (study_path(name).read_text(encoding="utf-8").splitlines() or [""])[0]
            print(f"{name:<16} {first.lstrip('# ')}")
        return 0 if args.list else 2
    args.file = str(study_path(args.name, args.quick))
    if args.out is None:
        args.out = f"results/{args.name}{'-quick' if args.quick else ''}"
    return run_file(args)


def register(subparsers: argparse._SubParsersAction) -> None:
    from optlab.cli_lab import _add_execution_arguments

    ablate = subparsers.add_parser(
        "ablate",
        help="run a study that ships with optlab (e.g. the belief / eps factorial)",
        description=(
            "Run a shipped study by name: its study file from optlab/lab/studies/, into\n"
            "results/NAME (resumable). --quick runs its short variant."
        ),
        epilog=(
            "examples:\n"
            "  optlab ablate --list\n"
            "  optlab ablate belief-eps --quick           # under 10 minutes on 2 cores\n"
            "  optlab ablate belief-eps --jobs 2          # the whole study (hours)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ablate.add_argument("name", nargs="?", metavar="NAME", help="the study (see --list)")
    ablate.add_argument("--quick", action="store_true", help="the short variant")
    ablate.add_argument("--list", action="store_true", help="list the shipped studies")
    _add_execution_arguments(ablate)
    ablate.set_defaults(func=run_ablate)
