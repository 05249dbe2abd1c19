r"""The fused path: one generated kernel per update rule, one pass over memory per tensor, a bucket of tensors per call.

Every optlab optimizer can run as a per-tensor loop, as multi-tensor
``torch._foreach_*`` ops, or fused (``fused=True``). The fused path is
*generated*, not hand-written: each algorithm module states its update rule
once more as an elementwise function of one parameter's tensors (see
``_adam_rule`` in :mod:`optlab.optim.adam`), and this module compiles that
function with TorchInductor (``torch.compile``) into one kernel that reads
``p``, ``g`` and the state once and writes ``p`` and the state once: C++
with OpenMP and SIMD on CPU, Triton on CUDA, from the same Python source.

How the compile cost is kept constant in the number of parameters
------------------------------------------------------------------

- One kernel per *signature*: (rule, the options that add a state tensor
  such as ``amsgrad``, RMSprop's ``centered`` or SGD's ``momentum``, device,
  dtype). Every other option is a runtime scalar: ``maximize`` multiplies
  the gradient by -1.0 or 1.0 (exact), L2 weight decay is selected with
  ``torch.where`` on its coefficient, decoupled decay multiplies by a factor
  that is 1.0 when off, Nesterov and AdaBelief's rectification select
  between forms. So a model whose biases have no weight decay, or a switch
  of ``maximize``, costs no second compile, and AdaBelief's 128 option
  combinations run on two kernels.
- A kernel updates a *bucket* of :data:`BUCKET_SIZE` tensor sets (param,
  grad, state) at once: the rule is applied to each set of a generated
  function of ``BUCKET_SIZE`` x (tensors per set) arguments, traced once
  with ``dynamic=True`` on 1-D scratch tensors of distinct sizes, so every
  set's element count is its own symbol and the same kernel serves
  parameters of any shapes. Inductor emits one C++ function (one OpenMP
  parallel region) or one Triton launch sequence per bucket. 64 or 500
  parameter tensors cost one compile, not 64 or 500, and the per-call host
  cost is paid once per bucket; the last bucket of a step is padded with
  one-element scratch tensors.
- Hyper-parameters (lr, betas, eps, weight decay) and the step-dependent
  factors (bias corrections, AdaBelief's rectification) are computed on the
  host in float64 and passed in a small float64 tensor, so a scheduler
  changing ``lr``, a new step or a changed beta never recompiles. Each
  signature is compiled at most once per process (and read from
  Inductor's on-disk cache in the next one).
- After the compile, the kernel is called directly: without Dynamo's
  per-call guard evaluation (about 25 us a call on a 2-core machine), and on
  CPU without Inductor's Python wrapper either, which unpacks and checks
  every argument: the generated C++ function is called with the argument
  order recorded from one call on scratch tensors. The guards' job is done
  here instead: a kernel is looked up by its signature, and only contiguous
  tensors of that device and dtype reach it. Contiguous N-D tensors are
  passed as they are (the kernel indexes them linearly). Before first use,
  each way of calling a kernel is checked against the eager rule on N-D
  scratch tensors, with two sets of equal size and a one-element one (as
  the padding); where the
  direct call of the C++ function fails that check, the wrapper is called,
  where that fails too (Triton checks dimensions) it is called with 1-D
  views, and should all fail with some torch version, the kernel is called
  through Dynamo (correct, slower) and a debug log says so. Tensors that are
  not contiguous run the same rule eagerly.
- No per-step temporaries: the kernel writes into ``p`` and the state in
  place; the float64 scalar vector is rewritten in place on CPU (one per
  kernel and thread) and is the only allocation per step on CUDA.

Across processes
----------------

Inductor caches its artifacts on disk, but reaching them costs a process
seconds (importing Dynamo and Inductor, probing the CPU's vector
instructions, tracing the bucket function again): about 7 s for a bucket
kernel on the 2-core machine. So once a kernel is compiled and checked,
this module records where its compiled C++ module lives and the argument
order to call it with, in ``optlab_fused/`` inside Inductor's cache folder
(``TORCHINDUCTOR_CACHE_DIR``, or its default). A later process with the same
torch, Python, CPU (model and instruction-set flags), optlab sources (this
module, :mod:`optlab.optim._inductor`, the rule's module and
``optlab.optim._rules`` where it exists), signature, Inductor settings and
thread count (Inductor writes serial loops for a one-thread process, OpenMP
ones otherwise) loads that module directly and checks it against the eager
rule before first use; a missing, damaged or disagreeing record means an
ordinary compile. Measured: the first fused step of 500 tensors takes about
0.04 s in such a process.

Compiles are counted by :func:`compile_count` (kernels compiled or loaded;
the compiles also show in ``torch._dynamo.utils.counters``); none happens
after a signature's first step, whatever the learning rate, the step or
which parameters have grads (a new ``torch.set_num_threads`` value makes a
new CPU kernel, once).

Torch's private API
-------------------

The direct calls, the recorded argument order, the loading of a recorded
module and the compile's capture of Inductor's output lean on TorchInductor
and Dynamo internals. All of that is in :mod:`optlab.optim._inductor`,
behind a few functions that name what they rely on (written for torch
2.13); this module only decides when to use them and checks every result
against the eager rule. ``tests/test_inductor_api.py`` fails, naming the
torch version and the attribute, when an upgrade moves one of them.

Availability and the default
----------------------------

``fused=True`` needs TorchInductor and, on CPU, a C++ compiler (``$CXX`` or
``g++``/``clang++``); on CUDA, Triton. Where that is missing the optimizer's
constructor raises ``RuntimeError`` naming what is missing; a kernel that
fails to compile raises ``RuntimeError`` on the first step, before any
tensor changed. ``OPTLAB_DISABLE_FUSED=1`` in the environment makes the
fused path unavailable (to test the fallbacks, or to rule it out).

``foreach=None, fused=None`` (the default) picks, per param group, from
the measurements in docs/benchmarks.md:

- on CPU, fused when it is available and the group holds at least
  :data:`FUSED_DEFAULT_MIN_NUMEL` (1M) elements: the first compile of a
  kernel (about 15 s on the 2-core machine measured; a few hundredths of a
  second in later processes, which load the recorded kernel) is repaid
  within a few hundred steps, since the foreach and loop paths are 2-6x
  slower there (their temporaries are parameter-sized); smaller models keep
  the eager default and never wait for a compiler;
- on CUDA, fused only where the group's tensors average at least
  :data:`FUSED_DEFAULT_MIN_MEAN_NUMEL_CUDA` (2M) elements, else foreach as
  torch.optim does. This was measured on an H200 machine before buckets,
  with one kernel launch per tensor (about 20 us of host time each): 64
  tensors of 4M elements, fused AdaBelief 2.5 ms (1.02x torch's fused Adam,
  2.8x faster than foreach); 500 tensors of 65536, fused 13 ms against
  foreach 5 ms. Buckets cut the Python cost per tensor but Inductor still
  emits one Triton launch per tensor, so the threshold is kept until it is
  measured again;
- otherwise the multi-tensor path for tensor subclasses torch's foreach
  ops support and the loop for others (the base class's rule), so small
  models, and the test suite, never pay for a compile.

A default-chosen fused step whose compile fails logs a warning and runs the
group with the eager implementation instead; later steps do not retry.
"""

