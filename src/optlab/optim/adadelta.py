r"""Adadelta, equal to torch.optim 2.13.

Update rule per parameter (Zeiler, "ADADELTA: An Adaptive Learning Rate
Method", arXiv:1212.5701, Algorithm 1, with torch.optim's extra ``lr``)::

    g = -g                                   if maximize
    g = g + wd * p                           if wd != 0 (L2)
    v = rho * v + (1 - rho) * g * g          # state "square_avg"
    delta = sqrt(u + eps) / sqrt(v + eps) * g    # u: state "acc_delta"
    u = rho * u + (1 - rho) * delta * delta
    p = p - lr * delta

The paper has no learning rate (lr=1 is Zeiler's method); torch.optim adds
one and so does optlab. Defaults are torch.optim's (lr=1.0, rho=0.9,
eps=1e-6, weight_decay=0) and so are the state keys (``step``,
``square_avg``, ``acc_delta``), so checkpoints move both ways.

Departures from torch.optim: ``capturable`` / ``differentiable`` are taken
as ``False`` only; a ``fused=True`` runs optlab's generated kernel (torch.optim.Adadelta has no
fused path); sparse gradients are rejected with a clear error (as torch does).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ._base import (
    OptlabOptimizer,
    check_interval,
    check_nonnegative,
    foreach_grads,
    group_by_device_and_dtype,
    loop_grad,
    scalar,
)
from ._fused import fused_update, signed_grad

__all__ = ["Adadelta", "adadelta"]


def adadelta(
    params: list[Tensor],
    grads: list[Tensor],
    square_avgs: list[Tensor],
    acc_deltas: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float,
    rho: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
    implementation: str = "foreach",
) -> None:
    """Apply one Adadelta step in place. ``steps`` already count this step (unused by the rule)."""
    kernel = {
        "loop": _single_tensor_adadelta,
        "foreach": _multi_tensor_adadelta,
        "fused": _fused_adadelta,
    }[implementation]
    kernel(
        params,
        grads,
        square_avgs,
        acc_deltas,
        steps,
        lr=lr,
        rho=rho,
        eps=eps,
        weight_decay=weight_decay,
        maximize=maximize,
    )


def _single_tensor_adadelta(
    params, grads, square_avgs, acc_deltas, steps, *, lr, rho, eps, weight_decay, maximize,
) -> None:  # fmt: skip
    for i, param in enumerate(params):
        grad = loop_grad(param, grads[i], maximize=maximize, weight_decay=weight_decay)
        square_avg, acc_delta = square_avgs[i], acc_deltas[i]
        square_avg.mul_(rho).addcmul_(grad, grad, value=1 - rho)
        std = square_avg.add(eps).sqrt_()
        delta = acc_delta.add(eps).sqrt_().div_(std).mul_(grad)
        acc_delta.mul_(rho).addcmul_(delta, delta, value=1 - rho)
        param.add_(delta, alpha=-lr)


def _multi_tensor_adadelta(
    params, grads, square_avgs, acc_deltas, steps, *, lr, rho, eps, weight_decay, maximize,
) -> None:  # fmt: skip
    for run_params, run_grads, run_square_avgs, run_acc_deltas in group_by_device_and_dtype(
        params, grads, square_avgs, acc_deltas
    ):
        run_grads = foreach_grads(
            run_params, run_grads, maximize=maximize, weight_decay=weight_decay
        )
        torch._foreach_mul_(run_square_avgs, rho)
        torch._foreach_addcmul_(run_square_avgs, run_grads, run_grads, value=1 - rho)
        stds = torch._foreach_add(run_square_avgs, eps)
        torch._foreach_sqrt_(stds)
        deltas = torch._foreach_add(run_acc_deltas, eps)
        torch._foreach_sqrt_(deltas)
        torch._foreach_div_(deltas, stds)
        torch._foreach_mul_(deltas, run_grads)
        torch._foreach_mul_(run_acc_deltas, rho)
        torch._foreach_addcmul_(run_acc_deltas, deltas, deltas, value=1 - rho)
        torch._foreach_add_(run_params, deltas, alpha=-lr)


def _adadelta_rule(param, grad, square_avg, acc_delta, scalars) -> None:
    """The rule for one tensor, elementwise: what the fused kernel is generated from."""
    lr, rho, eps, sign, l2 = scalars.unbind()
    grad = signed_grad(param, grad, sign, l2)
    new_square_avg = square_avg * rho + (1 - rho) * (grad * grad)
    delta = (acc_delta + eps).sqrt() / (new_square_avg + eps).sqrt() * grad
    acc_delta.copy_(acc_delta * rho + (1 - rho) * (delta * delta))
    square_avg.copy_(new_square_avg)
    param.copy_(param - lr * delta)


def _fused_adadelta(
    params, grads, square_avgs, acc_deltas, steps, *, lr, rho, eps, weight_decay, maximize,
) -> None:  # fmt: skip
    fused_update(
        _adadelta_rule,
        [params, grads, square_avgs, acc_deltas],
        lambda _: (lr, rho, eps, -1.0 if maximize else 1.0, weight_decay),
        None,
    )


class Adadelta(OptlabOptimizer):
    """Adadelta, a drop-in for ``torch.optim.Adadelta``.

    Args:
        params: parameters or param groups.
        lr: scales the step, a float or a 1-element tensor (default 1.0).
        rho: decay rate of both running averages, in [0, 1] (default 0.9).
        eps: added inside both square roots (default 1e-6).
        weight_decay: L2 penalty added to the gradient (default 0).
        foreach: ``True`` multi-tensor, ``False`` per-tensor loop, ``None`` pick.
        maximize: maximize the objective instead of minimizing it.
        capturable: accepted as ``False`` only (torch.optim's CUDA-graph capture).
        differentiable: accepted as ``False`` only (torch.optim's autograd through the step).
        fused: ``True`` one generated kernel call per bucket of tensors (:mod:`optlab.optim._fused`);
            ``None`` lets large groups use it (see there).
    """

    state_keys = ("square_avg", "acc_delta")
    torch_off_only = ("capturable", "differentiable")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1.0,
        rho: float = 0.9,
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        foreach: bool | None = None,
        *,
        capturable: bool = False,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            rho=rho,
            eps=eps,
            weight_decay=weight_decay,
            maximize=maximize,
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
        )
        super().__init__(params, defaults)

    def _check_hparams(self, group) -> None:
        check_nonnegative("lr", group["lr"])
        check_interval("rho", group["rho"], 0.0, 1.0, closed_high=True)
        check_nonnegative("eps", group["eps"])
        check_nonnegative("weight_decay", group["weight_decay"])

    def _init_state(self, param, group) -> dict[str, Any]:
        return {"square_avg": self._zeros_like(param), "acc_delta": self._zeros_like(param)}

    def _update_group(self, group, params, grads, states, implementation) -> None:
        real = self._real_states(states)
        adadelta(
            params,
            grads,
            real["square_avg"],
            real["acc_delta"],
            [state["step"] for state in states],
            lr=scalar(group["lr"]),
            rho=group["rho"],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            maximize=group["maximize"],
            implementation=implementation,
        )
