r"""RAdam: Adam with the variance of its adaptive step rectified, a drop-in for ``torch.optim.RAdam``.

Liu, Jiang, He, Chen, Liu, Gao & Han, "On the Variance of the Adaptive
Learning Rate and Beyond", ICLR 2020, arXiv:1908.03265 (Algorithm 2); the
decoupled decay is AdamW's (Loshchilov & Hutter, ICLR 2019, arXiv:1711.05101).

Update rule per parameter, as torch.optim.RAdam 2.13 computes it (``t``
counts this step, ``bc1 = 1 - beta1^t``, ``bc2 = 1 - beta2^t``)::

    g = -g                                   if maximize
    p = p * (1 - lr * wd)                    if decoupled_weight_decay
    g = g + wd * p                           otherwise, if wd != 0 (L2)
    m = lerp(m, g, 1 - beta1)
    v = beta2 * v + (1 - beta2) * g * g
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 t beta2^t / bc2
    if rho_t > 5:                            # the variance is tractable: rectified Adam
        r = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
        p = p - lr * r * sqrt(bc2) / bc1 * m / (sqrt(v) + eps)
    else:                                    # SGD with bias-corrected momentum
        p = p - lr / bc1 * m

With beta2=0.999 the first five steps are SGD steps (rho_t <= 5). eps is
added to ``sqrt(v)``, not to the bias-corrected ``sqrt(v / bc2)`` as in Adam;
the threshold is torch's strict ``rho_t > 5`` (the paper's Algorithm 2 and
AdaBelief's rectification use ``rho_t >= 5``; for beta2=0.999 the two never
differ: rho_t is 4.996 at step 5 and 5.994 at step 6).

Defaults, argument names and order, and state keys (``step``, ``exp_avg``,
``exp_avg_sq``) are torch.optim.RAdam's (lr=1e-3, betas=(0.9, 0.999),
eps=1e-8, weight_decay=0, decoupled_weight_decay=False), so checkpoints move
between torch.optim and optlab in both directions. The eager forms are
derived from the elementwise rule (the equality to torch.optim, 1e-10
relative in float64 over every flag, does not need torch's order of
operations), so optlab's steps are not bitwise torch's.

Departures from torch.optim.RAdam 2.13: ``capturable`` / ``differentiable``
are taken as ``False`` only; ``fused`` exists (the generated kernel); for
fp16 and bf16 parameters the update is computed in float32 and the state
kept in float32 (torch keeps it in the parameter's dtype); a tensor ``lr``
works with every implementation; sparse gradients are refused with a clear
error.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from ._base import OptlabOptimizer, check_betas, check_bool, check_nonnegative, hparams, scalar
from ._rules import prologue, select

__all__ = ["RAdam", "rectification"]


def rectification(step: float, beta2: float) -> float | None:
    """RAdam's variance rectification ``r`` at step ``step``; ``None`` while ``rho_t <= 5``."""
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * beta2**step / (1 - beta2**step)
    if not rho_t > 5.0:
        return None
    return math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))


def _radam_rule(param, grad, exp_avg, exp_avg_sq, scalars) -> None:
    """The rule for one tensor, elementwise: what the fused kernel is generated from.

    ``step_size`` holds ``lr``, the bias corrections and the rectification;
    ``adaptive`` is 1.0 for a rectified step and 0.0 for an SGD step (a
    runtime scalar: one kernel serves both).
    """
    decayed, grad, (beta1, beta2, eps, step_size, adaptive) = prologue(param, grad, scalars)
    new_exp_avg = exp_avg + (1 - beta1) * (grad - exp_avg)
    new_exp_avg_sq = exp_avg_sq * beta2 + (1 - beta2) * (grad * grad)
    update = select(adaptive > 0, new_exp_avg / (new_exp_avg_sq.sqrt() + eps), new_exp_avg)
    param.copy_(decayed - step_size * update)
    exp_avg.copy_(new_exp_avg)
    exp_avg_sq.copy_(new_exp_avg_sq)


class RAdam(OptlabOptimizer):
    """RAdam, a drop-in for ``torch.optim.RAdam`` (same arguments, order, defaults and state).

    Args:
        params: parameters or param groups.
        lr: learning rate, a float or a 1-element tensor (default 1e-3).
        betas: decay rates of the first and second moment (default (0.9, 0.999)).
        eps: added to ``sqrt(exp_avg_sq)`` in the rectified step (default 1e-8).
        weight_decay: L2 penalty added to the gradient (default 0), or
            decoupled weight decay when ``decoupled_weight_decay=True``.
        decoupled_weight_decay: AdamW's decay ``p *= 1 - lr * weight_decay``
            before the step (default False).
        {common}
        {state}
        {torch_off}
    """

    state_keys = ("exp_avg", "exp_avg_sq")
    moment_kinds = MappingProxyType({"exp_avg": "signed", "exp_avg_sq": "nonnegative"})
    torch_off_only = ("capturable", "differentiable")
    fp32_for_low_precision = True
    rule = staticmethod(_radam_rule)

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        state_dtype: torch.dtype | str | None = None,
    ) -> None:
        super().__init__(params, hparams(locals()))

    def _check_hparams(self, group) -> None:
        check_nonnegative("lr", group["lr"])
        check_betas(group["betas"])
        check_nonnegative("eps", group["eps"])
        check_nonnegative("weight_decay", group["weight_decay"])
        check_bool("decoupled_weight_decay", group["decoupled_weight_decay"])

    def _init_state(self, param, group) -> dict[str, Any]:
        return {"exp_avg": self._zeros_like(param), "exp_avg_sq": self._zeros_like(param)}

    def _scalars(self, group):
        lr, (beta1, beta2), eps = scalar(group["lr"]), map(scalar, group["betas"]), group["eps"]

        def scalars(step: float) -> tuple[float, ...]:
            bias_correction1 = 1 - beta1**step
            rect = rectification(step, beta2)
            if rect is None:
                return beta1, beta2, eps, lr / bias_correction1, 0.0
            return beta1, beta2, eps, lr * rect * math.sqrt(1 - beta2**step) / bias_correction1, 1.0

        return scalars
