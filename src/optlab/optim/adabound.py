r"""AdaBound and AMSBound: Adam whose per-coordinate step is clipped into bounds that close on SGD's.

Luo, Xiong, Liu & Sun, "Adaptive Gradient Methods with Dynamic Bound of
Learning Rate", ICLR 2019 (arXiv:1902.09843, Algorithms 2 and 3); a drop-in
for the authors' package ``adabound`` 0.0.5 (``AdaBound``) and for the
``AdaBoundW`` of their repository (github.com/Luolc/AdaBound, not in the
0.0.5 release).

Update rule per parameter, in the package's order (``t`` counts this step,
``bc1 = 1 - beta1^t``, ``bc2 = 1 - beta2^t``)::

    g = -g                                   if maximize
    p = p * (1 - wd)                         if weight_decouple and fixed_decay (AdaBoundW)
    p = p * (1 - lr * wd)                    if weight_decouple (AdamW-style)
    g = g + wd * p                           otherwise, if wd != 0 (L2, the package's AdaBound)
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    v_max = max(v_max, v)                    if amsbound (AMSBound)
    final = final_lr * lr / base_lr          # the bounds follow lr's schedule
    lower = final * (1 - 1 / (gamma t + 1))
    upper = final * (1 + 1 / (gamma t))
    p = p - clip(lr sqrt(bc2) / bc1 / (sqrt(v_max or v) + eps), lower, upper) * m

Early on the bounds are wide (0 and infinity at t -> 0) and the step is
Adam's; as ``t`` grows both close on ``final``, so the method turns into SGD
on the running mean ``m`` of the gradients with learning rate ``final`` (the
bias correction ``sqrt(bc2) / bc1`` sits inside the clip, so it no longer
reaches ``m`` once the bounds bind). ``gamma`` sets how fast: the bounds are
within 10% of ``final`` after ``10 / gamma`` steps.

Defaults are the package's (lr=1e-3, betas=(0.9, 0.999), final_lr=0.1,
gamma=1e-3, eps=1e-8, weight_decay=0, amsbound=False), and so are the
argument order and the state keys (``step``, ``exp_avg``, ``exp_avg_sq``,
``max_exp_avg_sq``). The eager forms are derived from the elementwise rule
(the package's order needs no hand-written form to agree to 1e-10 in float64).

``base_lr``: the package scales ``final_lr`` by ``lr / base_lr`` so that an
lr scheduler moves the bounds with the learning rate, where ``base_lr`` is
the group's lr when the optimizer was built. optlab keeps it in the param
group as ``base_lr`` (set when the group is added, or given in it), so it is
saved in ``state_dict``. Departures from the package, each a fix:

- a group added with ``add_param_group`` is stepped (the package zips the
  groups with the ``base_lr`` list made in its constructor, so later groups
  are silently never updated), with its own lr as its ``base_lr``;
- a checkpoint restores ``base_lr`` (the package takes it from the lr the
  resuming optimizer was built with, so resuming into one built with
  another lr, or after a scheduler changed it, moves the bounds); a
  checkpoint of the package, which lacks it, takes the resuming
  optimizer's, as the package would;
- ``base_lr == 0`` (built with lr=0) leaves ``final_lr`` unscaled (the
  package divides by zero), and ``gamma == 0`` means bounds [0, inf), plain
  Adam with eps outside the root (the package divides by zero);
- ``maximize``, ``foreach`` and ``fused`` as in torch.optim; ``p.grad`` is
  never changed; fp16 and bf16 parameters are updated in float32 with float32
  state; negative ``weight_decay`` is refused; the package's deprecated
  ``add(Number, Tensor)`` calls are not made.

``AdaBoundW`` is the repository's class: the same step with decoupled
decay ``p = p - wd * p`` taken from the parameter before the step and not
multiplied by lr (``weight_decouple=True, fixed_decay=True`` here);
``weight_decouple=True`` alone gives AdamW's ``p *= 1 - lr * wd``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from ._base import (
    OptlabOptimizer,
    check_betas,
    check_bool,
    check_interval,
    check_nonnegative,
    hparams,
    scalar,
)
from ._rules import prologue

__all__ = ["AdaBound", "AdaBoundW", "bounds"]


def bounds(final_lr: float, gamma: float, step: float) -> tuple[float, float]:
    """The clip of the step size at step ``step``: ``(lower, upper)`` around ``final_lr``."""
    lower = final_lr * (1 - 1 / (gamma * step + 1))
    upper = final_lr * (1 + 1 / (gamma * step)) if gamma > 0 else math.inf
    return lower, upper


def _adabound_rule(
    param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, scalars, *, amsbound
) -> None:  # fmt: skip
    """The rule for one tensor, elementwise: what the fused kernel is generated from."""
    decayed, grad, (beta1, beta2, eps, step_size, lower, upper) = prologue(param, grad, scalars)
    new_exp_avg = exp_avg * beta1 + (1 - beta1) * grad
    new_exp_avg_sq = exp_avg_sq * beta2 + (1 - beta2) * (grad * grad)
    second_moment = new_exp_avg_sq
    if amsbound:
        second_moment = torch.maximum(max_exp_avg_sq, new_exp_avg_sq)
        max_exp_avg_sq.copy_(second_moment)
    bounded = (step_size / (second_moment.sqrt() + eps)).clamp(lower, upper)
    param.copy_(decayed - bounded * new_exp_avg)
    exp_avg.copy_(new_exp_avg)
    exp_avg_sq.copy_(new_exp_avg_sq)


class AdaBound(OptlabOptimizer):
    """AdaBound (AMSBound with ``amsbound=True``), a drop-in for ``adabound.AdaBound`` 0.0.5.

    Args:
        params: parameters or param groups; a group may give its own ``base_lr``.
        lr: Adam's learning rate, a float or a 1-element tensor (default 1e-3).
        betas: decay rates of the first and second moment (default (0.9, 0.999)).
        final_lr: the SGD learning rate both bounds converge to, scaled by
            ``lr / base_lr`` (default 0.1).
        gamma: convergence speed of the bounds, in [0, 1) (default 1e-3).
        eps: added to the denominator outside the square root (default 1e-8).
        weight_decay: L2 penalty added to the gradient (default 0), or
            decoupled decay with ``weight_decouple``.
        amsbound: clip the step of the running maximum of the second moment
            (AMSBound, default False).
        weight_decouple: decoupled decay ``p *= 1 - lr * weight_decay`` before
            the step instead of L2 (default False).
        fixed_decay: with ``weight_decouple``, ``p *= 1 - weight_decay``,
            independent of lr, as the authors' ``AdaBoundW`` (default False).
        {common}
        {state}
    """

    state_keys = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    moment_kinds = MappingProxyType(
        {"exp_avg": "signed", "exp_avg_sq": "nonnegative", "max_exp_avg_sq": "nonnegative"}
    )
    fp32_for_low_precision = True
    rule = staticmethod(_adabound_rule)

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        final_lr: float = 0.1,
        gamma: float = 1e-3,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsbound: bool = False,
        *,
        weight_decouple: bool = False,
        fixed_decay: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        state_dtype: torch.dtype | str | None = None,
    ) -> None:
        super().__init__(params, hparams(locals()))

    def _check_hparams(self, group) -> None:
        check_nonnegative("lr", group["lr"])
        check_betas(group["betas"])
        check_nonnegative("final_lr", group["final_lr"])
        check_interval("gamma", group["gamma"], 0.0, 1.0)
        check_nonnegative("eps", group["eps"])
        check_nonnegative("weight_decay", group["weight_decay"])
        for flag in ("amsbound", "weight_decouple", "fixed_decay"):
            check_bool(flag, group[flag])
        if "base_lr" in group:
            check_nonnegative("base_lr", group["base_lr"])

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group.setdefault("base_lr", scalar(group["lr"]))

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a checkpoint; a group saved without ``base_lr`` (the package's) keeps this one's."""
        base_lrs = [group["base_lr"] for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, base_lr in zip(self.param_groups, base_lrs, strict=True):
            group.setdefault("base_lr", base_lr)

    def _init_state(self, param, group) -> dict[str, Any]:
        state = {"exp_avg": self._zeros_like(param), "exp_avg_sq": self._zeros_like(param)}
        if group["amsbound"]:
            state["max_exp_avg_sq"] = self._zeros_like(param)
        return state

    def _flags(self, group) -> dict[str, bool]:
        return {"amsbound": group["amsbound"]}

    def _decay(self, group) -> tuple[float, float]:
        weight_decay = group["weight_decay"]
        if weight_decay and group["weight_decouple"]:
            if group["fixed_decay"]:
                return 0.0, 1.0 - weight_decay
            return 0.0, scalar(1 - group["lr"] * weight_decay)
        return weight_decay, 1.0

    def _scalars(self, group):
        lr, (beta1, beta2), eps = scalar(group["lr"]), map(scalar, group["betas"]), group["eps"]
        base_lr = scalar(group.get("base_lr", lr))
        final_lr = group["final_lr"] * lr / base_lr if base_lr > 0 else group["final_lr"]
        gamma = group["gamma"]

        def scalars(step: float) -> tuple[float, ...]:
            step_size = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
            return (beta1, beta2, eps, step_size, *bounds(final_lr, gamma, step))

        return scalars


class AdaBoundW(AdaBound):
    """AdaBoundW: AdaBound with the decoupled decay of the authors' repository.

    Same arguments as :class:`AdaBound`; ``weight_decay`` is decoupled and not
    multiplied by lr: ``p = p - weight_decay * p`` before the step
    (``weight_decouple=True, fixed_decay=True``).

    Args:
        params: parameters or param groups.
        lr: Adam's learning rate (default 1e-3).
        betas: decay rates of the first and second moment (default (0.9, 0.999)).
        final_lr: the SGD learning rate the bounds converge to (default 0.1).
        gamma: convergence speed of the bounds (default 1e-3).
        eps: added to the denominator outside the square root (default 1e-8).
        weight_decay: decoupled decay per step, not scaled by lr (default 0).
        amsbound: AMSBound's running maximum of the second moment (default False).
        {common}
        {state}
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        final_lr: float = 0.1,
        gamma: float = 1e-3,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsbound: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        state_dtype: torch.dtype | str | None = None,
    ) -> None:
        super().__init__(
            params, lr, betas, final_lr, gamma, eps, weight_decay, amsbound,
            weight_decouple=True, fixed_decay=True, maximize=maximize, foreach=foreach,
            fused=fused, state_dtype=state_dtype,
        )  # fmt: skip
