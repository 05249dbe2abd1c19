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
from typing import Any

import torch
from torch import Tensor

from ._base import (
    OptlabOptimizer,
    check_betas,
    check_nonnegative,
    foreach_grads,
    group_by_device_and_dtype,
    loop_grad,
    scalar,
)
from ._fused import fused_update, signed_grad

__all__ = ["Yogi", "yogi"]


def yogi(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
    implementation: str = "foreach",
) -> None:
    """Apply one Yogi step in place. ``steps`` already count this step."""
    kernel = {
        "loop": _single_tensor_yogi,
        "foreach": _multi_tensor_yogi,
        "fused": _fused_yogi,
    }[implementation]
    kernel(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        steps,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
        maximize=maximize,
    )


def _single_tensor_yogi(
    params, grads, exp_avgs, exp_avg_sqs, steps, *,
    lr, beta1, beta2, eps, weight_decay, maximize,
) -> None:  # fmt: skip
    for i, param in enumerate(params):
        grad = loop_grad(param, grads[i], maximize=maximize, weight_decay=weight_decay)
        exp_avg, exp_avg_sq = exp_avgs[i], exp_avg_sqs[i]
        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        grad_sq = grad * grad
        exp_avg_sq.addcmul_(torch.sign(exp_avg_sq - grad_sq), grad_sq, value=-(1 - beta2))

        step = steps[i].item()
        denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step)).add_(eps)
        param.addcdiv_(exp_avg, denom, value=-(lr / (1 - beta1**step)))


def _multi_tensor_yogi(
    params, grads, exp_avgs, exp_avg_sqs, steps, *,
    lr, beta1, beta2, eps, weight_decay, maximize,
) -> None:  # fmt: skip
    runs = group_by_device_and_dtype(params, grads, exp_avgs, exp_avg_sqs, steps)
    for run_params, run_grads, run_exp_avgs, run_exp_avg_sqs, run_steps in runs:
        run_grads = foreach_grads(
            run_params, run_grads, maximize=maximize, weight_decay=weight_decay
        )
        torch._foreach_mul_(run_exp_avgs, beta1)
        torch._foreach_add_(run_exp_avgs, run_grads, alpha=1 - beta1)
        grad_sqs = torch._foreach_mul(run_grads, run_grads)
        signs = torch._foreach_sub(run_exp_avg_sqs, grad_sqs)
        if all(type(sign) is Tensor for sign in signs):
            torch._foreach_sign_(signs)
        else:  # DTensor (FSDP2): torch 2.11 has no sharding rule for _foreach_sign_
            for sign in signs:
                sign.sign_()
        torch._foreach_addcmul_(run_exp_avg_sqs, signs, grad_sqs, -(1 - beta2))
        del signs, grad_sqs

        step_values = [step.item() for step in run_steps]
        denoms = torch._foreach_sqrt(run_exp_avg_sqs)
        torch._foreach_div_(denoms, [math.sqrt(1 - beta2**step) for step in step_values])
        torch._foreach_add_(denoms, eps)
        step_sizes = [-(lr / (1 - beta1**step)) for step in step_values]
        torch._foreach_addcdiv_(run_params, run_exp_avgs, denoms, step_sizes)


def _yogi_rule(param, grad, exp_avg, exp_avg_sq, scalars) -> None:
    """The rule for one tensor, elementwise: what the fused kernel is generated from."""
    beta1, beta2, eps, sign, l2, step_size, bias_correction2_sqrt = scalars.unbind()
    grad = signed_grad(param, grad, sign, l2)
    new_exp_avg = exp_avg * beta1 + (1 - beta1) * grad
    grad_sq = grad * grad
    new_exp_avg_sq = exp_avg_sq - (1 - beta2) * (torch.sign(exp_avg_sq - grad_sq) * grad_sq)
    denom = new_exp_avg_sq.sqrt() / bias_correction2_sqrt + eps
    param.copy_(param - step_size * (new_exp_avg / denom))
    exp_avg.copy_(new_exp_avg)
    exp_avg_sq.copy_(new_exp_avg_sq)


def _fused_yogi(
    params, grads, exp_avgs, exp_avg_sqs, steps, *,
    lr, beta1, beta2, eps, weight_decay, maximize,
) -> None:  # fmt: skip
    def scalars(step: float) -> tuple[float, ...]:
        return (
            beta1, beta2, eps, -1.0 if maximize else 1.0, weight_decay,
            lr / (1 - beta1**step), math.sqrt(1 - beta2**step),
        )  # fmt: skip

    fused_update(
        _yogi_rule, [params, grads, exp_avgs, exp_avg_sqs], scalars, [step.item() for step in steps]
    )


class Yogi(OptlabOptimizer):
    """Yogi: Adam whose second moment moves additively, by the sign of ``v - g*g``.

    Args:
        params: parameters or param groups.
        lr: learning rate, a float or a 1-element tensor (default 1e-2).
        betas: decay rates of the first and second moment (default (0.9, 0.999)).
        eps: added to the denominator outside the square root (default 1e-3).
        initial_accumulator_value: the value ``exp_avg_sq`` starts at (default 1e-6).
        weight_decay: L2 penalty added to the gradient (default 0).
        maximize: maximize the objective instead of minimizing it.
        foreach: ``True`` multi-tensor, ``False`` per-tensor loop, ``None`` pick.
        fused: ``True`` one generated kernel call per bucket of tensors (:mod:`optlab.optim._fused`);
            ``None`` lets large groups use it (see there).
    """

    state_keys = ("exp_avg", "exp_avg_sq")
    fp32_for_low_precision = True

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
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            initial_accumulator_value=initial_accumulator_value,
            weight_decay=weight_decay,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
        )
        super().__init__(params, defaults)

    def _check_hparams(self, group) -> None:
        check_nonnegative("lr", group["lr"])
        check_betas(group["betas"])
        check_nonnegative("eps", group["eps"])
        check_nonnegative("initial_accumulator_value", group["initial_accumulator_value"])
        check_nonnegative("weight_decay", group["weight_decay"])

    def _init_state(self, param, group) -> dict[str, Any]:
        value = group["initial_accumulator_value"]
        if torch.is_complex(param):  # both halves of the real view start there, as in Adagrad
            value = complex(value, value)
        return {"exp_avg": self._zeros_like(param), "exp_avg_sq": self._full_like(param, value)}

    def _update_group(self, group, params, grads, states, implementation) -> None:
        real = self._real_states(states)
        beta1, beta2 = group["betas"]
        yogi(
            params,
            grads,
            real["exp_avg"],
            real["exp_avg_sq"],
            [state["step"] for state in states],
            lr=scalar(group["lr"]),
            beta1=scalar(beta1),
            beta2=scalar(beta2),
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            maximize=group["maximize"],
            implementation=implementation,
        )
