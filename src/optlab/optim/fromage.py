r"""Fromage: gradient steps of a fixed size relative to each tensor's norm.

Bernstein, Vahdat, Yue & Liu, "On the distance between two neural networks
and the stability of learning", NeurIPS 2020, arXiv:2002.03432 (Algorithm 1,
"Frobenius matched gradient descent"). Written from the paper; the authors'
code is under a non-commercial licence and was not consulted.

Update rule per parameter tensor ("layer" ``W``), ``||.||`` the Frobenius
(2-) norm of the whole tensor::

    g = -g                                            if maximize
    W = (W - lr * ||W|| / ||g|| * g) / sqrt(1 + lr^2)

Every step moves a tensor by ``lr`` relative to its norm (the paper's
"deep relative trust" distance); the factor ``1 / sqrt(1 + lr^2)`` undoes the
growth of ``||W||`` a step orthogonal to ``W`` would cause, so the weight
norms stay put instead of drifting upwards.

The formula is undefined where ``||g|| = 0`` and leaves a tensor that is 0
(a bias initialised to zero) at 0 forever; optlab uses the ratio 1 there
(``W = (W - lr * g) / sqrt(1 + lr^2)``), as the LARS and LAMB
implementations do for their trust ratios. Its choice, not the paper's.

Defaults: lr=1e-2 (the paper's recommended default). No weight decay and no
momentum (the paper's algorithm has neither). State: none, so checkpoints
carry only the param groups.

Passes over memory per step: one read or one write of a parameter-sized
tensor counts 1; fp32; counted with a dispatch-mode counter
(tests/test_fromage.py asserts these numbers), the fused kernel counted as
one read of each input and one write of each output; "timed" is the step
time over the time of one pass, 16 tensors of 1M, one thread, on the 2-core
CPU shared with other work (two runs, load 3 and 9)::

    path                      passes                                 timed
    fused                     5  (norms 2, kernel 3)                 5.0-7.4
    foreach (hand-written)    7  (norms 2, addcmul 3, scale 2; 9 with maximize)   6.1-8.3
    loop (rule run eagerly)   16                                     13-40
    elementwise minimum       3  (read W, g; write W)

The fused path computes the norms with ``torch._foreach_norm``, reads the
ratios to the host once per param group (a device sync on CUDA) and runs the
kernel generated from :func:`_fromage_rule` with each tensor's ratio in its
scalar vector: one kernel call per tensor (tensors whose ratios differ
cannot share a bucket; see :mod:`optlab.optim.lars` on what a call costs).
The foreach path never syncs (0-dim ratio tensors).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ._base import check_nonnegative, hparams, scalar
from ._rules import prologue
from .lars import LayerwiseOptimizer, scaled_add

__all__ = ["Fromage"]


def _fromage_rule(param, grad, scalars) -> None:
    """Phase 3 for one tensor, elementwise (``lr * ratio`` and the shrink factor are scalars)."""
    decayed, grad, (step_size, shrink) = prologue(param, grad, scalars)
    param.copy_((decayed - step_size * grad) * shrink)


def _fromage_foreach(group, steps, ratios, params, grads) -> None:
    """Phase 3 with multi-tensor ops."""
    lr = scalar(group["lr"])
    scaled_add(params, grads, ratios, -lr)
    torch._foreach_mul_(params, 1 / math.sqrt(1 + lr * lr))


class Fromage(LayerwiseOptimizer):
    """Fromage: each tensor moves by ``lr`` relative to its norm, then shrinks by ``sqrt(1 + lr^2)``.

    Args:
        params: parameters or param groups.
        lr: learning rate, the relative size of each step, a float or a
            1-element tensor (default 1e-2).
        {common}
    """

    counts_steps = False
    rule = staticmethod(_fromage_rule)
    forms = {"foreach": _fromage_foreach}

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-2,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        super().__init__(params, hparams(locals()))

    def _check_hparams(self, group) -> None:
        check_nonnegative("lr", group["lr"])

    def _keeps_state(self, group) -> bool:
        return False

    def _init_state(self, param, group) -> dict[str, Any]:
        return {}

    def _decay(self, group) -> tuple[float, float]:
        return 0.0, 1.0

    def _ratios(self, group, weight_norms: Tensor, update_norms: Tensor) -> Tensor:
        valid = (weight_norms > 0) & (update_norms > 0)
        return torch.where(valid, weight_norms / update_norms, 1.0)

    def _scalars(self, group):
        lr = scalar(group["lr"])
        shrink = 1 / math.sqrt(1 + lr * lr)
        return lambda step, ratio: (lr * ratio, shrink)
