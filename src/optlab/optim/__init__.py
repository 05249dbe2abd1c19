"""optlab's optimizers: one module per algorithm, one registry.

Classes are imported on first access (``optlab.optim.AdaBelief``), by way of
the registry, which is the one place that knows the catalogue; your own
optimizers join it with :func:`register_optimizer` or an ``optlab.optimizers``
entry point (see :mod:`optlab.optim.registry`).
"""

from __future__ import annotations

import importlib
from typing import Any

from .registry import (
    _SPECS,
    OptimizerSpec,
    create_optimizer,
    get_spec,
    list_optimizers,
    optimizer_class,
    register_optimizer,
    unregister_optimizer,
)

# Class name -> defining module, read off the targets of optlab's own entries.
_CLASSES: dict[str, str] = {}
for _spec in _SPECS:
    _module, _, _class = _spec.target.partition(":")
    _CLASSES.setdefault(_class, _module)
del _spec, _module, _class

__all__ = [
    *_CLASSES,
    "OptimizerSpec",
    "create_optimizer",
    "get_spec",
    "list_optimizers",
    "optimizer_class",
    "register_optimizer",
    "unregister_optimizer",
]


def __getattr__(name: str) -> Any:
    if name in _CLASSES:
        return getattr(importlib.import_module(_CLASSES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
