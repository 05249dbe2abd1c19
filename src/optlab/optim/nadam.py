r"""NAdam (and NAdamW): Adam with Nesterov momentum, a drop-in for ``torch.optim.NAdam``.

Dozat, "Incorporating Nesterov Momentum into Adam", ICLR 2016 workshop
(with its momentum schedule ``mu_t``); NAdamW's decoupled decay is AdamW's
(Loshchilov & Hutter, ICLR 2019, arXiv:1711.05101).

Update rule per parameter, as torch.optim.NAdam 2.13 computes it (``t``
counts this step, ``psi`` is ``momentum_decay``)::

    g = -g                                   if maximize
    p = p * (1 - lr * wd)                    if decoupled_weight_decay (NAdamW)
    g = g + wd * p                           otherwise, if wd != 0 (L2)
    mu_t = beta1 * (1 - 0.5 * 0.96^(t psi))  # the momentum schedule
    mu_product = mu_product * mu_t           # stored: prod of mu_1 .. mu_t
    m = lerp(m, g, 1 - beta1)
    v = beta2 * v + (1 - beta2) * g * g
    denom = sqrt(v / (1 - beta2^t)) + eps
    p = p - lr (1 - mu_t) / (1 - mu_product) * g / denom
          - lr mu_{t+1} / (1 - mu_product mu_{t+1}) * m / denom

Defaults, argument names and order, and state keys (``step``, ``exp_avg``,
``exp_avg_sq``, ``mu_product``) are torch.optim.NAdam's (lr=2e-3,
betas=(0.9, 0.999), eps=1e-8, weight_decay=0, momentum_decay=4e-3,
decoupled_weight_decay=False), so checkpoints move between torch.optim and
optlab in both directions. ``mu_product`` is, as torch's, one number per
parameter kept in a 0-dim float32 tensor on the CPU and multiplied in
float32 (so the step sizes equal torch's to the last bit of that product);
it enters the update through the step sizes, computed on the host in
float64, so the fused kernel reads and writes ``p``, ``m`` and ``v`` only.
The eager forms are derived from the elementwise rule (the equality to
torch.optim, 1e-10 relative in float64, does not need torch's order of
operations), so optlab's steps are not bitwise torch's.

Departures from torch.optim.NAdam 2.13:

- ``capturable`` / ``differentiable`` are taken as ``False`` only; ``fused``
  exists (the generated kernel); a tensor ``lr`` works everywhere; sparse
  gradients are refused with a clear error;
- fp16 and bf16 parameters: the update is computed in float32 and
  ``exp_avg`` / ``exp_avg_sq`` are kept in float32 (torch keeps them in the
  parameter's dtype);
- loading a checkpoint keeps ``mu_product`` as it was saved (a 0-dim tensor
  on the CPU, in its own dtype; a Python number becomes float32, as torch's
  ``__setstate__`` does). torch 2.13's ``load_state_dict`` casts it to the
  parameter's dtype and device, so a torch NAdam resumed from a checkpoint
  continues in float64 for float64 parameters (not bitwise its own
  uninterrupted run) and rounds it to fp16 for fp16 ones.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from itertools import chain
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
from ._rules import derived_form, prologue

__all__ = ["NAdam"]


def momentum_schedule(beta1: float, momentum_decay: float, step: float) -> float:
    """NAdam's ``mu_t = beta1 * (1 - 0.5 * 0.96^(t * momentum_decay))``."""
    return beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay)))


def _nadam_rule(param, grad, exp_avg, exp_avg_sq, scalars) -> None:
    """The rule for one tensor, elementwise: what the fused kernel is generated from.

    ``grad_step`` and ``avg_step`` are the step sizes of the gradient and of the
    momentum (``lr`` and the momentum schedule folded in, on the host).
    """
    decayed, grad, (beta1, beta2, eps, bias_correction2_sqrt, grad_step, avg_step) = prologue(
        param, grad, scalars
    )
    new_exp_avg = exp_avg + (1 - beta1) * (grad - exp_avg)
    new_exp_avg_sq = exp_avg_sq * beta2 + (1 - beta2) * (grad * grad)
    denom = new_exp_avg_sq.sqrt() / bias_correction2_sqrt + eps
    param.copy_(decayed - (grad_step * grad + avg_step * new_exp_avg) / denom)
    exp_avg.copy_(new_exp_avg)
    exp_avg_sq.copy_(new_exp_avg_sq)


