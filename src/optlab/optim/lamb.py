r"""LAMB: Adam steps scaled per tensor to the norm of the tensor they move.

You, Li, Reddi, Hseu, Kumar, Bhojanapalli, Song, Demmel, Keutzer & Hsieh,
"Large Batch Optimization for Deep Learning: Training BERT in 76 minutes",
ICLR 2020, arXiv:1904.00962 (Algorithm 2).

Update rule per parameter tensor, ``||.||`` the 2-norm of the whole tensor
(``t`` counts this tensor's steps, ``bc1 = 1 - beta1^t``, ``bc2 = 1 - beta2^t``)::

    g = -g                                    if maximize
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    r = (m / bc1) / (sqrt(v / bc2) + eps)     bc1 = bc2 = 1 without bias_correction
    u = r + wd * p
    ratio = phi(||p||) / ||u||                phi(z) = min(z, clamp_value); 1 where ||p|| or ||u|| is 0
    p = p - lr * ratio * u

Defaults: lr=1e-3, betas=(0.9, 0.999), eps=1e-6 (the paper's BERT setting and
every public PyTorch implementation's), weight_decay=0, bias_correction=True
(Algorithm 2 of the ICLR version; arXiv v3, which the public PyTorch ports
follow, has none), clamp_value=10 (the paper's scaling function
``phi(z) = min(max(z, gamma_l), gamma_u)`` with ``gamma_l = 0``, ``gamma_u =
10`` as pytorch-lamb, torch_optimizer and pytorch_optimizer clamp; ``inf``
makes ``phi`` the identity, as NVIDIA apex's FusedLAMB and TensorFlow's
LAMB). State: ``step``, ``exp_avg``, ``exp_avg_sq`` (Adam's names).

Where the public implementations disagree (optlab follows Algorithm 2; the
test writes it out and checks each port to its documented difference):

- ``pytorch-lamb`` 1.0.0 (``pytorch_lamb.Lamb``): no bias correction and
  ``phi(z) = min(z, 10)``, as optlab with ``bias_correction=False``; but its
  ratio ``||p|| / ||u||`` is unguarded: a parameter that is 0 (a bias
  initialised to zero) gets ratio 0 and never moves, and one whose update is
  0 (a zero gradient on its first steps) gets ``inf * 0`` and becomes NaN.
  optlab uses ratio 1 there, as torch_optimizer and apex. Its ``adam`` flag
  (ratio 1) is an attribute, not a group option; it stores
  ``weight_norm`` / ``adam_norm`` / ``trust_ratio`` in the state (optlab
  keeps no per-tensor scalars, so its checkpoints are refused here); it
  has no ``maximize``. Its eps default is 1e-6 though its docstring says 1e-8.
- ``pytorch_optimizer`` 4.1.0 ``Lamb``: its docstring says no bias
  correction, but it divides the step by ``bc1`` *outside* the trust ratio
  (``p -= lr / bc1 * ratio * u``, ten times the step at t = 1 with
  beta1=0.9); it adds eps to the ratio's denominator (``||u|| + eps``); its
  default weight decay is decoupled (``p *= 1 - lr * wd``, outside ``u``);
  it counts steps per group, not per tensor (a tensor without a gradient
  still advances the count); its ``maximize`` negates ``p.grad`` in place.
  With ``weight_decouple=False``, eps=0 and an ``lr`` of ``lr / bc1`` at
  each step, optlab's ``bias_correction=False`` takes its steps (checked).
- ``torch_optimizer`` 0.3.0 ``Lamb``: ``debias=True`` multiplies the step
  by ``sqrt(bc2) / bc1`` outside the ratio, where the ratio almost cancels
  Algorithm 2's correction inside it; with ``debias=False`` it is
  pytorch-lamb's update with the zero-norm guard, i.e. optlab's
  ``bias_correction=False`` (checked).

Passes over memory per step: one read or one write of a parameter-sized
tensor counts 1; fp32; counted with a dispatch-mode counter
(tests/test_lamb.py asserts these numbers), a fused kernel counted as one
read of each input and one write of each output; "timed" is the step time
over the time of one pass, 16 tensors of 1M, weight decay on, one thread, on
the 2-core CPU shared with other work (two runs, load 3 and 9)::

    path                      passes                                 timed
    fused                     12 (kernel 7, norms 2, apply 3)        9.7-14
    foreach (hand-written)    20 (no bias correction, wd 0), 22, 23 (wd > 0)   26
    loop (rules run eagerly)  57                                     75-108
    Adam's elementwise minimum 7 (read p, g, m, v; write p, m, v)

The fused path: a kernel generated from :func:`_lamb_raw_rule` updates the
moments and writes the raw update ``u`` into a scratch tensor (bucketed as
any rule: one parameter-sized scratch per step); ``torch._foreach_norm``
reads ``p`` and ``u``; ``p -= lr * ratio * u`` runs as one
``torch._foreach_addcmul_`` with the ratios as 0-dim tensors: 3 passes, as
many as a kernel would make, without reading the ratios to the host or a
kernel call per tensor (``ratio_in_kernel = False``). The fused and foreach
paths never sync with the host; the loop path reads the ratios once per
group.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ._base import check_betas, check_bool, check_interval, check_nonnegative, hparams, scalar
from ._rules import prologue, select
from .lars import LayerwiseOptimizer, scaled_add

__all__ = ["Lamb"]


def _lamb_raw_rule(param, grad, exp_avg, exp_avg_sq, update, scalars) -> None:
    """Phase 1 for one tensor, elementwise: the moments, and the raw update into ``update``."""
    _, grad, (beta1, beta2, eps, bias_correction1, bias_correction2_sqrt, weight_decay) = prologue(
        param, grad, scalars
    )
    new_exp_avg = exp_avg * beta1 + (1 - beta1) * grad
    new_exp_avg_sq = exp_avg_sq * beta2 + (1 - beta2) * (grad * grad)
    adam_step = (new_exp_avg / bias_correction1) / (
        new_exp_avg_sq.sqrt() / bias_correction2_sqrt + eps
    )
    update.copy_(select(weight_decay != 0, adam_step + weight_decay * param, adam_step))
    exp_avg.copy_(new_exp_avg)
    exp_avg_sq.copy_(new_exp_avg_sq)


def _lamb_rule(param, grad, exp_avg, exp_avg_sq, update, scalars) -> None:
    """Phase 3 for one tensor, elementwise: ``p -= lr * ratio * u`` (``lr * ratio`` a scalar)."""
    _, _, decay, step_size = scalars.unbind()
    param.copy_(param * decay - step_size * update)


def _lamb_raw_foreach(group, steps, params, grads, exp_avgs, exp_avg_sqs) -> list[Tensor]:
    """Phase 1 with multi-tensor ops; returns the raw updates (new tensors)."""
    (beta1, beta2), eps, weight_decay = group["betas"], group["eps"], group["weight_decay"]
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    factors: list[float] | float = 1.0
    if group["bias_correction"]:
        # (m / bc1) / (sqrt(v / bc2) + eps) = (sqrt(bc2) / bc1) * m / (sqrt(v) + eps * sqrt(bc2))
        roots = [math.sqrt(1 - beta2**step) for step in steps]
        torch._foreach_add_(denoms, [eps * root for root in roots])
        factors = [root / (1 - beta1**step) for root, step in zip(roots, steps, strict=True)]
    else:
        torch._foreach_add_(denoms, eps)
    if weight_decay != 0:
        updates = torch._foreach_mul(params, weight_decay)
        torch._foreach_addcdiv_(updates, exp_avgs, denoms, factors)
    else:
        updates = torch._foreach_div(exp_avgs, denoms)
        if isinstance(factors, list):
            torch._foreach_mul_(updates, factors)
    return updates


def _lamb_apply_foreach(group, steps, ratios, params, grads, exp_avgs, exp_avg_sqs, updates):
    """Phase 3 with multi-tensor ops: ``p -= lr * ratio * u``."""
    scaled_add(params, updates, ratios, -scalar(group["lr"]))


class Lamb(LayerwiseOptimizer):
    """LAMB: Adam's step, plus weight decay, scaled per tensor by ``phi(||p||) / ||step||``.

    Args:
        params: parameters or param groups.
        lr: learning rate, a float or a 1-element tensor (default 1e-3).
        betas: decay rates of the first and second moment (default (0.9, 0.999)).
        eps: added to the denominator outside the square root (default 1e-6).
        weight_decay: weight decay, added to the Adam step inside the trust ratio (default 0).
        bias_correction: divide the moments by ``1 - beta^t`` as Algorithm 2
            (default True); False: as arXiv v3 and pytorch-lamb.
        clamp_value: the weight norm's cap in the trust ratio, ``phi(z) =
            min(z, clamp_value)``; in (0, inf], inf for no cap (default 10).
        {common}
    """

    state_keys = ("exp_avg", "exp_avg_sq")
    raw_rule = staticmethod(_lamb_raw_rule)
    rule = staticmethod(_lamb_rule)
    forms = {"foreach": (_lamb_raw_foreach, _lamb_apply_foreach)}
    ratio_in_kernel = False

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        bias_correction: bool = True,
        clamp_value: float = 10.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        super().__init__(params, hparams(locals()))

    def _check_hparams(self, group) -> None:
        check_nonnegative("lr", group["lr"])
        check_betas(group["betas"])
        check_nonnegative("eps", group["eps"])
        check_nonnegative("weight_decay", group["weight_decay"])
        check_bool("bias_correction", group["bias_correction"])
        check_interval(
            "clamp_value", group["clamp_value"], 0.0, math.inf, closed_low=False, closed_high=True
        )

    def _init_state(self, param, group) -> dict[str, Any]:
        return {"exp_avg": self._zeros_like(param), "exp_avg_sq": self._zeros_like(param)}

    def _decay(self, group) -> tuple[float, float]:
        return 0.0, 1.0  # the weight decay is part of the trust-ratio update u

    def _raw_scalars(self, group):
        (beta1, beta2), eps, weight_decay = group["betas"], group["eps"], group["weight_decay"]
        if not group["bias_correction"]:
            return lambda step: (beta1, beta2, eps, 1.0, 1.0, weight_decay)
        return lambda step: (
            beta1, beta2, eps, 1 - beta1**step, math.sqrt(1 - beta2**step), weight_decay
        )  # fmt: skip

    def _ratios(self, group, weight_norms: Tensor, update_norms: Tensor) -> Tensor:
        capped = weight_norms.clamp(max=group["clamp_value"])
        valid = (weight_norms > 0) & (update_norms > 0)
        return torch.where(valid, capped / update_norms, 1.0)

    def _scalars(self, group):
        lr = scalar(group["lr"])
        return lambda step, ratio: (lr * ratio,)
