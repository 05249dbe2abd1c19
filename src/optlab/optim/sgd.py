r"""SGD with optional heavy-ball or Nesterov momentum, equal to torch.optim 2.13.

Update rule per parameter (Robbins & Monro, "A Stochastic Approximation
Method", 1951; momentum: Polyak 1964; Nesterov momentum in the form of
Sutskever et al., "On the importance of initialization and momentum in deep
learning", ICML 2013)::

    g = -g                                   if maximize
    g = g + wd * p                           if wd != 0 (L2)
    if momentum != 0:
        b = clone(g)                         on the first step (no dampening)
        b = momentum * b + (1 - dampening) * g   afterwards
        g = g + momentum * b                 if nesterov
        g = b                                otherwise
    p = p - lr * g

As in torch.optim the buffer is ``lr``-free (``b`` accumulates gradients, the
learning rate scales the step), which differs from Sutskever et al.'s
``v = momentum * v + lr * g`` whenever ``lr`` changes during training.

Defaults are torch.optim's (lr=1e-3, momentum=0, dampening=0,
weight_decay=0, nesterov=False); the registry's ``momentum`` and ``nag``
entries set momentum=0.9 (and nesterov). State: only ``momentum_buffer``,
created on a parameter's first step with momentum, and no ``step`` (torch
keeps none either), so checkpoints move between torch.optim and optlab.

Departures from torch.optim: ``differentiable`` is taken as ``False`` only
(``True`` raises ``ValueError``); sparse gradients are rejected;
``dampening`` must lie in [0, 1] (torch accepts any number); the
multi-tensor path never writes into ``p.grad`` (torch's does for Nesterov
without weight decay or maximize). With ``torch.amp.GradScaler``, a skipped
first step with momentum starts no buffer (torch's ``fused=True`` keeps an
uninitialised one; its non-fused route none).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ._base import (
    OptlabOptimizer,
    as_real,
    check_bool,
    check_interval,
    check_nonnegative,
    foreach_grads,
    group_by_device_and_dtype,
    loop_grad,
    scalar,
)
from ._fused import current_grad_scaling, fused_update, signed_grad

__all__ = ["SGD", "sgd"]


def sgd(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor | None],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
    implementation: str = "foreach",
) -> None:
    """Apply one SGD step in place.

    With ``momentum != 0``, a ``None`` in ``momentum_buffers`` marks a
    parameter's first step: its buffer is created (a copy of the gradient) and
    stored into the list, for the caller to keep.
    """
    kernel = {
        "loop": _single_tensor_sgd,
        "foreach": _multi_tensor_sgd,
        "fused": _fused_sgd,
    }[implementation]
    kernel(
        params,
        grads,
        momentum_buffers,
        lr=lr,
        momentum=momentum,
        dampening=dampening,
        weight_decay=weight_decay,
        nesterov=nesterov,
        maximize=maximize,
    )


def _single_tensor_sgd(
    params, grads, momentum_buffers, *,
    lr, momentum, dampening, weight_decay, nesterov, maximize,
) -> None:  # fmt: skip
    for i, param in enumerate(params):
        grad = loop_grad(param, grads[i], maximize=maximize, weight_decay=weight_decay)
        if momentum != 0:
            buf = momentum_buffers[i]
            if buf is None:
                buf = momentum_buffers[i] = grad.detach().clone()
            else:
                buf.mul_(momentum).add_(grad, alpha=1 - dampening)
            grad = grad.add(buf, alpha=momentum) if nesterov else buf
        param.add_(grad, alpha=-lr)


def _multi_tensor_sgd(
    params, grads, momentum_buffers, *,
    lr, momentum, dampening, weight_decay, nesterov, maximize,
) -> None:  # fmt: skip
    indices = list(range(len(params)))
    runs = group_by_device_and_dtype(params, grads, indices)
    for run_params, run_grads, run_indices in runs:
        run_grads = foreach_grads(
            run_params, run_grads, maximize=maximize, weight_decay=weight_decay
        )
        if momentum != 0:
            bufs = [momentum_buffers[i] for i in run_indices]
            if all(buf is not None for buf in bufs):
                torch._foreach_mul_(bufs, momentum)
                torch._foreach_add_(bufs, run_grads, alpha=1 - dampening)
            else:  # some parameters take their first step
                for k, i in enumerate(run_indices):
                    if bufs[k] is None:
                        bufs[k] = momentum_buffers[i] = run_grads[k].detach().clone()
                    else:
                        bufs[k].mul_(momentum).add_(run_grads[k], alpha=1 - dampening)
            if nesterov:
                run_grads = torch._foreach_add(run_grads, bufs, alpha=momentum)
            else:
                run_grads = bufs
        torch._foreach_add_(run_params, run_grads, alpha=-lr)


def _sgd_rule(param, grad, momentum_buffer, scalars, *, momentum) -> None:
    """The rule for one tensor, elementwise: what the fused kernel is generated from."""
    lr, sign, l2, momentum_value, dampening, first_step, nesterov = scalars.unbind()
    grad = signed_grad(param, grad, sign, l2)
    if momentum:
        buf = torch.where(
            first_step > 0, grad, momentum_buffer * momentum_value + (1 - dampening) * grad
        )
        momentum_buffer.copy_(buf)
        grad = torch.where(nesterov > 0, grad + momentum_value * buf, buf)
    param.copy_(param - lr * grad)


def _fused_sgd(
    params, grads, momentum_buffers, *,
    lr, momentum, dampening, weight_decay, nesterov, maximize,
) -> None:  # fmt: skip
    first_steps = [buf is None for buf in momentum_buffers]
    if momentum != 0:
        for i, first in enumerate(first_steps):
            if first:  # the kernel writes the gradient into it
                momentum_buffers[i] = torch.zeros_like(grads[i])
    fused_update(
        _sgd_rule,
        [params, grads, momentum_buffers if momentum != 0 else None],
        lambda first: (
            lr,
            -1.0 if maximize else 1.0,
            weight_decay,
            momentum,
            dampening,
            float(first),
            float(nesterov),
        ),  # fmt: skip
        first_steps,
        momentum=momentum != 0,
    )


class SGD(OptlabOptimizer):
    """Stochastic gradient descent with optional momentum, a drop-in for ``torch.optim.SGD``.

    Args:
        params: parameters or param groups.
        lr: learning rate, a float or a 1-element tensor (default 1e-3).
        momentum: momentum factor (default 0: plain SGD).
        dampening: scales the gradient added to the buffer by ``1 - dampening``
            from the second step on (default 0); in [0, 1].
        weight_decay: L2 penalty added to the gradient (default 0).
        nesterov: Nesterov momentum; needs ``momentum > 0`` and ``dampening == 0``.
        maximize: maximize the objective instead of minimizing it.
        foreach: ``True`` multi-tensor, ``False`` per-tensor loop, ``None`` pick.
        differentiable: accepted as ``False`` only (torch.optim's autograd through the step).
        fused: ``True`` one generated kernel call per bucket of tensors (:mod:`optlab.optim._fused`);
            ``None`` lets large groups use it (see there).
    """

    state_keys = ("momentum_buffer",)
    counts_steps = False
    torch_off_only = ("differentiable",)

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
            foreach=foreach,
            differentiable=differentiable,
            fused=fused,
        )
        super().__init__(params, defaults)

    def _check_hparams(self, group) -> None:
        check_nonnegative("lr", group["lr"])
        check_nonnegative("momentum", group["momentum"])
        check_interval("dampening", group["dampening"], 0.0, 1.0, closed_high=True)
        check_nonnegative("weight_decay", group["weight_decay"])
        check_bool("nesterov", group["nesterov"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                "nesterov=True requires momentum > 0 and dampening == 0, got "
                f"momentum={group['momentum']!r} and dampening={group['dampening']!r}"
            )

    def _fusing_saves_passes(self, group) -> bool:
        return bool(group["momentum"] != 0 or group["weight_decay"] != 0 or group["maximize"])

    def _keeps_state(self, group) -> bool:
        return group["momentum"] != 0  # torch.optim.SGD keeps no state entry without momentum

    def _init_state(self, param, group) -> dict[str, Any]:
        # The buffer is born on the first step as a copy of the gradient.
        return {}

    def _update_group(self, group, params, grads, states, implementation) -> None:
        momentum = group["momentum"]
        # A checkpoint of torch <= 2.0 stores momentum_buffer=None: no buffer yet.
        momentum_buffers: list[Tensor | None] = [
            None if state.get("momentum_buffer") is None else as_real(state["momentum_buffer"])
            for state in states
        ]
        sgd(
            params,
            grads,
            momentum_buffers,
            lr=scalar(group["lr"]),
            momentum=momentum,
            dampening=group["dampening"],
            weight_decay=group["weight_decay"],
            nesterov=group["nesterov"],
            maximize=group["maximize"],
            implementation=implementation,
        )
        if momentum == 0:
            return
        scaling = current_grad_scaling()
        if scaling is not None and bool(scaling[1]):
            # GradScaler found inf/NaN and the kernel left everything as it was:
            # a first step's buffer is not born (torch.optim.SGD(fused=True) would
            # keep an uninitialised one). Read on the host: this route is CPU-only.
            for param in group["params"]:
                if param in self.state and not self.state[param]:
                    del self.state[param]  # as if no step was taken
            return
        # New buffers were cloned from real views; complex parameters keep
        # complex buffers, as torch.optim.SGD does. ``_collect`` takes the
        # parameters that have a gradient, in group order.
        originals = [p for p in group["params"] if p.grad is not None]
        for state, buf, original in zip(states, momentum_buffers, originals, strict=True):
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = (
                    torch.view_as_complex(buf) if torch.is_complex(original) else buf
                )
