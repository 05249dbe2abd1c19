r"""The fused path: one generated kernel per update rule, one pass over memory per tensor.

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

- One kernel per *signature*: (rule, static flags such as ``amsgrad`` or
  ``maximize``, device type, dtype; on CPU also single- or multi-threaded,
  below or above :data:`SERIAL_MAX_NUMEL` elements, as ATen's own fused
  kernels split work). It is traced once with ``dynamic=True``
  on 1-D scratch tensors, so the element count is a symbol: the same kernel
  serves every parameter of every shape. 64 or 500 parameter tensors cost
  one compile, not 64 or 500.
- Hyper-parameters (lr, betas, eps, weight decay) and the step-dependent
  factors (bias corrections, AdaBelief's rectification) are computed on the
  host in float64 and passed in a small float64 tensor, so a scheduler
  changing ``lr``, a new step or a changed beta never recompiles. Only the
  static flags are baked in, and each signature is compiled at most once
  per process (and read from Inductor's on-disk cache in the next one).
- After the compile, the kernel is called directly: Inductor's generated
  ``call`` receives the tensors and their element counts, without Dynamo's
  per-call guard evaluation (about 25 us a call on a 2-core machine, more
  than the kernel itself for a 4096-element tensor). The guards' job is done
  here instead: a kernel is looked up by its signature, and only contiguous
  tensors of that device and dtype reach it. The layout checks of the
  generated code are switched off so that contiguous N-D tensors are passed
  as they are (the C++ kernel indexes them linearly; creating 1-D views
  costs a few microseconds per tensor per step on a small CPU). Before
  first use, each kernel is checked against the eager rule on N-D scratch
  tensors; where that fails (Triton kernels check dimensions themselves) it
  is checked again with 1-D views, which are then passed; should both fail
  with some torch version, the kernel is called through Dynamo (correct,
  slower) and a debug log says so. Tensors that are not contiguous run the
  same rule eagerly.
- No per-step temporaries: the kernel writes into ``p`` and the state in
  place; the only allocation per step is the float64 scalar vector.

Compiles are counted by :func:`compile_count` (and show in
``torch._dynamo.utils.counters``); none happens after a signature's first
step, whatever the learning rate, the step or which parameters have grads.

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
  :data:`FUSED_DEFAULT_MIN_NUMEL` (1M) elements: the first step's compile
  (10-20 s cold, about 3 s with a warm cache on the 2-core machine
  measured) is repaid within a few hundred steps, since the foreach and
  loop paths are 2-6x slower there (their temporaries are parameter-sized);
  smaller models keep the eager default and never compile;
- on CUDA, fused only where the group's tensors average at least
  :data:`FUSED_DEFAULT_MIN_MEAN_NUMEL_CUDA` (2M) elements, else foreach as
  torch.optim does: the fused path launches one kernel per tensor (about
  20 us of host time each on the H200 machine measured), which keeps the
  GPU busy only when each kernel moves enough bytes. Measured there: 64
  tensors of 4M elements, fused AdaBelief 2.5 ms (1.02x torch's fused Adam,
  2.8x faster than foreach); 500 tensors of 65536, fused 13 ms against
  foreach 5 ms;
- otherwise the multi-tensor path for tensor subclasses torch's foreach
  ops support and the loop for others (the base class's rule), so small
  models, and the test suite, never pay for a compile.

A default-chosen fused step whose compile fails logs a warning and runs the
group with the eager implementation instead; later steps do not retry.
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
import threading
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "FUSED_DEFAULT_MIN_NUMEL",
    "FusedCompileError",
    "compile_count",
    "fused_unavailable_reason",
    "fused_update",
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
    try:
        import torch._dynamo  # noqa: F401
        import torch._inductor.compile_fx  # noqa: F401
    except Exception as error:  # pragma: no cover - depends on the installation
        return f"TorchInductor cannot be imported ({type(error).__name__}: {error})"
    if device_type == "cpu":
        candidates = [os.environ.get("CXX"), "g++", "clang++", "c++"]
        if not any(name and shutil.which(name) for name in candidates):
            return "no C++ compiler found (set $CXX or install g++ or clang++)"
        return None
    if device_type == "cuda":
        try:
            from torch.utils._triton import has_triton
        except Exception:  # pragma: no cover
            return "Triton support cannot be imported"
        return None if has_triton() else "Triton is not installed (pip install triton)"
    return f"no fused kernels for device type {device_type!r} (only cpu and cuda)"


def fused_unavailable_reason(device: torch.device | str) -> str | None:
    """Why the fused path cannot run on ``device``, or ``None`` when it can."""
    if os.environ.get("OPTLAB_DISABLE_FUSED", "") not in ("", "0"):
        return "disabled by OPTLAB_DISABLE_FUSED"
    device_type = torch.device(device).type
    if device_type not in _reason_cache:
        _reason_cache[device_type] = _probe(device_type)
    return _reason_cache[device_type]


def require_fused(owner: str, params: Sequence[Tensor]) -> None:
    """Raise ``RuntimeError`` unless every parameter's device can run fused kernels."""
    for device in {p.device for p in params if type(p) in _PLAIN_TYPES}:
        reason = fused_unavailable_reason(device)
        if reason is not None:
            raise RuntimeError(
                f"{owner}(fused=True) cannot run on {device}: {reason}. Use fused=False "
                "(or leave fused=None to pick the fastest available implementation)."
            )


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

