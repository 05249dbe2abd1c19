"""``optlab speed``: the optimizer step-speed benchmark (``benchmarks/step_speed.py``).

The benchmark is a script of the source checkout, not part of the installed
package; this command finds it next to the package sources and runs it with
the same options. From an installed wheel, it says where to get it.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from optlab.cli import CommandLineError

_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "step_speed.py"


def _load_benchmark() -> ModuleType | None:
    if not _SCRIPT.is_file():
        return None
    name = "optlab_step_speed"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    except Exception:  # a broken benchmark script must not break the other commands
        del sys.modules[name]
        raise
    return module


def _missing(args: argparse.Namespace) -> int:
    raise CommandLineError(
        f"the benchmark script {_SCRIPT} is not here (optlab is installed without its source "
        "checkout); clone the repository and run `python benchmarks/step_speed.py`"
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "speed",
        help="measure optimizer step speed against torch.optim and the references",
        description=(
            "Time one optimizer step of every optlab optimizer (loop, foreach, fused) next to "
            "torch.optim and the reference packages, and write docs/benchmarks.md."
        ),
        epilog="example:\n  optlab speed --quick\n  optlab speed --optimizers adabelief --regimes small",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module = _load_benchmark()
    if module is None:
        parser.set_defaults(func=_missing)
        return
    module.add_arguments(parser)
    parser.set_defaults(func=module.run)
