"""optlab: adaptive gradient optimizers for PyTorch, and a lab to compare them.

    >>> import optlab
    >>> opt = optlab.AdaBelief(model.parameters(), lr=1e-3)          # doctest: +SKIP
    >>> opt = optlab.create_optimizer(model, "adamw", lr=3e-4)        # doctest: +SKIP
    >>> optlab.register_optimizer("lion", Lion)                       # doctest: +SKIP

``optlab.optim`` holds the optimizers (depends on torch only); ``optlab.lab``
the tasks, studies, plots and reports (depends on optim, never the reverse).
"""

from __future__ import annotations

from typing import Any

from . import optim
from .optim import (
    OptimizerSpec,
    create_optimizer,
    get_spec,
    list_optimizers,
    optimizer_class,
    register_optimizer,
    unregister_optimizer,
)

__version__ = "0.1.0"

__all__ = [
    *optim._CLASSES,
    "OptimizerSpec",
    "create_optimizer",
    "get_spec",
    "list_optimizers",
    "optimizer_class",
    "register_optimizer",
    "unregister_optimizer",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in optim._CLASSES:
        return getattr(optim, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