_compiles = 0
_lock = threading.Lock()


def compile_count() -> int:
    """How many fused kernels this process has compiled (or loaded from the compile cache)."""
    return _compiles


def _no_layout_check(*args: Any, **kwargs: Any) -> None:
    return None


class _Kernel:
    """One compiled rule for one signature, called directly after its first compile."""

    def __init__(
        self,
        rule: Callable[..., None],
        flags: Mapping[str, Any],
        present: tuple[bool, ...],
        device: torch.device,
        dtype: torch.dtype,
        serial: bool = False,
    ) -> None:
        self.rule = rule
        self.serial = serial
        self.flags = dict(flags)
        self.present = present  # which tensor arguments are given (not None)
        self.present_at = {index for index, given in enumerate(present) if given}
        self.device = device
        self.dtype = dtype
        self.names = [
            name
            for name, parameter in inspect.signature(rule).parameters.items()
            if parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        ]
        self._compiled: Callable[..., Any] | None = None
        self._direct: Callable[[list[Any]], Any] | None = None
        self._plan: list[tuple[int, bool]] | None = None
        self._runner: Callable[[tuple[Tensor, ...], Tensor], Any] | None = None
        self._flat = False  # pass 1-D views instead of the tensors themselves

    # ----- compile ----------------------------------------------------------

    def compile(self, num_scalars: int) -> None:
        global _compiles
        from torch._inductor.compile_fx import compile_fx, compile_fx_inner

        captured: dict[str, Any] = {}

        def inner_compile(graph, example_inputs, **kwargs):
            output = compile_fx_inner(graph, example_inputs, **kwargs)
            captured["output"] = output
            return output

        def backend(graph, example_inputs):
            captured["plan"] = self._plan_from(graph)
            return compile_fx(graph, example_inputs, inner_compile=inner_compile)

        # A fresh code object per signature: Dynamo keys its cache (and its
        # recompile limit) on the code object, and every signature is a
        # separate kernel, not a recompile of one.
        code = self.rule.__code__
        suffix = "_".join(
            f"{k}{int(v) if isinstance(v, bool) else v}" for k, v in self.flags.items()
        )
        fresh = types.FunctionType(
            code.replace(co_name=f"{code.co_name}__{suffix}"[:200]),
            self.rule.__globals__,
            self.rule.__name__,
            self.rule.__defaults__,
            self.rule.__closure__,
        )
        compiled = torch.compile(fresh, dynamic=True, fullgraph=True, backend=backend)
        scratch = self._scratch(num_scalars, seed=0)
        try:
            with (
                torch.no_grad(),
                torch._functorch.config.patch(enable_autograd_cache=False),
                torch._inductor.config.patch(_inductor_options(self.serial)),
            ):
                compiled(*scratch, **self.flags)
        except Exception as error:
            raise FusedCompileError(
                f"compiling the fused kernel {self.rule.__name__}({suffix}) for "
                f"{self.device.type}/{self.dtype} failed: {type(error).__name__}: {error}"
            ) from error
        with _lock:
            _compiles += 1
        self._compiled = compiled
        output = captured.get("output")
        direct = getattr(output, "current_callable", None)
        plan = captured.get("plan")
        if direct is None or plan is None:
            logger.debug("optlab fused: no direct call for %s; calling through Dynamo", suffix)
            return
        function = getattr(direct, "__func__", direct)
        module_globals = getattr(function, "__globals__", {})
        if "assert_size_stride" in module_globals:
            module_globals["assert_size_stride"] = _no_layout_check
        self._direct, self._plan = direct, plan
        # N-D tensors passed as they are; where the generated code checks
        # dimensions after all (seen with Triton kernels), 1-D views of them.
        for flat in (False, True):
            self._flat, self._runner = flat, None
            if self._direct_matches_eager(num_scalars):
                return
        logger.debug("optlab fused: direct call of %s disagrees; calling through Dynamo", suffix)
        self._direct = self._plan = self._runner = None

    def _plan_from(self, graph: torch.fx.GraphModule) -> list[tuple[int, bool]] | None:
        """Map the graph's inputs to (argument index, is-its-element-count)."""
        plan = []
        for node in graph.graph.nodes:
            if node.op != "placeholder":
                continue
            source = getattr(node.meta.get("grapharg"), "source", None)
            base, is_size = source, False
            if hasattr(source, "prop") and hasattr(source, "base"):
                if (
                    getattr(source.prop, "name", None) != "SIZE"
                    or getattr(source, "idx", None) != 0
                ):
                    return None
                base, is_size = source.base, True
            name = getattr(base, "local_name", None)
            if name not in self.names:
                return None
            plan.append((self.names.index(name), is_size))
        return plan

    def _scratch(self, num_scalars: int, seed: int, shape: tuple[int, ...] = ()) -> list[Any]:
        generator = torch.Generator().manual_seed(seed)
        shape = shape or (_SCRATCH_NUMEL,)
        args: list[Any] = []
        for present in self.present:
            if not present:
                args.append(None)
                continue
            values = torch.rand(shape, generator=generator, dtype=torch.float64) + 0.5
            args.append(values.to(device=self.device, dtype=self.dtype))
        scalars = torch.rand(num_scalars, generator=generator, dtype=torch.float64) * 0.5 + 0.25
        args.append(scalars.to(self.device))
        return args

    def _direct_matches_eager(self, num_scalars: int) -> bool:
        # An N-D scratch: the direct call must index it linearly, as a 1-D one.
        shape = (3, _SCRATCH_NUMEL // 3 + 1)
        direct_args = self._scratch(num_scalars, seed=1, shape=shape)
        eager_args = self._scratch(num_scalars, seed=1, shape=shape)
        try:
            with torch.no_grad():
                self.run(direct_args[:-1], direct_args[-1])
                self.rule(*eager_args, **self.flags)
        except Exception as error:
            logger.debug("optlab fused: direct call raised %r", error)
            return False
        return all(
            a is None or torch.allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True)
            for a, b in zip(direct_args, eager_args, strict=True)
        )

    # ----- run --------------------------------------------------------------

    def run(self, tensors: Sequence[Tensor | None], scalars: Tensor) -> None:
        """Update one tensor set in place (contiguous, this kernel's device and dtype)."""
        self.runner()(tuple(t for t in tensors if t is not None), scalars)

    def runner(self) -> Callable[[tuple[Tensor, ...], Tensor], Any]:
        """``run`` for the given tensors only (no ``None``s), with the least work per call.

        The direct call's argument list is built by a function generated once
        from the graph's input plan: the hot loop then costs one Python call
        and one list display per tensor.
        """
        if self._runner is not None:
            return self._runner
        if self._direct is None:
            positions = [i for i, present in enumerate(self.present) if present]

            def through_dynamo(given: tuple[Tensor, ...], scalars: Tensor) -> Any:
                args: list[Any] = [None] * len(self.present)
                for position, tensor in zip(positions, given, strict=True):
                    args[position] = tensor
                return self._compiled(*args, scalars, **self.flags)

            self._runner = through_dynamo
            return self._runner
        # Rule argument index -> index among the given (non-None) tensors, or the scalars.
        given_index = {}
        for index, present in enumerate(self.present):
            if present:
                given_index[index] = f"t[{len(given_index)}]"
        given_index[len(self.present)] = "h"
        view = ".view(-1)" if self._flat else ""
        items = [
            given_index[index]
            + (".numel()" if is_size else view if index in self.present_at else "")
            for index, is_size in self._plan
        ]
        source = f"lambda t, h: direct([{', '.join(items)}])"
        self._runner = eval(source, {"direct": self._direct})  # noqa: S307 - generated above
        return self._runner


