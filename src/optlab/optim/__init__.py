"""optlab's optimizers: one module per algorithm, one registry.

Classes are imported on first access (``optlab.optim.AdaBelief``), by way of
the registry, which is the one place that knows the catalogue.
"""

from __future__ import annotations

import importlib
from typing import Any

from .registry import (
    OptimizerSpec,
    create_optimizer,
    get_spec,
    list_optimizers,
    optimizer_class,
)

_CLASSES = {
    "SGD": "sgd",
    "Adagrad": "adagrad",
    "Adadelta": "adadelta",
    "RMSprop": "rmsprop",
    "Adam": "adam",
    "AdamW": "adam",
    "Yogi": "yogi",
    "EAdam": "eadam",
    "AdaBelief": "adabelief",
}

__all__ = [
    *_CLASSES,
    "OptimizerSpec",
    "create_optimizer",
    "get_spec",
    "list_optimizers",
    "optimizer_class",
]


def __getattr__(name: str) -> Any:
    if name in _CLASSES:
        return getattr(importlib.import_module(f"{__name__}.{_CLASSES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
