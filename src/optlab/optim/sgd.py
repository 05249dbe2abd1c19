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
``state_dtype`` stores the buffer compactly (:mod:`optlab.optim._lowp`; a
first moment, "signed"); its rounding seeds count the group's steps
(``rounding_step``), as SGD keeps no step count.

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
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from . import _lowp
from ._base import (
    OptlabOptimizer,
    as_real,
    check_bool,
    check_interval,
    check_nonnegative,
    group_by_device_and_dtype,
    hparams,
    scalar,
)
from ._fused import current_grad_scaling, fused_update
from ._rules import derived_form, prepare_foreach, prepare_loop, prologue, select

__all__ = ["SGD"]


def _sgd_rule(param, grad, momentum_buffer, scalars, *, momentum) -> None:
    """The rule for one tensor, elementwise: what the fused kernel is generated from.

    ``first_step`` (1.0 on a parameter's first step with momentum) makes the
    buffer a copy of the gradient, as torch.optim's ``clone``.
    """
    decayed, grad, (lr, momentum_value, dampening, first_step, nesterov) = prologue(
        param, grad, scalars
    )
    if momentum:
        buf = select(
            first_step > 0, grad, momentum_buffer * momentum_value + (1 - dampening) * grad
        )
        momentum_buffer.copy_(buf)
        grad = select(nesterov > 0, grad + momentum_value * buf, buf)
    param.copy_(decayed - lr * grad)


# The eager forms follow torch.optim.SGD's order of operations. A ``None`` in
# ``momentum_buffers`` marks a parameter's first step with momentum: its buffer
# is born as a copy of the gradient and stored into the list, for the caller.


def _sgd_loop(group, steps, params, grads, momentum_buffers) -> None:
    lr, momentum, dampening = scalar(group["lr"]), group["momentum"], group["dampening"]
    for i, (param, grad) in enumerate(zip(params, grads, strict=True)):
        if momentum != 0:
            buf = momentum_buffers[i]
            if buf is None:
                buf = momentum_buffers[i] = grad.detach().clone()
            else:
                buf.mul_(momentum).add_(grad, alpha=1 - dampening)
            grad = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
        param.add_(grad, alpha=-lr)


