"""What every optlab optimizer shares, written once.

An optlab optimizer is a thin :class:`torch.optim.Optimizer` shell over a pure
update rule (a function over lists of tensors, one module per algorithm).
This module holds everything the shells have in common:

- hyper-parameter validation with one message format
  (``betas[1] must be in [0, 1), got 1.0``);
- lazy state creation and step counting (``state["step"]`` is a 0-dim
  float32 tensor, as in torch.optim, so checkpoints move both ways);
- the low-precision policy: optimizers that opt in keep their state in
  float32 and compute the update in float32 for fp16/bf16 parameters;
- complex parameters, viewed as real pairs exactly as torch.optim does;
- choosing the per-tensor loop, the multi-tensor (``torch._foreach_*``) or
  the fused implementation from the ``foreach`` / ``fused`` flags;
- loading checkpoints: checked before anything changes (a rejected
  ``load_state_dict`` leaves the optimizer as it was), older and foreign
  formats (a Python-int ``step``, options missing from the groups) filled in.

A subclass holds its maths and little else: its constructor (the signature
users see, passed on with :func:`hparams`), ``_check_hparams`` validating one
group, ``_init_state``, its elementwise ``rule`` with the ``_scalars`` it
takes per step, and, where a reference's order of operations must be
followed, hand-written per-tensor and multi-tensor ``forms``. The base class
dispatches between them (:meth:`OptlabOptimizer._update_group`) and applies
``maximize`` and weight decay once for all (:mod:`optlab.optim._rules`); see
:mod:`optlab.optim.yogi` for a complete module.
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
import operator
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import chain, repeat
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import _foreach_supported_types as _torch_foreach_supported_types

from . import _fused, _lowp
from ._rules import derived_form, prepare_foreach, prepare_loop

__all__ = [
    "OptlabOptimizer",
    "ValueAndIndexError",
    "ValueAndRuntimeError",
    "ValueAndTypeError",
    "as_real",
    "check_betas",
    "check_bool",
    "check_interval",
    "check_nonnegative",
    "group_by_device_and_dtype",
    "hparams",
    "scalar",
]

# --------------------------------------------------------------------------
# Validation: one message format for every optimizer.
# --------------------------------------------------------------------------

# Every optlab refusal of a bad argument is a ValueError. Where torch.optim
# 2.13 raises another type for the same input (a TypeError for a string lr,
# an IndexError for a one-element betas, a RuntimeError for foreach=True with
# fused=True), the error is that type as well, so ``except`` clauses written
# for torch.optim catch it.


class ValueAndTypeError(ValueError, TypeError):
    """An argument of the wrong type (torch.optim raises ``TypeError`` for it)."""


class ValueAndIndexError(ValueError, IndexError):
    """A sequence argument with too few entries (torch.optim raises ``IndexError``)."""


class ValueAndRuntimeError(ValueError, RuntimeError):
    """Options that cannot be combined, or a tensor option of the wrong size
    (torch.optim raises ``RuntimeError``)."""


def _as_number(name: str, value: Any) -> float:
    """Return ``value`` as a float, or raise naming what was given."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueAndRuntimeError(
                f"{name} must be a number or a 1-element tensor, got a tensor of shape "
                f"{tuple(value.shape)}"
            )
        return float(value.detach().cpu().item())
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueAndTypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    return float(value)


def check_nonnegative(name: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite number >= 0."""
    number = _as_number(name, value)
    if not (number >= 0.0) or math.isinf(number):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def check_interval(
    name: str,
    value: Any,
    low: float,
    high: float,
    *,
    closed_low: bool = True,
    closed_high: bool = False,
) -> None:
    """Raise ``ValueError`` unless ``value`` lies in the given interval."""
    number = _as_number(name, value)
    above = number >= low if closed_low else number > low
    below = number <= high if closed_high else number < high
    if not (above and below):
        interval = f"{'[' if closed_low else '('}{low:g}, {high:g}{']' if closed_high else ')'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")


def check_betas(betas: Any, name: str = "betas") -> None:
    """Raise unless ``betas`` is a pair with each entry in [0, 1)."""
    if not isinstance(betas, Sequence) or isinstance(betas, str):
        raise ValueAndTypeError(f"{name} must be a pair (beta1, beta2), got {betas!r}")
    if len(betas) != 2:
        short = ValueAndIndexError if len(betas) < 2 else ValueError
        raise short(f"{name} must be a pair (beta1, beta2), got {betas!r}")
    for index, beta in enumerate(betas):
        check_interval(f"{name}[{index}]", beta, 0.0, 1.0)


def check_bool(name: str, value: Any) -> None:
    """Raise unless ``value`` is a bool."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def _check_optional_bool(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{name} must be None, True or False, got {value!r}")


# --------------------------------------------------------------------------
# Small helpers the update rules use.
# --------------------------------------------------------------------------


def as_real(tensor: Tensor) -> Tensor:
    """A real view of a complex tensor (last dim 2), the tensor itself otherwise."""
    return torch.view_as_real(tensor) if torch.is_complex(tensor) else tensor


def scalar(value: float | Tensor) -> float:
    """A Python float from a float or a 1-element tensor (e.g. a tensor ``lr``)."""
    return float(value.item()) if isinstance(value, Tensor) else float(value)


def group_by_device_and_dtype(
    *tensorlists: Sequence[Tensor] | None,
) -> list[list[list[Tensor] | None]]:
    """Split parallel tensor lists into runs whose first list shares device and dtype.

    ``torch._foreach_*`` ops need one device and dtype per call. Lists given as
    ``None`` (an unused state such as ``max_exp_avg_sqs`` without amsgrad) stay
    ``None`` in every run. Order within a run follows the input order.
    """
    first = tensorlists[0]
    if first and _fused.one_device_and_dtype(first):  # the usual case: one run
        return [[None if tensors is None else list(tensors) for tensors in tensorlists]]
    runs: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for index, tensor in enumerate(first or ()):
        runs.setdefault((tensor.device, tensor.dtype), []).append(index)
    return [
        [None if tensors is None else [tensors[i] for i in indices] for tensors in tensorlists]
        for indices in runs.values()
    ]