_kernels: dict[tuple[Any, ...], _Kernel] = {}


def _inductor_options(serial: bool) -> dict[str, Any]:
    # One kernel compiles in-process faster than through a pool of compile workers.
    options: dict[str, Any] = {"compile_threads": 1}
    if serial:
        options["cpp.threads"] = 1
    return options


def _kernel(
    rule: Callable[..., None],
    flags: Mapping[str, Any],
    present: tuple[bool, ...],
    device: torch.device,
    dtype: torch.dtype,
    serial: bool,
    num_scalars: int,
) -> _Kernel:
    key = (rule, tuple(sorted(flags.items())), present, device.type, device.index, dtype, serial)
    kernel = _kernels.get(key)
    if kernel is None:
        kernel = _Kernel(rule, flags, present, device, dtype, serial)
        kernel.compile(num_scalars)
        _kernels[key] = kernel
    return kernel


# --------------------------------------------------------------------------
# The entry point the algorithm modules call.
# --------------------------------------------------------------------------

#: On CPU, tensors below this many elements run a single-threaded kernel:
#: splitting 4096 elements over threads costs more than it saves, and torch's
#: own fused kernels stay on one thread below the same size (ATen's grain size).
SERIAL_MAX_NUMEL = 32768


def _signature(param: Tensor) -> tuple[int, torch.dtype, bool]:
    """What picks a parameter's kernel: device index (-1: CPU), dtype, serial variant."""
    return (param.get_device(), param.dtype, param.is_cpu and param.numel() < SERIAL_MAX_NUMEL)