from __future__ import annotations

import array
import contextlib
import functools
import hashlib
import importlib
import json
import logging
import math
import operator
import os
import platform
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import _inductor, _lowp
from ._rules import HostScalars

__all__ = [
    "FUSED_DEFAULT_MIN_NUMEL",
    "FusedCompileError",
    "compile_count",
    "fused_unavailable_reason",
    "fused_update",
    "grad_scaling",
    "scaled_rule",
    "one_device_and_dtype",
    "plain_tensors",
    "prefer_fused",
    "require_fused",
]

logger = logging.getLogger(__name__)

#: A param group with at least this many elements runs fused by default (when
#: the fused path is available). Measured: see the module docstring.
FUSED_DEFAULT_MIN_NUMEL = 1 << 20

#: On CUDA, fused is the default only where tensors average this many elements.
FUSED_DEFAULT_MIN_MEAN_NUMEL_CUDA = 1 << 21

#: Length of the scratch tensors a kernel is traced and checked on. Odd and
#: larger than any rule's scalar vector, so no size coincides with another.
_SCRATCH_NUMEL = 4099


class FusedCompileError(RuntimeError):
    """A fused kernel could not be compiled (raised before any tensor of the group changed)."""


# --------------------------------------------------------------------------
# Availability.
# --------------------------------------------------------------------------

_PLAIN_TYPES = (Tensor, torch.nn.Parameter)
_reason_cache: dict[str, str | None] = {}
_failed_device_types: set[str] = set()


def _probe(device_type: str) -> str | None:
    # Found, not imported: importing Dynamo and Inductor takes seconds, paid only
    # when a kernel is compiled (not when a compiled one is loaded, see ``_Kernel.load``).
    reason = _inductor.missing()
    if reason is not None:  # pragma: no cover - depends on the installation
        return reason
    if device_type == "cpu":
        candidates = [os.environ.get("CXX"), "g++", "clang++", "c++"]
        if not any(name and shutil.which(name) for name in candidates):
            return "no C++ compiler found (set $CXX or install g++ or clang++)"
        return None
    if device_type == "cuda":
        return _inductor.triton_missing()
    return f"no fused kernels for device type {device_type!r} (only cpu and cuda)"


def fused_unavailable_reason(device: torch.device | str) -> str | None:
    """Why the fused path cannot run on ``device``, or ``None`` when it can."""
    if os.environ.get("OPTLAB_DISABLE_FUSED", "") not in ("", "0"):
        return "disabled by OPTLAB_DISABLE_FUSED"
    device_type = torch.device(device).type
    if device_type not in _reason_cache:
        _reason_cache[device_type] = _probe(device_type)
    return _reason_cache[device_type]


def _cannot_run(owner: str, device: torch.device, reason: str) -> str:
    return (
        f"{owner}(fused=True) cannot run on {device}: {reason}. Use fused=False "
        "(or leave fused=None to pick the fastest available implementation)."
    )


def require_fused(owner: str, params: Sequence[Tensor]) -> None:
    """Raise ``RuntimeError`` unless every parameter's device can run fused kernels.

    Parameters on the meta device pass: they hold no data and cannot be
    stepped, and building a model on meta, then ``to_empty(device=...)``, is
    how large models are made; as in torch.optim, the device is checked again
    by the step (:func:`fused_update` refuses one without fused kernels).
    """
    for device in {p.device for p in params if type(p) in _PLAIN_TYPES}:
        reason = None if device.type == "meta" else fused_unavailable_reason(device)
        if reason is not None:
            raise RuntimeError(_cannot_run(owner, device, reason))


def plain_tensors(params: Sequence[Tensor]) -> bool:
    """Whether every parameter is a plain tensor (the fused kernels take no subclasses)."""
    return all(type(p) in _PLAIN_TYPES for p in params)


def prefer_fused(params: Sequence[Tensor]) -> bool:
    """Whether ``fused=None`` picks the fused path for a group with these parameters."""
    if not params or sum(p.numel() for p in params) < FUSED_DEFAULT_MIN_NUMEL:
        return False
    if any(p.device.type != "cpu" for p in params):
        # One launch per tensor (~20 us of host time): fused wins on large tensors only.
        if sum(p.numel() for p in params) < FUSED_DEFAULT_MIN_MEAN_NUMEL_CUDA * len(params):
            return False
    if not plain_tensors(params):
        return False
    return all(
        fused_unavailable_reason(device) is None and device.type not in _failed_device_types
        for device in {p.device for p in params}
    )


def note_default_failure(device_type: str, error: BaseException) -> None:
    """Remember that a default-chosen fused compile failed, so later steps do not retry."""
    _failed_device_types.add(device_type)
    logger.warning(
        "optlab: compiling the fused optimizer kernel failed on %s (%s); using the "
        "non-fused implementation from now on",
        device_type,
        error,
    )


# --------------------------------------------------------------------------
# Kernels.
# --------------------------------------------------------------------------


def scaled_rule(
    rule: Callable[..., None],
    arguments: Sequence[Tensor | None],
    scalars: Tensor,
    flags: Mapping[str, Any],
    grad_scale: Tensor,
    found_inf: Tensor,
) -> None:
    """``rule`` on the gradient divided by ``grad_scale``, undone where ``found_inf`` is nonzero.

    What torch's fused kernels do with ``torch.amp.GradScaler``'s scale: the
    gradient is unscaled in the same pass and written back unscaled, and with
    an inf/NaN found the parameter, the state and the (still scaled) gradient
    are left as they were. Traced into the kernel like the rule itself
    (``where`` on a one-element tensor: no host read of ``found_inf``).
    """
    param, grad, *states = arguments
    unscaled = grad / grad_scale
    updated = [param, *(state for state in states if state is not None)]
    before = [tensor.clone() for tensor in updated]
    rule(param, unscaled, *states, scalars, **flags)
    skip = found_inf != 0
    for tensor, old in zip(updated, before, strict=True):
        tensor.copy_(torch.where(skip, old, tensor))
    grad.copy_(torch.where(skip, grad, unscaled))


_scaling = threading.local()


@contextlib.contextmanager
def grad_scaling(grad_scale: Tensor, found_inf: Tensor) -> Iterator[None]:
    """Within it, this thread's :func:`fused_update` calls apply :func:`scaled_rule`.

    ``grad_scale`` and ``found_inf`` are one-element float32 tensors (a
    ``torch.amp.GradScaler``'s, handed to the optimizer as attributes).
    """
    _scaling.value = (grad_scale.reshape(()), found_inf.reshape(()))
    try:
        yield
    finally:
        _scaling.value = None


