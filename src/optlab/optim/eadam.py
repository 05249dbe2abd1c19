r"""EAdam: Adam with eps accumulated inside the square root.

Yuan & Gao, "EAdam Optimizer: How epsilon Impact Adam", arXiv:2011.02150.

Update rule per parameter (``t`` counts this step, ``bc1 = 1 - beta1^t``,
``bc2 = 1 - beta2^t``)::

    g = -g                                   if maximize
    g = g + wd * p                           if wd != 0 (L2, as in the paper's code)
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    v = v + eps                              # stored: eps accumulates, every step
    v_max = max(v_max, v)                    if amsgrad (after eps is added)
    p = p - lr * sqrt(bc2) / bc1 * m / sqrt(v_max or v)    # no eps outside the root

Unrolled, the bias-corrected ``v / bc2`` is Adam's plus ``eps / (1 - beta2)``
(for large t): EAdam is Adam with eps moved inside the square root and
scaled up by 1 / (1 - beta2), i.e. 1000x with the default beta2. Like
AdaBelief's, this eps is roughly the square of an Adam eps.

Defaults are the paper's: lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
weight_decay=0. State keys are Adam's (``step``, ``exp_avg``,
``exp_avg_sq``, ``max_exp_avg_sq``).

Departures: no installable reference exists, so the published algorithm is
the oracle. The authors' code treats ``amsgrad`` inconsistently; here it is
defined as above (the maximum of the stored, eps-including ``v``). For fp16
and bf16 parameters the update is computed in float32 and the state kept in
float32 (eps=1e-8 accumulated in a half-precision ``v`` would be lost).
``maximize``, ``foreach`` and ``fused`` as in torch.optim.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from ._base import (
    OptlabOptimizer,
    check_betas,
    check_bool,
    check_interval,
    check_nonnegative,
    hparams,
    scalar,
)
from ._rules import prologue

__all__ = ["EAdam"]


def _step_size(step: float, *, lr: float, beta1: float, beta2: float) -> float:
    return lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)


def _eadam_rule(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, scalars, *, amsgrad) -> None:
    """The rule for one tensor, elementwise: what the fused kernel is generated from."""
    decayed, grad, (beta1, beta2, eps, step_size) = prologue(param, grad, scalars)
    new_exp_avg = exp_avg * beta1 + (1 - beta1) * grad
    new_exp_avg_sq = exp_avg_sq * beta2 + (1 - beta2) * (grad * grad) + eps
    if amsgrad:
        new_max = torch.maximum(max_exp_avg_sq, new_exp_avg_sq)
        max_exp_avg_sq.copy_(new_max)
        denom = new_max.sqrt()
    else:
        denom = new_exp_avg_sq.sqrt()
    param.copy_(decayed - step_size * (new_exp_avg / denom))
    exp_avg.copy_(new_exp_avg)
    exp_avg_sq.copy_(new_exp_avg_sq)


# No reference package to follow, but the eager forms are kept: they give bitwise
# the results EAdam gave before the rules, and the multi-tensor one runs as
# torch._foreach_* ops (the derived form would run the rule per tensor).


def _hyper(group) -> tuple[float, float, float, float]:
    beta1, beta2 = map(scalar, group["betas"])
    return scalar(group["lr"]), beta1, beta2, group["eps"]


def _eadam_loop(group, steps, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs) -> None:
    lr, beta1, beta2, eps = _hyper(group)
    for i, (param, grad, exp_avg, exp_avg_sq, step) in enumerate(
        zip(params, grads, exp_avgs, exp_avg_sqs, steps, strict=True)
    ):
        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        exp_avg_sq.add_(eps)
        if max_exp_avg_sqs is not None:
            torch.maximum(max_exp_avg_sqs[i], exp_avg_sq, out=max_exp_avg_sqs[i])
            denom = max_exp_avg_sqs[i].sqrt()
        else:
            denom = exp_avg_sq.sqrt()
        param.addcdiv_(exp_avg, denom, value=-_step_size(step, lr=lr, beta1=beta1, beta2=beta2))


def _eadam_foreach(group, steps, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs) -> None:
    lr, beta1, beta2, eps = _hyper(group)
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    torch._foreach_add_(exp_avg_sqs, eps)
    if max_exp_avg_sqs is not None:
        torch._foreach_maximum_(max_exp_avg_sqs, exp_avg_sqs)
        denoms = torch._foreach_sqrt(max_exp_avg_sqs)
    else:
        denoms = torch._foreach_sqrt(exp_avg_sqs)
    step_sizes = [-_step_size(step, lr=lr, beta1=beta1, beta2=beta2) for step in steps]
    torch._foreach_addcdiv_(params, exp_avgs, denoms, step_sizes)


class EAdam(OptlabOptimizer):
    """EAdam: Adam with ``eps`` added to the second moment every step, inside the root.

    Args:
        params: parameters or param groups.
        lr: learning rate, a float or a 1-element tensor (default 1e-3).
        betas: decay rates of the first and second moment (default (0.9, 0.999)).
        eps: added to ``exp_avg_sq`` every step, inside the square root (default 1e-8).
        weight_decay: L2 penalty added to the gradient (default 0).
        amsgrad: divide by the running maximum of ``exp_avg_sq`` (default False).
        {common}
        {state}
    """

    state_keys = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    moment_kinds = MappingProxyType(
        {"exp_avg": "signed", "exp_avg_sq": "nonnegative", "max_exp_avg_sq": "nonnegative"}
    )
    fp32_for_low_precision = True
    rule = staticmethod(_eadam_rule)
    forms = {"loop": _eadam_loop, "foreach": _eadam_foreach}

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        state_dtype: torch.dtype | str | None = None,
    ) -> None:
        super().__init__(params, hparams(locals()))

    def _check_hparams(self, group) -> None:
        check_nonnegative("lr", group["lr"])
        check_betas(group["betas"])
        # eps is EAdam's only guard against 0/0 where a gradient is zero: it must be > 0.
        check_interval("eps", group["eps"], 0.0, math.inf, closed_low=False)
        check_nonnegative("weight_decay", group["weight_decay"])
        check_bool("amsgrad", group["amsgrad"])

    def _init_state(self, param, group) -> dict[str, Any]:
        state = {"exp_avg": self._zeros_like(param), "exp_avg_sq": self._zeros_like(param)}
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = self._zeros_like(param)
        return state

    def _scalars(self, group):
        lr, beta1, beta2, eps = _hyper(group)
        return lambda step: (
            beta1, beta2, eps, _step_size(step, lr=lr, beta1=beta1, beta2=beta2)
        )  # fmt: skip

    def _flags(self, group) -> dict[str, bool]:
        return {"amsgrad": group["amsgrad"]}
