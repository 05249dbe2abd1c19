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
from typing import Any

import torch
from torch import Tensor

from ._base import (
    OptlabOptimizer,
    check_betas,
    check_bool,
    check_interval,
    check_nonnegative,
    foreach_grads,
    group_by_device_and_dtype,
    loop_grad,
    scalar,
)
from ._fused import fused_update, signed_grad

__all__ = ["EAdam", "eadam"]


def eadam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor] | None,
    steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    amsgrad: bool,
    maximize: bool,
    implementation: str = "foreach",
) -> None:
    """Apply one EAdam step in place. ``steps`` already count this step."""
    kernel = {
        "loop": _single_tensor_eadam,
        "foreach": _multi_tensor_eadam,
        "fused": _fused_eadam,
    }[implementation]
    kernel(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        max_exp_avg_sqs,
        steps,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
        amsgrad=amsgrad,
        maximize=maximize,
    )


def _step_size(step: float, *, lr: float, beta1: float, beta2: float) -> float:
    return lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)


def _single_tensor_eadam(
    params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, *,
    lr, beta1, beta2, eps, weight_decay, amsgrad, maximize,
) -> None:  # fmt: skip
    for i, param in enumerate(params):
        grad = loop_grad(param, grads[i], maximize=maximize, weight_decay=weight_decay)
        exp_avg, exp_avg_sq = exp_avgs[i], exp_avg_sqs[i]
        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        exp_avg_sq.add_(eps)
        if amsgrad:
            torch.maximum(max_exp_avg_sqs[i], exp_avg_sq, out=max_exp_avg_sqs[i])
            denom = max_exp_avg_sqs[i].sqrt()
        else:
            denom = exp_avg_sq.sqrt()
        step_size = _step_size(steps[i].item(), lr=lr, beta1=beta1, beta2=beta2)
        param.addcdiv_(exp_avg, denom, value=-step_size)


def _multi_tensor_eadam(
    params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, *,
    lr, beta1, beta2, eps, weight_decay, amsgrad, maximize,
) -> None:  # fmt: skip
    runs = group_by_device_and_dtype(
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs if amsgrad else None, steps
    )
    for run_params, run_grads, run_exp_avgs, run_exp_avg_sqs, run_max, run_steps in runs:
        run_grads = foreach_grads(
            run_params, run_grads, maximize=maximize, weight_decay=weight_decay
        )
        torch._foreach_mul_(run_exp_avgs, beta1)
        torch._foreach_add_(run_exp_avgs, run_grads, alpha=1 - beta1)
        torch._foreach_mul_(run_exp_avg_sqs, beta2)
        torch._foreach_addcmul_(run_exp_avg_sqs, run_grads, run_grads, 1 - beta2)
        torch._foreach_add_(run_exp_avg_sqs, eps)
        if amsgrad:
            torch._foreach_maximum_(run_max, run_exp_avg_sqs)
            denoms = torch._foreach_sqrt(run_max)
        else:
            denoms = torch._foreach_sqrt(run_exp_avg_sqs)
        step_sizes = [
            -_step_size(step.item(), lr=lr, beta1=beta1, beta2=beta2) for step in run_steps
        ]
        torch._foreach_addcdiv_(run_params, run_exp_avgs, denoms, step_sizes)


def _eadam_rule(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, scalars, *, amsgrad) -> None:
    """The rule for one tensor, elementwise: what the fused kernel is generated from."""
    beta1, beta2, eps, sign, l2, step_size = scalars.unbind()
    grad = signed_grad(param, grad, sign, l2)
    new_exp_avg = exp_avg * beta1 + (1 - beta1) * grad
    new_exp_avg_sq = exp_avg_sq * beta2 + (1 - beta2) * (grad * grad) + eps
    if amsgrad:
        new_max = torch.maximum(max_exp_avg_sq, new_exp_avg_sq)
        max_exp_avg_sq.copy_(new_max)
        denom = new_max.sqrt()
    else:
        denom = new_exp_avg_sq.sqrt()
    param.copy_(param - step_size * (new_exp_avg / denom))
    exp_avg.copy_(new_exp_avg)
    exp_avg_sq.copy_(new_exp_avg_sq)


def _fused_eadam(
    params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, *,
    lr, beta1, beta2, eps, weight_decay, amsgrad, maximize,
) -> None:  # fmt: skip
    def scalars(step: float) -> tuple[float, ...]:
        step_size = _step_size(step, lr=lr, beta1=beta1, beta2=beta2)
        return (beta1, beta2, eps, -1.0 if maximize else 1.0, weight_decay, step_size)

    fused_update(
        _eadam_rule,
        [params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs if amsgrad else None],
        scalars,
        [step.item() for step in steps],
        amsgrad=amsgrad,
    )


class EAdam(OptlabOptimizer):
    """EAdam: Adam with ``eps`` added to the second moment every step, inside the root.

    Args:
        params: parameters or param groups.
        lr: learning rate, a float or a 1-element tensor (default 1e-3).
        betas: decay rates of the first and second moment (default (0.9, 0.999)).
        eps: added to ``exp_avg_sq`` every step, inside the square root (default 1e-8).
        weight_decay: L2 penalty added to the gradient (default 0).
        amsgrad: divide by the running maximum of ``exp_avg_sq`` (default False).
        maximize: maximize the objective instead of minimizing it.
        foreach: ``True`` multi-tensor, ``False`` per-tensor loop, ``None`` pick.
        fused: ``True`` one generated kernel call per bucket of tensors (:mod:`optlab.optim._fused`);
            ``None`` lets large groups use it (see there).
    """

    state_keys = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    fp32_for_low_precision = True

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
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
        )
        super().__init__(params, defaults)

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

    def _update_group(self, group, params, grads, states, implementation) -> None:
        amsgrad = group["amsgrad"]
        real = self._real_states(states)
        beta1, beta2 = group["betas"]
        eadam(
            params,
            grads,
            real["exp_avg"],
            real["exp_avg_sq"],
            real["max_exp_avg_sq"] if amsgrad else None,
            [state["step"] for state in states],
            lr=scalar(group["lr"]),
            beta1=scalar(beta1),
            beta2=scalar(beta2),
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            amsgrad=amsgrad,
            maximize=group["maximize"],
            implementation=implementation,
        )
