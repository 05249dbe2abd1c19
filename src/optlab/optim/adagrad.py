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
from typing import Any

import torch
from torch import Tensor

from ._base import (
    OptlabOptimizer,
    check_nonnegative,
    foreach_grads,
    group_by_device_and_dtype,
    loop_grad,
    scalar,
)
from ._fused import fused_update, signed_grad

__all__ = ["Adagrad", "adagrad"]


def adagrad(
    params: list[Tensor],
    grads: list[Tensor],
    state_sums: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    lr_decay: float,
    weight_decay: float,
    eps: float,
    maximize: bool,
    implementation: str = "foreach",
) -> None:
    """Apply one Adagrad step in place. ``steps`` already count this step.

    A tensor ``lr`` enters the decayed rate as a tensor, as in torch.optim, so
    ``clr`` is rounded to ``lr``'s dtype exactly as there.
    """
    kernel = {
        "loop": _single_tensor_adagrad,
        "foreach": _multi_tensor_adagrad,
        "fused": _fused_adagrad,
    }[implementation]
    kernel(
        params,
        grads,
        state_sums,
        steps,
        lr=lr,
        lr_decay=lr_decay,
        weight_decay=weight_decay,
        eps=eps,
        maximize=maximize,
    )


def _decayed_lr(lr: float | Tensor, step: float, lr_decay: float) -> float:
    return scalar(lr / (1 + (step - 1) * lr_decay))


def _single_tensor_adagrad(
    params, grads, state_sums, steps, *, lr, lr_decay, weight_decay, eps, maximize,
) -> None:  # fmt: skip
    for i, param in enumerate(params):
        grad = loop_grad(param, grads[i], maximize=maximize, weight_decay=weight_decay)
        clr = _decayed_lr(lr, steps[i].item(), lr_decay)
        state_sums[i].addcmul_(grad, grad, value=1)
        std = state_sums[i].sqrt().add_(eps)
        param.addcdiv_(grad, std, value=-clr)


def _multi_tensor_adagrad(
    params, grads, state_sums, steps, *, lr, lr_decay, weight_decay, eps, maximize,
) -> None:  # fmt: skip
    for run_params, run_grads, run_sums, run_steps in group_by_device_and_dtype(
        params, grads, state_sums, steps
    ):
        owned = maximize or weight_decay != 0  # foreach_grads returned our own copies
        run_grads = foreach_grads(
            run_params, run_grads, maximize=maximize, weight_decay=weight_decay
        )
        minus_clrs = [-_decayed_lr(lr, step.item(), lr_decay) for step in run_steps]
        torch._foreach_addcmul_(run_sums, run_grads, run_grads, value=1)
        stds = torch._foreach_sqrt(run_sums)
        torch._foreach_add_(stds, eps)
        # torch.optim scales the gradient before the division here (the loop
        # path scales after): same rounding as torch in each path.
        if owned:
            torch._foreach_mul_(run_grads, minus_clrs)
            numerators = run_grads
        else:
            numerators = torch._foreach_mul(run_grads, minus_clrs)
        torch._foreach_addcdiv_(run_params, numerators, stds)


def _adagrad_rule(param, grad, state_sum, scalars) -> None:
    """The rule for one tensor, elementwise: what the fused kernel is generated from."""
    sign, l2, eps, decayed_lr = scalars.unbind()
    grad = signed_grad(param, grad, sign, l2)
    new_sum = state_sum + grad * grad
    param.copy_(param - decayed_lr * (grad / (new_sum.sqrt() + eps)))
    state_sum.copy_(new_sum)


def _fused_adagrad(
    params, grads, state_sums, steps, *, lr, lr_decay, weight_decay, eps, maximize,
) -> None:  # fmt: skip
    fused_update(
        _adagrad_rule,
        [params, grads, state_sums],
        lambda step: (
            -1.0 if maximize else 1.0,
            weight_decay,
            eps,
            _decayed_lr(lr, step, lr_decay),
        ),
        [step.item() for step in steps],
    )


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
        foreach: ``True`` multi-tensor, ``False`` per-tensor loop, ``None`` pick.
        maximize: maximize the objective instead of minimizing it.
        differentiable: accepted as ``False`` only (torch.optim's autograd through the step).
        fused: ``True`` one generated kernel call per bucket of tensors (:mod:`optlab.optim._fused`);
            ``None`` lets large groups use it (see there).
    """

    state_keys = ("sum",)
    torch_off_only = ("differentiable",)

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
    ) -> None:
        defaults = dict(
            lr=lr,
            lr_decay=lr_decay,
            eps=eps,
            weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value,
            foreach=foreach,
            maximize=maximize,
            differentiable=differentiable,
            fused=fused,
        )
        super().__init__(params, defaults)
        # Eager state, as torch.optim.Adagrad: checkpoints of a fresh optimizer match.
        for group in self.param_groups:
            for param in group["params"]:
                state = self.state[param]
                if not state:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state.update(self._init_state(param, group))

    def _check_hparams(self, group) -> None:
        check_nonnegative("lr", group["lr"])
        check_nonnegative("lr_decay", group["lr_decay"])
        check_nonnegative("weight_decay", group["weight_decay"])
        check_nonnegative("initial_accumulator_value", group["initial_accumulator_value"])
        check_nonnegative("eps", group["eps"])

    def _init_state(self, param, group) -> dict[str, Any]:
        value = group["initial_accumulator_value"]
        if torch.is_complex(param):
            value = complex(value, value)
        return {"sum": self._full_like(param, value)}

    def _update_group(self, group, params, grads, states, implementation) -> None:
        real = self._real_states(states)
        adagrad(
            params,
            grads,
            real["sum"],
            [state["step"] for state in states],
            lr=group["lr"],
            lr_decay=group["lr_decay"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=group["maximize"],
            implementation=implementation,
        )
