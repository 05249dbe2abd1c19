r"""What every update rule shares: the options that cut across algorithms, written once.

An optlab algorithm states its update *once*, as an elementwise function of
one parameter's tensors (its *rule*)::

    def _yogi_rule(param, grad, exp_avg, exp_avg_sq, scalars):
        decayed, grad, (beta1, beta2, eps, step_size, bc2_sqrt) = prologue(param, grad, scalars)
        ...
        param.copy_(decayed - ...)  # in place, as the last writes

The fused kernel is generated from it (:mod:`optlab.optim._fused`), and an
optimizer without a reference whose order of operations it must follow runs
the same function eagerly for ``foreach=False`` / ``True``
(:func:`derived_form`). Optimizers that must match a reference to 1e-10
in float64 (torch.optim's classics, the official AdaBelief) keep hand-written
per-tensor and multi-tensor forms; they receive gradients and parameters
with the cross-cutting options already applied (:func:`prepare_loop`,
:func:`prepare_foreach`), in torch.optim's order.

The cross-cutting options, in the order torch.optim applies them:

1. ``maximize``: the gradient is negated;
2. coupled (L2) weight decay: ``grad + l2 * param``;
3. decoupled weight decay: the parameter is multiplied by ``decay`` (``1 -
   lr * weight_decay`` for AdamW, 1.0 for none) before the update reads it.

Every rule's scalar vector starts with ``(sign, l2, decay)`` for them
(:data:`PROLOGUE_SCALARS`); the optimizer base class puts them there, so a
rule's own scalars follow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "PROLOGUE_SCALARS",
    "HostScalars",
    "derived_form",
    "prepare_foreach",
    "prepare_loop",
    "prologue",
    "select",
]

#: How many scalars :func:`prologue` takes off the front of a rule's vector.
PROLOGUE_SCALARS = 3


class HostScalars(tuple):
    """A rule's scalars as Python floats, for running a rule eagerly.

    The fused kernel passes a float64 tensor and the rule calls
    ``scalars.unbind()``; this tuple answers ``unbind()`` with its floats, so
    the same rule runs outside the compiler with no tensor scalars (which would
    not mix with tensor subclasses such as DTensor).
    """

    __slots__ = ()

    def unbind(self) -> tuple[float, ...]:
        return tuple(self)


def select(condition: Tensor | bool, if_true: Tensor, if_false: Tensor) -> Tensor:
    """``torch.where`` on a runtime scalar condition, also when it is a Python bool (eager)."""
    if isinstance(condition, bool):
        return if_true if condition else if_false
    return torch.where(condition, if_true, if_false)


def prologue(
    param: Tensor, grad: Tensor, scalars: Tensor | HostScalars
) -> tuple[Tensor, Tensor, Sequence[Tensor | float]]:
    """Apply ``maximize``, L2 and decoupled decay; return ``(decayed, grad, the rule's scalars)``.

    ``decayed`` is a new value, ``param`` multiplied by the decoupled ``decay`` (exact when it is
    1.0) and ``grad`` signed and with ``l2 * param`` added (passed unchanged for
    ``l2 == 0``, not as ``grad + 0 * param``, which would turn an infinite
    parameter into NaN). One kernel then serves every value of the three options.
    The rule writes its result into ``param`` itself: ``param.copy_(decayed - ...)``.
    """
    sign, l2, decay, *rest = scalars.unbind()
    grad = grad * sign
    if isinstance(l2, Tensor):
        grad = torch.where(l2 != 0, grad + l2 * param, grad)
    elif l2 != 0:
        grad = grad + l2 * param
    return param * decay, grad, rest


def prepare_loop(param: Tensor, grad: Tensor, *, sign: float, l2: float, decay: float) -> Tensor:
    """The cross-cutting options for a hand-written per-tensor form; returns the gradient.

    Decoupled decay is applied to ``param`` in place; the gradient returned is
    a new tensor wherever it differs (``param.grad`` is never written).
    """
    if decay != 1.0:
        param.mul_(decay)
    if sign < 0:
        grad = -grad
    if l2 != 0:
        grad = grad.add(param, alpha=l2)
    return grad


def prepare_foreach(
    params: list[Tensor], grads: list[Tensor], *, sign: float, l2: float, decay: float
) -> list[Tensor]:
    """:func:`prepare_loop` over lists with ``torch._foreach_*`` ops (``grads`` not written)."""
    if decay != 1.0:
        torch._foreach_mul_(params, decay)
    if sign < 0:
        grads = torch._foreach_neg(grads)
    if l2 != 0:
        if sign < 0:  # grads is already our own copy
            torch._foreach_add_(grads, params, alpha=l2)
        else:
            grads = torch._foreach_add(grads, params, alpha=l2)
    return grads


def derived_form(
    rule: Callable[..., None],
    tensors: Sequence[Sequence[Tensor] | None],
    scalars: Callable[[Any], Sequence[float]],
    keys: Sequence[Any] | None,
    **flags: Any,
) -> None:
    """Run ``rule`` eagerly on each tensor set: the per-tensor and multi-tensor forms of
    an optimizer that has no reference order of operations to follow.

    The arguments are :func:`optlab.optim._fused.fused_update`'s; the scalars are
    Python floats (:class:`HostScalars`), computed once per distinct key. A
    moment stored compactly (a :class:`~optlab.optim._lowp.CompactStates`) is
    decoded for the rule and rounded back after it.
    """
    from ._lowp import CompactStates, run_rule

    compact = any(isinstance(lists, CompactStates) for lists in tensors)
    vectors: dict[Any, HostScalars] = {}
    for index in range(len(tensors[0] or ())):
        key = None if keys is None else keys[index]
        vector = vectors.get(key)
        if vector is None:
            vector = vectors[key] = HostScalars(float(v) for v in scalars(key))
        arguments = [None if lists is None else lists[index] for lists in tensors]
        if compact:  # moments decoded, then rounded back (optlab.optim._lowp)
            run_rule(rule, arguments, tensors, index, vector, flags)
        else:
            rule(*arguments, vector, **flags)