def _sgd_foreach(group, steps, params, grads, momentum_buffers) -> None:
    lr, momentum, dampening = scalar(group["lr"]), group["momentum"], group["dampening"]
    if momentum != 0:
        bufs = momentum_buffers
        if all(buf is not None for buf in bufs):
            torch._foreach_mul_(bufs, momentum)
            torch._foreach_add_(bufs, grads, alpha=1 - dampening)
        else:  # some parameters take their first step
            for k, buf in enumerate(bufs):
                if buf is None:
                    bufs[k] = grads[k].detach().clone()
                else:
                    buf.mul_(momentum).add_(grads[k], alpha=1 - dampening)
        grads = torch._foreach_add(grads, bufs, alpha=momentum) if group["nesterov"] else bufs
    torch._foreach_add_(params, grads, alpha=-lr)


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
        {common}
        {state}
        differentiable: accepted as ``False`` only (torch.optim's autograd through the step).
    """

    state_keys = ("momentum_buffer",)
    moment_kinds = MappingProxyType({"momentum_buffer": "signed"})
    counts_steps = False
    torch_off_only = ("differentiable",)
    rule = staticmethod(_sgd_rule)
    forms = {"loop": _sgd_loop, "foreach": _sgd_foreach}

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
        state_dtype: torch.dtype | str | None = None,
    ) -> None:
        super().__init__(params, hparams(locals()))

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

    def _scalars(self, group):
        lr, momentum = scalar(group["lr"]), group["momentum"]
        dampening, nesterov = group["dampening"], float(group["nesterov"])
        return lambda first: (lr, momentum, dampening, float(bool(first)), nesterov)

    def _flags(self, group) -> dict[str, bool]:
        return {"momentum": group["momentum"] != 0}

    def _update_group(self, group, params, grads, states, implementation) -> None:
        # Without momentum there is no state: the base class's dispatch as it is.
        # With it the buffer is born on a parameter's first step (what the base's
        # state lists, one tensor per parameter from the start, cannot say), so
        # the first-step markers and buffers are passed here.
        if group["momentum"] == 0:
            super()._update_group(group, params, grads, states, implementation)
            return
        # A checkpoint of torch <= 2.0 stores momentum_buffer=None: no buffer yet.
        buffers: list[Tensor | None] = [
            None if state.get("momentum_buffer") is None else as_real(state["momentum_buffer"])
            for state in states
        ]
        firsts = [buffer is None for buffer in buffers]
        if self._state_format(group) is not None:
            self._update_compact(group, params, grads, states, firsts, implementation)
            return
        form = self.forms.get(implementation)
        if form is None:  # the fused kernel, or the rule eagerly per tensor
            for i, first in enumerate(firsts):
                if first:  # the rule writes the gradient into it
                    buffers[i] = torch.zeros_like(grads[i])
            self._run_rule(group, params, grads, buffers, firsts, implementation)
        else:
            self._run_form(group, params, grads, buffers, implementation)
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
        for state, buf, original, first in zip(states, buffers, originals, firsts, strict=True):
            if first:
                state["momentum_buffer"] = (
                    torch.view_as_complex(buf) if torch.is_complex(original) else buf
                )

    def _run_rule(self, group, params, grads, buffers, firsts, implementation) -> None:
        """The fused kernel, or the rule eagerly per tensor; ``firsts`` marks first steps."""
        sign = -1.0 if group["maximize"] else 1.0
        l2, decay = self._decay(group)
        own = self._scalars(group)
        run = fused_update if implementation == "fused" else derived_form
        run(
            self.rule,
            [params, grads, buffers],
            lambda first: (sign, l2, decay, *own(first)),
            firsts,
            **self._flags(group),
        )

    def _run_form(self, group, params, grads, buffers, implementation) -> None:
        """The hand-written form; a ``None`` buffer is born there, stored into ``buffers``."""
        sign = -1.0 if group["maximize"] else 1.0
        l2, decay = self._decay(group)
        form = self.forms[implementation]
        if implementation == "loop":
            grads = [
                prepare_loop(param, grad, sign=sign, l2=l2, decay=decay)
                for param, grad in zip(params, grads, strict=True)
            ]
            form(group, None, params, grads, buffers)
            return
        indices = list(range(len(params)))
        for run_params, run_grads, run_buffers, run_indices in group_by_device_and_dtype(
            params, grads, buffers, indices
        ):
            run_grads = prepare_foreach(run_params, run_grads, sign=sign, l2=l2, decay=decay)
            form(group, None, run_params, run_grads, run_buffers)
            for i, buffer in zip(run_indices, run_buffers, strict=True):
                buffers[i] = buffer

    def _update_compact(self, group, params, grads, states, firsts, implementation) -> None:
        """With ``state_dtype``: the buffer stored compactly.

        A parameter's first step with momentum first gets a zero buffer in the
        group's format, so every parameter has one: the rule, told it is the first
        step, writes the gradient itself into it (the buffer's old value is not
        read); a hand-written form gets ``None`` there and clones the gradient, as
        without ``state_dtype``.
        """
        fmt = self._state_format(group)
        for param, state, first in zip(params, states, firsts, strict=True):
            if first:
                codes, absmax = _lowp.empty_state(fmt, "signed", param)
                state["momentum_buffer"] = codes.zero_()
                if absmax is not None:
                    state[_lowp.absmax_key("momentum_buffer")] = absmax.zero_()
        buffers = self._real_states(states, self.state_keys, group, params)["momentum_buffer"]
        if implementation not in self.forms:
            self._run_rule(group, params, grads, buffers, firsts, implementation)
            return
        for indices in self._decode_chunks(params):
            decoded = [None if firsts[i] else buffers.decoded(i, params[i].dtype) for i in indices]
            self._run_form(
                group, [params[i] for i in indices], [grads[i] for i in indices], decoded,
                implementation,
            )  # fmt: skip
            for i, value in zip(indices, decoded, strict=True):
                buffers.store(i, value)
