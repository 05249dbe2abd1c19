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
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from ._base import (
    OptlabOptimizer,
    check_bool,
    check_interval,
    check_nonnegative,
    hparams,
    scalar,
)
from ._rules import prologue

__all__ = ["RMSprop"]


def _rmsprop_rule(
    param, grad, square_avg, grad_avg, momentum_buffer, scalars, *,
    centered, momentum,
) -> None:  # fmt: skip
    """The rule for one tensor, elementwise: what the fused kernel is generated from."""
    decayed, grad, (lr, alpha, eps, momentum_value) = prologue(param, grad, scalars)
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
        param.copy_(decayed - lr * buf)
    else:
        param.copy_(decayed - lr * (grad / avg))


# The eager forms follow torch.optim.RMSprop's order of operations.


def _rmsprop_loop(group, steps, params, grads, square_avgs, grad_avgs, momentum_buffers) -> None:
    lr, alpha, eps = scalar(group["lr"]), group["alpha"], group["eps"]
    momentum, centered = group["momentum"], group["centered"]
    for i, (param, grad, square_avg) in enumerate(zip(params, grads, square_avgs, strict=True)):
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


def _rmsprop_foreach(group, steps, params, grads, square_avgs, grad_avgs, momentum_buffers) -> None:
    lr, alpha, eps = scalar(group["lr"]), group["alpha"], group["eps"]
    momentum = group["momentum"]
    torch._foreach_mul_(square_avgs, alpha)
    torch._foreach_addcmul_(square_avgs, grads, grads, value=1 - alpha)
    if group["centered"]:
        torch._foreach_lerp_(grad_avgs, grads, 1 - alpha)
        avgs = torch._foreach_addcmul(square_avgs, grad_avgs, grad_avgs, value=-1)
        torch._foreach_sqrt_(avgs)
    else:
        avgs = torch._foreach_sqrt(square_avgs)
    torch._foreach_add_(avgs, eps)
    if momentum > 0:
        torch._foreach_mul_(momentum_buffers, momentum)
        torch._foreach_addcdiv_(momentum_buffers, grads, avgs)
        torch._foreach_add_(params, momentum_buffers, alpha=-lr)
    else:
        torch._foreach_addcdiv_(params, grads, avgs, value=-lr)


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
        {common}
        {state}
        {torch_off}
    """

    state_keys = ("square_avg", "grad_avg", "momentum_buffer")
    moment_kinds = MappingProxyType(
        {"square_avg": "nonnegative", "grad_avg": "signed", "momentum_buffer": "signed"}
    )
    torch_off_only = ("capturable", "differentiable")
    rule = staticmethod(_rmsprop_rule)
    forms = {"loop": _rmsprop_loop, "foreach": _rmsprop_foreach}

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
        state_dtype: torch.dtype | str | None = None,
    ) -> None:
        super().__init__(params, hparams(locals()))

    def _check_hparams(self, group) -> None:
        check_nonnegative("lr", group["lr"])
        check_interval("alpha", group["alpha"], 0.0, 1.0, closed_high=True)
        for name in ("eps", "weight_decay", "momentum"):
            check_nonnegative(name, group[name])
        check_bool("centered", group["centered"])

    def _init_state(self, param, group) -> dict[str, Any]:
        state = {"square_avg": self._zeros_like(param)}
        if group["momentum"] > 0:
            state["momentum_buffer"] = self._zeros_like(param)
        if group["centered"]:
            state["grad_avg"] = self._zeros_like(param)
        return state

    def _scalars(self, group):
        values = (scalar(group["lr"]), group["alpha"], group["eps"], group["momentum"])
        return lambda _: values

    def _flags(self, group) -> dict[str, bool]:
        return {"centered": group["centered"], "momentum": group["momentum"] > 0}
