r"""LARS: momentum SGD with a learning rate scaled per tensor by the ratio of its norms.

You, Gitman & Ginsburg, "Large Batch Training of Convolutional Networks",
arXiv:1708.03888 (2017), Algorithm 1 with the trust coefficient of its
equation for the local learning rate.

Update rule per parameter tensor ("layer"), ``||.||`` the 2-norm of the whole
tensor::

    g = -g                                         if maximize
    ratio = eta * ||p|| / (||g|| + wd * ||p||)     1 where ||p|| = 0 or the denominator is 0
    ratio = min(ratio / lr, 1)                     if trust_clip (LARC), where ratio was computed
    ratio = 1                                      if not layer_adaptation (plain momentum SGD)
    u = ratio * (g + wd * p)
    b = momentum * b + (1 - dampening) * u         if momentum != 0 (b starts at 0)
    u = u + momentum * b  if nesterov,  b  otherwise
    p = p - lr * u

The paper writes the momentum with the learning rate inside
(``v = m v + lr * ratio * (g + wd p)``, ``p = p - v``); optlab keeps the
buffer ``lr``-free as torch.optim.SGD does, which is the same step while
``lr`` is constant and differs when a schedule changes it (the buffer then
does not carry the old learning rates). ``eta`` is the paper's trust
coefficient, ``wd`` its weight decay ``beta``, inside the trust ratio.

Defaults: lr=1e-3, momentum=0.9, trust_coefficient=1e-3 (pytorch_optimizer
4.1.0's, whose LARS is the cross-check; the paper's eta is 0.001, with base
learning rates of 2 to 29 for batches of 8K-32K: LARS wants a much larger
``lr`` than SGD), dampening=0, weight_decay=0, nesterov=False,
trust_clip=False, layer_adaptation=True. State: ``momentum_buffer`` (torch
SGD's name), only with momentum, starting at zero; no step count.

Where public implementations disagree (optlab follows the paper's formula,
with the zero-norm guard of pytorch_optimizer):

- pytorch_optimizer 4.1.0 ``LARS`` leaves tensors with ``ndim <= 1``
  (biases, norm weights) out of the trust ratio *and* of weight decay; optlab
  scales every tensor as the paper does, and a param group with
  ``layer_adaptation=False, weight_decay=0`` gives pytorch_optimizer's
  treatment of the tensors put in it (the test checks exactly that). Its
  ``maximize`` negates ``p.grad`` in place and its step writes the scaled
  update into ``p.grad``; optlab never writes a gradient.
- torch_optimizer 0.3.0 ``LARS`` scales only when ``weight_decay != 0``, adds
  ``eps=1e-8`` to the denominator and uses a ratio of 1 when ``||g|| = 0``
  (optlab: ``eta / wd`` there, the formula's value); timm's ``Lars`` and
  NVIDIA apex's ``LARC`` are alike, and LARC's ``clip`` is optlab's
  ``trust_clip`` (the ratio read as a learning rate and capped at ``lr``).
- torch.optim.SGD and torch_optimizer start the buffer as a copy of the
  first update; optlab starts it at zero as the paper (``v = 0``) and
  pytorch_optimizer do, which differs only with ``dampening != 0``.

Passes over memory per step: one read or one write of a parameter-sized
tensor counts 1; fp32, momentum on; counted with a dispatch-mode counter
(tests/test_lars.py asserts these numbers), a fused kernel counted as one
read of each input and one write of each output; "timed" is the step time
over the time of one pass, 16 tensors of 1M, one thread, on the 2-core CPU
shared with other work (two runs, load 3 and 9)::

    path                      passes (wd 0 / wd > 0 / Nesterov)   timed
    fused                     7 / 7 / 7   (norms 2, kernel 5)     5.7-7.2
    foreach (hand-written)    10 / 13 / 16                        13-14
    loop (rule run eagerly)   31 / 36 / 36                        30-48
    elementwise minimum       5 (SGD momentum: read p, g, b; write p, b)

The norms cost one read of ``p`` and of ``g`` wherever they are computed. The
fused path computes them with ``torch._foreach_norm``, reads the ratios to
the host once per param group (a device sync on CUDA) and runs the kernel
generated from :func:`_lars_rule` with each tensor's ratio in its scalar
vector: one kernel call per tensor, since tensors whose ratios differ
cannot share a bucket. Each call is one parallel region; on a 2-core CPU
shared with other work a region can wait milliseconds for a descheduled
thread, so many small tensors step faster with foreach there. The foreach
path never syncs: the ratios stay 0-dim tensors (``torch._foreach_addcmul_``
with them). With ``layer_adaptation=False`` no norm is computed and the
fused path buckets tensors as SGD's does. The loop path runs the rule
eagerly (a temporary per operation) and reads the ratios to the host.

The per-tensor-norm extension of the base class that LARS, LAMB and Fromage
share (:class:`LayerwiseOptimizer`) is defined here; see its docstring.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from . import _fused
from ._base import (
    OptlabOptimizer,
    check_bool,
    check_interval,
    check_nonnegative,
    group_by_device_and_dtype,
    hparams,
    scalar,
)
from ._rules import derived_form, prepare_foreach, prologue, select

__all__ = ["LARS", "LayerwiseOptimizer"]


# --------------------------------------------------------------------------
# The per-tensor-norm extension of OptlabOptimizer (LARS, LAMB, Fromage).
# --------------------------------------------------------------------------


@functools.cache
def _dtensor_type() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch build without torch.distributed
        return None
    return DTensor


def _dtensors(tensors: Sequence[Tensor]) -> list[Tensor | None] | None:
    """Each tensor if it is a DTensor, else ``None``; ``None`` for a list of plain tensors."""
    if all(type(t) in _fused._PLAIN_TYPES for t in tensors):
        return None
    dtensor = _dtensor_type()
    if dtensor is None:
        return None
    found = [t if isinstance(t, dtensor) else None for t in tensors]
    return found if any(t is not None for t in found) else None


def _local(tensors: list[Tensor] | None, specs: list[Tensor | None] | None) -> list[Tensor] | None:
    """The local shards of DTensors (views: in-place updates reach the DTensor)."""
    if tensors is None or specs is None:
        return tensors
    dtensor = _dtensor_type()
    return [t.to_local() if isinstance(t, dtensor) else t for t in tensors]


def tensor_norms(
    tensors: Sequence[Tensor], specs: Sequence[Tensor | None] | None, *, foreach: bool
) -> list[Tensor]:
    """The 2-norm of each whole tensor, as plain 0-dim tensors.

    ``specs[i]``, where not ``None``, is a DTensor whose layout ``tensors[i]``
    (a local shard) has: its norm is then reduced across the ranks that hold
    the other shards (one all-reduce per tensor), so FSDP2 steps equal
    unsharded ones.
    """
    if specs is not None:
        dtensor = _dtensor_type()
        tensors = [
            t
            if spec is None
            else dtensor.from_local(
                t,
                spec.device_mesh,
                spec.placements,
                run_check=False,
                shape=spec.shape,
                stride=spec.stride(),
            )
            for t, spec in zip(tensors, specs, strict=True)
        ]
    if foreach:
        norms = list(torch._foreach_norm(list(tensors)))
    else:
        norms = [torch.linalg.vector_norm(t) for t in tensors]
    if specs is not None:
        norms = [
            n if spec is None else n.full_tensor() for n, spec in zip(norms, specs, strict=True)
        ]
    return norms


def _stack(norms: list[Tensor]) -> Tensor:
    """0-dim norms as one vector (on the host where they live on several devices)."""
    device = norms[0].device
    if any(n.device != device for n in norms):
        norms = [n.cpu() for n in norms]
    return torch.stack(norms)


def scaled_add(targets: list[Tensor], sources: list[Tensor], ratios, value: float) -> None:
    """``targets[i] += value * ratios[i] * sources[i]`` (``ratios`` ``None``: all 1)."""
    if ratios is None:
        torch._foreach_add_(targets, sources, alpha=value)
    else:
        torch._foreach_addcmul_(targets, sources, ratios, value=value)


class LayerwiseOptimizer(OptlabOptimizer):
    """An optlab optimizer whose update is scaled per tensor by a ratio of norms.

    The base class's rule is elementwise; an update scaled by the norm of a
    whole tensor is not. Its step is split into phases, each of which is
    elementwise or a per-tensor reduction:

    1. optionally :attr:`raw_rule` (elementwise): updates the state and writes
       the raw update into a scratch tensor (LAMB: the Adam step plus the
       weight-decay term); without it the raw update is the gradient;
    2. the norms ``||p||`` and ``||raw update||`` per tensor
       (``torch._foreach_norm``; whole-tensor norms for DTensor shards) and
       from them the per-tensor ratios, :meth:`_ratios`, vectorised over the
       group (no host sync);
    3. :attr:`rule` (elementwise): the apply, with the tensor's ratio in its
       scalar vector: ``rule(param, grad, *states[, update], scalars)``, the
       scalars ``(sign, l2, decay, *self._scalars(group)(step, ratio))``.

    The fused path generates a kernel from each elementwise phase
    (:func:`optlab.optim._fused.fused_update`): phase 1 buckets tensors as
    any rule; phase 3 gets each tensor's ratio as its scalar-vector key (read
    to the host once per param group), hence one kernel call per tensor, or,
    with :attr:`ratio_in_kernel` false, runs the hand-written foreach apply.
    The loop path runs the same rules eagerly
    (:func:`optlab.optim._rules.derived_form`). A hand-written
    ``forms["foreach"]`` is ``apply`` or ``(raw, apply)``:
    ``raw(group, steps, params, grads, *states) -> updates`` and
    ``apply(group, steps, ratios, params, grads, *states[, updates])``, with
    ``ratios`` a list of 0-dim tensors (``None`` where :meth:`_adapts` is
    false) and grads with ``maximize`` and L2 applied as for the base's
    forms (an ``apply`` after a ``raw`` must not read them: they went into
    phase 1); it never syncs with the host.

    ``maximize`` and L2 are applied once, before phase 1 (or before phase 3
    without a phase 1), after the norms of phase 2 are taken from the raw
    gradients; decoupled decay (``_decay``'s factor) is not supported: the
    weight decay of these algorithms lives inside their trust ratio. The
    ratios depend on the gradients as given, so ``torch.amp.GradScaler``
    unscales them before the step (:attr:`_step_supports_amp_scaling` is
    false): a scaled gradient's norm would change the ratio.
    """

    #: Phase 1: ``raw_rule(param, grad, *states, update, scalars, **flags)``, or ``None``.
    raw_rule: ClassVar[Callable[..., None] | None] = None
    #: Whether the fused path runs phase 3 as the kernel generated from :attr:`rule`,
    #: each tensor's ratio its scalar-vector key (one kernel call per tensor, the ratios
    #: read to the host once per group); else as the hand-written foreach apply with
    #: 0-dim ratios, where that moves the same bytes (LAMB's ``p -= lr * ratio * u``).
    #: With a :attr:`raw_rule` it must be False: a second kernel compiled after phase 1
    #: has written the state could fail half-way through a step.
    ratio_in_kernel: ClassVar[bool] = True
    fp32_for_low_precision = True

    @property
    def _step_supports_amp_scaling(self) -> bool:
        return False

    def _adapts(self, group: Mapping[str, Any]) -> bool:
        """Whether ``group``'s tensors get a trust ratio (else every ratio is 1, no norms)."""
        return True

    def _ratios(
        self, group: Mapping[str, Any], weight_norms: Tensor, update_norms: Tensor
    ) -> Tensor:
        """The per-tensor ratios from the norms of the parameters and the raw updates (1-D)."""
        raise NotImplementedError

    def _raw_scalars(self, group: Mapping[str, Any]) -> Callable[[Any], Sequence[float]]:
        """From a step count to :attr:`raw_rule`'s own scalars."""
        raise NotImplementedError

    def _trust_ratios(self, group, params, sources, specs, *, foreach: bool) -> Tensor | None:
        if not self._adapts(group):
            return None
        both = None if specs is None else list(specs) * 2  # a raw update is laid out as its param
        norms = tensor_norms(list(params) + list(sources), both, foreach=foreach)
        count = len(params)
        return self._ratios(group, _stack(norms[:count]), _stack(norms[count:]))

    def _update_group(self, group, params, grads, states, implementation) -> None:
        used = self._group_state_keys(group)
        real = self._real_states(states)
        state_lists = [real[key] if key in used else None for key in self.state_keys]
        steps = [state["step"].item() for state in states] if self.counts_steps else None
        # FSDP2: norms of whole tensors, the elementwise phases on the local shards.
        specs = _dtensors(params)
        params, grads = _local(params, specs), _local(grads, specs)
        state_lists = [_local(tensors, specs) for tensors in state_lists]
        if implementation in self.forms:
            self._form_step(
                group, params, grads, state_lists, steps, specs, self.forms[implementation]
            )
        else:
            self._rule_step(group, params, grads, state_lists, steps, specs, implementation)

    def _form_step(self, group, params, grads, state_lists, steps, specs, form) -> None:
        """Phases 1-3 from a hand-written foreach form, one device and dtype at a time."""
        raw, apply = form if isinstance(form, tuple) else (None, form)
        sign = -1.0 if group["maximize"] else 1.0
        l2, decay = self._decay(group)
        for run_params, run_grads, run_steps, run_specs, *run_states in group_by_device_and_dtype(
            params, grads, steps, specs, *state_lists
        ):
            ratios = None
            if raw is None:  # the ratios of the gradients as they are
                ratios = self._trust_ratios(group, run_params, run_grads, run_specs, foreach=True)
            run_grads = prepare_foreach(run_params, run_grads, sign=sign, l2=l2, decay=decay)
            updates = []
            if raw is not None:
                updates = [raw(group, run_steps, run_params, run_grads, *run_states)]
                ratios = self._trust_ratios(group, run_params, updates[0], run_specs, foreach=True)
            ratio_list = None if ratios is None else list(ratios.unbind())
            apply(group, run_steps, ratio_list, run_params, run_grads, *run_states, *updates)

    def _rule_step(self, group, params, grads, state_lists, steps, specs, implementation) -> None:
        """Phases 1-3 from the rules: the fused kernels, or the rules run eagerly (loop)."""
        fused = implementation == "fused"
        run = _fused.fused_update if fused else derived_form
        sign = -1.0 if group["maximize"] else 1.0
        l2, decay = self._decay(group)
        flags = self._flags(group)
        count = len(params)
        updates = None
        if self.raw_rule is not None:
            updates = [torch.empty_like(p) for p in params]
            raw = self._raw_scalars(group)

            def raw_scalars(step: Any) -> tuple[float, ...]:
                return (sign, l2, 1.0, *raw(step))

            run(self.raw_rule, [params, grads, *state_lists, updates], raw_scalars, steps, **flags)
            l2 = 0.0  # applied once, in phase 1
        sources = grads if updates is None else updates
        ratios = self._trust_ratios(group, params, sources, specs, foreach=fused)
        tensors = [params, grads, *state_lists] + ([] if updates is None else [updates])
        if fused and not self.ratio_in_kernel:  # phase 3: the foreach apply, 0-dim ratios
            _, apply = self.forms["foreach"]
            ratio_list = None if ratios is None else list(ratios.unbind())
            runs = group_by_device_and_dtype(params, grads, steps, ratio_list, *tensors[2:])
            for run_params, run_grads, run_steps, run_ratios, *run_states in runs:
                apply(group, run_steps, run_ratios, run_params, run_grads, *run_states)
            return
        # The one host read of the step: each tensor's ratio is its scalar-vector key.
        values = [None] * count if ratios is None else ratios.tolist()
        keys = list(zip([None] * count if steps is None else steps, values, strict=True))
        own = self._scalars(group)

        def scalars(key: Any) -> tuple[float, ...]:
            return (sign, l2, decay, *own(*key))

        run(self.rule, tensors, scalars, keys, **flags)


# --------------------------------------------------------------------------
# LARS.
# --------------------------------------------------------------------------


def _lars_rule(param, grad, momentum_buffer, scalars, *, momentum) -> None:
    """Phase 3 for one tensor, elementwise (the trust ratio is one of its scalars)."""
    decayed, grad, (lr, ratio, momentum_value, dampening, nesterov) = prologue(param, grad, scalars)
    update = ratio * grad
    if momentum:
        buf = momentum_buffer * momentum_value + (1 - dampening) * update
        momentum_buffer.copy_(buf)
        update = select(nesterov != 0, update + momentum_value * buf, buf)
    param.copy_(decayed - lr * update)


def _lars_foreach(group, steps, ratios, params, grads, momentum_buffers) -> None:
    """Phase 3 with multi-tensor ops; ``grads`` hold ``g + wd * p`` (maximize applied)."""
    lr, momentum = scalar(group["lr"]), group["momentum"]
    if momentum == 0:
        scaled_add(params, grads, ratios, -lr)
        return
    torch._foreach_mul_(momentum_buffers, momentum)
    scaled_add(momentum_buffers, grads, ratios, 1 - group["dampening"])
    if group["nesterov"]:
        scaled_add(params, grads, ratios, -lr)
        torch._foreach_add_(params, momentum_buffers, alpha=-lr * momentum)
    else:
        torch._foreach_add_(params, momentum_buffers, alpha=-lr)


class LARS(LayerwiseOptimizer):
    """LARS: momentum SGD whose step is scaled per tensor by ``eta * ||p|| / (||g|| + wd * ||p||)``.

    Args:
        params: parameters or param groups.
        lr: learning rate, a float or a 1-element tensor (default 1e-3; LARS
            usually wants a far larger one, see the module docstring).
        momentum: momentum factor, in [0, 1) (default 0.9).
        dampening: scales the update added to the buffer by ``1 - dampening``
            (default 0); in [0, 1].
        weight_decay: weight decay, added to the gradient inside the trust
            ratio (default 0).
        nesterov: Nesterov momentum; needs ``momentum > 0`` and ``dampening == 0``.
        trust_coefficient: the paper's ``eta`` (default 1e-3).
        trust_clip: cap the trust ratio at ``lr``, read as a learning rate
            (NVIDIA apex LARC's ``clip``; default False).
        layer_adaptation: scale by the trust ratio (default True); a group
            with False takes plain momentum-SGD steps (for biases and norm
            weights, say).
        {common}
    """

    state_keys = ("momentum_buffer",)
    counts_steps = False
    rule = staticmethod(_lars_rule)
    forms = {"foreach": _lars_foreach}

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-3,
        momentum: float = 0.9,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        trust_coefficient: float = 1e-3,
        trust_clip: bool = False,
        layer_adaptation: bool = True,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        super().__init__(params, hparams(locals()))

    def _check_hparams(self, group) -> None:
        check_nonnegative("lr", group["lr"])
        check_interval("momentum", group["momentum"], 0.0, 1.0)
        check_interval("dampening", group["dampening"], 0.0, 1.0, closed_high=True)
        check_nonnegative("weight_decay", group["weight_decay"])
        check_nonnegative("trust_coefficient", group["trust_coefficient"])
        for name in ("nesterov", "trust_clip", "layer_adaptation"):
            check_bool(name, group[name])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                "nesterov=True requires momentum > 0 and dampening == 0, got "
                f"momentum={group['momentum']!r} and dampening={group['dampening']!r}"
            )

    def _keeps_state(self, group) -> bool:
        return group["momentum"] != 0

    def _init_state(self, param, group) -> dict[str, Any]:
        if group["momentum"] == 0:
            return {}
        return {"momentum_buffer": self._zeros_like(param)}

    def _flags(self, group) -> dict[str, bool]:
        return {"momentum": group["momentum"] != 0}

    def _adapts(self, group) -> bool:
        return group["layer_adaptation"]

    def _ratios(self, group, weight_norms: Tensor, update_norms: Tensor) -> Tensor:
        weight_decay = group["weight_decay"]
        denominator = update_norms + weight_decay * weight_norms
        ratios = group["trust_coefficient"] * weight_norms / denominator
        if group["trust_clip"]:
            lr = scalar(group["lr"])
            ratios = (ratios / lr).clamp(max=1.0) if lr > 0 else torch.ones_like(ratios)
        return torch.where((weight_norms > 0) & (denominator > 0), ratios, 1.0)

    def _scalars(self, group):
        lr, momentum, dampening = scalar(group["lr"]), group["momentum"], group["dampening"]
        nesterov = float(group["nesterov"])
        return lambda step, ratio: (
            lr,
            1.0 if ratio is None else ratio,
            momentum,
            dampening,
            nesterov,
        )
