"""``python -m optlab.demo`` (what ``make demo`` runs): the default study, resumable.

Runs ``optlab compare`` with no study arguments (digits-mlp, the twelve core
optimizers with their defaults, three seeds) into ``results/demo``, prints
the summary table and where the report is. Running it again reuses the
finished runs and only redraws the report. Extra arguments are passed on to
``optlab compare`` (e.g. ``python -m optlab.demo --jobs 1``); ``--out DIR``
or ``--out=DIR`` puts the results elsewhere.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

DEMO_DIR = "results/demo"


def main(argv: Sequence[str] | None = None) -> int:
    from optlab.cli import main as cli_main

    extra = list(sys.argv[1:] if argv is None else argv)
    # argparse keeps the last value of an option, so any --out the caller gives
    # (--out DIR, --out=DIR, an abbreviation) replaces this default.
    return cli_main(["compare", "--out", DEMO_DIR, *extra])


if __name__ == "__main__":
    sys.exit(main())
