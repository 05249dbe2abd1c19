r"""AdaBelief, a drop-in for ``adabelief_pytorch.AdaBelief`` 0.2.1.

Zhuang et al., "AdaBelief Optimizer: Adapting Stepsizes by the Belief in
Observed Gradients", NeurIPS 2020, arXiv:2010.07468 (Algorithm 2); the
rectified update is RAdam's (Liu et al., "On the Variance of the Adaptive
Learning Rate and Beyond", ICLR 2020, arXiv:1908.03265).

Update rule per parameter, in the order the reference package executes it
(``t`` counts this step, ``bc1 = 1 - beta1^t``, ``bc2 = 1 - beta2^t``)::

    g = -g                                       if maximize
    p = p * (1 - wd)                             if weight_decouple and fixed_decay
    p = p * (1 - lr * wd)                        if weight_decouple (AdamW-style)
    g = g + wd * p                               otherwise, if wd != 0 (L2)
    m = beta1 * m + (1 - beta1) * g
    s = beta2 * s + (1 - beta2) * (g - m)^2      # the belief: spread around the new m
    s = s + eps                                  # stored: eps accumulates in s
    s_max = max(s_max, s)                        if amsgrad
    if not rectify:
        p = p - lr / bc1 * m / (sqrt(s_max or s) / sqrt(bc2) + eps)
    else:                                        # RAdam's rectification
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 t beta2^t / (1 - beta2^t)
        if rho_t >= 5:
            r = sqrt(bc2 (rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t)) / bc1
            p = p - lr * r * m / (sqrt(s) + eps)     # s, not s_max; bc2 is inside r
        elif degenerated_to_sgd:
            p = p - lr / bc1 * m                     # SGD with bias-corrected momentum
        # else: p is left as it is (the moments still move)

eps sits inside the square root (it is added to ``s`` every step), so
AdaBelief's eps is roughly the square of Adam's: the default 1e-16 behaves
like Adam's 1e-8. The package's advice: eps=1e-8 where SGD beats Adam
(CNNs on images), eps=1e-16 where Adam beats SGD (transformers, GANs).
With ``rectify=True`` (the default) and beta2=0.999 the first five steps are
SGD steps (rho_t < 5), and ``amsgrad`` has no effect on the update: the
rectified branch divides by ``s``, not ``s_max`` (``s_max`` is still kept,
as in the reference, so the reference's checkpoints load and continue; the
reverse fails in the package itself, whose groups need its own ``buffer``).

Defaults are the package's 0.2.1 defaults: lr=1e-3, betas=(0.9, 0.999),
eps=1e-16, weight_decay=0, amsgrad=False, weight_decouple=True,
fixed_decay=False, rectify=True, degenerated_to_sgd=True. (Its 0.0.5
defaults were eps=1e-8, weight_decouple=False, rectify=False, which is also
what ``torch_optimizer.AdaBelief`` implements.) State keys are the
package's: ``step``, ``exp_avg``, ``exp_avg_var``, ``max_exp_avg_var``.

Departures from the reference, each deliberate:

- every option (``weight_decouple``, ``fixed_decay``, ``rectify``,
  ``degenerated_to_sgd`` included) is a per-group hyper-parameter saved in
  ``state_dict``; the package keeps four of them on the instance;
- nothing is printed; ``print_change_log`` is accepted and ignored;
- ``amsgrad=True`` with ``rectify=True``, which the package silently
  ignores, gives one ``UserWarning`` saying so;
- ``p.grad`` is never modified (the package adds the L2 term into it);
- fp16 *and* bf16 parameters: the update is computed in float32 and the
  state kept in float32, so eps=1e-16 does not underflow (the package does
  this for fp16 only; its bf16 state is bf16);
- the rectification terms are computed from each step count instead of the
  package's per-group ``buffer`` cache, which returns stale values when a
  group added by ``add_param_group`` has other betas; a ``buffer`` key in a
  loaded checkpoint is dropped;
- ``maximize``, ``foreach`` and ``fused`` as in torch.optim; negative
  ``weight_decay`` is rejected; sparse gradients raise a clear error.

Checkpoints written by the package (Python-int ``step``, options missing
from the groups) load and continue identically: missing options take this
optimizer's defaults, so build it with the same arguments as the original.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from ._base import OptlabOptimizer, check_betas, check_bool, check_nonnegative, hparams, scalar
from ._rules import prologue, select

__all__ = ["AdaBelief"]

_AMSGRAD_RECTIFY_WARNING = (
    "AdaBelief: amsgrad=True has no effect on the update when rectify=True (the "
    "rectified step divides by exp_avg_var, not its running maximum); set "
    "rectify=False to use AMSGrad, or amsgrad=False to silence this warning"
)


def rectified_step_size(
    step: float, *, beta1: float, beta2: float, degenerated_to_sgd: bool
) -> tuple[str, float]:
    """RAdam's rectified step size (without ``lr``) for step ``step``, as the reference computes it.

    Returns ``("adaptive", r)`` when rho_t >= 5 (divide by ``sqrt(s) + eps``),
    ``("sgd", 1 / bc1)`` when the variance is not tractable yet and
    ``degenerated_to_sgd``, and ``("none", 0.0)`` otherwise (no step).
    """
    beta2_t = beta2**step
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * beta2_t / (1 - beta2_t)
    if rho_t >= 5:
        r = math.sqrt(
            (1 - beta2_t)
            * (rho_t - 4)
            / (rho_inf - 4)
            * (rho_t - 2)
            / rho_t
            * rho_inf
            / (rho_inf - 2)
        )
        return "adaptive", r / (1 - beta1**step)
    if degenerated_to_sgd:
        return "sgd", 1.0 / (1 - beta1**step)
    return "none", 0.0


def _decay_factor(lr: float, weight_decay: float, fixed_decay: bool) -> float:
    return 1.0 - weight_decay if fixed_decay else 1.0 - lr * weight_decay


def _adabelief_rule(
    param, grad, exp_avg, exp_avg_var, max_exp_avg_var, scalars, *, amsgrad
) -> None:  # fmt: skip
    """The rule for one tensor, elementwise: what the fused kernel is generated from.

    Every option but ``amsgrad`` (which adds a state tensor) is a runtime
    scalar, so one kernel serves them all: ``step_size`` already holds ``lr``
    and the bias or rectification factor; ``denom_scale`` is
    sqrt(1 - beta2^t), or 1.0 with ``rectify`` (dividing by 1.0 is exact);
    ``adaptive`` is 0.0 for a rectified SGD step (and for no step, with
    ``step_size`` 0) and 1.0 otherwise; ``rectified`` picks the second
    moment (the rectified step never uses AMSGrad's maximum). The weight
    decay, L2 or decoupled, is the prologue's.
    """
    decayed, grad, (beta1, beta2, eps, step_size, denom_scale, adaptive, rectified) = prologue(
        param, grad, scalars
    )
    new_exp_avg = exp_avg * beta1 + (1 - beta1) * grad
    grad_residual = grad - new_exp_avg
    new_exp_avg_var = exp_avg_var * beta2 + (1 - beta2) * (grad_residual * grad_residual) + eps
    second_moment = new_exp_avg_var
    if amsgrad:
        new_max = torch.maximum(max_exp_avg_var, new_exp_avg_var)
        max_exp_avg_var.copy_(new_max)
        second_moment = select(rectified > 0, new_exp_avg_var, new_max)
    adaptive_update = new_exp_avg / (second_moment.sqrt() / denom_scale + eps)
    update = select(adaptive > 0, adaptive_update, new_exp_avg)
    param.copy_(decayed - step_size * update)
    exp_avg.copy_(new_exp_avg)
    exp_avg_var.copy_(new_exp_avg_var)


# The eager forms follow adabelief-pytorch 0.2.1's order of operations (its oracle).


def _hyper(group) -> tuple[float, float, float, float]:
    beta1, beta2 = map(scalar, group["betas"])
    return scalar(group["lr"]), beta1, beta2, group["eps"]


def _adabelief_loop(group, steps, params, grads, exp_avgs, exp_avg_vars, max_exp_avg_vars) -> None:
    lr, beta1, beta2, eps = _hyper(group)
    for i, (param, grad, exp_avg, exp_avg_var, step) in enumerate(
        zip(params, grads, exp_avgs, exp_avg_vars, steps, strict=True)
    ):
        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        grad_residual = grad - exp_avg
        exp_avg_var.mul_(beta2).addcmul_(grad_residual, grad_residual, value=1 - beta2)
        exp_avg_var.add_(eps)
        if max_exp_avg_vars is not None:
            torch.maximum(max_exp_avg_vars[i], exp_avg_var, out=max_exp_avg_vars[i])

        if not group["rectify"]:
            second_moment = exp_avg_var if max_exp_avg_vars is None else max_exp_avg_vars[i]
            denom = (second_moment.sqrt() / math.sqrt(1 - beta2**step)).add_(eps)
            param.addcdiv_(exp_avg, denom, value=-(lr / (1 - beta1**step)))
            continue
        kind, step_size = rectified_step_size(
            step, beta1=beta1, beta2=beta2, degenerated_to_sgd=group["degenerated_to_sgd"]
        )
        if kind == "adaptive":
            param.addcdiv_(exp_avg, exp_avg_var.sqrt().add_(eps), value=-step_size * lr)
        elif kind == "sgd":
            param.add_(exp_avg, alpha=-step_size * lr)


def _adabelief_foreach(
    group, steps, params, grads, exp_avgs, exp_avg_vars, max_exp_avg_vars
) -> None:  # fmt: skip
    lr, beta1, beta2, eps = _hyper(group)
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
    grad_residuals = torch._foreach_sub(grads, exp_avgs)
    torch._foreach_mul_(exp_avg_vars, beta2)
    torch._foreach_addcmul_(exp_avg_vars, grad_residuals, grad_residuals, 1 - beta2)
    del grad_residuals
    torch._foreach_add_(exp_avg_vars, eps)
    if max_exp_avg_vars is not None:
        torch._foreach_maximum_(max_exp_avg_vars, exp_avg_vars)

    if not group["rectify"]:
        denoms = torch._foreach_sqrt(exp_avg_vars if max_exp_avg_vars is None else max_exp_avg_vars)
        torch._foreach_div_(denoms, [math.sqrt(1 - beta2**step) for step in steps])
        torch._foreach_add_(denoms, eps)
        step_sizes = [-(lr / (1 - beta1**step)) for step in steps]
        torch._foreach_addcdiv_(params, exp_avgs, denoms, step_sizes)
        return

    adaptive: list[int] = []
    adaptive_sizes: list[float] = []
    sgd: dict[float, list[int]] = {}  # step size -> tensors (one entry unless steps differ)
    by_step: dict[float, tuple[str, float]] = {}  # usually one distinct step per group
    for index, step in enumerate(steps):
        if step not in by_step:
            by_step[step] = rectified_step_size(
                step, beta1=beta1, beta2=beta2, degenerated_to_sgd=group["degenerated_to_sgd"]
            )
        kind, step_size = by_step[step]
        if kind == "adaptive":
            adaptive.append(index)
            adaptive_sizes.append(-step_size * lr)
        elif kind == "sgd":
            sgd.setdefault(-step_size * lr, []).append(index)
    if adaptive:
        denoms = torch._foreach_sqrt([exp_avg_vars[i] for i in adaptive])
        torch._foreach_add_(denoms, eps)
        torch._foreach_addcdiv_(
            [params[i] for i in adaptive], [exp_avgs[i] for i in adaptive], denoms, adaptive_sizes
        )
    for alpha, indices in sgd.items():
        torch._foreach_add_(
            [params[i] for i in indices], [exp_avgs[i] for i in indices], alpha=alpha
        )


class AdaBelief(OptlabOptimizer):
    """AdaBelief, a drop-in for ``adabelief_pytorch.AdaBelief`` 0.2.1 (same arguments and order).

    Args:
        params: parameters or param groups.
        lr: learning rate, a float or a 1-element tensor (default 1e-3).
        betas: decay rates of the gradient mean and its belief (default (0.9, 0.999)).
        eps: added to ``exp_avg_var`` every step, i.e. inside the square root
            (default 1e-16, which acts like Adam's 1e-8; use 1e-8 where SGD
            beats Adam, e.g. CNNs on images).
        weight_decay: weight decay (default 0); decoupled or L2 per ``weight_decouple``.
        amsgrad: divide by the running maximum of ``exp_avg_var``; only with
            ``rectify=False`` (default False).
        weight_decouple: AdamW-style decay ``p *= 1 - lr * wd`` instead of L2 (default True).
        fixed_decay: with ``weight_decouple``, decay ``p *= 1 - wd``, independent of lr
            (default False).
        rectify: RAdam's rectified update (default True).
        degenerated_to_sgd: with ``rectify``, take SGD-with-momentum steps while
            the variance is not yet tractable, instead of no step (default True).
        print_change_log: accepted for compatibility and ignored (nothing is printed).
        {common}
        {state}
    """

    state_keys = ("exp_avg", "exp_avg_var", "max_exp_avg_var")
    moment_kinds = MappingProxyType(
        {"exp_avg": "signed", "exp_avg_var": "nonnegative", "max_exp_avg_var": "nonnegative"}
    )
    fp32_for_low_precision = True
    rule = staticmethod(_adabelief_rule)
    forms = {"loop": _adabelief_loop, "foreach": _adabelief_foreach}

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-16,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        weight_decouple: bool = True,
        fixed_decay: bool = False,
        rectify: bool = True,
        degenerated_to_sgd: bool = True,
        print_change_log: bool = True,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        state_dtype: torch.dtype | str | None = None,
    ) -> None:
        del print_change_log  # the reference prints a change log; optlab prints nothing
        self._constructing = True
        super().__init__(params, hparams(locals()))
        self._constructing = False
        if any(_amsgrad_without_effect(group) for group in self.param_groups):
            warnings.warn(_AMSGRAD_RECTIFY_WARNING, UserWarning, stacklevel=2)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        # During __init__ the groups are checked once, together, for one warning.
        if not getattr(self, "_constructing", False) and _amsgrad_without_effect(
            self.param_groups[-1]
        ):
            warnings.warn(_AMSGRAD_RECTIFY_WARNING, UserWarning, stacklevel=2)

    def _check_hparams(self, group) -> None:
        check_nonnegative("lr", group["lr"])
        check_betas(group["betas"])
        check_nonnegative("eps", group["eps"])
        check_nonnegative("weight_decay", group["weight_decay"])
        for flag in ("amsgrad", "weight_decouple", "fixed_decay", "rectify", "degenerated_to_sgd"):
            check_bool(flag, group[flag])

    def _init_state(self, param, group) -> dict[str, Any]:
        state = {"exp_avg": self._zeros_like(param), "exp_avg_var": self._zeros_like(param)}
        if group["amsgrad"]:
            state["max_exp_avg_var"] = self._zeros_like(param)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.pop("buffer", None)  # the reference's RAdam cache; recomputed here

    def _decay(self, group) -> tuple[float, float]:
        # The package's options: decoupled unless weight_decouple=False, fixed_decay independent of lr.
        if not group["weight_decouple"]:
            return group["weight_decay"], 1.0
        return 0.0, _decay_factor(scalar(group["lr"]), group["weight_decay"], group["fixed_decay"])

    def _scalars(self, group):
        lr, beta1, beta2, eps = _hyper(group)
        rectify, degenerated_to_sgd = group["rectify"], group["degenerated_to_sgd"]

        def scalars(step: float) -> tuple[float, ...]:
            if not rectify:
                return (
                    beta1,
                    beta2,
                    eps,
                    lr / (1 - beta1**step),
                    math.sqrt(1 - beta2**step),
                    1.0,
                    0.0,
                )
            kind, factor = rectified_step_size(
                step, beta1=beta1, beta2=beta2, degenerated_to_sgd=degenerated_to_sgd
            )
            return beta1, beta2, eps, factor * lr, 1.0, float(kind == "adaptive"), 1.0

        return scalars

    def _flags(self, group) -> dict[str, bool]:
        return {"amsgrad": group["amsgrad"]}


def _amsgrad_without_effect(group: dict[str, Any]) -> bool:
    return bool(group.get("amsgrad")) and bool(group.get("rectify"))
