r"""Yogi: Adam with an additive, sign-controlled second moment.

Zaheer, Reddi, Sachan, Kale & Kumar, "Adaptive Methods for Nonconvex
Optimization", NeurIPS 2018 (Algorithm 2).

Update rule per parameter (``t`` counts this step, ``bc1 = 1 - beta1^t``,
``bc2 = 1 - beta2^t``)::

    g = -g                                   if maximize
    g = g + wd * p                           if wd != 0 (L2)
    m = beta1 * m + (1 - beta1) * g
    v = v - (1 - beta2) * sign(v - g*g) * g*g
    p = p - lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)

Adam's ``v`` moves multiplicatively towards ``g*g``; Yogi's moves by at most
``(1 - beta2) * g*g`` per step, so one large gradient cannot shrink the
effective learning rate abruptly, and ``v`` grows slowly when gradients get
larger.

Defaults are the paper's: lr=1e-2, betas=(0.9, 0.999), eps=1e-3,
initial_accumulator_value=1e-6 (the value ``v`` starts at), weight_decay=0.
State: ``exp_avg`` starts at 0 and ``exp_avg_sq`` at
``initial_accumulator_value``.

Departures from ``torch_optimizer.Yogi`` 0.3.0, whose step is the same:
it starts ``exp_avg`` at the initial accumulator value as well (following
TensorFlow Addons), optlab starts it at 0 as the paper does; its argument is
called ``initial_accumulator``, optlab's ``initial_accumulator_value`` (as
torch.optim.Adagrad's), in the same position. For fp16 and bf16 parameters
the update is computed in float32 and the state kept in float32.
``maximize``, ``foreach`` and ``fused`` as in torch.optim.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from ._base import OptlabOptimizer, check_betas, check_nonnegative, hparams, scalar
from ._rules import prologue

__all__ = ["Yogi"]


def _yogi_rule(param, grad, exp_avg, exp_avg_sq, scalars) -> None:
    """The rule for one tensor, elementwise: what the fused kernel is generated from."""
    decayed, grad, (beta1, beta2, eps, step_size, bias_correction2_sqrt) = prologue(
        param, grad, scalars
    )
    new_exp_avg = exp_avg * beta1 + (1 - beta1) * grad
    grad_sq = grad * grad
    new_exp_avg_sq = exp_avg_sq - (1 - beta2) * (torch.sign(exp_avg_sq - grad_sq) * grad_sq)
    denom = new_exp_avg_sq.sqrt() / bias_correction2_sqrt + eps
    param.copy_(decayed - step_size * (new_exp_avg / denom))
    exp_avg.copy_(new_exp_avg)
    exp_avg_sq.copy_(new_exp_avg_sq)


# The eager forms follow torch_optimizer.Yogi's order of operations (its oracle).


def _yogi_loop(group, steps, params, grads, exp_avgs, exp_avg_sqs) -> None:
    lr, (beta1, beta2), eps = scalar(group["lr"]), map(scalar, group["betas"]), group["eps"]
    for param, grad, exp_avg, exp_avg_sq, step in zip(
        params, grads, exp_avgs, exp_avg_sqs, steps, strict=True
    ):
        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        grad_sq = grad * grad
        exp_avg_sq.addcmul_(torch.sign(exp_avg_sq - grad_sq), grad_sq, value=-(1 - beta2))
        denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step)).add_(eps)
        param.addcdiv_(exp_avg, denom, value=-(lr / (1 - beta1**step)))


def _yogi_foreach(group, steps, params, grads, exp_avgs, exp_avg_sqs) -> None:
    lr, (beta1, beta2), eps = scalar(group["lr"]), map(scalar, group["betas"]), group["eps"]
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
    grad_sqs = torch._foreach_mul(grads, grads)
    signs = torch._foreach_sub(exp_avg_sqs, grad_sqs)
    if all(type(sign) is Tensor for sign in signs):
        torch._foreach_sign_(signs)
    else:  # DTensor (FSDP2): torch 2.11 has no sharding rule for _foreach_sign_
        for sign in signs:
            sign.sign_()
    torch._foreach_addcmul_(exp_avg_sqs, signs, grad_sqs, -(1 - beta2))
    del signs, grad_sqs

    denoms = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denoms, [math.sqrt(1 - beta2**step) for step in steps])
    torch._foreach_add_(denoms, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denoms, [-(lr / (1 - beta1**step)) for step in steps])


class Yogi(OptlabOptimizer):
    """Yogi: Adam whose second moment moves additively, by the sign of ``v - g*g``.

    Args:
        params: parameters or param groups.
        lr: learning rate, a float or a 1-element tensor (default 1e-2).
        betas: decay rates of the first and second moment (default (0.9, 0.999)).
        eps: added to the denominator outside the square root (default 1e-3).
        initial_accumulator_value: the value ``exp_avg_sq`` starts at (default 1e-6).
        weight_decay: L2 penalty added to the gradient (default 0).
        {common}
        {state}
    """

    state_keys = ("exp_avg", "exp_avg_sq")
    moment_kinds = MappingProxyType({"exp_avg": "signed", "exp_avg_sq": "nonnegative"})
    fp32_for_low_precision = True
    rule = staticmethod(_yogi_rule)
    forms = {"loop": _yogi_loop, "foreach": _yogi_foreach}

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-2,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-3,
        initial_accumulator_value: float = 1e-6,
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
        check_betas(group["betas"])
        for name in ("eps", "initial_accumulator_value", "weight_decay"):
            check_nonnegative(name, group[name])

    def _init_state(self, param, group) -> dict[str, Any]:
        value = group["initial_accumulator_value"]
        if torch.is_complex(param):  # both halves of the real view start there, as in Adagrad
            value = complex(value, value)
        return {"exp_avg": self._zeros_like(param), "exp_avg_sq": self._full_like(param, value)}

    def _scalars(self, group):
        lr, (beta1, beta2), eps = scalar(group["lr"]), map(scalar, group["betas"]), group["eps"]
        return lambda step: (
            beta1, beta2, eps, lr / (1 - beta1**step), math.sqrt(1 - beta2**step)
        )  # fmt: skip
