r"""Schedule-Free AdamW: no learning-rate schedule, an average of the iterates instead.

Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky, "The Road Less
Scheduled", NeurIPS 2024 (arXiv:2405.15682); the AdamW variant of the
official package ``schedulefree`` 1.4.1 (``AdamWScheduleFree``), which is
the oracle (tests/test_schedule_free.py).

Three sequences: ``z`` takes the (Adam-normalised) gradient steps, ``x`` is a
weighted average of the ``z`` iterates (the point to evaluate and deploy),
and the gradient is taken at their interpolation ``y = (1 - beta1) z + beta1
x``. Only ``y`` (the parameter, while training) and ``z`` are stored: ``x``
is recovered from them. Per param group and step (``k`` steps taken before
this one)::

    sched     = (k + 1) / warmup_steps if k < warmup_steps else 1
    lr_t      = lr * sched                               (group["scheduled_lr"])
    lr_max    = max(lr_max, lr_t)
    weight    = (k + 1)^r * lr_max^weight_lr_power
    weight_sum += weight
    ckp1      = weight / weight_sum                       (0 while weight_sum is 0)
    bc2       = 1 - beta2^(k + 1)

and per parameter::

    g = -g                                                 if maximize
    v = beta2 * v + (1 - beta2) * g*g                      (state exp_avg_sq)
    u = g / (sqrt(v / bc2) + eps) + wd * y                 (decay taken at y)
    y = y + ckp1 * (z - y) + lr_t * (beta1 * (1 - ckp1) - 1) * u
    z = z - lr_t * u                                       (state z)

which is ``z -= lr_t u; x = (1 - ckp1) x + ckp1 z; y = (1 - beta1) z +
beta1 x`` written without ``x``.

Train and eval mode. While training, the parameters hold ``y``;
:meth:`AdamWScheduleFree.eval` switches them to ``x = y + (1 - 1/beta1) (z
- y)`` (evaluate, checkpoint or deploy there), :meth:`AdamWScheduleFree.train`
back to ``y = x + (1 - beta1) (z - x)``; each is a no-op in the mode it
switches to, and each group keeps its mode in ``group["train_mode"]``.
``step()`` in eval mode raises ``RuntimeError`` before anything changes (the
package raises a bare ``Exception``). optlab's lab calls ``eval()`` before
every evaluation and ``train()`` after (:mod:`optlab.lab.train`).

Defaults are the package's: lr=0.0025, betas=(0.9, 0.999), eps=1e-8,
weight_decay=0, warmup_steps=0, r=0, weight_lr_power=2. The counters live in
the param groups under the package's names (``k``, ``train_mode``,
``weight_sum``, ``lr_max``, ``scheduled_lr``) and the state under its keys
(``z``, ``exp_avg_sq``; no per-parameter ``step``), so checkpoints move both
ways between optlab and ``schedulefree``.

Departures from ``schedulefree.AdamWScheduleFree`` 1.4.1:

- a new optimizer starts in train mode (its parameters are ``y = x = z``
  then), so ``step()`` works without a first ``train()``; the package
  starts in eval mode and refuses a step until ``train()`` is called. Both
  refuse a step after ``eval()``; optlab checks every param group, the
  package the first. A group added in eval mode starts in eval mode.
- ``betas[0] = 0`` is refused (``eval()`` divides by it; the package
  accepts it and fails there with ``ZeroDivisionError``).
- the package divides ``p.grad`` in place (its "normalize grad in-place for
  memory efficiency"); optlab never writes into ``p.grad``.
- ``maximize`` and ``fused`` are optlab's; ``foreach`` is keyword-only.
- complex parameters are updated as real pairs (as torch.optim's Adam);
  the package squares the complex gradient. For fp16 and bf16 parameters
  the update is computed in float32, ``z`` and ``exp_avg_sq`` are kept in
  float32, and ``eval()``/``train()`` interpolate in float32.
- ``torch.amp.GradScaler`` always takes its unscaling route (it skips
  ``step()`` on inf/NaN, so the group counters never count a skipped step).

Passes over memory per step and tensor: the fused kernel reads ``y``,
``g``, ``z``, ``v`` and writes ``y``, ``z``, ``v`` once; the eager forms
(``foreach=True`` and ``False``, both the rule run per tensor) launch 20
elementwise kernels (22 with weight decay), each a pass. ``eval()`` and
``train()`` are one ``lerp_`` each (reads ``p`` and ``z``, writes ``p``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from . import _fused
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

__all__ = ["AdamWScheduleFree"]

#: The per-group counters of one step, under ``schedulefree``'s names.
_COUNTERS = ("k", "weight_sum", "lr_max", "scheduled_lr")


def _schedule_free_adamw_rule(param, grad, z, exp_avg_sq, scalars) -> None:
    """The rule for one tensor, elementwise: what the fused kernel is generated from.

    ``param`` holds ``y``; ``y_step = lr * (beta1 * (1 - ckp1) - 1)``, ``z_step = lr``.
    """
    y, grad, (beta2, bias_correction2, eps, weight_decay, ckp1, y_step, z_step) = prologue(
        param, grad, scalars
    )  # no L2 nor decoupled decay here: y is the parameter itself
    new_exp_avg_sq = exp_avg_sq * beta2 + (1 - beta2) * (grad * grad)
    denom = (new_exp_avg_sq / bias_correction2).sqrt() + eps
    normalized = grad / denom
    if isinstance(weight_decay, Tensor):  # the kernel: one for every value
        normalized = torch.where(weight_decay != 0, normalized + weight_decay * y, normalized)
    elif weight_decay != 0:  # eager: no passes for an unused option
        normalized = normalized + weight_decay * y
    param.copy_(y + ckp1 * (z - y) + y_step * normalized)
    z.copy_(z - z_step * normalized)
    exp_avg_sq.copy_(new_exp_avg_sq)


class AdamWScheduleFree(OptlabOptimizer):
    """Schedule-Free AdamW: gradients at ``y``, steps on ``z``, evaluation at their average ``x``.

    Call :meth:`eval` before evaluating or saving and :meth:`train` before
    training again (a new optimizer starts in train mode).

    Args:
        params: parameters or param groups.
        lr: learning rate, a float or a 1-element tensor (default 0.0025); no
            schedule is needed (a scheduler may still change it).
        betas: ``beta1`` interpolates ``z`` and ``x`` into ``y`` (in (0, 1)),
            ``beta2`` is the second moment's decay (default (0.9, 0.999)).
        eps: added to the denominator outside the square root (default 1e-8).
        weight_decay: added to the normalised gradient as ``wd * y`` (default 0).
        warmup_steps: steps of linear learning-rate warmup (default 0).
        r: the average weights step ``t`` by ``t^r`` (default 0).
        weight_lr_power: ... and by ``lr_max^weight_lr_power`` (default 2.0).
        {common}
        {state}
    """

    state_keys = ("z", "exp_avg_sq")
    moment_kinds = MappingProxyType({"exp_avg_sq": "nonnegative"})
    counts_steps = False
    fp32_for_low_precision = True
    rule = staticmethod(_schedule_free_adamw_rule)

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 0.0025,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        state_dtype: torch.dtype | str | None = None,
    ) -> None:
        defaults = hparams(locals())
        # The package's per-group counters, as group entries (and so in checkpoints).
        defaults.update(k=0, train_mode=True, weight_sum=0.0, lr_max=-1.0, scheduled_lr=0.0)
        super().__init__(params, defaults)

    # ----- train / eval ------------------------------------------------------

    @torch.no_grad()
    def eval(self) -> None:
        """Switch the parameters to ``x``, the average (to evaluate, save or deploy)."""
        for group in self.param_groups:
            if group["train_mode"]:
                self._interpolate(group, 1 - 1 / scalar(group["betas"][0]))
                group["train_mode"] = False

    @torch.no_grad()
    def train(self) -> None:
        """Switch the parameters back to ``y``, where the gradients are taken."""
        for group in self.param_groups:
            if not group["train_mode"]:
                self._interpolate(group, 1 - scalar(group["betas"][0]))
                group["train_mode"] = True

    def _interpolate(self, group, weight: float) -> None:
        """``p = p + weight * (z - p)`` for every parameter of ``group`` that has a ``z``."""
        for param in group["params"]:
            state = self.state.get(param)
            z = None if state is None else state.get("z")
            if z is None:
                continue
            z = z.to(param.device)
            if z.dtype != param.dtype:  # float32 state of a low-precision parameter
                param.copy_(param.to(z.dtype).lerp_(z, weight))
            else:
                param.lerp_(z, weight)

    def step(self, closure=None):
        """One step at ``y``; ``RuntimeError`` in eval mode, before anything changes."""
        for index, group in enumerate(self.param_groups):
            if not group["train_mode"]:
                raise RuntimeError(
                    f"{type(self).__name__}.step() in eval mode (param group {index}): the "
                    "parameters hold the average x, not the point y where gradients are "
                    "taken; call optimizer.train() before training steps (and "
                    "optimizer.eval() before evaluating or saving)"
                )
        return super().step(closure)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if self.param_groups and "train_mode" not in param_group:
            param_group = {**param_group, "train_mode": self.param_groups[0]["train_mode"]}
        super().add_param_group(param_group)

    # ----- the step -------------------------------------------------------------

    def _collect(self, group, group_index):
        # Called once per group and step, before any tensor of the group changes (also
        # for a group without gradients, whose counters advance as the package's do).
        saved = {key: group[key] for key in _COUNTERS}
        self.__dict__.setdefault("_counters_before", {})[id(group)] = saved
        self._advance(group)
        try:
            return super()._collect(group, group_index)
        except BaseException:
            group.update(saved)
            raise

    def _update_group(self, group, params, grads, states, implementation) -> None:
        try:
            super()._update_group(group, params, grads, states, implementation)
        except _fused.FusedCompileError:
            if group.get("fused"):  # the base class raises on: this step did not happen
                group.update(self._counters_before[id(group)])
            raise

    @staticmethod
    def _advance(group) -> None:
        """The group's counters for this step, as ``schedulefree`` computes them."""
        k, warmup_steps = group["k"], group["warmup_steps"]
        sched = (k + 1) / warmup_steps if k < warmup_steps else 1.0
        lr = scalar(group["lr"]) * sched
        group["scheduled_lr"] = lr
        group["lr_max"] = max(lr, group["lr_max"])
        group["weight_sum"] = group["weight_sum"] + _weight(k + 1, group)
        group["k"] = k + 1

    def _scalars(self, group):
        beta1, beta2 = map(scalar, group["betas"])
        k, lr, weight_sum = group["k"], group["scheduled_lr"], group["weight_sum"]
        ckp1 = _weight(k, group) / weight_sum if weight_sum != 0 else 0.0
        values = (
            beta2, 1 - beta2**k, group["eps"], group["weight_decay"], ckp1,
            lr * (beta1 * (1 - ckp1) - 1), lr,
        )  # fmt: skip
        return lambda step: values

    def _decay(self, group) -> tuple[float, float]:
        return 0.0, 1.0  # the weight decay is the rule's own (at y, after normalising)

    @property
    def _step_supports_amp_scaling(self) -> bool:
        # A step the kernel skipped would still advance the group's counters.
        return False

    # ----- state and checks ---------------------------------------------------

    def _init_state(self, param, group) -> dict[str, Any]:
        z = torch.empty_like(
            param, dtype=self._state_dtype(param), memory_format=torch.preserve_format
        )
        return {"z": z.copy_(param), "exp_avg_sq": self._zeros_like(param)}

    def _required_state_keys(self, group) -> set[str]:
        return set(self.state_keys)

    def _check_hparams(self, group) -> None:
        check_nonnegative("lr", group["lr"])
        check_betas(group["betas"])
        if scalar(group["betas"][0]) == 0:
            raise ValueError(
                f"betas[0] must be in (0, 1), got {group['betas'][0]!r} (eval() recovers the "
                "average x from y and z by dividing by betas[0])"
            )
        for name in ("eps", "weight_decay", "warmup_steps", "weight_lr_power", "weight_sum"):
            check_nonnegative(name, group[name])
        check_interval("r", group["r"], -math.inf, math.inf, closed_low=False)
        for name in ("lr_max", "scheduled_lr"):
            check_interval(name, group[name], -math.inf, math.inf, closed_low=False)
        check_bool("train_mode", group["train_mode"])
        k = group["k"]
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"k (the group's step count) must be an integer >= 0, got {k!r}")


def _weight(count: int, group) -> float:
    """The average's weight of step number ``count`` (the package's ``weight``)."""
    return (count ** group["r"]) * (group["lr_max"] ** group["weight_lr_power"])
