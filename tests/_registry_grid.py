"""Test grids read off the registry, so that a new optimizer joins them by its entry alone.

The grids hold optlab's own optimizers only: those of installed packages
(``optlab.optimizers`` entry points) or registered by a test are not optlab's
to test. ``tests/test_registry.py`` keeps the explicit list of names (the
oracle); everything else enumerates from here.
"""

from __future__ import annotations

import importlib.util

import pytest

import optlab


def builtin_names(tag: str | None = None) -> list[str]:
    """optlab's own registry names in catalogue order (only those with ``tag``, if given)."""
    return optlab.list_optimizers(tag, builtin_only=True)


def written(name: str) -> bool:
    """Whether the module of ``name``'s class exists yet (another engineer may be writing it)."""
    module = optlab.get_spec(name).target.partition(":")[0]
    return importlib.util.find_spec(module) is not None


def builtin_params(names: list[str] | None = None) -> list:
    """``names`` (default: every one of optlab's own) as pytest params, those whose module
    is not written yet skipped, saying so."""
    return [
        pytest.param(
            name,
            marks=pytest.mark.skipif(
                not written(name), reason=f"{optlab.get_spec(name).target} is not written yet"
            ),
        )
        for name in (builtin_names() if names is None else names)
    ]


def first_name_per_class() -> list[str]:
    """One name per class of optlab's own: the first in catalogue order (``sgd`` for SGD,
    not its aliases ``momentum`` and ``nag``; ``belief-eps``, not the factorial's cells)."""
    first: dict[str, str] = {}
    for name in builtin_names():
        first.setdefault(optlab.get_spec(name).target, name)
    return list(first.values())
