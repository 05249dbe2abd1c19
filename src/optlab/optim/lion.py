r"""Lion: the sign of an interpolated momentum, with decoupled weight decay.

Chen, Liang, Huang, Real, Wang, Pham, Dong, Luong, Hsieh, Lu & Le,
"Symbolic Discovery of Optimization Algorithms", NeurIPS 2023
(arXiv:2302.06675), Algorithm 2.

Update rule per parameter (no step count: Lion's update does not depend on
it)::

    g = -g                                     if maximize
    c = beta1 * m + (1 - beta1) * g            (the update direction)
    p = p * (1 - lr * wd) - lr * sign(c)       (decoupled weight decay)
    m = beta2 * m + (1 - beta2) * g            (the momentum, with its own beta)

Every coordinate moves by exactly ``lr`` (or not at all where ``c == 0``), so
Lion's learning rate is typically 3-10x smaller than AdamW's and its weight
decay 3-10x larger, to keep the effective decay ``lr * wd`` (the paper's
advice). The paper writes the decay as ``p - lr * (sign(c) + wd * p)``, which
is the same product up to rounding; optlab multiplies first, as
``lion-pytorch`` does.

Defaults are ``lion-pytorch`` 0.2.5's: lr=1e-4, betas=(0.9, 0.99) (the
paper's), weight_decay=0. State: ``exp_avg`` (the momentum ``m``), starting
at 0; no ``step`` is kept, so checkpoints move both ways between optlab and
``lion-pytorch``. Both betas may be 0 or 1 (as in ``lion-pytorch``):
``betas[1] = 1`` keeps ``m = 0``, which makes Lion signSGD.

Departures from ``lion_pytorch.Lion`` 0.2.5:

- its ``decoupled_weight_decay=True`` divides ``weight_decay`` by the
  constructor's lr (the decay per step is then ``lr / lr0 * wd``); optlab
  has no such flag: pass ``weight_decay=wd / lr0`` for the same numbers
  (tests/test_lion.py checks it). Its ``use_triton`` (a CUDA kernel) is
  replaced by optlab's ``fused``.
- ``maximize``, ``foreach`` and ``fused`` are optlab's; the weight decay is
  per param group in both.
- complex parameters are updated as real pairs (as torch.optim does), so
  the sign is taken per real and imaginary part; ``lion-pytorch``'s
  ``sgn_`` takes ``z / |z|``.
- fp16 and bf16 parameters: the update is computed in float32 and the state
  kept in float32 (``lion-pytorch`` keeps it in the parameter's dtype).

Passes over memory per step and tensor: the fused kernel reads ``p``, ``g``,
``m`` and writes ``p``, ``m`` once; the eager forms (``foreach=True`` and
``False``, both the rule run per tensor) launch 13 elementwise kernels, each
a pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from ._base import (
    OptlabOptimizer,
    ValueAndIndexError,
    ValueAndTypeError,
    check_interval,
    check_nonnegative,
    hparams,
    scalar,
)
from ._rules import prologue

__all__ = ["Lion"]


def _lion_rule(param, grad, exp_avg, scalars) -> None:
    """The rule for one tensor, elementwise: what the fused kernel is generated from."""
    decayed, grad, (beta1, beta2, lr) = prologue(param, grad, scalars)
    update = torch.sign(exp_avg * beta1 + (1 - beta1) * grad)
    param.copy_(decayed - lr * update)
    exp_avg.copy_(exp_avg * beta2 + (1 - beta2) * grad)


def _check_unit_pair(betas: Any) -> None:
    """``betas`` a pair of numbers in [0, 1] (both ends allowed, as lion-pytorch's)."""
    if not isinstance(betas, Sequence) or isinstance(betas, str):
        raise ValueAndTypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    if len(betas) != 2:
        short = ValueAndIndexError if len(betas) < 2 else ValueError
        raise short(f"betas must be a pair (beta1, beta2), got {betas!r}")
    for index, beta in enumerate(betas):
        check_interval(f"betas[{index}]", beta, 0.0, 1.0, closed_high=True)


class Lion(OptlabOptimizer):
    """Lion: steps of size ``lr`` along the sign of an interpolated momentum.

    Args:
        params: parameters or param groups.
        lr: learning rate, a float or a 1-element tensor (default 1e-4).
        betas: ``beta1`` interpolates momentum and gradient for the update,
            ``beta2`` is the momentum's decay (default (0.9, 0.99)); each in [0, 1].
        weight_decay: decoupled weight decay, ``p *= 1 - lr * weight_decay``
            before the update (default 0).
        {common}
        {state}
    """

    state_keys = ("exp_avg",)
    moment_kinds = MappingProxyType({"exp_avg": "signed"})
    counts_steps = False
    fp32_for_low_precision = True
    rule = staticmethod(_lion_rule)

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        state_dtype: torch.dtype | str | None = None,
    ) -> None:
        super().__init__(params, hparams(locals()))

    def _check_hparams(self, group) -> None:
        check_nonnegative("lr", group["lr"])
        _check_unit_pair(group["betas"])
        check_nonnegative("weight_decay", group["weight_decay"])

    def _init_state(self, param, group) -> dict[str, Any]:
        return {"exp_avg": self._zeros_like(param)}

    def _decay(self, group) -> tuple[float, float]:
        # Always decoupled (the paper's Algorithm 2), never L2.
        weight_decay = group["weight_decay"]
        return 0.0, scalar(1 - group["lr"] * weight_decay) if weight_decay else 1.0

    def _scalars(self, group):
        lr, (beta1, beta2) = scalar(group["lr"]), map(scalar, group["betas"])
        return lambda step: (beta1, beta2, lr)
