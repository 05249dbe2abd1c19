r"""Adagrad, equal to torch.optim 2.13.

Update rule per parameter (Duchi, Hazan & Singer, "Adaptive Subgradient
Methods for Online Learning and Stochastic Optimization", JMLR 12, 2011)::

    g = -g                                   if maximize
    g = g + wd * p                           if wd != 0 (L2)
    clr = lr / (1 + (t - 1) * lr_decay)
    sum = sum + g * g                        # starts at initial_accumulator_value
    p = p - clr * g / (sqrt(sum) + eps)

Defaults are torch.optim's (lr=1e-2, lr_decay=0, weight_decay=0,
initial_accumulator_value=0, eps=1e-10), and so are the state keys (``step``,
``sum``). As in torch.optim the state is created eagerly in the constructor
(so a fresh optimizer's ``state_dict`` already holds every ``sum``);
parameters added later with ``add_param_group`` get theirs on their first
step. For complex parameters ``sum`` starts at
``complex(initial_accumulator_value, initial_accumulator_value)``: real and
imaginary parts are separate coordinates.

Departures from torch.optim: ``initial_accumulator_value`` is honoured per
param group (torch uses the constructor's value for every group);
``differentiable`` is taken as ``False`` only; sparse gradients are rejected with a clear error (torch
supports them, without weight decay, in the loop path).
"""

from __future__ import annotations

from collections.abc import Iterable
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from ._base import OptlabOptimizer, check_nonnegative, hparams, scalar
from ._rules import prologue

__all__ = ["Adagrad"]


def _decayed_lr(lr: float | Tensor, step: float, lr_decay: float) -> float:
    """``lr / (1 + (t - 1) * lr_decay)``; a tensor ``lr`` enters as a tensor, as in
    torch.optim, so the rate is rounded to ``lr``'s dtype exactly as there."""
    return scalar(lr / (1 + (step - 1) * lr_decay))


def _adagrad_rule(param, grad, state_sum, scalars) -> None:
    """The rule for one tensor, elementwise: what the fused kernel is generated from."""
    decayed, grad, (eps, decayed_lr) = prologue(param, grad, scalars)
    new_sum = state_sum + grad * grad
    param.copy_(decayed - decayed_lr * (grad / (new_sum.sqrt() + eps)))
    state_sum.copy_(new_sum)


# The eager forms follow torch.optim.Adagrad's order of operations.


def _adagrad_loop(group, steps, params, grads, state_sums) -> None:
    lr, lr_decay, eps = group["lr"], group["lr_decay"], group["eps"]
    for param, grad, state_sum, step in zip(params, grads, state_sums, steps, strict=True):
        clr = _decayed_lr(lr, step, lr_decay)
        state_sum.addcmul_(grad, grad, value=1)
        std = state_sum.sqrt().add_(eps)
        param.addcdiv_(grad, std, value=-clr)


def _adagrad_foreach(group, steps, params, grads, state_sums) -> None:
    lr, lr_decay, eps = group["lr"], group["lr_decay"], group["eps"]
    minus_clrs = [-_decayed_lr(lr, step, lr_decay) for step in steps]
    torch._foreach_addcmul_(state_sums, grads, grads, value=1)
    stds = torch._foreach_sqrt(state_sums)
    torch._foreach_add_(stds, eps)
    # torch.optim scales the gradient before the division here (the loop path
    # scales after): same rounding as torch in each path. The gradients are our
    # own copies where maximize or weight decay made new ones (_rules.prepare_foreach).
    if group["maximize"] or group["weight_decay"] != 0:
        torch._foreach_mul_(grads, minus_clrs)
        numerators = grads
    else:  # the parameters' own .grad: not written
        numerators = torch._foreach_mul(grads, minus_clrs)
    torch._foreach_addcdiv_(params, numerators, stds)


class Adagrad(OptlabOptimizer):
    """Adagrad, a drop-in for ``torch.optim.Adagrad``.

    Args:
        params: parameters or param groups.
        lr: learning rate, a float or a 1-element tensor (default 1e-2).
        lr_decay: the rate at step t is ``lr / (1 + (t - 1) * lr_decay)`` (default 0).
        weight_decay: L2 penalty added to the gradient (default 0).
        initial_accumulator_value: starting value of the sum of squared
            gradients (default 0).
        eps: added to the denominator outside the square root (default 1e-10).
        {common}
        {state}
        differentiable: accepted as ``False`` only (torch.optim's autograd through the step).
    """

    state_keys = ("sum",)
    moment_kinds = MappingProxyType({"sum": "nonnegative"})
    torch_off_only = ("differentiable",)
    rule = staticmethod(_adagrad_rule)
    forms = {"loop": _adagrad_loop, "foreach": _adagrad_foreach}

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-2,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        state_dtype: torch.dtype | str | None = None,
    ) -> None:
        super().__init__(params, hparams(locals()))
        # Eager state, as torch.optim.Adagrad: checkpoints of a fresh optimizer match.
        for group in self.param_groups:
            for param in group["params"]:
                state = self.state[param]
                if not state:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state.update(self._init_state(param, group))
                    self._compress_state(param, state, group)

    def _check_hparams(self, group) -> None:
        for name in ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps"):
            check_nonnegative(name, group[name])

    def _init_state(self, param, group) -> dict[str, Any]:
        value = group["initial_accumulator_value"]
        if torch.is_complex(param):
            value = complex(value, value)
        return {"sum": self._full_like(param, value)}

    def _scalars(self, group):
        lr, lr_decay, eps = group["lr"], group["lr_decay"], group["eps"]
        return lambda step: (eps, _decayed_lr(lr, step, lr_decay))
