r"""Adam, AMSGrad and AdamW, equal to torch.optim 2.13.

Update rule per parameter (Kingma & Ba, "Adam: A Method for Stochastic
Optimization", ICLR 2015, arXiv:1412.6980; AMSGrad: Reddi et al., "On the
Convergence of Adam and Beyond", ICLR 2018; AdamW: Loshchilov & Hutter,
"Decoupled Weight Decay Regularization", ICLR 2019, arXiv:1711.05101)::

    g = -g                                   if maximize
    p = p * (1 - lr * wd)                    if decoupled_weight_decay (AdamW)
    g = g + wd * p                           otherwise, if wd != 0 (Adam's L2)
    m = lerp(m, g, 1 - beta1)                # torch's op, not mul_/add_
    v = beta2 * v + (1 - beta2) * g * g
    v_max = max(v_max, v)                    if amsgrad (over the raw v)
    denom = sqrt(v_max or v) / sqrt(1 - beta2^t) + eps
    p = p - lr / (1 - beta1^t) * m / denom

Defaults are torch.optim's (lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
weight_decay=0; AdamW weight_decay=1e-2), and so are the state keys
(``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``), so checkpoints
move between torch.optim and optlab in both directions.

Departures from torch.optim: ``capturable`` / ``differentiable`` are taken
as ``False`` only (``True`` raises ``ValueError``); sparse gradients are
rejected with a clear error; a tensor ``lr`` or tensor ``betas`` work with
``foreach=True`` too (torch refuses them there).
"""

from __future__ import annotations

from collections.abc import Iterable
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from ._base import OptlabOptimizer, check_betas, check_bool, check_nonnegative, hparams, scalar
from ._rules import prologue

__all__ = ["Adam", "AdamW"]


def _adam_rule(
    param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, scalars, *, amsgrad
) -> None:  # fmt: skip
    """The rule for one tensor, elementwise: what the fused kernel is generated from.

    Adam's L2 decay and AdamW's decoupled one are both runtime scalars (in the
    prologue), so Adam and AdamW share the kernel.
    """
    decayed, grad, (beta1, beta2, eps, step_size, bias_correction2_sqrt) = prologue(
        param, grad, scalars
    )
    new_exp_avg = exp_avg + (1 - beta1) * (grad - exp_avg)
    new_exp_avg_sq = exp_avg_sq * beta2 + (1 - beta2) * (grad * grad)
    if amsgrad:
        new_max = torch.maximum(max_exp_avg_sq, new_exp_avg_sq)
        max_exp_avg_sq.copy_(new_max)
        denom = new_max.sqrt() / bias_correction2_sqrt + eps
    else:
        denom = new_exp_avg_sq.sqrt() / bias_correction2_sqrt + eps
    param.copy_(decayed - step_size * (new_exp_avg / denom))
    exp_avg.copy_(new_exp_avg)
    exp_avg_sq.copy_(new_exp_avg_sq)


# The eager forms follow torch.optim.Adam's order of operations (its oracle, to 1e-10).
# A tensor lr rounds lr / (1 - beta1^t) in its dtype, as torch does.


def _adam_loop(group, steps, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs) -> None:
    lr, (beta1, beta2), eps = group["lr"], map(scalar, group["betas"]), group["eps"]
    for i, (param, grad, exp_avg, exp_avg_sq, step) in enumerate(
        zip(params, grads, exp_avgs, exp_avg_sqs, steps, strict=True)
    ):
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        if max_exp_avg_sqs is not None:
            torch.maximum(max_exp_avg_sqs[i], exp_avg_sq, out=max_exp_avg_sqs[i])
            denom = (max_exp_avg_sqs[i].sqrt() / bias_correction2_sqrt).add_(eps)
        else:
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        param.addcdiv_(exp_avg, denom, value=-scalar(lr / (1 - beta1**step)))


def _adam_foreach(group, steps, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs) -> None:
    lr, (beta1, beta2), eps = group["lr"], map(scalar, group["betas"]), group["eps"]
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    if max_exp_avg_sqs is not None:
        torch._foreach_maximum_(max_exp_avg_sqs, exp_avg_sqs)
        denoms = torch._foreach_sqrt(max_exp_avg_sqs)
    else:
        denoms = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denoms, [(1 - beta2**step) ** 0.5 for step in steps])
    torch._foreach_add_(denoms, eps)
    step_sizes = [-scalar(lr / (1 - beta1**step)) for step in steps]
    torch._foreach_addcdiv_(params, exp_avgs, denoms, step_sizes)


class Adam(OptlabOptimizer):
    """Adam (and AMSGrad with ``amsgrad=True``), a drop-in for ``torch.optim.Adam``.

    Args:
        params: parameters or param groups.
        lr: learning rate, a float or a 1-element tensor (default 1e-3).
        betas: decay rates of the first and second moment (default (0.9, 0.999)).
        eps: added to the denominator outside the square root (default 1e-8).
        weight_decay: L2 penalty added to the gradient (default 0), or
            decoupled weight decay when ``decoupled_weight_decay=True``.
        amsgrad: use the running maximum of the second moment (default False).
        decoupled_weight_decay: AdamW's decoupled decay (default False).
        {common}
        {state}
        {torch_off}
    """

    state_keys = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    moment_kinds = MappingProxyType(
        {"exp_avg": "signed", "exp_avg_sq": "nonnegative", "max_exp_avg_sq": "nonnegative"}
    )
    torch_off_only = ("capturable", "differentiable")
    rule = staticmethod(_adam_rule)
    forms = {"loop": _adam_loop, "foreach": _adam_foreach}

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        state_dtype: torch.dtype | str | None = None,
    ) -> None:
        super().__init__(params, hparams(locals()))

    def _check_hparams(self, group) -> None:
        check_nonnegative("lr", group["lr"])
        check_betas(group["betas"])
        check_nonnegative("eps", group["eps"])
        check_nonnegative("weight_decay", group["weight_decay"])
        check_bool("amsgrad", group["amsgrad"])
        check_bool("decoupled_weight_decay", group["decoupled_weight_decay"])

    def _init_state(self, param, group) -> dict[str, Any]:
        state = {"exp_avg": self._zeros_like(param), "exp_avg_sq": self._zeros_like(param)}
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = self._zeros_like(param)
        return state

    def _scalars(self, group):
        lr, (beta1, beta2), eps = group["lr"], map(scalar, group["betas"]), group["eps"]
        return lambda step: (
            beta1, beta2, eps, scalar(lr / (1 - beta1**step)), (1 - beta2**step) ** 0.5
        )  # fmt: skip

    def _flags(self, group) -> dict[str, bool]:
        return {"amsgrad": group["amsgrad"]}


class AdamW(Adam):
    """AdamW: Adam with decoupled weight decay, a drop-in for ``torch.optim.AdamW``.

    Args:
        params, lr, betas, eps, amsgrad: as :class:`Adam`'s.
        weight_decay: always decoupled, ``p = p * (1 - lr * weight_decay)`` before
            the Adam step (default 1e-2).
        {common}
        {state}
        {torch_off}
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        state_dtype: torch.dtype | str | None = None,
    ) -> None:
        super().__init__(params, **hparams(locals()), decoupled_weight_decay=True)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # As torch.optim.AdamW: a loaded group is always decoupled.
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