def current_grad_scaling() -> tuple[Tensor, Tensor] | None:
    """``(grad_scale, found_inf)`` inside :func:`grad_scaling`, else ``None``."""
    return getattr(_scaling, "value", None)


_compiles = 0
_lock = threading.Lock()


def compile_count() -> int:
    """How many fused kernels this process has compiled (or loaded from the compile cache)."""
    return _compiles


def _bucket_function(
    rule: Callable[..., None],
    present: tuple[bool, ...],
    arity: int,
    flags: Mapping[str, Any],
    scaled: bool = False,
    layout: Layout = (),
) -> tuple[Callable[..., None], list[str]]:
    """``rule`` applied to ``arity`` tensor sets, as one function of named tensor arguments.

    Generated source (rather than ``*args``) so that every graph input maps to
    a named argument, and a fresh code object per signature: Dynamo keys its
    cache (and its recompile limit) on the code object, and every signature is
    a separate kernel, not a recompile of one.

    With a compact ``layout`` (:class:`Layout`) a moment is decoded before the
    rule and rounded into its storage after it (:mod:`optlab.optim._lowp`), in
    the same kernel; the rule gets the first ``layout.num_scalars`` scalars,
    and each set's rounding seeds follow them in the vector.
    """
    names, calls = [], []
    compact = layout.compact if layout else ()
    for slot in range(arity):
        arguments, decodes, stores = [], [], []
        for index, given in enumerate(present):
            if not given:
                arguments.append("None")
                continue
            name = f"t{slot}_{index}"
            names.append(name)
            entry = compact[index] if compact else None
            if entry is None:
                arguments.append(layout.view(name) if layout else name)
                continue
            fmt, kind, state_slot = entry
            absmax = "None"
            if fmt == "int8":
                absmax = f"a{slot}_{index}"
                names.append(absmax)
            seed = f"scalars[{layout.seed_index(slot, index)}].to(torch.int32)"
            value = f"d{slot}_{index}"
            param = layout.view(f"t{slot}_0")
            decodes.append(
                f"    {value} = lowp_decode({fmt!r}, {kind!r}, {layout.view(name)}, {absmax}, "
                f"{param}.dtype)"
            )
            stores.append(
                f"    lowp_store({fmt!r}, {kind!r}, {value}, {layout.view(name)}, {absmax}, {seed}, "
                f"{_lowp.hash_half(fmt, state_slot)})"
            )
            arguments.append(value)
        scalars = f"scalars[:{layout.num_scalars}]" if layout else "scalars"
        if scaled:
            call = (
                f"    scaled_rule(rule, [{', '.join(arguments)}], {scalars}, flags, "
                "grad_scale, found_inf)"
            )
        else:
            call = f"    rule({', '.join(arguments)}, {scalars}, **flags)"
        calls += [*decodes, call, *stores]
    if scaled:
        names += ["grad_scale", "found_inf"]
    suffix = "_".join(f"{k}{int(v) if isinstance(v, bool) else v}" for k, v in flags.items())
    compact_name = f"__{layout.name()}" if layout else ""
    function_name = (
        f"{rule.__name__}__x{arity}__{suffix}{'__scaled' if scaled else ''}{compact_name}"[:200]
    )
    source = f"def {function_name}({', '.join(names)}, scalars):\n" + "\n".join(calls) + "\n"
    namespace: dict[str, Any] = {
        "rule": rule,
        "flags": dict(flags),
        "scaled_rule": scaled_rule,
        "torch": torch,
        "lowp_decode": _lowp.kernel_decode,
        "lowp_store": _lowp.kernel_store,
    }
    exec(compile(source, f"<optlab fused {function_name}>", "exec"), namespace)  # noqa: S102
    return namespace[function_name], [*names, "scalars"]


def _agree(a: Tensor, b: Tensor) -> bool:
    """Whether a kernel's output equals the eager rule's, up to the rounding each format claims.

    Codes may differ by one where fp32 rounding (a fused multiply-add, say)
    moves a value across a rounding threshold; bf16 by one spacing.
    """
    if a.dtype in (torch.int8, torch.uint8, torch.bfloat16):
        # Rounded the same way but for a few values near a threshold: a kernel that
        # rounded to nearest instead of stochastically would differ in about half.
        if a.dtype == torch.bfloat16:
            close = torch.isclose(a.float(), b.float(), rtol=2.0**-7, atol=0.0, equal_nan=True)
        else:
            close = (a.to(torch.int32) - b.to(torch.int32)).abs() <= 1
        same = (a == b) | (a.isnan() & b.isnan()) if a.is_floating_point() else a == b
        return bool(close.all()) and float(same.float().mean()) >= 0.99
    return torch.allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True)


class Layout(tuple):
    """How a kernel's tensor sets store their moments: ``()`` for plain tensors.

    ``Layout((compact, part, num_scalars))``: ``compact`` per rule tensor
    argument ``None`` (plain) or ``(fmt, kind, slot)`` (``slot``: the moment's
    index among the rule's state keys, as in :class:`~optlab.optim._lowp.CompactStates`); ``part`` is ``"flat"`` (bf16:
    1-D sets), ``"blocks"`` (int8: sets whose size is a multiple of
    :data:`~optlab.optim._lowp.BLOCK`, viewed as rows of blocks) or
    ``"tail"`` (int8: sets shorter than a block, one row); ``num_scalars`` the
    rule's own scalars, after which come the seeds, :meth:`seed_index`.
    """

    __slots__ = ()

    @property
    def compact(self) -> tuple[tuple[str, str, int] | None, ...]:
        return self[0]

    @property
    def part(self) -> str:
        return self[1]

    @property
    def num_scalars(self) -> int:
        return self[2]

    @property
    def moments(self) -> list[int]:
        """Rule argument indices of the compact moments."""
        return [index for index, entry in enumerate(self.compact) if entry is not None]

    @property
    def seed_slots(self) -> list[int]:
        """The seeds a tensor set takes, in order (:func:`_seed_slots`)."""
        return _seed_slots(self.compact)

    def seed_index(self, slot: int, index: int) -> int:
        """Where tensor set ``slot``'s seed for rule argument ``index`` is in the scalar vector."""
        seed_slots = self.seed_slots
        fmt, _, state_slot = self.compact[index]
        own = seed_slots.index(_lowp.seed_slot(fmt, state_slot))
        return self.num_scalars + slot * len(seed_slots) + own

    def view(self, name: str) -> str:
        if self.part == "blocks":
            return f"{name}.view(-1, {_lowp.BLOCK})"
        if self.part == "tail":
            return f"{name}.view(1, -1)"
        return name

    def name(self) -> str:
        codes = "".join(
            "p" if entry is None else f"{entry[0][0]}{entry[1][0]}" for entry in self.compact
        )
        return f"{self.part}_{codes}"


