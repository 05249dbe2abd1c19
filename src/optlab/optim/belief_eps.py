r"""The belief / eps factorial: Adam, EAdam and AdaBelief as cells of one two-factor family.

AdaBelief (Zhuang et al., NeurIPS 2020, arXiv:2010.07468) changes two things
of Adam (Kingma & Ba, ICLR 2015, arXiv:1412.6980) at once: the second moment
tracks the *belief* ``(g - m)^2`` instead of ``g*g``, and eps is added to that
state inside the square root every step, so it accumulates. EAdam (Yuan &
Gao, arXiv:2011.02150) makes the second change alone. This optimizer crosses
the two factors, so each can be measured on its own; it is optlab's ablation,
not a published method.

Update rule per parameter (``t`` counts this step, ``bc1 = 1 - beta1^t``,
``bc2 = 1 - beta2^t``)::

    g = -g                                       if maximize
    p = p * (1 - wd)                             if decoupled_weight_decay and fixed_decay
    p = p * (1 - lr * wd)                        if decoupled_weight_decay (AdamW-style)
    g = g + wd * p                               otherwise, if wd != 0 (L2)
    m = beta1 * m + (1 - beta1) * g
    u = g * g                                    second_moment="grad_sq"  (Adam, EAdam)
    u = (g - m) * (g - m)                        second_moment="belief"   (AdaBelief; the new m)
    v = beta2 * v + (1 - beta2) * u
    v = v + eps                                  eps_mode="accumulated" only: stored, every step
    v_max = max(v_max, v)                        if amsgrad (over the stored v)
    denom = sqrt(v_max or v) / sqrt(bc2) + eps   eps_mode="outside"
    denom = sqrt((v_max or v) + eps) / sqrt(bc2) + eps_out      eps_mode="inside" (not stored)
    denom = sqrt(v_max or v) / sqrt(bc2) + eps_out              eps_mode="accumulated"
    p = p - lr / bc1 * m / denom

The six cells and the optimizers they equal (tests/test_belief_eps.py, 200
float64 steps to 1e-10 relative, loop, foreach and fused):

=================  ===============  ============================================
second moment      eps placement    equals
=================  ===============  ============================================
``grad_sq``        ``outside``      Adam (``torch.optim.Adam``; AdamW when decoupled)
``grad_sq``        ``inside``       (no published optimizer)
``grad_sq``        ``accumulated``  EAdam (``optlab.EAdam``)
``belief``         ``outside``      (no published optimizer)
``belief``         ``inside``       (no published optimizer)
``belief``         ``accumulated``  AdaBelief (``rectify=False``) with ``eps_out = eps``
=================  ===============  ============================================

``eps_out`` is an extra eps outside the root, for the placements that put
``eps`` inside it (default 0, so the cells differ only in the two factors);
``eps_out = eps`` with ``belief`` / ``accumulated`` gives AdaBelief exactly
(at its default 1e-16 that term is negligible, at 1e-8 it is not). With
``eps_mode="outside"`` it must be 0: ``eps`` is the outside eps there.

What eps means depends on where it goes, so one shared eps would decide a
comparison by construction. Unrolled, the accumulated eps gives the
bias-corrected ``v / bc2`` a constant floor of ``eps / (1 - beta2)`` (1000 eps
at beta2 = 0.999): at eps = 1e-8 that is 1e-5 under the root, about 3e-3 in
the denominator, which dominates a small ``(g - m)^2``. The inside eps
(not stored) is ``eps / bc2`` under the root of ``v / bc2``: the same floor at
t = 1, decaying to ``eps`` as ``bc2 -> 1``; so for large t an inside eps of
``eps / (1 - beta2)`` equals the accumulated ``eps``, and only the first few
thousand steps tell the two placements apart. An inside eps acts like the
square of an outside one (``sqrt(eps)`` is the floor of the denominator).

Rectification (``rectify=True``, the optional third factor, default off) is
RAdam's (Liu et al., ICLR 2020, arXiv:1908.03265) as AdaBelief 0.2.1 applies
it, in every cell: while ``rho_t < 5`` the step is ``lr / bc1 * m`` (SGD with
bias-corrected momentum) with ``degenerated_to_sgd``, or none; afterwards
``p = p - lr * r * m / denom`` with ``r`` from
:func:`optlab.optim.adabelief.rectified_step_size` (bc2 is inside ``r``, so
``denom`` is the one above without the ``/ sqrt(bc2)``). It is refused with
``amsgrad``, which AdaBelief's rectified step ignores.

Defaults: lr=1e-3, betas=(0.9, 0.999), eps=1e-8, the Adam cell (torch.optim
2.13's Adam defaults). The registry's cells set their own eps, each from the
optimizer it equals: ``g2-outside`` and ``belief-outside`` 1e-8 (Adam's),
``g2-accum`` 1e-8 (EAdam's paper), ``belief-accum`` 1e-16 (AdaBelief 0.2.1's),
and the inside cells 1e-16 (Adam's 1e-8 squared, the same late-step floor of
the denominator). Defaults are therefore not comparable across cells: tune eps
per cell on a log grid.

State: ``step``, ``exp_avg``, and for the second moment the reference's name,
``exp_avg_sq`` (``max_exp_avg_sq``) with ``grad_sq`` as in Adam and EAdam,
``exp_avg_var`` (``max_exp_avg_var``) with ``belief`` as in AdaBelief. So a
``torch.optim.Adam`` or ``optlab.EAdam`` checkpoint loads into the matching
cell and continues. A group switched to the other second moment starts the
other state at zero. ``maximize``, ``foreach`` and ``fused`` as in
torch.optim; fp16/bf16 parameters are updated in float32 with float32 state.
In the fused kernel both factors, eps, eps_out, the decay and rectification
are runtime scalars: the cells share one kernel per dtype (two with amsgrad).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from ._base import OptlabOptimizer, check_betas, check_bool, check_nonnegative, hparams, scalar
from ._rules import prologue, select
from .adabelief import _decay_factor, rectified_step_size

__all__ = ["EPS_MODES", "SECOND_MOMENTS", "BeliefEps", "eps_placement"]

SECOND_MOMENTS = ("grad_sq", "belief")
EPS_MODES = ("outside", "inside", "accumulated")


def eps_placement(eps_mode: str, eps: float, eps_out: float) -> tuple[float, float, float]:
    """Where eps goes, as ``(stored, under_root, outside)``: what is added to the stored ``v``
    each step, to ``v`` under the root (not stored), and to the denominator outside the root.

    One of the first two is ``eps`` (or neither, for ``outside``); adding 0.0 is exact.
    """
    if eps_mode == "outside":
        return 0.0, 0.0, eps
    if eps_mode == "inside":
        return 0.0, eps, eps_out
    return eps, 0.0, eps_out


def _step_factors(
    step: float, *, beta1: float, beta2: float, rectify: bool, degenerated_to_sgd: bool
) -> tuple[str, float, float]:
    """``(kind, step factor without lr, the root's divisor)`` for step ``step``.

    ``kind`` is ``"adaptive"`` (divide by the denominator), ``"sgd"`` (a rectified
    step before the variance is tractable) or ``"none"``.
    """
    if not rectify:
        return "adaptive", 1.0 / (1 - beta1**step), math.sqrt(1 - beta2**step)
    kind, factor = rectified_step_size(
        step, beta1=beta1, beta2=beta2, degenerated_to_sgd=degenerated_to_sgd
    )
    return kind, factor, 1.0


def _hyper(group):
    """``(lr, beta1, beta2, belief, (stored, under_root, outside), step_factors)`` of a group."""
    beta1, beta2 = map(scalar, group["betas"])
    step_factors = functools.partial(
        _step_factors,
        beta1=beta1,
        beta2=beta2,
        rectify=group["rectify"],
        degenerated_to_sgd=group["degenerated_to_sgd"],
    )
    placement = eps_placement(group["eps_mode"], group["eps"], group["eps_out"])
    belief = group["second_moment"] == "belief"
    return scalar(group["lr"]), beta1, beta2, belief, placement, step_factors


def _belief_eps_rule(
    param, grad, exp_avg, second_moment, max_second_moment, scalars, *, amsgrad
) -> None:  # fmt: skip
    """The rule for one tensor, elementwise: what the fused kernel is generated from.

    Both factors are runtime scalars, so every cell runs on this one kernel:
    ``belief`` (1.0 or 0.0) picks the residual ``g - m`` or ``g`` itself, and
    the eps placement is three additions of which at most one is nonzero
    (``stored`` to the state, ``under_root``, ``outside``; see
    :func:`eps_placement`). ``step_size`` holds ``lr`` and the bias or
    rectification factor, ``root_divisor`` is sqrt(bc2) or 1.0 with
    ``rectify``, ``adaptive`` is 0.0 for a rectified SGD step (and for no
    step, with ``step_size`` 0). The weight decay, L2 or decoupled, is the
    prologue's.
    """
    decayed, grad, own = prologue(param, grad, scalars)
    beta1, beta2, belief, stored, under_root, outside, step_size, root_divisor, adaptive = own
    new_exp_avg = exp_avg * beta1 + (1 - beta1) * grad
    residual = select(belief > 0, grad - new_exp_avg, grad)
    new_second = second_moment * beta2 + (1 - beta2) * (residual * residual) + stored
    under = new_second
    if amsgrad:
        new_max = torch.maximum(max_second_moment, new_second)
        max_second_moment.copy_(new_max)
        under = new_max
    adaptive_update = new_exp_avg / ((under + under_root).sqrt() / root_divisor + outside)
    update = select(adaptive > 0, adaptive_update, new_exp_avg)
    param.copy_(decayed - step_size * update)
    exp_avg.copy_(new_exp_avg)
    second_moment.copy_(new_second)


# The eager forms follow the operation order of the optimizers the cells equal (torch.optim.Adam's
# in-place ops, EAdam's, adabelief-pytorch's), so those cells match them to 1e-10 in float64.


def _belief_eps_loop(group, steps, params, grads, exp_avgs, seconds, max_seconds) -> None:
    lr, beta1, beta2, belief, (stored, under_root, outside), step_factors = _hyper(group)
    for i, (param, grad, exp_avg, second, step) in enumerate(
        zip(params, grads, exp_avgs, seconds, steps, strict=True)
    ):
        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        residual = grad - exp_avg if belief else grad
        second.mul_(beta2).addcmul_(residual, residual, value=1 - beta2)
        if stored:
            second.add_(stored)
        if max_seconds is not None:
            torch.maximum(max_seconds[i], second, out=max_seconds[i])
            second = max_seconds[i]

        kind, factor, root_divisor = step_factors(step)
        if kind == "adaptive":
            root = (second + under_root).sqrt_() if under_root else second.sqrt()
            denom = (root / root_divisor).add_(outside)
            param.addcdiv_(exp_avg, denom, value=-lr * factor)
        elif kind == "sgd":
            param.add_(exp_avg, alpha=-lr * factor)


def _belief_eps_foreach(group, steps, params, grads, exp_avgs, seconds, max_seconds) -> None:
    lr, beta1, beta2, belief, (stored, under_root, outside), step_factors = _hyper(group)
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
    residuals = torch._foreach_sub(grads, exp_avgs) if belief else grads
    torch._foreach_mul_(seconds, beta2)
    torch._foreach_addcmul_(seconds, residuals, residuals, 1 - beta2)
    del residuals
    if stored:
        torch._foreach_add_(seconds, stored)
    if max_seconds is not None:
        torch._foreach_maximum_(max_seconds, seconds)
        seconds = max_seconds

    by_step: dict[float, tuple[str, float, float]] = {}  # usually one step per group
    factors_of = []
    for step in steps:
        if step not in by_step:
            by_step[step] = step_factors(step)
        factors_of.append(by_step[step])
    adaptive = [i for i, (kind, _, _) in enumerate(factors_of) if kind == "adaptive"]
    sgd = [i for i, (kind, _, _) in enumerate(factors_of) if kind == "sgd"]
    if adaptive:
        adaptive_seconds = [seconds[i] for i in adaptive]
        if under_root:
            roots = torch._foreach_add(adaptive_seconds, under_root)
            torch._foreach_sqrt_(roots)
        else:
            roots = torch._foreach_sqrt(adaptive_seconds)
        torch._foreach_div_(roots, [factors_of[i][2] for i in adaptive])
        torch._foreach_add_(roots, outside)
        torch._foreach_addcdiv_(
            [params[i] for i in adaptive],
            [exp_avgs[i] for i in adaptive],
            roots,
            [-lr * factors_of[i][1] for i in adaptive],
        )
    for i in sgd:  # only the first steps of a rectified run
        params[i].add_(exp_avgs[i], alpha=-lr * factors_of[i][1])


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if not (isinstance(value, str) and value in allowed):
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


class BeliefEps(OptlabOptimizer):
    """One cell of the belief / eps factorial: Adam, EAdam, AdaBelief and the cells between.

    Args:
        params: parameters or param groups.
        lr: learning rate, a float or a 1-element tensor (default 1e-3).
        betas: decay rates of the first and second moment (default (0.9, 0.999)).
        eps: the eps of the placement ``eps_mode`` (default 1e-8, Adam's).
        weight_decay: weight decay (default 0); L2 or decoupled per ``decoupled_weight_decay``.
        amsgrad: divide by the running maximum of the stored second moment (default
            False); not with ``rectify``.
        second_moment: ``"grad_sq"`` (``g*g``, Adam) or ``"belief"`` (``(g - m)^2``,
            AdaBelief) (default ``"grad_sq"``).
        eps_mode: ``"outside"`` the root (Adam), ``"inside"`` it but not stored, or
            ``"accumulated"`` into the stored second moment every step (EAdam,
            AdaBelief) (default ``"outside"``).
        eps_out: an extra eps outside the root with ``"inside"`` / ``"accumulated"``
            (default 0; AdaBelief is ``eps_out = eps``); must be 0 with ``"outside"``.
        decoupled_weight_decay: AdamW-style decay ``p *= 1 - lr * wd`` instead of L2
            (default False).
        fixed_decay: with ``decoupled_weight_decay``, ``p *= 1 - wd``, independent of lr
            (AdaBelief's option; default False).
        rectify: RAdam's rectified step, as AdaBelief's (default False).
        degenerated_to_sgd: with ``rectify``, SGD-with-momentum steps while the variance
            is not tractable yet, instead of none (default True).
        {common}
        {state}
    """

    state_keys = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "exp_avg_var", "max_exp_avg_var")
    moment_kinds = MappingProxyType(
        {
            "exp_avg": "signed",
            "exp_avg_sq": "nonnegative",
            "max_exp_avg_sq": "nonnegative",
            "exp_avg_var": "nonnegative",
            "max_exp_avg_var": "nonnegative",
        }
    )
    fp32_for_low_precision = True
    rule = staticmethod(_belief_eps_rule)
    forms = {"loop": _belief_eps_loop, "foreach": _belief_eps_foreach}

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        second_moment: str = "grad_sq",
        eps_mode: str = "outside",
        eps_out: float = 0.0,
        decoupled_weight_decay: bool = False,
        fixed_decay: bool = False,
        rectify: bool = False,
        degenerated_to_sgd: bool = True,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        state_dtype: torch.dtype | str | None = None,
    ) -> None:
        super().__init__(params, hparams(locals()))

    def _check_hparams(self, group) -> None:
        check_nonnegative("lr", group["lr"])
        check_betas(group["betas"])
        check_nonnegative("eps", group["eps"])
        check_nonnegative("eps_out", group["eps_out"])
        check_nonnegative("weight_decay", group["weight_decay"])
        _check_choice("second_moment", group["second_moment"], SECOND_MOMENTS)
        _check_choice("eps_mode", group["eps_mode"], EPS_MODES)
        for flag in ("amsgrad", "decoupled_weight_decay", "fixed_decay", "rectify",
                     "degenerated_to_sgd"):  # fmt: skip
            check_bool(flag, group[flag])
        if group["eps_mode"] == "outside" and group["eps_out"] != 0:
            raise ValueError(
                f"eps_out must be 0 with eps_mode='outside' (eps is the outside eps there), "
                f"got {group['eps_out']!r}; add it to eps instead"
            )
        if group["fixed_decay"] and not group["decoupled_weight_decay"]:
            raise ValueError(
                "fixed_decay=True applies to decoupled decay only; pass "
                "decoupled_weight_decay=True with it, or fixed_decay=False"
            )
        if group["amsgrad"] and group["rectify"]:
            raise ValueError(
                "amsgrad=True cannot be combined with rectify=True (the rectified step, as "
                "AdaBelief's, divides by the second moment, not its maximum); pick one"
            )

    @staticmethod
    def _state_names(group) -> tuple[str, str]:
        """The second moment's state key and its maximum's, as the reference names them."""
        if group["second_moment"] == "belief":
            return "exp_avg_var", "max_exp_avg_var"
        return "exp_avg_sq", "max_exp_avg_sq"

    def _init_state(self, param, group) -> dict[str, Any]:
        second, maximum = self._state_names(group)
        state = {"exp_avg": self._zeros_like(param), second: self._zeros_like(param)}
        if group["amsgrad"]:
            state[maximum] = self._zeros_like(param)
        return state

    def _rule_state_keys(self, group) -> tuple[str, ...]:
        # The rule and forms take the second moment in one position whatever its key in
        # this group (the reference's name), so that all six cells share one kernel.
        return ("exp_avg", *self._state_names(group))

    def _decay(self, group) -> tuple[float, float]:
        # AdaBelief's options: fixed_decay (with decoupled decay only) is independent of lr.
        if not group["decoupled_weight_decay"]:
            return group["weight_decay"], 1.0
        return 0.0, _decay_factor(scalar(group["lr"]), group["weight_decay"], group["fixed_decay"])

    def _scalars(self, group):
        lr, beta1, beta2, belief, placement, step_factors = _hyper(group)
        fixed = (beta1, beta2, float(belief), *placement)

        def scalars(step: float) -> tuple[float, ...]:
            kind, factor, root_divisor = step_factors(step)
            return (*fixed, lr * factor, root_divisor, float(kind == "adaptive"))

        return scalars

    def _flags(self, group) -> dict[str, bool]:
        return {"amsgrad": group["amsgrad"]}

    @torch.no_grad()
    def effective_step_sizes(self) -> tuple[Tensor, Tensor]:
        """Per coordinate of every parameter with state: the step size of the next update
        and whether eps dominates its denominator (diagnostics; the state is not changed).

        The step size is what multiplies ``m`` in the update, ``lr / bc1 / denom`` with the
        state's own bias corrections (the rectification factor left out). eps "dominates"
        where its share of the denominator exceeds the second moment's: outside,
        ``eps > sqrt(v / bc2)``; inside, ``eps > v``; accumulated, where the stored eps,
        ``eps * (1 - beta2^t) / (1 - beta2)`` after ``t`` steps, exceeds the moving average
        of ``u`` it was added to. Returns two flat float64 and bool tensors (empty before
        the first step).
        """
        sizes: list[Tensor] = []
        dominated: list[Tensor] = []
        for group in self.param_groups:
            second, maximum = self._state_names(group)
            beta1, beta2 = (float(beta) for beta in group["betas"])
            lr, eps, eps_out = float(group["lr"]), float(group["eps"]), float(group["eps_out"])
            for param in group["params"]:
                state = self.state.get(param)
                if not state or second not in state:
                    continue
                steps = float(state["step"])
                if steps < 1:
                    continue
                bc1, bc2 = 1 - beta1**steps, 1 - beta2**steps
                v = self.decoded_state(param, maximum if group["amsgrad"] else second)
                v = torch.view_as_real(v) if v.is_complex() else v
                v = v.detach().double().flatten()
                if group["eps_mode"] == "outside":
                    root = (v / bc2).sqrt()
                    denom, eps_wins = root + eps, eps > root
                elif group["eps_mode"] == "inside":
                    denom, eps_wins = ((v + eps) / bc2).sqrt() + eps_out, eps > v
                else:
                    floor = eps * bc2 / (1 - beta2)
                    denom, eps_wins = (v / bc2).sqrt() + eps_out, floor > v - floor
                sizes.append(lr / bc1 / denom)
                dominated.append(eps_wins)
        if not sizes:
            return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.bool)
        return torch.cat(sizes), torch.cat(dominated)
