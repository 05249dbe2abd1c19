r"""M-SVAG: momentum SGD damped per coordinate by its estimated gradient variance.

Balles & Hennig, "Dissecting Adam: The Sign, Magnitude and Variance of
Stochastic Gradients", ICML 2018 (arXiv:1705.07774), Algorithm 2 (M-SVAG).

Update rule per parameter (``t`` counts this parameter's steps, first step
``t = 1``; ``bc = 1 - beta^t``)::

    g = -g                                   if maximize
    g = g + wd * p                           if wd != 0 (L2; p *= 1 - lr * wd instead
                                             with decoupled_weight_decay)
    m~ = beta * m~ + (1 - beta) * g          (state exp_avg)
    v~ = beta * v~ + (1 - beta) * g*g        (state exp_avg_sq)
    m = m~ / bc,  v = v~ / bc
    rho = (1 - beta) (1 + beta^t) / ((1 + beta) (1 - beta^t))
    s = (v - m*m) / (1 - rho)                (the gradient variance estimate)
    gamma = m*m / (m*m + rho * s)            (clipped to [0, 1]; 0 where it is 0/0)
    p = p - lr * gamma * m

``rho`` is the variance of the moving-average weights relative to one
sample's, so ``s`` is an unbiased estimate of the variance of ``g``, and
``gamma`` the factor that minimises the expected squared error of
``gamma * m`` as an estimate of the true gradient. optlab evaluates
``rho * s`` as ``c * (v - m*m)`` with ``c = rho / (1 - rho) = (1 - beta)
(1 + beta^t) / (2 (beta - beta^t))`` computed on the host, which avoids the
cancellation in ``1 - rho``.

The first step (and every step with ``beta = 0``) has ``rho = 1``: one
sample says nothing about the variance, ``s`` is 0/0. The authors' code
handles it by clamping ``rho`` to 0.999 ("it will only take effect in the
first iteration ... where v - m**2 = 0, leading to s = 0"), so ``gamma =
1``; optlab takes ``c = 0`` there, which is their ``s = 0`` exactly, without
the rounding noise of ``(v - m*m) / 0.001``.

Defaults: lr=1e-2 (``pytorch_optimizer``'s; the authors' code has none),
beta=0.9 (the paper's and the authors' code's), weight_decay=0 (the paper has
no weight decay; optlab adds L2 or decoupled decay as for Adam).
State: ``step``, ``exp_avg`` and ``exp_avg_sq``, starting at 0.

Departures from the published algorithm, the authors' TensorFlow code
(github.com/lballes/msvag) and ``pytorch_optimizer.MSVAG`` 4.1.0:

- the first step as above. Both implementations also clamp ``rho`` at
  later steps (0.999 the authors, 0.9999 ``pytorch_optimizer``); that
  changes a step ``t >= 2`` only for ``beta`` below about 5e-4 (5e-5),
  where ``rho(beta, 2) = (1 + beta^2) / (1 + beta)^2`` exceeds it. optlab
  follows the paper there.
- ``pytorch_optimizer`` counts steps per param group (``group["step"]``), so
  a parameter that missed a gradient on some steps gets the group's bias
  correction; optlab counts per parameter (as Adam in torch.optim). They
  agree wherever every parameter gets a gradient every step.
- ``pytorch_optimizer``'s ``maximize`` negates ``p.grad`` in place; optlab
  never writes into ``p.grad``. Its ``maximize`` and ``foreach`` live on the
  instance, optlab's in every param group.
- weight decay, ``fused``; for fp16 and bf16 parameters the update is
  computed in float32 and the state kept in float32.

Passes over memory per step and tensor: the fused kernel reads ``p``, ``g``,
``m~``, ``v~`` and writes ``p``, ``m~``, ``v~`` once; the eager forms
(``foreach=True`` and ``False``, both the rule run per tensor) launch 24
elementwise kernels (26 with L2 decay), each a pass.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from ._base import OptlabOptimizer, check_bool, check_interval, check_nonnegative, hparams, scalar
from ._rules import prologue

__all__ = ["MSVAG"]


def _msvag_rule(param, grad, exp_avg, exp_avg_sq, scalars) -> None:
    """The rule for one tensor, elementwise: what the fused kernel is generated from."""
    decayed, grad, (beta, lr, bias_correction, variance_weight) = prologue(param, grad, scalars)
    new_exp_avg = exp_avg * beta + (1 - beta) * grad
    new_exp_avg_sq = exp_avg_sq * beta + (1 - beta) * (grad * grad)
    mean = new_exp_avg / bias_correction
    mean_sq = mean * mean
    # variance_weight * (v - m^2) is rho * s: 0 on the first step (no variance estimate yet).
    spread = variance_weight * (new_exp_avg_sq / bias_correction - mean_sq)
    factor = torch.nan_to_num(mean_sq / (mean_sq + spread), nan=0.0).clamp(0.0, 1.0)
    param.copy_(decayed - lr * (factor * mean))
    exp_avg.copy_(new_exp_avg)
    exp_avg_sq.copy_(new_exp_avg_sq)


def variance_weight(beta: float, step: float) -> float:
    """``rho / (1 - rho)`` for ``beta`` at step ``step``; 0 where ``rho = 1`` (no estimate)."""
    beta_power = beta**step
    if beta - beta_power <= 0.0:  # the first step, or beta = 0
        return 0.0
    return (1 - beta) * (1 + beta_power) / (2 * (beta - beta_power))


class MSVAG(OptlabOptimizer):
    """M-SVAG: momentum SGD whose step per coordinate shrinks with the gradient's variance.

    Args:
        params: parameters or param groups.
        lr: learning rate, a float or a 1-element tensor (default 1e-2).
        beta: decay rate of both moving averages (default 0.9), in [0, 1).
        weight_decay: L2 penalty added to the gradient (default 0), or with
            ``decoupled_weight_decay`` the factor of ``p *= 1 - lr * weight_decay``.
        decoupled_weight_decay: decoupled (AdamW-style) decay instead of L2 (default False).
        {common}
        {state}
    """

    state_keys = ("exp_avg", "exp_avg_sq")
    moment_kinds = MappingProxyType({"exp_avg": "signed", "exp_avg_sq": "nonnegative"})
    fp32_for_low_precision = True
    rule = staticmethod(_msvag_rule)

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-2,
        beta: float = 0.9,
        weight_decay: float = 0.0,
        *,
        decoupled_weight_decay: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        state_dtype: torch.dtype | str | None = None,
    ) -> None:
        super().__init__(params, hparams(locals()))

    def _check_hparams(self, group) -> None:
        check_nonnegative("lr", group["lr"])
        check_interval("beta", group["beta"], 0.0, 1.0)
        check_nonnegative("weight_decay", group["weight_decay"])
        check_bool("decoupled_weight_decay", group["decoupled_weight_decay"])

    def _init_state(self, param, group) -> dict[str, Any]:
        return {"exp_avg": self._zeros_like(param), "exp_avg_sq": self._zeros_like(param)}

    def _scalars(self, group):
        lr, beta = scalar(group["lr"]), scalar(group["beta"])
        return lambda step: (beta, lr, 1 - beta**step, variance_weight(beta, step))