#: The layout of kernels over plain tensors.
PLAIN = Layout()


def _seed_slots(compact: Sequence[tuple[str, str, int] | None]) -> list[int]:
    """The seeds one tensor set takes, in order: one per :func:`~optlab.optim._lowp.seed_slot`
    of its compact moments (two bf16 moments share one)."""
    return sorted({_lowp.seed_slot(e[0], e[2]) for e in compact if e is not None})


class _Kernel:
    """One compiled rule for one signature, over a bucket of ``arity`` tensor sets.

    After its first compile it is called directly, one call per bucket: on CPU
    the generated C++ function itself, elsewhere Inductor's generated
    ``call``. Unused slots of the last bucket get one-element scratch tensors
    (``padding``).
    """

    def __init__(
        self,
        rule: Callable[..., None],
        flags: Mapping[str, Any],
        present: tuple[bool, ...],
        device: torch.device,
        dtype: torch.dtype,
        arity: int,
        scaled: bool = False,
        layout: Layout = PLAIN,
    ) -> None:
        self.rule = rule
        self.scaled = scaled  # takes grad_scale and found_inf after the tensor sets
        self.flags = dict(flags)
        self.present = present  # which tensor arguments of the rule are given (not None)
        self.layout = layout
        # Per given tensor of a set: (dtype, kind) with kind "plain", "codes" or "absmax".
        self.members: list[tuple[torch.dtype, str]] = []
        for index, given in enumerate(present):
            entry = layout.compact[index] if layout else None
            if not given:
                continue
            if entry is None:
                self.members.append((dtype, "plain"))
            elif entry[0] == "bfloat16":
                self.members.append((torch.bfloat16, "codes"))
            else:
                code_dtype = torch.int8 if entry[1] == "signed" else torch.uint8
                self.members += [(code_dtype, "codes"), (torch.float32, "absmax")]
        self.width = len(self.members)  # given tensors per set
        self.arity = arity
        self.device = device
        self._on_cpu = _is_cpu(device)
        self.dtype = dtype
        self.threads = _threads(device)
        self.function, self.names = _bucket_function(rule, present, arity, flags, scaled, layout)
        # Scratch sets that fill the last bucket of a step: one element each (an
        # empty tensor would mean a launch of zero blocks on CUDA; int8 blocks:
        # one block), none shared.
        pad = _lowp.BLOCK if layout and layout.part == "blocks" else 1
        self.padding = [
            torch.zeros(1 if kind == "absmax" else pad, device=device, dtype=member_dtype)
            for _ in range(arity)
            for member_dtype, kind in self.members
        ]
        self._compiled: Callable[..., Any] | None = None
        self._direct: Callable[[list[Any]], Any] | None = None
        self._plan: list[tuple[int, bool]] | None = None
        self._runner: Callable[[Sequence[Tensor], Tensor], Any] | None = None
        self._flat = False  # pass 1-D views instead of the tensors themselves
        self._blocks = bool(layout) and layout.part == "blocks"  # compiled as rows of blocks
        self._local = threading.local()  # this thread's scalar vector (see ``scalar_vector``)

    # ----- compile ----------------------------------------------------------

    def compile(self, num_scalars: int) -> None:
        global _compiles
        # Distinct sizes per slot (Dynamo gives equal sizes one symbol), none 0 or 1.
        # int8 blocks are compiled as rows (n, BLOCK) and called with tensors of any
        # shape (the code indexes them linearly; ``runner``), so that a block's
        # reduction and its consumers are one loop (``_inductor.blockwise_fusion``).
        rows = self._blocks
        shapes = [
            (size // _lowp.BLOCK, _lowp.BLOCK) if rows else (size,) for size in self._sizes(0)
        ]
        scratch = self._scratch(shapes, num_scalars, seed=0)
        try:
            compiled = _inductor.compile_function(
                self.function,
                self.names,
                scratch,
                _options(self.layout),
                wide=_wide(self.layout, self.device),
                blockwise=rows,
            )
        except Exception as error:
            raise FusedCompileError(
                f"compiling the fused kernel {self.function.__name__} for "
                f"{self.device.type}/{self.dtype} failed: {type(error).__name__}: {error}"
            ) from error
        with _lock:
            _compiles += 1
        self._compiled = compiled.call
        if compiled.wrapper is None or compiled.plan is None:
            logger.debug("optlab fused: no direct call for %s", self.function.__name__)
            self._refuse_if_compact_disagrees(num_scalars)
            return
        self._direct, self._plan = compiled.wrapper, compiled.plan
        # N-D tensors passed as they are; where the generated code checks
        # dimensions after all (seen with Triton kernels), 1-D views of them.
        for flat in (False, True) if not self.layout else (False,):
            self._flat, self._runner = flat, None
            if self._direct_matches_eager(num_scalars):
                _inductor.trust_layout(self._direct)
                self._call_kernel_directly(num_scalars)
                return
        logger.debug("optlab fused: direct call of %s disagrees", self.function.__name__)
        self._direct = self._plan = self._runner = None
        self._refuse_if_compact_disagrees(num_scalars)

    def _refuse_if_compact_disagrees(self, num_scalars: int) -> None:
        """A compact-state kernel run through Dynamo must still agree with the eager rule.

        (Plain kernels that fall back to Dynamo are correct by construction; a
        compact one could round differently, e.g. if Inductor folded the bit
        arithmetic of the rounding, so it is refused rather than run.)
        """
        if self.layout and not self._direct_matches_eager(num_scalars):
            raise FusedCompileError(
                f"the fused kernel {self.function.__name__} for {self.device.type}/{self.dtype} "
                "does not round compact state as the eager rule does (a torch version whose "
                "Inductor compiles the rounding differently?)"
            )

    def _call_kernel_directly(self, num_scalars: int) -> None:
        """Skip Inductor's Python wrapper where it only forwards to one C++ kernel.

        The generated ``call`` unpacks every argument and checks each tensor's
        layout (~10 us a bucket on a 2-core machine). Where it calls exactly one
        ``cpp_fused_*`` kernel with our tensors and their element counts, the
        runner calls that kernel itself, with the argument order recorded from
        one call on scratch tensors of distinct sizes; checked against the
        eager rule like every runner, else the wrapper is kept.
        """
        if self._flat:
            return
        sizes = self._sizes(1)
        scratch = self._scratch([(size,) for size in sizes], num_scalars, seed=2)
        wrapper_runner = self._runner

        def run() -> None:
            with torch.no_grad():
                wrapper_runner(scratch[:-1], scratch[-1])

        try:
            found = _inductor.cpp_kernel_call(self._direct, run, scratch, sizes, self.width)
        except Exception as error:  # pragma: no cover - depends on the torch version
            logger.debug("optlab fused: recording the kernel call raised %r", error)
            return
        if found is None:  # several kernels, or buffers of its own: record the wrapper
            wrapper = _inductor.wrapper_file(self._direct)
            if wrapper is not None:
                _remember(self, wrapper=wrapper)
            return
        kernel, items = found
        self._runner = _inductor.cpp_runner(kernel, items)
        if not self._direct_matches_eager(num_scalars):
            logger.debug(
                "optlab fused: calling %s's kernel directly disagrees; keeping its wrapper",
                self.function.__name__,
            )
            self._runner = wrapper_runner
            return
        _remember(self, kernel_function=kernel, items=items)

    def load(self, num_scalars: int) -> bool:
        """Use this signature's kernel from an earlier process, if one is recorded and checks out.

        The warm path of :func:`_remember`: load the compiled C++ module and
        call it with the recorded argument order, without importing or
        running Dynamo and Inductor (which costs seconds per process even
        when Inductor finds every artifact in its cache). The kernel must
        still agree with the eager rule on scratch tensors; where anything
        is missing or disagrees, the caller compiles as usual.
        """
        record = _recorded(self)
        if record is None:
            return False
        try:
            if "wrapper" in record:  # a generated module: Inductor imported, nothing traced
                plan = [(int(index), bool(is_size)) for index, is_size in record["plan"]]
                if record.get("inputs") != self._plan_inputs(plan):
                    return False  # the plan hands the module tensors of other dtypes
                self._direct, self._plan = _inductor.load_wrapper(record["wrapper"]), plan
                self._runner = None
                self.runner()  # checked below
            else:
                kernel = _inductor.load_cpp_kernel(record["module"], record["library"])
                self._runner = _inductor.cpp_runner(kernel, record["items"])  # checked below
            if self._direct_matches_eager(num_scalars):
                if self._direct is not None:
                    _inductor.trust_layout(self._direct)
                return True
        except Exception as error:
            logger.debug("optlab fused: loading the recorded kernel failed: %r", error)
        self._direct = self._plan = self._runner = None
        return False

    def _plan_inputs(self, plan: Sequence[tuple[int, bool]]) -> list[str]:
        """What each graph input of ``plan`` is: an element count, or a tensor's dtype.

        Recorded with a wrapper and compared on loading, before any call: the
        self-check catches a plan that swaps tensors of one dtype (their element
        counts or the results differ), but a kernel handed an int8 tensor where
        it reads float32 would read past its end.
        """
        scalars = len(self.names) - 1
        inputs = []
        for index, is_size in plan:
            if is_size:
                inputs.append("count")
            elif index < self.arity * self.width:
                inputs.append(str(self.members[index % self.width][0]))
            else:
                inputs.append("scalars" if index == scalars else "grad scaler")
        return inputs

    def _sizes(self, offset: int) -> list[int]:
        """Distinct element counts, one per slot, for tracing (``offset`` 0) and checks."""
        part = self.layout.part if self.layout else "flat"
        if part == "blocks":  # block counts far from the scalar vector's length
            return [_lowp.BLOCK * (61 + 2 * slot + offset) for slot in range(self.arity)]
        if part == "tail":
            return [101 + 2 * slot + offset for slot in range(self.arity)]
        return [_SCRATCH_NUMEL + 2 * slot + offset for slot in range(self.arity)]

    def _scratch(
        self, shapes: Sequence[tuple[int, ...]], num_scalars: int, seed: int
    ) -> list[Tensor]:
        """Random tensors, one set per shape (positive values, valid codes), then the scalar vector."""
        generator = torch.Generator().manual_seed(seed)
        args = []
        for shape in shapes:
            numel = math.prod(shape)
            for member_dtype, kind in self.members:
                if kind == "absmax":
                    blocks = -(-numel // _lowp.BLOCK)
                    values = torch.rand(blocks, generator=generator, dtype=torch.float64) + 0.5
                elif member_dtype in (torch.int8, torch.uint8):
                    low, high = (-127, 128) if member_dtype == torch.int8 else (1, 256)
                    values = torch.randint(low, high, shape, generator=generator)
                else:
                    values = torch.rand(shape, generator=generator, dtype=torch.float64) + 0.5
                args.append(values.to(device=self.device, dtype=member_dtype))
        if self.scaled:  # a power of two, as GradScaler's; nothing found
            args.append(torch.tensor(4.0, device=self.device))
            args.append(torch.tensor(0.0, device=self.device))
        scalars = torch.rand(num_scalars, generator=generator, dtype=torch.float64) * 0.5 + 0.25
        if self.layout:  # the seeds: integers
            count = num_scalars - self.layout.num_scalars
            seeds = torch.randint(0, 1 << 31, (count,), generator=generator, dtype=torch.float64)
            scalars[self.layout.num_scalars :] = seeds
        args.append(scalars.to(self.device))
        return args

    def _direct_matches_eager(self, num_scalars: int) -> bool:
        # N-D tensors (to be indexed linearly), equal sizes in two slots, and,
        # when the bucket has room, a one-element last slot (as the padding);
        # int8 parts: 1-D, whole blocks or one short block.
        part = self.layout.part if self.layout else "flat"
        if part == "flat":
            shapes = [(3, _SCRATCH_NUMEL // 3 + 1 + slot % 2) for slot in range(self.arity)]
            last = (1,)
        else:
            sizes = self._sizes(1)
            shapes = [(sizes[slot - slot % 2],) for slot in range(self.arity)]
            last = (_lowp.BLOCK if part == "blocks" else 1,)
        if self.arity > 1:
            shapes[-1] = last
        direct_args = self._scratch(shapes, num_scalars, seed=1)
        eager_args = self._scratch(shapes, num_scalars, seed=1)
        try:
            with torch.no_grad():
                self.runner()(direct_args[:-1], direct_args[-1])
                self.function(*eager_args)
        except Exception as error:
            logger.debug("optlab fused: direct call raised %r", error)
            return False
        return all(map(_agree, direct_args, eager_args))

    # ----- run --------------------------------------------------------------

    def scalar_vector(self, values: Sequence[float]) -> Tensor:
        """``values`` as the 1-D float64 tensor the kernel takes, on its device.

        On CPU one vector per thread is kept and rewritten in place, through
        the ``array`` it shares memory with: ``torch.tensor(values)`` costs
        about 70 us on the 2-core machine right after a large step has
        flushed the caches, writing the array about 13 us. Safe because a CPU
        kernel has finished when its call returns, and the vector is only
        read by this thread's calls before the next write. Elsewhere a new
        tensor is made each time (a host buffer would be overwritten before
        an asynchronous copy had read it).
        """
        if not self._on_cpu:
            return torch.tensor(values, dtype=torch.float64, device=self.device)
        new = array.array("d", values)
        kept = getattr(self._local, "scalars", None)
        if kept is None or len(kept[0]) != len(new):
            kept = self._local.scalars = (new, torch.frombuffer(new, dtype=torch.float64))
        else:
            kept[0][:] = new
        return kept[1]

    def runner(self) -> Callable[[Sequence[Tensor], Tensor], Any]:
        """``run(tensors, scalars)``: ``tensors`` holds ``arity`` sets of the given tensors.

        The direct call's argument list is built by a function generated once
        from the graph's input plan: a bucket then costs one Python call and
        one list display.
        """
        if self._runner is not None:
            return self._runner
        rows = self._row_arguments()
        if self._direct is None:
            compiled = self._compiled
            if rows:  # as compiled: rows of blocks (Dynamo would compile 1-D tensors anew)
                width = _lowp.BLOCK

                def through_dynamo(tensors: Sequence[Tensor], scalars: Tensor) -> Any:
                    return compiled(
                        *(t.view(-1, width) if i in rows else t for i, t in enumerate(tensors)),
                        scalars,
                    )

            else:

                def through_dynamo(tensors: Sequence[Tensor], scalars: Tensor) -> Any:
                    return compiled(*tensors, scalars)

            self._runner = through_dynamo
            return self._runner
        scalars_index = len(self.names) - 1
        wrapper = _inductor.reuse_buffers(self._direct) if self._on_cpu else self._direct
        self._runner = _inductor.wrapper_runner(
            wrapper, self._plan, scalars_index, self._flat, rows
        )
        return self._runner

    def _row_arguments(self) -> dict[int, int]:
        """Argument index -> row width, for the tensors compiled as rows of blocks."""
        if not self._blocks:
            return {}
        return {
            index: _lowp.BLOCK
            for index in range(self.arity * self.width)
            if self.members[index % self.width][1] != "absmax"
        }


_dtype_of = operator.attrgetter("dtype")
_device_of = operator.attrgetter("device")
_is_cpu_tensor = operator.attrgetter("is_cpu")
_kernels: dict[tuple[Any, ...], _Kernel] = {}


def one_device_and_dtype(tensors: Sequence[Tensor]) -> bool:
    """Whether the (non-empty) ``tensors`` all share one device and one dtype.

    C-level scans: on CPU ``is_cpu`` (``get_device()`` is -1 for CPU and meta
    tensors alike), elsewhere the devices themselves. Measured right after a
    large step has flushed the caches: splitting 500 tensors into runs takes
    about 0.16 ms through this check, 0.24 ms sorting them one by one.
    """
    if tensors[0].is_cpu:
        if not all(map(_is_cpu_tensor, tensors)):
            return False
    elif len(set(map(_device_of, tensors))) != 1:
        return False
    return len(set(map(_dtype_of, tensors))) == 1


def _threads(device: torch.device) -> int | None:
    """The thread count a CPU kernel is generated for (``None`` elsewhere).

    Inductor emits a C++ kernel for the thread count of the process that
    compiles it (``torch.get_num_threads()``): with one thread, serial loops
    with no OpenMP region. Such a kernel runs correctly under any thread count
    but on one core only (measured: SGD with momentum, 64 tensors of 262144,
    1.34x torch's fused SGD against 1.02x for the kernel generated for 2
    threads), so kernels are kept, and recorded, per thread count: a lab
    worker that trains with one thread must not hand its serial kernels to
    the next process.
    """
    return torch.get_num_threads() if _is_cpu(device) else None


@functools.cache
def _is_cpu(device: torch.device) -> bool:
    # Kept: ``device.type`` builds a new string each time (~18 us right after a
    # large step has flushed the caches, on the 2-core machine; a lookup ~4 us).
    return device.type == "cpu"


# One kernel compiles in-process faster than through a pool of compile workers.
_INDUCTOR_OPTIONS: dict[str, Any] = {"compile_threads": 1}

#: Kernels over compact state (:mod:`._lowp`) need no option of their own: their
#: rounding works on bit patterns (bf16) and integer codes (int8), which no
#: Inductor setting changes. (An earlier arithmetic rounding needed
#: ``emulate_precision_casts``, which costs a third of a bf16 kernel's time.)
_COMPACT_OPTIONS: dict[str, Any] = {}


#: Floats per vector register (``_inductor.floats_per_register``) at which full-precision
#: CPU kernels are compiled wide too: two registers per loop step. AVX2 (8): on a 2-core
#: Zen 3 machine (AVX2 only), Adam and AdaBelief steps went from a median 1.08-1.21x
#: torch fused Adam's time to 1.01-1.07x, large and mixed regimes, five process pairs
#: each (docs/benchmarks.md, "Full precision on AVX2"). On AVX-512 (16) the kernels were
#: at 1.00-1.03x with one register and stay so (two were not measured there).
_WIDE_FULL_PRECISION = frozenset({8})


def _wide(layout: Layout, device: torch.device) -> bool:
    """Whether a kernel's CPU vector loops take two registers per step
    (``_inductor.wide_tiling``): compact-state kernels always (whole bf16 and int8
    loads and stores), full-precision ones where :data:`_WIDE_FULL_PRECISION` says."""
    if layout:
        return True
    return device.type == "cpu" and _inductor.floats_per_register() in _WIDE_FULL_PRECISION


def _options(layout: Layout) -> dict[str, Any]:
    return {**_INDUCTOR_OPTIONS, **_COMPACT_OPTIONS} if layout else _INDUCTOR_OPTIONS


#: Tensor sets per kernel call (one compiled kernel updates this many
#: parameters at once). Measured on the 2-core CPU, 500 AdaBelief tensors of
#: 4096: 8 gives 0.75x torch fused Adam's step time with a 15 s cold compile,
#: 16 gives 0.67x with 24 s (the compile grows with the bucket, the host cost
#: per tensor shrinks with it).
BUCKET_SIZE = 8


def _kernel(
    rule: Callable[..., None],
    flags: Mapping[str, Any],
    present: tuple[bool, ...],
    device: torch.device,
    dtype: torch.dtype,
    num_scalars: int,
    scaled: bool = False,
    layout: Layout = PLAIN,
) -> _Kernel:
    global _compiles
    # Flags in the caller's order: each rule has one call site.
    key = (rule, present, device, dtype, _threads(device), scaled, layout, *flags.items())
    kernel = _kernels.get(key)
    if kernel is None:
        reason = fused_unavailable_reason(device)  # e.g. parameters still on meta
        if reason is not None:
            raise FusedCompileError(
                f"fused=True cannot step parameters on {device}: {reason}. Move them to a "
                "device with fused kernels first (e.g. module.to_empty(device='cpu') after "
                "building on meta), or use fused=False."
            )
        kernel = _Kernel(rule, flags, present, device, dtype, BUCKET_SIZE, scaled, layout)
        if kernel.load(num_scalars):
            with _lock:
                _compiles += 1
        else:
            kernel.compile(num_scalars)
        _kernels[key] = kernel
    return kernel


# --------------------------------------------------------------------------
# Compiled kernels remembered across processes.
# --------------------------------------------------------------------------

#: Bump when what a record holds, or how it is used, changes.
_RECORD_FORMAT = 4


def _cache_dir() -> Path:
    """Inductor's cache directory (its own rule, without importing Inductor), our subfolder.

    Beside Inductor's artifacts, so that a new ``TORCHINDUCTOR_CACHE_DIR``
    (or clearing it) starts cold for both.
    """
    return _inductor.cache_root() / "optlab_fused"


@functools.cache
def _machine() -> str:
    """What the compiled code depends on besides its source: CPU and its instruction sets."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            lines = [line for line in cpuinfo if line.startswith(("model name", "flags"))]
        cpu = "".join(sorted(set(lines)))
    except OSError:
        pass
    return f"{platform.machine()}|{cpu}"


#: The code rules call (where that module exists): part of every kernel's source.
_RULES_MODULE = "optlab.optim._rules"


def _sources(kernel: _Kernel) -> list[str]:
    """The modules a kernel's generated code depends on: this one, :mod:`._inductor`,
    the rule's module and, where it exists, :data:`_RULES_MODULE`."""
    names = [__name__, _inductor.__name__, kernel.rule.__module__]
    if kernel.layout:
        names.append(_lowp.__name__)
    if _RULES_MODULE not in names:
        try:
            importlib.import_module(_RULES_MODULE)
        except ModuleNotFoundError as error:
            if error.name != _RULES_MODULE:
                raise
        else:
            names.append(_RULES_MODULE)
    return names


@functools.cache
def _source_digest(*modules: str) -> str:
    digest = hashlib.sha256()
    for name in modules:
        digest.update(Path(sys.modules[name].__file__).read_bytes())
    return digest.hexdigest()


def _record_path(kernel: _Kernel) -> Path:
    identity = json.dumps(
        [
            _RECORD_FORMAT,
            torch.__version__,
            sys.version,
            _machine(),
            _source_digest(*_sources(kernel)),
            kernel.rule.__qualname__,
            sorted(kernel.flags.items()),
            kernel.present,
            kernel.arity,
            str(kernel.dtype),
            kernel.device.type,
            kernel.threads,
            kernel.scaled,
            list(kernel.layout),
            os.cpu_count(),  # Inductor names the thread count in the code when they differ
            sorted(_options(kernel.layout).items()),
            # Inductor's settings from the environment (its cache folder aside: Inductor
            # sets that variable itself once it runs, and the record lives there).
            sorted(
                (k, v)
                for k, v in os.environ.items()
                if k.startswith("TORCHINDUCTOR_") and k != "TORCHINDUCTOR_CACHE_DIR"
            ),
        ],
        default=str,
    )
    return _cache_dir() / f"{hashlib.sha256(identity.encode()).hexdigest()}.json"


def _recorded(kernel: _Kernel) -> dict[str, Any] | None:
    if kernel.device.type != "cpu":
        return None
    try:
        record = json.loads(_record_path(kernel).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    if not Path(str(record.get("wrapper", record.get("library")))).is_file():
        return None
    return record


def _remember(
    kernel: _Kernel,
    *,
    kernel_function: Any = None,
    items: list[str] | None = None,
    wrapper: str | None = None,
) -> None:
    """Record how a checked kernel is called, for later processes.

    Either the C++ kernel itself (its library, module and argument
    expressions ``items``) or, where the generated wrapper does more than
    forward to one kernel (int8 blocks: several kernels, buffers of its own),
    the wrapper's module file and the input plan.
    """
    if kernel.device.type != "cpu":
        return
    if wrapper is not None:
        plan = kernel._plan
        record: dict[str, Any] = {
            "wrapper": wrapper,
            "plan": plan,
            "inputs": kernel._plan_inputs(plan),
        }
    else:
        location = _inductor.cpp_library(kernel_function)
        if location is None:
            return
        library, name = location
        record = {"library": library, "module": name, "items": items}
    path = _record_path(kernel)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as file:
            json.dump(record, file)
        os.replace(file.name, path)  # atomic: concurrent processes write whole records
    except OSError as error:  # a read-only cache: the next process compiles again
        logger.debug("optlab fused: cannot record the kernel: %r", error)


# --------------------------------------------------------------------------
# The entry point the algorithm modules call.
# --------------------------------------------------------------------------


def fused_update(
    rule: Callable[..., None],
    tensors: Sequence[Sequence[Tensor] | None],
    scalars: Callable[[Any], Sequence[float]],
    keys: Sequence[Any] | None = None,
    **flags: Any,
) -> None:
    """Apply ``rule`` to every parameter, one fused kernel call per bucket of tensor sets.

    Args:
        rule: ``rule(param, grad, *state, scalars, **flags)``, elementwise and
            in place (it ends with ``copy_`` into the tensors it updates); a
            state argument may be ``None`` (an unused state, e.g. without
            amsgrad). ``scalars`` is a 1-D float64 tensor.
        tensors: the rule's tensor arguments as parallel lists (the first is
            the parameters), ``None`` for an argument not used.
        scalars: from a tensor's key (its step count, say) to the scalar
            vector; computed on the host in float64, once per distinct key.
        keys: one key per parameter (``None``: every key is ``None``).
        flags: static options, each a bool (a separate kernel per value).

    Inside :func:`grad_scaling` every tensor set goes through
    :func:`scaled_rule` (a kernel of its own per signature).
    """
    params = tensors[0]
    if not params:
        return
    if any(isinstance(lists, _lowp.CompactStates) for lists in tensors):
        _compact_update(rule, tensors, scalars, keys, flags)
        return
    scaling = current_grad_scaling()
    count = len(params)
    present = tuple(lists is not None for lists in tensors)
    # Runs of tensors sharing a kernel (device, dtype) and a scalar vector: one, usually.
    first = params[0]
    signature = (first.device, first.dtype)
    key = None if keys is None else keys[0]
    if one_device_and_dtype(params) and (keys is None or keys.count(key) == count):
        runs = {(signature, key): range(count)}
    else:
        runs = {}
        for index, param in enumerate(params):
            run_key = ((param.device, param.dtype), None if keys is None else keys[index])
            runs.setdefault(run_key, []).append(index)
    # Compile every kernel this call needs before any tensor changes.
    values = {key: list(scalars(key)) for _, key in runs}
    kernels = {}
    for signature, key in runs:
        if signature not in kernels:
            device, dtype = signature
            kernels[signature] = _kernel(
                rule, flags, present, device, dtype, len(values[key]), scaling is not None
            )
    given = [lists for lists in tensors if lists is not None]
    is_contiguous = Tensor.is_contiguous
    for (signature, key), indices in runs.items():
        kernel = kernels[signature]
        runner, arity = kernel.runner(), kernel.arity
        extra = []  # what follows the tensor sets in a call: GradScaler's tensors
        if scaling is not None:
            device = signature[0]
            extra = [t.to(device=device, dtype=torch.float32) for t in scaling]
        vector = kernel.scalar_vector(values[key])
        # Grads match their parameter's dtype, device and shape (autograd and the
        # ``.grad`` setter check it) and the state is ours: only the layout is checked.
        run_lists = given if len(indices) == count else [[x[i] for i in indices] for x in given]
        flat = [tensor for tensor_set in zip(*run_lists, strict=True) for tensor in tensor_set]
        if not (all(map(is_contiguous, flat)) and all(map(Tensor.numel, run_lists[0]))):
            flat = []
            for tensor_set in zip(*run_lists, strict=True):
                if not all(map(is_contiguous, tensor_set)):
                    # Rare: a non-contiguous tensor set runs the same rule eagerly.
                    full = iter(tensor_set)
                    arguments = [None if lists is None else next(full) for lists in tensors]
                    if scaling is None:
                        rule(*arguments, vector, **flags)
                    else:
                        scaled_rule(rule, arguments, vector, flags, *extra)
                elif tensor_set[0].numel():
                    flat += tensor_set
        stride = arity * kernel.width
        end = len(flat) - len(flat) % stride
        for start in range(0, end, stride):
            runner(flat[start : start + stride] + extra, vector)
        if end < len(flat):
            missing = (stride - (len(flat) - end)) // kernel.width
            runner(flat[end:] + kernel.padding[: missing * kernel.width] + extra, vector)


def _compact_update(
    rule: Callable[..., None],
    tensors: Sequence[Sequence[Tensor] | None],
    scalars: Callable[[Any], Sequence[float]],
    keys: Sequence[Any] | None,
    flags: Mapping[str, Any],
) -> None:
    """:func:`fused_update` where some moments are stored compactly (:mod:`._lowp`).

    The same kernels, generated with decoding before the rule and rounding
    after it, one per part kind (bf16: whole tensors; int8: the tensors' full
    blocks, and the shorter last blocks, each viewed 1-D); every tensor set
    brings its rounding seeds, written into the scalar vector after the
    rule's own scalars, bucket by bucket. Tensor sets that are not contiguous
    run the rule eagerly with the same decoding and rounding.
    """
    if current_grad_scaling() is not None:
        raise RuntimeError(
            "optlab: GradScaler's fused route does not apply to compact state (state_dtype); "
            "the optimizer reports _step_supports_amp_scaling=False for it"
        )
    params = tensors[0]
    present = tuple(lists is not None for lists in tensors)
    compact = tuple(
        (lists.fmt, lists.kind, lists.slot) if isinstance(lists, _lowp.CompactStates) else None
        for lists in tensors
    )
    moments = [index for index, entry in enumerate(compact) if entry is not None]
    seeds_per_set = len(_seed_slots(compact))
    blocked = any(compact[index][0] == "int8" for index in moments)
    # Runs of parameters sharing a device, a dtype and a scalar key.
    runs: dict[tuple[Any, ...], list[int]] = {}
    for index, param in enumerate(params):
        runs.setdefault(
            (param.device, param.dtype, None if keys is None else keys[index]), []
        ).append(index)
    values = {key: list(scalars(key)) for _, _, key in runs}
    parts = ("blocks", "tail") if blocked else ("flat",)
    kernels: dict[tuple[Any, ...], _Kernel] = {}
    for device, dtype, key in runs:  # compiled before any tensor changes
        for part in parts:
            layout = Layout((compact, part, len(values[key])))
            if (device, dtype, part) not in kernels:
                kernels[device, dtype, part] = _kernel(
                    rule, flags, present, device, dtype,
                    len(values[key]) + BUCKET_SIZE * seeds_per_set, False, layout,
                )  # fmt: skip
    for (device, dtype, key), indices in runs.items():
        vector = values[key]
        sets: dict[str, list[tuple[list[Tensor], list[int]]]] = {part: [] for part in parts}
        for index in indices:
            members = [lists[index] for lists in tensors if lists is not None]
            if not all(map(Tensor.is_contiguous, members)):
                arguments = [None if lists is None else lists[index] for lists in tensors]
                _lowp.run_rule(rule, arguments, tensors, index, HostScalars(vector), flags)
                continue
            _split_sets(tensors, index, blocked, sets)
        for part, part_sets in sets.items():
            if part_sets:
                _run_sets(kernels[device, dtype, part], part_sets, vector, seeds_per_set)


def _split_sets(
    tensors: Sequence[Sequence[Tensor] | None],
    index: int,
    blocked: bool,
    sets: dict[str, list[tuple[list[Tensor], list[int]]]],
) -> None:
    """Parameter ``index``'s tensor sets, per part kind: 1-D views (int8 parts) and their seeds.

    bf16 sets are the (contiguous) tensors themselves: their kernel indexes N-D
    tensors linearly (checked at compile). Views are made only where a part is
    less than the whole tensor: two view calls per tensor were most of the host
    time of a compact step on 500 small tensors.
    """
    numel = tensors[0][index].numel()
    if numel == 0:
        return
    for part_index, (start, stop) in enumerate(_lowp.parts(numel) if blocked else [(0, numel)]):
        members, seeds = [], {}
        whole = stop - start == numel
        for lists in tensors:
            if lists is None:
                continue
            tensor = lists[index]
            if blocked:
                if tensor.dim() != 1:
                    tensor = tensor.view(-1)
                if not whole:
                    tensor = tensor[start:stop]
            members.append(tensor)
            if isinstance(lists, _lowp.CompactStates):
                seeds[_lowp.seed_slot(lists.fmt, lists.slot)] = lists.seeds[index][part_index]
                if lists.absmax is not None:
                    blocks = lists.absmax[index]
                    if not whole:
                        blocks = blocks[start // _lowp.BLOCK : -(-stop // _lowp.BLOCK)]
                    members.append(blocks)
        if not blocked:
            part = "flat"
        else:
            part = "blocks" if (stop - start) % _lowp.BLOCK == 0 else "tail"
        sets[part].append((members, [seeds[pair] for pair in sorted(seeds)]))


def _run_sets(
    kernel: _Kernel,
    sets: list[tuple[list[Tensor], list[int]]],
    vector: list[float],
    seeds_per_set: int,
) -> None:
    runner, arity = kernel.runner(), kernel.arity
    for start in range(0, len(sets), arity):
        bucket = sets[start : start + arity]
        flat = [tensor for members, _ in bucket for tensor in members]
        seeds = [float(value) for _, bucket_seeds in bucket for value in bucket_seeds]
        missing = arity - len(bucket)
        if missing:
            flat += kernel.padding[: missing * kernel.width]
            seeds += [0.0] * (missing * seeds_per_set)
        runner(flat, kernel.scalar_vector(vector + seeds))