# torch.optim's own list, not a copy: DTensor (FSDP2 parameters) appends itself
# to it when torch.distributed.tensor is imported, and its foreach ops work.
_FOREACH_TYPES = _torch_foreach_supported_types


@functools.cache
def _other_optimizers_hparams() -> frozenset[str]:
    """Every hyper-parameter some registered optimizer takes.

    A checkpoint's group holding one of these that this optimizer does not take
    (``amsgrad`` loaded into Yogi, say) comes from another optimizer, even when
    the state keys happen to match. Other extra keys are kept, as torch does:
    schedulers store ``initial_lr`` and friends in the groups, and torch's own
    ``capturable`` / ``differentiable`` flags mean nothing here.
    """
    from .registry import get_spec, list_optimizers

    names = set()
    for optimizer in list_optimizers():
        names.update(get_spec(optimizer).defaults())
    return frozenset(names - {"capturable", "differentiable"})


#: What the torch.optim options optlab takes only switched off would do.
_UNSUPPORTED = {
    "capturable": "capturable=True keeps the step on the device for CUDA-graph capture",
    "differentiable": "differentiable=True lets autograd run through the step",
}

#: The state every parameter of a group that keeps none is given during a step:
#: read-only, so a rule that wrote into it would fail instead of storing nothing.
_NO_STATE: Mapping[str, Any] = MappingProxyType({})


def _on_cpu_plain(param: Tensor) -> bool:
    return type(param) in _fused._PLAIN_TYPES and param.is_cpu


_is_meta = operator.attrgetter("is_meta")
_grad_of = operator.attrgetter("grad")
_dtype_of = operator.attrgetter("dtype")
_is_sparse = operator.attrgetter("is_sparse")
_LOW_PRECISION = (torch.float16, torch.bfloat16)
_COMPLEX = frozenset((torch.complex32, torch.complex64, torch.complex128))

#: Groups with at least this many stepped parameters count steps in one vector.
_SHARED_STEPS_MIN = 8


# --------------------------------------------------------------------------
# What every constructor and docstring says alike.
# --------------------------------------------------------------------------

#: Docstring fragments: a class docstring's ``{common}`` / ``{torch_off}`` line
#: becomes these arguments (indented as an ``Args:`` entry).
DOC_FRAGMENTS = {
    "{common}": (
        "maximize: maximize the objective instead of minimizing it (default False).\n"
        "foreach: ``True`` multi-tensor, ``False`` per-tensor loop, ``None`` pick.\n"
        "fused: ``True`` one generated kernel call per bucket of tensors\n"
        "    (:mod:`optlab.optim._fused`); ``None`` lets large groups use it (see there)."
    ),
    "{state}": (
        "state_dtype: how the moments are stored between steps: ``None`` full precision\n"
        '    (default), ``torch.bfloat16`` with stochastic rounding, or ``"int8"`` in\n'
        "    blocks of 256 with a scale each (:mod:`optlab.optim._lowp`)."
    ),
    "{torch_off}": (
        "capturable: accepted as ``False`` only (torch.optim's CUDA-graph capture).\n"
        "differentiable: accepted as ``False`` only (torch.optim's autograd through the step)."
    ),
}


def _expand_doc(doc: str) -> str:
    for placeholder, text in DOC_FRAGMENTS.items():
        at = doc.find(placeholder)
        if at < 0:
            continue
        indent = doc[doc.rfind("\n", 0, at) + 1 : at]
        doc = doc.replace(placeholder, text.replace("\n", "\n" + indent))
    return doc