def fused_update(
    rule: Callable[..., None],
    tensors: Sequence[Sequence[Tensor] | None],
    scalars: Callable[[Any], Sequence[float]],
    keys: Sequence[Any] | None = None,
    **flags: Any,
) -> None:
    """Apply ``rule`` to every parameter, one fused kernel call per tensor set.

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
    """
    params = tensors[0]
    if not params:
        return
    count = len(params)
    keys = [None] * count if keys is None else keys
    present = tuple(lists is not None for lists in tensors)
    # Compile every kernel this call needs before any tensor changes.
    kernels: dict[tuple[int, torch.dtype, bool], _Kernel] = {}
    signatures = [_signature(param) for param in params]
    for index, signature in enumerate(signatures):
        if signature not in kernels:
            num_scalars = len(scalars(keys[index]))
            _, dtype, serial = signature
            device = params[index].device
            kernels[signature] = _kernel(rule, flags, present, device, dtype, serial, num_scalars)
    # Runs of tensors sharing a kernel and a scalar vector (one run, usually).
    runs: dict[tuple[Any, ...], list[int]] = {}
    for index, run_key in enumerate(zip(signatures, keys, strict=True)):
        runs.setdefault(run_key, []).append(index)
    is_contiguous = Tensor.is_contiguous
    given = [lists for lists in tensors if lists is not None]
    for (signature, key), indices in runs.items():
        kernel = kernels[signature]
        runner = kernel.runner()
        vector = torch.tensor(list(scalars(key)), dtype=torch.float64, device=kernel.device)
        run_lists = given if len(indices) == count else [[x[i] for i in indices] for x in given]
        # Grads match their parameter's dtype, device and shape (autograd and the
        # ``.grad`` setter check it) and the state is ours: only the layout is checked.
        for tensor_set in zip(*run_lists, strict=True):
            if all(map(is_contiguous, tensor_set)):
                if tensor_set[0].numel():
                    runner(tensor_set, vector)
            else:  # rare: a non-contiguous tensor set runs the same rule eagerly
                full = iter(tensor_set)
                rule(*[None if lists is None else next(full) for lists in tensors], vector, **flags)