class NAdam(OptlabOptimizer):
    """NAdam (NAdamW with ``decoupled_weight_decay=True``), a drop-in for ``torch.optim.NAdam``.

    Args:
        params: parameters or param groups.
        lr: learning rate, a float or a 1-element tensor (default 2e-3).
        betas: decay rates of the first and second moment (default (0.9, 0.999)).
        eps: added to the denominator outside the square root (default 1e-8).
        weight_decay: L2 penalty added to the gradient (default 0), or
            decoupled weight decay when ``decoupled_weight_decay=True``.
        momentum_decay: ``psi`` of the momentum schedule
            ``mu_t = beta1 (1 - 0.5 * 0.96^(t psi))`` (default 4e-3).
        decoupled_weight_decay: NAdamW's decay ``p *= 1 - lr * weight_decay``
            before the step (default False).
        {common}
        {state}
        {torch_off}
    """

    #: ``mu_product`` is one number per parameter (a 0-dim tensor), not a tensor the
    #: rule reads: it is advanced and turned into step sizes in :meth:`_update_group`.
    state_keys = ("exp_avg", "exp_avg_sq", "mu_product")
    moment_kinds = MappingProxyType({"exp_avg": "signed", "exp_avg_sq": "nonnegative"})
    torch_off_only = ("capturable", "differentiable")
    fp32_for_low_precision = True
    rule = staticmethod(_nadam_rule)

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum_decay: float = 4e-3,
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
        check_nonnegative("momentum_decay", group["momentum_decay"])
        check_bool("decoupled_weight_decay", group["decoupled_weight_decay"])

    def _init_state(self, param, group) -> dict[str, Any]:
        return {
            "exp_avg": self._zeros_like(param),
            "exp_avg_sq": self._zeros_like(param),
            "mu_product": torch.ones((), dtype=torch.float32),  # on the CPU, as torch's
        }

    def _scalars(self, group):
        """From ``(step, mu_product)`` (mu_product already including this step's mu_t)."""
        lr, (beta1, beta2), eps = scalar(group["lr"]), map(scalar, group["betas"]), group["eps"]
        momentum_decay = group["momentum_decay"]

        def scalars(key: tuple[float, float]) -> tuple[float, ...]:
            step, mu_product = key
            mu = momentum_schedule(beta1, momentum_decay, step)
            mu_next = momentum_schedule(beta1, momentum_decay, step + 1)
            return (
                beta1, beta2, eps, math.sqrt(1 - beta2**step),
                lr * (1 - mu) / (1 - mu_product), lr * mu_next / (1 - mu_product * mu_next),
            )  # fmt: skip

        return scalars

    def _update_group(self, group, params, grads, states, implementation) -> None:
        """The base class's dispatch (rule only, no hand-written forms) with ``mu_product``.

        Each parameter's ``mu_product`` times this step's ``mu_t``, in its float32
        (as torch's ``mu_product *= mu``), keys the step sizes: usually one scalar
        vector for the whole group. The new products replace the old ones only
        once the update has run (a kernel that fails to compile changes nothing),
        and not where GradScaler's ``found_inf`` skips the step.
        """
        beta1, momentum_decay = scalar(group["betas"][0]), group["momentum_decay"]
        steps = [state["step"].item() for state in states]
        mu_products = [state["mu_product"] for state in states]
        mus = [momentum_schedule(beta1, momentum_decay, step) for step in steps]
        new_products = torch._foreach_mul(mu_products, mus)
        keys = [(s, m.item()) for s, m in zip(steps, new_products, strict=True)]

        sign = -1.0 if group["maximize"] else 1.0
        l2, decay = self._decay(group)
        own = self._scalars(group)

        def scalars(key: tuple[float, float]) -> tuple[float, ...]:
            return (sign, l2, decay, *own(key))

        real = self._real_states(states, None, group, params)
        tensors = [params, grads, real["exp_avg"], real["exp_avg_sq"]]
        run = _fused.fused_update if implementation == "fused" else derived_form
        run(self.rule, tensors, scalars, keys)
        scaling = _fused.current_grad_scaling()  # GradScaler's route (fused, CPU)
        if scaling is not None:
            skipped = scaling[1] != 0
            new_products = [
                torch.where(skipped, old, new)
                for old, new in zip(mu_products, new_products, strict=True)
            ]
        for state, mu_product in zip(states, new_products, strict=True):
            state["mu_product"] = mu_product

    # ----- checkpoints: mu_product is a number, not a tensor of the parameter's shape -----

    def _check_loadable(self, state_dict: Mapping[str, Any]) -> dict[Any, Tensor]:
        states = state_dict.get("state") if isinstance(state_dict, Mapping) else None
        if not isinstance(states, Mapping):
            return super()._check_loadable(state_dict)
        for saved_id, saved in states.items():
            value = saved.get("mu_product") if isinstance(saved, Mapping) else None
            if value is None:
                continue
            where = f"checkpoint state 'mu_product' of parameter {saved_id}"
            if torch.is_tensor(value) and value.numel() != 1:
                raise ValueError(
                    f"{where} must be one number (torch.optim.NAdam's 0-dim tensor), got a "
                    f"tensor of shape {tuple(value.shape)}"
                )
            try:
                check_interval("mu_product", value, 0.0, 1.0, closed_high=True)
            except ValueError as error:
                raise type(error)(f"{where}: {error}") from None
        # The base class checks the rest; its shape check is for parameter-shaped state.
        numbers = {
            saved_id: {**saved, "mu_product": 1.0}
            if isinstance(saved, Mapping) and "mu_product" in saved
            else saved
            for saved_id, saved in states.items()
        }
        return super()._check_loadable({**state_dict, "state": numbers})

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a checkpoint (see :meth:`OptlabOptimizer.load_state_dict`); ``mu_product``
        stays as saved, a 0-dim tensor on the CPU (torch would cast it to the parameter's dtype)."""
        super().load_state_dict(state_dict)
        saved_ids = chain.from_iterable(group["params"] for group in state_dict["param_groups"])
        own = chain.from_iterable(group["params"] for group in self.param_groups)
        for saved_id, param in zip(saved_ids, own, strict=True):
            saved = state_dict["state"].get(saved_id, {})
            if "mu_product" not in saved:
                continue
            value = saved["mu_product"]
            if torch.is_tensor(value) and value.is_floating_point():
                value = value.detach().reshape(()).to(device="cpu", copy=True)
            else:
                value = torch.tensor(float(value), dtype=torch.float32)
            self.state[param]["mu_product"] = value