def hparams(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """A constructor's ``locals()`` as the optimizer's defaults (all but ``self``, ``params``).

    So a constructor is its signature (what users and ``help()`` see) and one
    line: ``super().__init__(params, hparams(locals()))``.
    """
    return {k: v for k, v in arguments.items() if k not in ("self", "params", "__class__")}


# --------------------------------------------------------------------------
# The shell.
# --------------------------------------------------------------------------


class OptlabOptimizer(Optimizer):
    """Base class of every optlab optimizer.

    Subclasses set the class attributes below and implement
    :meth:`_check_hparams`, :meth:`_init_state`, :attr:`rule` and
    :meth:`_scalars` (and :attr:`forms` where a reference's order of
    operations must be followed).
    """

    #: The update rule for one tensor, elementwise and in place (see
    #: :mod:`optlab.optim._rules`): ``rule(param, grad, *states, scalars, **flags)``
    #: with the states in :attr:`state_keys` order (``None`` for one the group's
    #: options do not use). The fused kernel is generated from it; without a
    #: hand-written form it also runs eagerly for ``foreach=True`` / ``False``.
    rule: ClassVar[Callable[..., None] | None] = None
    #: Hand-written eager forms, ``{"loop": f, "foreach": f}``, each
    #: ``f(group, steps, params, grads, *states)``: ``steps`` the step counts
    #: (floats, ``None`` for an optimizer without), ``grads`` with ``maximize``
    #: and L2 applied and ``params`` with decoupled decay applied already; a
    #: foreach form gets one device and dtype per call.
    forms: ClassVar[Mapping[str, Callable[..., None]]] = MappingProxyType({})

    #: Every state key the optimizer may write besides ``"step"``.
    state_keys: ClassVar[tuple[str, ...]] = ()
    #: Whether ``state["step"]`` is kept (torch.optim.SGD keeps none).
    counts_steps: ClassVar[bool] = True
    #: fp16/bf16 parameters: state in float32 and the update computed in float32.
    fp32_for_low_precision: ClassVar[bool] = False
    #: Implementations this optimizer has, in the order ``foreach=None`` prefers.
    implementations: ClassVar[tuple[str, ...]] = ("fused", "foreach", "loop")
    #: Set by :meth:`step` for the group being updated: whether it has complex tensors.
    _complex_group: bool = False
    #: torch.optim arguments this optimizer takes with their "off" value only
    #: (``False``), so code and configs written for torch.optim that pass them
    #: explicitly run unchanged; what each would switch on is in :data:`_UNSUPPORTED`.
    torch_off_only: ClassVar[tuple[str, ...]] = ()
    #: The state keys ``state_dtype`` may store compactly, each ``"signed"`` (a first
    #: moment) or ``"nonnegative"`` (a second moment, coded in the square-root domain);
    #: empty for an optimizer that takes no ``state_dtype``. See :mod:`optlab.optim._lowp`.
    moment_kinds: ClassVar[Mapping[str, str]] = MappingProxyType({})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__doc__:
            cls.__doc__ = _expand_doc(cls.__doc__)

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        defaults.setdefault("maximize", False)
        defaults.setdefault("foreach", None)
        defaults.setdefault("fused", None)
        if "state_dtype" in defaults and defaults["state_dtype"] is None:
            # Absent means full precision: fresh groups hold torch.optim's keys, and a
            # torch.optim checkpoint loaded and saved again is unchanged.
            del defaults["state_dtype"]
        self._check_all(defaults, where="")
        super().__init__(params, defaults)
        self._warned_fused_fallback = False

    # ----- validation ------------------------------------------------------

    def _check_hparams(self, group: Mapping[str, Any]) -> None:
        """Validate one group's hyper-parameters (raise ``ValueError``)."""
        raise NotImplementedError

    def _check_all(self, group: Mapping[str, Any], where: str) -> None:
        try:
            check_bool("maximize", group["maximize"])
            _check_optional_bool("foreach", group["foreach"])
            _check_optional_bool("fused", group["fused"])
            if group["foreach"] and group["fused"]:
                raise ValueAndRuntimeError("foreach and fused cannot both be True; pick one")
            self._check_unsupported(group)
            self._check_state_dtype(group)
            if group["fused"] and "fused" not in self.implementations:
                raise ValueError(
                    f"fused=True is not available for {type(self).__name__}; "
                    f"available implementations: {', '.join(self.implementations)}"
                )
            self._check_hparams(group)
        except ValueError as error:
            if not where:
                raise
            raise type(error)(f"{where}: {error}") from None  # the same type, torch's too

    def _check_state_dtype(self, group: Mapping[str, Any]) -> None:
        fmt = _lowp.parse_state_dtype(group.get("state_dtype"))
        if fmt is not None and not self.moment_kinds:
            raise ValueError(
                f"state_dtype={group['state_dtype']!r} is not available for "
                f"{type(self).__name__} (it has no elementwise moments to store compactly); "
                "use state_dtype=None"
            )

    def _state_format(self, group: Mapping[str, Any]) -> str | None:
        """The group's compact format, ``None`` for full precision."""
        return _lowp.parse_state_dtype(group.get("state_dtype"))

    def _check_unsupported(self, group: Mapping[str, Any]) -> None:
        for name in self.torch_off_only:
            value = group.get(name, False)
            if value is None or (isinstance(value, numbers.Number) and not value):
                continue
            # torch.optim refuses fused with differentiable as a RuntimeError.
            error = (
                ValueAndRuntimeError if name == "differentiable" and group["fused"] else ValueError
            )
            raise error(
                f"{name}={value!r} is not supported by optlab's {type(self).__name__} "
                f"({_UNSUPPORTED[name]}); pass {name}=False (the default) or leave it out, "
                f"or use torch.optim.{type(self).__name__} for it"
            )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        candidate = {**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}}
        self._check_all(candidate, where=f"param group {len(self.param_groups)}")
        if candidate["fused"] or self._state_format(candidate):
            # Checked before the group is added: a refusal changes nothing.
            params = param_group["params"]
            params = [params] if isinstance(params, Tensor) else list(params)
            param_group = {**param_group, "params": params}
            if candidate["fused"]:
                _fused.require_fused(type(self).__name__, params)
            if self._state_format(candidate):
                self._check_compact_params(params, candidate, len(self.param_groups))
        super().add_param_group(param_group)

    def _check_compact_params(
        self, params: Sequence[Tensor], group: Mapping[str, Any], index: int
    ) -> None:
        for param in params:
            if torch.is_complex(param) or not _fused.plain_tensors([param]):
                what = "complex" if torch.is_complex(param) else f"a {type(param).__name__}"
                raise ValueError(
                    f"param group {index}: state_dtype={group['state_dtype']!r} needs plain "
                    f"real tensors, a parameter is {what}; use state_dtype=None for this group"
                )

    # ----- state ------------------------------------------------------------

    def _state_dtype(self, param: Tensor) -> torch.dtype:
        if self.fp32_for_low_precision and param.dtype in _LOW_PRECISION:
            return torch.float32
        return param.dtype

    def _zeros_like(self, param: Tensor) -> Tensor:
        """A zero state tensor for ``param`` in the state dtype this optimizer keeps."""
        return torch.zeros_like(
            param, dtype=self._state_dtype(param), memory_format=torch.preserve_format
        )

    def _full_like(self, param: Tensor, value: float) -> Tensor:
        return torch.full_like(
            param, value, dtype=self._state_dtype(param), memory_format=torch.preserve_format
        )

    def _init_state(self, param: Tensor, group: Mapping[str, Any]) -> dict[str, Any]:
        """The state of ``param`` before its first step (without ``step``)."""
        raise NotImplementedError

    def _keeps_state(self, group: Mapping[str, Any]) -> bool:
        """Whether a step under ``group``'s options stores any state (plain SGD stores none).

        Where it stores none, the step leaves ``self.state`` as it is, so
        ``state_dict()["state"]`` stays ``{}`` as torch.optim's does.
        """
        return True

    def _required_state_keys(self, group: Mapping[str, Any]) -> set[str]:
        """Keys a non-empty state must hold under ``group``'s options."""
        return set(self._init_state(torch.zeros(1), group))

    def _group_state_keys(self, group: Mapping[str, Any]) -> frozenset[str]:
        """Keys every state of ``group`` holds once stepped (``"step"`` included), kept per group.

        They depend on the options only, so they are kept while the group's
        options compare equal: making :meth:`_required_state_keys`'s
        one-element tensor and state costs ~45 us a step right after a large
        step has flushed the caches, comparing the options ~3 us.
        """
        # state_dtype too where it is not among the defaults (absent means None).
        options = (*map(group.get, self.defaults), group.get("state_dtype"))
        memo = self.__dict__.setdefault("_state_keys_memo", {})
        known = memo.get(id(group))
        if known is None or known[0] != options:
            keys = self._required_state_keys(group) | ({"step"} if self.counts_steps else set())
            keys |= self._absmax_keys(group, keys)
            self._check_stored_formats(group)
            known = memo[id(group)] = (options, frozenset(keys))
        return known[1]

    def _absmax_keys(self, group: Mapping[str, Any], keys: Iterable[str]) -> set[str]:
        """The int8 scale keys that go with the moment ``keys`` under ``group``'s format."""
        if self._state_format(group) != "int8":
            return set()
        return {_lowp.absmax_key(key) for key in keys if key in self.moment_kinds}

    def _stored_as(
        self, param: Tensor, state: Mapping[str, Any], key: str, fmt: str | None
    ) -> str | None:
        """How ``state[key]`` is stored, ``fmt`` itself where that is the same bytes.

        (A bf16 parameter whose full-precision state is bf16 stores ``None`` and
        ``"bfloat16"`` alike.)
        """
        stored = _lowp.stored_format(state, key)
        if {stored, fmt} == {None, "bfloat16"} and self._state_dtype(param) == torch.bfloat16:
            return fmt
        return stored

    def _check_stored_formats(self, group: Mapping[str, Any]) -> None:
        """Refuse a group whose ``state_dtype`` differs from how its state is stored."""
        fmt = self._state_format(group)
        for param in group["params"]:
            state = self.state.get(param)
            if not state:
                continue
            for key in self.moment_kinds:
                if key in state and self._stored_as(param, state, key, fmt) != fmt:
                    index = next((i for i, g in enumerate(self.param_groups) if g is group), "?")
                    stored = self._stored_as(param, state, key, fmt) or "full precision"
                    wanted = group.get("state_dtype")
                    raise ValueError(
                        f"param group {index} has state_dtype={wanted!r} but its state {key!r} "
                        f"is stored as {stored}; convert it with "
                        f"optimizer.set_state_dtype({wanted!r}) instead of setting the option"
                    )

    def _positions(self) -> dict[Tensor, int]:
        """Each parameter's position over all groups in order (the rounding seeds use it)."""
        signature = tuple((id(g["params"]), len(g["params"])) for g in self.param_groups)
        memo = self.__dict__.get("_position_memo")
        if memo is None or memo[0] != signature:
            positions = {}
            for param in chain.from_iterable(g["params"] for g in self.param_groups):
                positions.setdefault(param, len(positions))
            memo = self.__dict__["_position_memo"] = (signature, positions)
        return memo[1]

    def _compact(
        self,
        group: Mapping[str, Any],
        params: Sequence[Tensor],
        states: list[dict[str, Any]],
        keys: Sequence[str],
        key: str,
        rounding_steps: Sequence[int],
    ) -> _lowp.CompactStates:
        fmt, kind = self._state_format(group), self.moment_kinds[key]
        positions, slot = self._positions(), keys.index(key)
        seeds = _lowp.seeds_of(
            fmt,
            [param.numel() for param in params],
            [positions[param] for param in params],
            rounding_steps,
            _lowp.seed_slot(fmt, slot),  # bf16: two slots share a seed, a half of its hash each
        )
        absmax = None
        if fmt == "int8":
            absmax = [state[_lowp.absmax_key(key)] for state in states]
        codes = [state[key] for state in states]
        return _lowp.CompactStates(codes, fmt, kind, absmax, seeds, slot)

    def _rounding_step(self, group: Mapping[str, Any], state: Mapping[str, Any]) -> int:
        """The step count a parameter's rounding seeds use: its ``step``, or for an
        optimizer that keeps none (SGD, Lion, Schedule-Free) the group's ``rounding_step``."""
        if "step" in state:
            return int(state["step"])
        return int(group.get("rounding_step", 0))

    def _compress_state(
        self, param: Tensor, state: dict[str, Any], group: Mapping[str, Any]
    ) -> None:
        """Store ``state``'s full-precision moments in the group's compact format (new state)."""
        fmt = self._state_format(group)
        if fmt is None:
            return
        keys = self._rule_state_keys(group)
        position = self._positions().get(param, 0)
        for key, kind in self.moment_kinds.items():
            value = state.get(key)
            if not isinstance(value, Tensor) or self._stored_as(param, state, key, fmt) == fmt:
                continue
            slot = keys.index(key) if key in keys else 0
            codes, absmax = _lowp.compress_moment(fmt, kind, value, position, 0, slot)
            state[key] = codes
            if absmax is not None:
                state[_lowp.absmax_key(key)] = absmax

    def _rule_state_keys(self, group: Mapping[str, Any]) -> tuple[str, ...]:
        """The state keys whose tensors :attr:`rule` and :attr:`forms` take, in order.

        :attr:`state_keys` by default. An optimizer whose state is named per group
        (BeliefEps keeps its second moment under the reference's name,
        ``exp_avg_sq`` or ``exp_avg_var``) returns the group's names, so the rule
        takes them in one position and the option combinations share a kernel.
        """
        return self.state_keys

    def _real_states(
        self,
        states: list[dict[str, Any]],
        keys: Sequence[str] | None = None,
        group: Mapping[str, Any] | None = None,
        params: Sequence[Tensor] | None = None,
    ) -> dict[str, list[Tensor]]:
        """Per state key present in every state: the list of (real views of) its tensors.

        With ``group`` and ``params`` given and the group's ``state_dtype`` set,
        a moment's list is a :class:`~optlab.optim._lowp.CompactStates` (its
        codes, scales and this step's rounding seeds).
        """
        keys = self.state_keys if keys is None else keys
        fmt = None if group is None else self._state_format(group)
        rounding_steps = None
        if fmt is not None:  # read once per parameter, not once per moment
            rounding_steps = [self._rounding_step(group, state) for state in states]
        real = {}
        for key in keys:
            values = [state.get(key) for state in states]
            if all(isinstance(value, Tensor) for value in values):
                if fmt is not None and key in self.moment_kinds:
                    real[key] = self._compact(group, params, states, keys, key, rounding_steps)
                else:
                    real[key] = [as_real(v) for v in values] if self._complex_group else values
        return real

    # ----- the step ---------------------------------------------------------

    def _scalars(self, group: Mapping[str, Any]) -> Callable[[Any], Sequence[float]]:
        """From a step count (``None`` without steps) to :attr:`rule`'s own scalars.

        Computed on the host in float64; the base class puts ``maximize`` and the
        weight decay in front of them (:func:`optlab.optim._rules.prologue`).
        """
        raise NotImplementedError

    def _flags(self, group: Mapping[str, Any]) -> dict[str, bool]:
        """Static options of :attr:`rule` (each value its own fused kernel), e.g. ``amsgrad``."""
        return {}

    def _decay(self, group: Mapping[str, Any]) -> tuple[float, float]:
        """``(l2, decay)``: the coupled coefficient and the decoupled factor (1.0 for none).

        ``weight_decay`` is L2 unless the group has ``decoupled_weight_decay``
        set, then ``p *= 1 - lr * weight_decay`` (torch.optim.AdamW's).
        """
        weight_decay = group.get("weight_decay", 0.0)
        if weight_decay and group.get("decoupled_weight_decay", False):
            return 0.0, scalar(1 - group["lr"] * weight_decay)
        return weight_decay, 1.0

    def _update_group(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict[str, Any]],
        implementation: str,
    ) -> None:
        """Apply the update to one group (params and grads already real views).

        ``"fused"`` runs the kernel generated from :attr:`rule`; ``"loop"`` and
        ``"foreach"`` run the hand-written form in :attr:`forms`, else
        :attr:`rule` eagerly per tensor.
        """
        used = self._group_state_keys(group)
        keys = self._rule_state_keys(group)
        real = self._real_states(states, keys, group, params)
        state_lists = [real[key] if key in used else None for key in keys]
        steps = [state["step"].item() for state in states] if self.counts_steps else None
        form = self.forms.get(implementation)
        if form is not None and any(isinstance(s, _lowp.CompactStates) for s in state_lists):
            self._run_form_decoded(group, params, grads, state_lists, steps, implementation)
            return
        self._run(group, params, grads, state_lists, steps, implementation)

    #: Elements decoded at once for a hand-written form run on compact state.
    _DECODE_CHUNK = 1 << 22

    def _decode_chunks(self, params: Sequence[Tensor]) -> list[list[int]]:
        """Indices of ``params`` in runs of about :attr:`_DECODE_CHUNK` elements, in order."""
        chunks, chunk, size = [], [], 0
        for index, param in enumerate(params):
            chunk.append(index)
            size += param.numel()
            if size >= self._DECODE_CHUNK:
                chunks.append(chunk)
                chunk, size = [], 0
        return chunks + [chunk] if chunk else chunks

    def _run_form_decoded(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        state_lists: list[Any],
        steps: list[float] | None,
        implementation: str,
    ) -> None:
        """A hand-written form on compact state: decoded a chunk of tensors at a time."""
        for indices in self._decode_chunks(params):
            lists = []
            for states in state_lists:
                if isinstance(states, _lowp.CompactStates):
                    lists.append([states.decoded(i, params[i].dtype) for i in indices])
                else:
                    lists.append(None if states is None else [states[i] for i in indices])
            self._run(
                group,
                [params[i] for i in indices],
                [grads[i] for i in indices],
                lists,
                None if steps is None else [steps[i] for i in indices],
                implementation,
            )
            for states, decoded in zip(state_lists, lists, strict=True):
                if isinstance(states, _lowp.CompactStates):
                    for i, value in zip(indices, decoded, strict=True):
                        states.store(i, value)

    def _run(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        state_lists: list[Any],
        steps: list[float] | None,
        implementation: str,
    ) -> None:
        sign = -1.0 if group["maximize"] else 1.0
        l2, decay = self._decay(group)
        form = self.forms.get(implementation)
        if form is None:
            own = self._scalars(group)

            def scalars(step: Any) -> tuple[float, ...]:
                return (sign, l2, decay, *own(step))

            run = _fused.fused_update if implementation == "fused" else derived_form
            run(self.rule, [params, grads, *state_lists], scalars, steps, **self._flags(group))
        elif implementation == "loop":
            grads = [
                prepare_loop(param, grad, sign=sign, l2=l2, decay=decay)
                for param, grad in zip(params, grads, strict=True)
            ]
            form(group, steps, params, grads, *state_lists)
        else:
            for run_params, run_grads, run_steps, *run_states in group_by_device_and_dtype(
                params, grads, steps, *state_lists
            ):
                run_grads = prepare_foreach(run_params, run_grads, sign=sign, l2=l2, decay=decay)
                form(group, run_steps, run_params, run_grads, *run_states)

    def _implementation(self, group: Mapping[str, Any], params: list[Tensor]) -> str:
        if group.get("fused"):
            if self._per_group(group, "plain", lambda: _fused.plain_tensors(group["params"])):
                return "fused"
            if not getattr(self, "_warned_fused_fallback", False):
                self._warned_fused_fallback = True
                warnings.warn(
                    f"optlab {type(self).__name__}(fused=True): the fused kernels take plain "
                    "tensors, these parameters are tensor subclasses (e.g. DTensor); using the "
                    "multi-tensor implementation instead",
                    stacklevel=3,
                )
            return "foreach"
        foreach = group.get("foreach")
        if foreach is not None:
            return "foreach" if foreach else "loop"
        worth_fusing = self._fusing_saves_passes(group)
        return self._per_group(
            group,
            ("default", worth_fusing, group.get("fused")),
            lambda: self._default_implementation(group),
        )

    def _per_group(self, group: Mapping[str, Any], what: Any, compute: Callable[[], Any]) -> Any:
        """``compute()``, a fact about ``group``'s parameters, kept while its list stays the same.

        Looking at every tensor again each step costs ~0.05-0.4 ms for 500
        tensors, a tenth of a fused step. Kept per group while ``group["params"]``
        is the same list object of the same length; a parameter's type cannot
        change, and its device and dtype are read again where they matter.
        """
        memo = self.__dict__.setdefault("_group_memo", {})
        members = group["params"]
        known = memo.get((id(group), what))
        if known is not None and known[0] is members and known[1] == len(members):
            return known[2]
        value = compute()
        memo[(id(group), what)] = (members, len(members), value)
        return value

    def _forget_group(self, group: Mapping[str, Any]) -> None:
        memo = self.__dict__.get("_group_memo", {})
        for key in [key for key in memo if key[0] == id(group)]:
            del memo[key]

    def _default_implementation(self, group: Mapping[str, Any]) -> str:
        """What ``foreach=None`` picks for ``group``, decided on all its parameters.

        Decided once per group (see :meth:`_per_group`) while its parameter list
        stays the same.
        """
        members = group["params"]
        if (
            group.get("fused") is None
            and "fused" in self.implementations
            and self._fusing_saves_passes(group)
            and _fused.prefer_fused(members)
        ):
            return "fused"  # measured: see optlab.optim._fused
        if all(type(p) in _FOREACH_TYPES for p in members):
            return "foreach"
        return "loop"

    def _fusing_saves_passes(self, group: Mapping[str, Any]) -> bool:
        """Whether the fused kernel reads memory fewer times than foreach under ``group``'s options.

        True for every rule with state; SGD without momentum, weight decay and
        maximize is a single ``p -= lr * g`` pass already, so its default stays
        foreach (measured no faster fused, see docs/benchmarks.md).
        """
        return True

    @property
    def _step_supports_amp_scaling(self) -> bool:
        """Whether ``torch.amp.GradScaler`` hands this optimizer its scale instead of unscaling.

        torch.optim's fused optimizers say so: ``GradScaler.step`` then only
        looks for inf/NaN gradients (without the unscaling pass, and with
        fp16 gradients allowed), sets ``grad_scale`` and ``found_inf`` on the
        optimizer and calls :meth:`step`, whose kernels unscale and skip
        (:func:`optlab.optim._fused.scaled_rule`). optlab says so where every
        group is ``fused=True`` on plain CPU tensors. Not on CUDA: the step
        counts live on the host (the bias corrections are computed there in
        float64), so undoing a skipped step's count would read ``found_inf``
        back from the device, the host sync this route exists to avoid.
        """
        return all(
            group.get("fused")
            and all(map(_on_cpu_plain, group["params"]))
            and self._state_format(group) is None
            for group in self.param_groups
        )

    def _scaler_tensors(self) -> tuple[Tensor, Tensor] | None:
        """``(grad_scale, found_inf)`` a GradScaler set for this step, if it set them."""
        found_inf = self.__dict__.get("found_inf")
        if found_inf is None or not self._step_supports_amp_scaling:
            return None
        grad_scale = self.__dict__.get("grad_scale")
        if grad_scale is None:  # the user called scaler.unscale_(optimizer) already
            grad_scale = torch.ones((), device=found_inf.device)
        return grad_scale, found_inf

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step; ``closure`` re-evaluates the loss (torch contract)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        scaler_tensors = self._scaler_tensors()
        for group in self.param_groups:  # a refused state_dtype change refuses before any update
            if self._keeps_state(group):
                self._group_state_keys(group)
        for group_index, group in enumerate(self.param_groups):
            if group.get("fused") and any(map(_is_meta, group["params"])):
                # Before any state is made: as torch.optim's fused optimizers, which
                # take meta parameters when built and refuse them here.
                raise RuntimeError(
                    f"{type(self).__name__}(fused=True) cannot step parameters on the meta "
                    f"device (param group {group_index}); give them storage first, e.g. "
                    "module.to_empty(device='cpu'), or use fused=False"
                )
            params, grads, states = self._collect(group, group_index)
            if not params:
                continue
            if not self.counts_steps and self._state_format(group) is not None:
                # The rounding seeds need a step count: this group's own (checkpointed).
                group["rounding_step"] = group.get("rounding_step", 0) + 1
            # Per-tensor work only where some tensor needs it (~0.2 ms a step for 500).
            dtypes = set(map(_dtype_of, params))
            low_precision = []
            if self.fp32_for_low_precision and not dtypes.isdisjoint(_LOW_PRECISION):
                low_precision = [i for i, p in enumerate(params) if p.dtype in _LOW_PRECISION]
            originals = [params[i] for i in low_precision]
            original_grads = [grads[i] for i in low_precision]
            for i in low_precision:
                params[i] = params[i].float()
                grads[i] = grads[i].float()
            self._complex_group = not _COMPLEX.isdisjoint(dtypes)
            real_params, real_grads = params, grads
            if self._complex_group:
                real_params = [as_real(p) for p in params]
                real_grads = [as_real(g) for g in grads]
            implementation = self._implementation(group, params)
            scaling = contextlib.nullcontext()
            if scaler_tensors is not None:
                scaling = _fused.grad_scaling(*scaler_tensors)
            try:
                with scaling:
                    self._update_group(group, real_params, real_grads, states, implementation)
            # Raised before any tensor of this group changed; groups before it in this
            # step have been updated (a compiler failing for one dtype only).
            except _fused.FusedCompileError as error:
                if group.get("fused"):
                    if self.counts_steps:
                        torch._foreach_sub_([state["step"] for state in states], 1.0)
                    raise
                _fused.note_default_failure(params[0].device.type, error)
                self._forget_group(group)
                implementation = self._implementation(group, params)
                self._update_group(group, real_params, real_grads, states, implementation)
            for i, original in zip(low_precision, originals, strict=True):
                original.copy_(params[i])
            if scaler_tensors is not None:
                for i, original in zip(low_precision, original_grads, strict=True):
                    original.copy_(grads[i])  # unscaled by the kernel, as torch's
                if self.counts_steps:  # a skipped step does not count
                    self._count_step(group, states, -scaler_tensors[1])
        return loss

    def _collect(
        self, group: dict[str, Any], group_index: int
    ) -> tuple[list[Tensor], list[Tensor], list[dict[str, Any]]]:
        # C-level scans (map) where the loop body is one attribute: ~2x faster for 500 tensors.
        members = group["params"]
        grads = list(map(_grad_of, members))
        if any(map(operator.is_, grads, repeat(None))):
            params = [param for param, grad in zip(members, grads, strict=True) if grad is not None]
            grads = [grad for grad in grads if grad is not None]
        else:
            params = list(members)
        if any(map(_is_sparse, grads)):
            param_index = next(
                i for i, p in enumerate(group["params"]) if p.grad is not None and p.grad.is_sparse
            )
            raise RuntimeError(
                f"{type(self).__name__} does not support sparse gradients "
                f"(parameter {param_index} of param group {group_index}); use dense "
                "gradients (e.g. nn.Embedding(sparse=False)) or torch.optim.SparseAdam"
            )
        if not self._keeps_state(group):  # no new entries (states made earlier stay)
            return params, grads, list(map(self.state.get, params, repeat(_NO_STATE)))
        states = list(map(self.state.__getitem__, params))  # a defaultdict: new states made
        required = self._group_state_keys(group)
        complete = all(map(operator.ge, map(dict.keys, states), repeat(required)))
        for param, state in [] if complete else zip(params, states, strict=True):
            if state.keys() >= required:
                continue
            if not state:
                if self.counts_steps:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state.update(self._init_state(param, group))
            else:
                # An option that needs more state (amsgrad, centered, momentum) was
                # switched on in this group after the state was made: start it at zero.
                for key, value in self._init_state(param, group).items():
                    state.setdefault(key, value)
            self._compress_state(param, state, group)
        if self.counts_steps and states:
            self._count_step(group, states)
        return params, grads, states

    def _count_step(
        self, group: Mapping[str, Any], states: list[dict[str, Any]], by: float | Tensor = 1.0
    ) -> None:
        """Add ``by`` (1) to every ``state["step"]`` of this step's parameters.

        Incrementing 500 separate 0-dim tensors costs ~0.8 ms on a small CPU,
        more than a fused step's kernels. So a group's step tensors are made
        0-dim views of one float32 vector (the same values, still one tensor
        per parameter in the state and in checkpoints) and counted with one
        ``add_``. Where this step's states are not exactly those views (a
        parameter without a grad this step, a loaded checkpoint, a new
        parameter) the vector is rebuilt from the current values.
        """
        steps = [state["step"] for state in states]
        counters = self.__dict__.setdefault("_step_counters", {})
        known = counters.get(id(group))
        if (
            known is not None
            and len(known[1]) == len(steps)
            and all(map(operator.is_, known[1], steps))
        ):
            known[0].add_(by)
            return
        if len(steps) < _SHARED_STEPS_MIN or not all(
            type(step) is Tensor and step.dtype == torch.float32 and step.is_cpu
            and step.dim() == 0 for step in steps
        ):  # fmt: skip
            if isinstance(by, Tensor):
                torch._foreach_add_(steps, [by] * len(steps))
            else:
                torch._foreach_add_(steps, by)
            counters.pop(id(group), None)
            return
        vector = torch.stack(steps).add_(by)
        views = list(vector.unbind())
        for state, view in zip(states, views, strict=True):
            state["step"] = view
        counters[id(group)] = (vector, views)

    # ----- checkpoints ------------------------------------------------------

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # Options a loaded group lacks (an older checkpoint) take the defaults, as
        # torch.optim fills them, except: ``differentiable``, which torch's
        # ``Optimizer.__setstate__`` adds to every optimizer's defaults (only those
        # that take it get it), ``foreach`` / ``fused`` / ``state_dtype``, whose absence means
        # None (pick) and which torch.optim.Adadelta / RMSprop checkpoints lack;
        # so saving again gives back the groups that were loaded.
        options = [
            (key, value)
            for key, value in self.defaults.items()
            if key not in ("foreach", "fused", "state_dtype")
            and (key != "differentiable" or key in self.torch_off_only)
        ]
        for group in self.param_groups:
            for key, value in options:
                group.setdefault(key, value)
        for param_state in self.state.values():
            step = param_state.get("step") if isinstance(param_state, dict) else None
            if step is not None and not torch.is_tensor(step):
                param_state["step"] = torch.tensor(float(step), dtype=torch.float32)

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a checkpoint, after checking it fits; on error nothing changes.

        Accepts checkpoints of the torch.optim counterpart (same state keys) and
        older formats: a Python-number ``step`` becomes a tensor, options missing
        from a saved group take this optimizer's defaults.
        """
        id_map = self._check_loadable(state_dict)
        super().load_state_dict(state_dict)  # type: ignore[arg-type]
        # torch casts every state tensor to the parameter's dtype; where this
        # optimizer keeps float32 state for fp16/bf16 parameters, undo that
        # from the checkpoint's own values so nothing is rounded away, and
        # compact moments (state_dtype) keep their codes' and scales' dtypes.
        compact = set(self.moment_kinds) | {_lowp.absmax_key(k) for k in self.moment_kinds}
        for saved_id, param in id_map.items():
            saved = state_dict["state"].get(saved_id)
            if saved is None:
                continue
            for key, value in saved.items():
                if key == "step" or not torch.is_tensor(value):
                    continue
                if key in compact and (
                    key not in self.moment_kinds or _lowp.stored_format(saved, key) is not None
                ):
                    self.state[param][key] = value.to(device=param.device)
                elif self._state_dtype(param) != param.dtype:
                    self.state[param][key] = value.to(device=param.device, dtype=torch.float32)

    def decoded_state(self, param: Tensor, key: str) -> Tensor:
        """``self.state[param][key]`` in full precision: decoded where ``state_dtype`` keeps it
        compactly (float32), the tensor itself otherwise. For reading (diagnostics, tests)."""
        state = self.state[param]
        fmt = _lowp.stored_format(state, key) if key in self.moment_kinds else None
        if fmt is None:
            return state[key]
        absmax = state.get(_lowp.absmax_key(key))
        return _lowp.decode(fmt, self.moment_kinds[key], state[key], absmax, torch.float32)

    def set_state_dtype(self, state_dtype: Any, groups: Iterable[int] | None = None) -> None:
        """Store the moments of ``groups`` (indices; default all) in ``state_dtype`` from now on.

        Converts the state already kept (decoded, then rounded into the new
        format with the seeds of its current step; to full precision it is
        decoded exactly) and sets each group's ``state_dtype``. Setting the
        option by hand on a group with state is refused at the next step, as
        the stored state would not match it. Checked before anything changes.
        """
        fmt = _lowp.parse_state_dtype(state_dtype)
        indices = list(range(len(self.param_groups)) if groups is None else groups)
        for index in indices:
            if not (isinstance(index, int) and 0 <= index < len(self.param_groups)):
                raise ValueError(
                    f"groups must be indices of param groups (0 to {len(self.param_groups) - 1}), "
                    f"got {index!r}"
                )
            group = self.param_groups[index]
            self._check_all({**group, "state_dtype": state_dtype}, where=f"param group {index}")
            if fmt is not None:
                self._check_compact_params(group["params"], {"state_dtype": state_dtype}, index)
        converted = {}
        positions = self._positions()
        for index in indices:
            group = self.param_groups[index]
            keys = self._rule_state_keys(group)
            for param in group["params"]:
                state = self.state.get(param)
                if state:
                    converted[param] = self._converted_state(
                        param, state, fmt, positions[param], keys, self._rounding_step(group, state)
                    )
        for param, state in converted.items():
            self.state[param] = state
        for index in indices:
            self.param_groups[index]["state_dtype"] = state_dtype

    def _converted_state(
        self, param: Tensor, state: dict[str, Any], fmt: str | None, position: int,
        keys: Sequence[str], step: int,
    ) -> dict[str, Any]:  # fmt: skip
        new = dict(state)
        for key, kind in self.moment_kinds.items():
            if not isinstance(state.get(key), Tensor):
                continue
            current = self._stored_as(param, state, key, fmt)
            if current == fmt:
                continue
            absmax = new.pop(_lowp.absmax_key(key), None)
            if current is None:
                value = state[key]
            else:
                value = _lowp.decode(current, kind, state[key], absmax, torch.float32)
            if fmt is None:
                new[key] = value.to(self._state_dtype(param))
                continue
            slot = keys.index(key) if key in keys else 0
            codes, new_absmax = _lowp.compress_moment(fmt, kind, value, position, step, slot)
            new[key] = codes
            if new_absmax is not None:
                new[_lowp.absmax_key(key)] = new_absmax
        return new

    def _check_loadable(self, state_dict: Mapping[str, Any]) -> dict[Any, Tensor]:
        name = type(self).__name__
        if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= set(state_dict):
            raise ValueError(
                f"{name}.load_state_dict expects a dict with 'state' and 'param_groups' "
                f"(an optimizer.state_dict()), got {type(state_dict).__name__}"
            )
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"checkpoint has {len(saved_groups)} param groups, this {name} has "
                f"{len(self.param_groups)}"
            )
        for index, (saved, group) in enumerate(zip(saved_groups, self.param_groups, strict=True)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"checkpoint param group {index} has {len(saved['params'])} parameters, "
                    f"this {name}'s has {len(group['params'])}"
                )
            takes = set(self.defaults) | ({"state_dtype"} if self.moment_kinds else set())
            foreign = sorted((set(saved) & _other_optimizers_hparams()) - takes)
            if foreign:
                raise ValueError(
                    f"checkpoint param group {index} has {foreign}, options {name} does not "
                    f"take; is it another optimizer's checkpoint? ({name} takes "
                    f"{sorted(self.defaults)})"
                )
            # A saved group without state_dtype is full precision (an older or a
            # torch.optim checkpoint), whatever this optimizer was built with.
            defaults = {k: v for k, v in self.defaults.items() if k != "state_dtype"}
            merged = {**defaults, **{k: v for k, v in saved.items() if k != "params"}}
            self._check_all(merged, where=f"checkpoint param group {index}")
            if merged["fused"]:  # e.g. torch.optim.Adam(fused=True)'s checkpoint
                _fused.require_fused(type(self).__name__, group["params"])
        id_map = dict(
            zip(
                chain.from_iterable(g["params"] for g in saved_groups),
                chain.from_iterable(g["params"] for g in self.param_groups),
                strict=True,
            )
        )
        group_of = {
            saved_id: {**{k: v for k, v in self.defaults.items() if k != "state_dtype"}, **saved}
            for saved in saved_groups
            for saved_id in saved["params"]
        }
        allowed = set(self.state_keys) | ({"step"} if self.counts_steps else set())
        allowed |= {_lowp.absmax_key(key) for key in self.moment_kinds}
        for saved_id, saved_state in state_dict["state"].items():
            if saved_id not in id_map:
                continue
            param = id_map[saved_id]
            keys = set(saved_state)
            unknown = keys - allowed
            if unknown:
                raise ValueError(
                    f"checkpoint state of parameter {saved_id} has keys {sorted(unknown)} that "
                    f"{name} does not use (it uses {sorted(allowed)}); is it another "
                    "optimizer's checkpoint?"
                )
            if not keys:
                continue
            saved_group = group_of[saved_id]
            required = self._required_state_keys(saved_group)
            missing = (required | self._absmax_keys(saved_group, required)) - keys
            if self.counts_steps and "step" not in keys:
                missing.add("step")
            if missing:
                raise ValueError(
                    f"checkpoint state of parameter {saved_id} lacks {sorted(missing)}, which "
                    f"{name} needs with these options; is it another optimizer's checkpoint?"
                )
            fmt = self._state_format(saved_group)
            for key in self.moment_kinds:
                stored = self._stored_as(param, saved_state, key, fmt) if key in keys else fmt
                if stored != fmt:
                    raise ValueError(
                        f"checkpoint state {key!r} of parameter {saved_id} is stored as "
                        f"{stored or 'full precision'}, but its param group's state_dtype is "
                        f"{saved_group.get('state_dtype')!r}"
                    )
            for key, value in saved_state.items():
                if key == "step" or not torch.is_tensor(value):
                    continue
                if key in allowed - set(self.state_keys) - {"step"}:  # an int8 moment's scales
                    blocks = -(-param.numel() // _lowp.BLOCK)
                    if tuple(value.shape) != (blocks,):
                        raise ValueError(
                            f"checkpoint state {key!r} of parameter {saved_id} has shape "
                            f"{tuple(value.shape)}, expected ({blocks},) (one scale per block "
                            f"of {_lowp.BLOCK})"
                        )
                    continue
                if tuple(value.shape) != tuple(param.shape):
                    raise ValueError(
                        f"checkpoint state {key!r} of parameter {saved_id} has shape "
                        f"{tuple(value.shape)}, the parameter has shape {tuple(param.shape)}"
                    )
        return id_map
