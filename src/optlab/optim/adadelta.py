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
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from ._base import OptlabOptimizer, check_interval, check_nonnegative, hparams, scalar
from ._rules import prologue

__all__ = ["Adadelta"]


def _adadelta_rule(param, grad, square_avg, acc_delta, scalars) -> None:
    """The rule for one tensor, elementwise: what the fused kernel is generated from."""
    decayed, grad, (lr, rho, eps) = prologue(param, grad, scalars)
    new_square_avg = square_avg * rho + (1 - rho) * (grad * grad)
    delta = (acc_delta + eps).sqrt() / (new_square_avg + eps).sqrt() * grad
    acc_delta.copy_(acc_delta * rho + (1 - rho) * (delta * delta))
    square_avg.copy_(new_square_avg)
    param.copy_(decayed - lr * delta)


# The eager forms follow torch.optim.Adadelta's order of operations.


def _adadelta_loop(group, steps, params, grads, square_avgs, acc_deltas) -> None:
    lr, rho, eps = scalar(group["lr"]), group["rho"], group["eps"]
    for param, grad, square_avg, acc_delta in zip(
        params, grads, square_avgs, acc_deltas, strict=True
    ):
        square_avg.mul_(rho).addcmul_(grad, grad, value=1 - rho)
        std = square_avg.add(eps).sqrt_()
        delta = acc_delta.add(eps).sqrt_().div_(std).mul_(grad)
        acc_delta.mul_(rho).addcmul_(delta, delta, value=1 - rho)
        param.add_(delta, alpha=-lr)


def _adadelta_foreach(group, steps, params, grads, square_avgs, acc_deltas) -> None:
    lr, rho, eps = scalar(group["lr"]), group["rho"], group["eps"]
    torch._foreach_mul_(square_avgs, rho)
    torch._foreach_addcmul_(square_avgs, grads, grads, value=1 - rho)
    stds = torch._foreach_add(square_avgs, eps)
    torch._foreach_sqrt_(stds)
    deltas = torch._foreach_add(acc_deltas, eps)
    torch._foreach_sqrt_(deltas)
    torch._foreach_div_(deltas, stds)
    torch._foreach_mul_(deltas, grads)
    torch._foreach_mul_(acc_deltas, rho)
    torch._foreach_addcmul_(acc_deltas, deltas, deltas, value=1 - rho)
    torch._foreach_add_(params, deltas, alpha=-lr)


class Adadelta(OptlabOptimizer):
    """Adadelta, a drop-in for ``torch.optim.Adadelta``.

    Args:
        params: parameters or param groups.
        lr: scales the step, a float or a 1-element tensor (default 1.0).
        rho: decay rate of both running averages, in [0, 1] (default 0.9).
        eps: added inside both square roots (default 1e-6).
        weight_decay: L2 penalty added to the gradient (default 0).
        {common}
        {state}
        {torch_off}
    """

    state_keys = ("square_avg", "acc_delta")
    moment_kinds = MappingProxyType({"square_avg": "nonnegative", "acc_delta": "nonnegative"})
    torch_off_only = ("capturable", "differentiable")
    rule = staticmethod(_adadelta_rule)
    forms = {"loop": _adadelta_loop, "foreach": _adadelta_foreach}

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
        state_dtype: torch.dtype | str | None = None,
    ) -> None:
        super().__init__(params, hparams(locals()))

    def _check_hparams(self, group) -> None:
        check_nonnegative("lr", group["lr"])
        check_interval("rho", group["rho"], 0.0, 1.0, closed_high=True)
        check_nonnegative("eps", group["eps"])
        check_nonnegative("weight_decay", group["weight_decay"])

    def _init_state(self, param, group) -> dict[str, Any]:
        return {"square_avg": self._zeros_like(param), "acc_delta": self._zeros_like(param)}

    def _scalars(self, group):
        values = (scalar(group["lr"]), group["rho"], group["eps"])
        return lambda _: values
