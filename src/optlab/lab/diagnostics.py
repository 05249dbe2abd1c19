"""Diagnostics recorded while training: the distribution of per-coordinate step sizes.

An optimizer that can say, per coordinate, what step size its next update takes
(``effective_step_sizes() -> (sizes, eps_dominates)``, e.g.
:class:`optlab.optim.belief_eps.BeliefEps`) gets at every evaluation of a run
the quantiles of those step sizes and the share of coordinates whose
denominator eps dominates, as extra keys of the history row:

- ``step_q05``, ``step_q25``, ``step_q50``, ``step_q75``, ``step_q95``;
- ``step_spread``: ``log10(q95 / q05)``, how far the optimizer is from SGD with
  momentum, which takes one step size for every coordinate (spread 0);
- ``eps_dominant``: the fraction of coordinates where eps outweighs the second
  moment (for the accumulated placement: where the stored eps floor exceeds
  the moving average it was added to).

A run with several optimizers (a GAN) prefixes each key with the role
(``generator.step_q50``). Above a million coordinates the quantiles are taken
on an evenly strided subset.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["QUANTILES", "step_size_row"]

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
_LIMIT = 1_000_000


def _summary(optimizer: Any) -> dict[str, float]:
    sizes, dominated = optimizer.effective_step_sizes()
    if sizes.numel() == 0:
        return {}
    if sizes.numel() > _LIMIT:
        stride = math.ceil(sizes.numel() / _LIMIT)
        sizes, dominated = sizes[::stride], dominated[::stride]
    values = torch.quantile(sizes, torch.tensor(QUANTILES, dtype=sizes.dtype)).tolist()
    row = {f"step_q{round(q * 100):02d}": float(v) for q, v in zip(QUANTILES, values, strict=True)}
    low, high = row["step_q05"], row["step_q95"]
    row["step_spread"] = math.log10(high / low) if low > 0 and math.isfinite(high) else math.nan
    row["eps_dominant"] = float(dominated.double().mean())
    return row


def step_size_row(optimizers: Mapping[str, Any]) -> dict[str, float]:
    """The diagnostics of every optimizer that offers them (``{}`` when none does)."""
    able = {role: opt for role, opt in optimizers.items() if hasattr(opt, "effective_step_sizes")}
    if not able:
        return {}
    if len(optimizers) == 1:
        return _summary(next(iter(able.values())))
    return {f"{role}.{k}": v for role, opt in able.items() for k, v in _summary(opt).items()}
