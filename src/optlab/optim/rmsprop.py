r"""RMSprop (plain, centered, with momentum), equal to torch.optim 2.13.

Update rule per parameter (Tieleman & Hinton, "Lecture 6.5 - rmsprop",
COURSERA: Neural Networks for Machine Learning, 2012; centered variant:
Graves, "Generating Sequences With Recurrent Neural Networks",
arXiv:1308.0850, eq. 38-45)::

    g = -g                                   if maximize
    g = g + wd * p                           if wd != 0 (L2)
    v = alpha * v + (1 - alpha) * g * g      # state "square_avg"
    if centered:
        m = lerp(m, g, 1 - alpha)            # state "grad_avg"
        avg = sqrt(v - m * m) + eps
    else:
        avg = sqrt(v) + eps                  # eps outside the root (TensorFlow puts it inside)
    if momentum > 0:
        b = momentum * b + g / avg           # state "momentum_buffer", starts at 0
        p = p - lr * b
    else:
        p = p - lr * g / avg

Defaults are torch.optim's (lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0,
momentum=0, centered=False), and so are the state keys (``step``,
``square_avg``, ``grad_avg`` when centered, ``momentum_buffer`` when
momentum > 0), so checkpoints move both ways.

Departures from torch.optim: ``alpha`` must lie in [0, 1] (torch accepts any
alpha >= 0, and alpha > 1 drives ``v`` negative); ``capturable`` /
``differentiable`` are taken as ``False`` only, in torch's positions;
``fused=True`` (keyword-only, after them) runs optlab's generated kernel. Switching ``momentum`` or
``centered`` on after a checkpoint written without them starts the missing
buffers at zero (torch raises ``KeyError``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ._base import (
    OptlabOptimizer,
    check_bool,
    check_interval,
    check_nonnegative,
    foreach_grads,
    group_by_device_and_dtype,
    loop_grad,
    scalar,
)
from ._fused import fused_update, signed_grad

__all__ = ["RMSprop", "rmsprop"]


def rmsprop(
    params: list[Tensor],
    grads: list[Tensor],
    square_avgs: list[Tensor],
    grad_avgs: list[Tensor] | None,
    momentum_buffers: list[Tensor] | None,
    steps: list[Tensor],
    *,
    lr: float,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    centered: bool,
    maximize: bool,
    implementation: str = "foreach",
) -> None:
    """Apply one RMSprop step in place. ``steps`` already count this step (unused by the rule).

    ``grad_avgs`` is used only when ``centered``, ``momentum_buffers`` only
    when ``momentum > 0``; pass ``None`` otherwise.
    """
    kernel = {
        "loop": _single_tensor_rmsprop,
        "foreach": _multi_tensor_rmsprop,
        "fused": _fused_rmsprop,
    }[implementation]
    kernel(
        params,
        grads,
        square_avgs,
        grad_avgs,
        momentum_buffers,
        steps,
        lr=lr,
        alpha=alpha,
        eps=eps,
        weight_decay=weight_decay,
        momentum=momentum,
        centered=centered,
        maximize=maximize,
    )


def _single_tensor_rmsprop(
    params, grads, square_avgs, grad_avgs, momentum_buffers, steps, *,
    lr, alpha, eps, weight_decay, momentum, centered, maximize,
) -> None:  # fmt: skip
    for i, param in enumerate(params):
        grad = loop_grad(param, grads[i], maximize=maximize, weight_decay=weight_decay)
        square_avg = square_avgs[i]
        square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
        if centered:
            grad_avg = grad_avgs[i]
            grad_avg.lerp_(grad, 1 - alpha)
            avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
        else:
            avg = square_avg.sqrt()
        avg.add_(eps)
        if momentum > 0:
            buf = momentum_buffers[i]
            buf.mul_(momentum).addcdiv_(grad, avg)
            param.add_(buf, alpha=-lr)
        else:
            param.addcdiv_(grad, avg, value=-lr)


def _multi_tensor_rmsprop(
    params, grads, square_avgs, grad_avgs, momentum_buffers, steps, *,
    lr, alpha, eps, weight_decay, momentum, centered, maximize,
) -> None:  # fmt: skip
    runs = group_by_device_and_dtype(
        params,
        grads,
        square_avgs,
        grad_avgs if centered else None,
        momentum_buffers if momentum > 0 else None,
    )
    for run_params, run_grads, run_square_avgs, run_grad_avgs, run_buffers in runs:
        run_grads = foreach_grads(
            run_params, run_grads, maximize=maximize, weight_decay=weight_decay
        )
        torch._foreach_mul_(run_square_avgs, alpha)
        torch._foreach_addcmul_(run_square_avgs, run_grads, run_grads, value=1 - alpha)
        if centered:
            torch._foreach_lerp_(run_grad_avgs, run_grads, 1 - alpha)
            avgs = torch._foreach_addcmul(run_square_avgs, run_grad_avgs, run_grad_avgs, value=-1)
            torch._foreach_sqrt_(avgs)
        else:
            avgs = torch._foreach_sqrt(run_square_avgs)
        torch._foreach_add_(avgs, eps)
        if momentum > 0:
            torch._foreach_mul_(run_buffers, momentum)
            torch._foreach_addcdiv_(run_buffers, run_grads, avgs)
            torch._foreach_add_(run_params, run_buffers, alpha=-lr)
        else:
            torch._foreach_addcdiv_(run_params, run_grads, avgs, value=-lr)


def _rmsprop_rule(
    param, grad, square_avg, grad_avg, momentum_buffer, scalars, *,
    centered, momentum,
) -> None:  # fmt: skip
    """The rule for one tensor, elementwise: what the fused kernel is generated from."""
    lr, alpha, eps, sign, l2, momentum_value = scalars.unbind()
    grad = signed_grad(param, grad, sign, l2)
    new_square_avg = square_avg * alpha + (1 - alpha) * (grad * grad)
    square_avg.copy_(new_square_avg)
    if centered:
        new_grad_avg = grad_avg + (1 - alpha) * (grad - grad_avg)
        grad_avg.copy_(new_grad_avg)
        avg = (new_square_avg - new_grad_avg * new_grad_avg).sqrt() + eps
    else:
        avg = new_square_avg.sqrt() + eps
    if momentum:
        buf = momentum_buffer * momentum_value + grad / avg
        momentum_buffer.copy_(buf)
        param.copy_(param - lr * buf)
    else:
        param.copy_(param - lr * (grad / avg))


def _fused_rmsprop(
    params, grads, square_avgs, grad_avgs, momentum_buffers, steps, *,
    lr, alpha, eps, weight_decay, momentum, centered, maximize,
) -> None:  # fmt: skip
    fused_update(
        _rmsprop_rule,
        [
            params,
            grads,
            square_avgs,
            grad_avgs if centered else None,
            momentum_buffers if momentum > 0 else None,
        ],
        lambda _: (lr, alpha, eps, -1.0 if maximize else 1.0, weight_decay, momentum),
        None,
        centered=centered,
        momentum=momentum > 0,
    )


class RMSprop(OptlabOptimizer):
    """RMSprop, a drop-in for ``torch.optim.RMSprop``.

    Args:
        params: parameters or param groups.
        lr: learning rate, a float or a 1-element tensor (default 1e-2).
        alpha: decay rate of the running average of squared gradients, in
            [0, 1] (default 0.99).
        eps: added to the denominator outside the square root (default 1e-8).
        weight_decay: L2 penalty added to the gradient (default 0).
        momentum: momentum factor on the scaled step (default 0).
        centered: divide by an estimate of the gradient's variance instead of
            its second moment (default False).
        capturable: accepted as ``False`` only (torch.optim's CUDA-graph capture).
        foreach: ``True`` multi-tensor, ``False`` per-tensor loop, ``None`` pick.
        maximize: maximize the objective instead of minimizing it.
        differentiable: accepted as ``False`` only (torch.optim's autograd through the step).
        fused: ``True`` one generated kernel call per bucket of tensors (:mod:`optlab.optim._fused`);
            ``None`` lets large groups use it (see there).
    """

    state_keys = ("square_avg", "momentum_buffer", "grad_avg")
    torch_off_only = ("capturable", "differentiable")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        *,
        fused: bool | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            alpha=alpha,
            eps=eps,
            centered=centered,
            weight_decay=weight_decay,
            capturable=capturable,
            foreach=foreach,
            maximize=maximize,
            differentiable=differentiable,
            fused=fused,
        )
        super().__init__(params, defaults)

    def _check_hparams(self, group) -> None:
        check_nonnegative("lr", group["lr"])
        check_interval("alpha", group["alpha"], 0.0, 1.0, closed_high=True)
        check_nonnegative("eps", group["eps"])
        check_nonnegative("weight_decay", group["weight_decay"])
        check_nonnegative("momentum", group["momentum"])
        check_bool("centered", group["centered"])

    def _init_state(self, param, group) -> dict[str, Any]:
        state = {"square_avg": self._zeros_like(param)}
        if group["momentum"] > 0:
            state["momentum_buffer"] = self._zeros_like(param)
        if group["centered"]:
            state["grad_avg"] = self._zeros_like(param)
        return state

    def _update_group(self, group, params, grads, states, implementation) -> None:
        momentum, centered = group["momentum"], group["centered"]
        real = self._real_states(states)
        rmsprop(
            params,
            grads,
            real["square_avg"],
            real["grad_avg"] if centered else None,
            real["momentum_buffer"] if momentum > 0 else None,
            [state["step"] for state in states],
            lr=scalar(group["lr"]),
            alpha=group["alpha"],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            momentum=momentum,
            centered=centered,
            maximize=group["maximize"],
            implementation=implementation,
        )
