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
from typing import Any

import torch
from torch import Tensor

from ._base import (
    OptlabOptimizer,
    check_betas,
    check_bool,
    check_nonnegative,
    foreach_grads,
    group_by_device_and_dtype,
    loop_grad,
    scalar,
)
from ._fused import fused_update, signed_grad

__all__ = ["Adam", "AdamW", "adam"]


def adam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor] | None,
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    amsgrad: bool,
    maximize: bool,
    decoupled_weight_decay: bool,
    implementation: str = "foreach",
) -> None:
    """Apply one Adam step in place. ``steps`` already count this step."""
    kernel = {"loop": _single_tensor_adam, "foreach": _multi_tensor_adam, "fused": _fused_adam}[
        implementation
    ]
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
        decoupled_weight_decay=decoupled_weight_decay,
    )


def _single_tensor_adam(
    params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, *,
    lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay,
) -> None:  # fmt: skip
    for i, param in enumerate(params):
        if decoupled_weight_decay:
            grad = loop_grad(param, grads[i], maximize=maximize, weight_decay=0.0)
            if weight_decay != 0:
                param.mul_(scalar(1 - lr * weight_decay))
        else:
            grad = loop_grad(param, grads[i], maximize=maximize, weight_decay=weight_decay)
        exp_avg, exp_avg_sq = exp_avgs[i], exp_avg_sqs[i]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)

        step = steps[i].item()
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        if amsgrad:
            torch.maximum(max_exp_avg_sqs[i], exp_avg_sq, out=max_exp_avg_sqs[i])
            denom = (max_exp_avg_sqs[i].sqrt() / bias_correction2_sqrt).add_(eps)
        else:
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        param.addcdiv_(exp_avg, denom, value=-scalar(lr / bias_correction1))


def _multi_tensor_adam(
    params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, *,
    lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay,
) -> None:  # fmt: skip
    runs = group_by_device_and_dtype(
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs if amsgrad else None, steps
    )
    for run_params, run_grads, run_exp_avgs, run_exp_avg_sqs, run_max, run_steps in runs:
        if decoupled_weight_decay:
            run_grads = foreach_grads(run_params, run_grads, maximize=maximize, weight_decay=0.0)
            if weight_decay != 0:
                torch._foreach_mul_(run_params, scalar(1 - lr * weight_decay))
        else:
            run_grads = foreach_grads(
                run_params, run_grads, maximize=maximize, weight_decay=weight_decay
            )
        torch._foreach_lerp_(run_exp_avgs, run_grads, 1 - beta1)
        torch._foreach_mul_(run_exp_avg_sqs, beta2)
        torch._foreach_addcmul_(run_exp_avg_sqs, run_grads, run_grads, 1 - beta2)

        step_values = [step.item() for step in run_steps]
        step_sizes = [-scalar(lr / (1 - beta1**step)) for step in step_values]
        bias_correction2_sqrts = [(1 - beta2**step) ** 0.5 for step in step_values]
        if amsgrad:
            torch._foreach_maximum_(run_max, run_exp_avg_sqs)
            denoms = torch._foreach_sqrt(run_max)
        else:
            denoms = torch._foreach_sqrt(run_exp_avg_sqs)
        torch._foreach_div_(denoms, bias_correction2_sqrts)
        torch._foreach_add_(denoms, eps)
        torch._foreach_addcdiv_(run_params, run_exp_avgs, denoms, step_sizes)


def _adam_rule(
    param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, scalars, *, amsgrad
) -> None:  # fmt: skip
    """The rule for one tensor, elementwise: what the fused kernel is generated from.

    Adam's L2 decay (``l2``) and AdamW's decoupled one (``decay_factor``, 1.0
    for none) are both runtime scalars, so Adam and AdamW share the kernel.
    """
    beta1, beta2, eps, sign, l2, decay_factor, step_size, bias_correction2_sqrt = scalars.unbind()
    grad = signed_grad(param, grad, sign, l2)
    new_param = param * decay_factor
    new_exp_avg = exp_avg + (1 - beta1) * (grad - exp_avg)
    new_exp_avg_sq = exp_avg_sq * beta2 + (1 - beta2) * (grad * grad)
    if amsgrad:
        new_max = torch.maximum(max_exp_avg_sq, new_exp_avg_sq)
        max_exp_avg_sq.copy_(new_max)
        denom = new_max.sqrt() / bias_correction2_sqrt + eps
    else:
        denom = new_exp_avg_sq.sqrt() / bias_correction2_sqrt + eps
    param.copy_(new_param - step_size * (new_exp_avg / denom))
    exp_avg.copy_(new_exp_avg)
    exp_avg_sq.copy_(new_exp_avg_sq)


def _fused_adam(
    params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, *,
    lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay,
) -> None:  # fmt: skip
    l2 = 0.0 if decoupled_weight_decay else weight_decay
    decay_factor = scalar(1 - lr * weight_decay) if decoupled_weight_decay else 1.0

    def scalars(step: float) -> tuple[float, ...]:
        return (
            beta1, beta2, eps, -1.0 if maximize else 1.0, l2, decay_factor,
            scalar(lr / (1 - beta1**step)), (1 - beta2**step) ** 0.5,
        )  # fmt: skip

    fused_update(
        _adam_rule,
        [params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs if amsgrad else None],
        scalars,
        [step.item() for step in steps],
        amsgrad=amsgrad,
    )


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
        maximize: maximize the objective instead of minimizing it.
        foreach: ``True`` multi-tensor, ``False`` per-tensor loop, ``None`` pick.
        capturable: accepted as ``False`` only (torch.optim's CUDA-graph capture).
        differentiable: accepted as ``False`` only (torch.optim's autograd through the step).
        fused: ``True`` one generated kernel call per bucket of tensors (:mod:`optlab.optim._fused`);
            ``None`` lets large groups use it (see there).
        decoupled_weight_decay: AdamW's decoupled decay (default False).
    """

    state_keys = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    torch_off_only = ("capturable", "differentiable")

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
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=decoupled_weight_decay,
        )
        super().__init__(params, defaults)

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

    def _update_group(self, group, params, grads, states, implementation) -> None:
        amsgrad = group["amsgrad"]
        real = self._real_states(states)
        beta1, beta2 = group["betas"]
        adam(
            params,
            grads,
            real["exp_avg"],
            real["exp_avg_sq"],
            real["max_exp_avg_sq"] if amsgrad else None,
            [state["step"] for state in states],
            lr=group["lr"],  # a tensor lr rounds lr / (1 - beta1^t) in its dtype, as torch
            beta1=scalar(beta1),
            beta2=scalar(beta2),
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            amsgrad=amsgrad,
            maximize=group["maximize"],
            decoupled_weight_decay=group["decoupled_weight_decay"],
            implementation=implementation,
        )


class AdamW(Adam):
    """AdamW: Adam with decoupled weight decay, a drop-in for ``torch.optim.AdamW``.

    Same arguments as :class:`Adam`; ``weight_decay`` defaults to 1e-2 and is
    always decoupled: ``p = p * (1 - lr * weight_decay)`` before the Adam step.
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
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=True,
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # As torch.optim.AdamW: a loaded group is always decoupled.
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
