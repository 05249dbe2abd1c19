"""Optimizer step speed: optlab's loop, foreach and fused paths against torch.optim and the references.

For every optlab optimizer and implementation, and in the same run
torch.optim's loop/foreach/fused (where torch has the optimizer) and the
reference packages (adabelief-pytorch, torch-optimizer, pytorch_optimizer;
heavyball's compiled AdamW for Adam and AdamW, fp32 and bf16 state;
bitsandbytes' 8-bit Adam, AdamW and Lion for int8 state), in each state
dtype of ``--state-dtypes`` (``none``: full precision, the default;
``bfloat16``; ``int8``: optlab's ``state_dtype`` option, for the optimizers
that take it), this measures on the same tensors:

- the median step time over ``--repeats`` steps, shared among ``--rounds``
  rounds over all rows of a regime, each building every row's optimizer on
  fresh copies of the tensors (after the round's first step and two warm-up
  steps), parameters per second and
  effective GB/s: the bytes a step must read and write divided by the time:
  the gradient read (4 per parameter), the parameter read and written (8),
  and the state read and written at its real size, measured off the row's
  optimizer after its warm-up steps (:func:`state_nbytes`: every state
  tensor but ``step``, int8 codes and their block scales included; 8 per
  parameter for Adam in fp32, 4 in bf16, 2.03 in int8);
- the ratio to ``torch.optim.Adam(fused=True)`` (time, and GB/s), stepped
  after each timed step on its own fresh copies, rebuilt each round;
- the peak extra memory of one step (CPU: PyTorch's memory profiler; CUDA:
  the caching allocator's peak), in MB and in units of the model's size;
- the first step's time in this process and the number of fused kernels
  compiled for the row;
- in fresh processes, the first fused step of the 500-tensor model with an
  empty compile cache (cold: ``TORCHINDUCTOR_CACHE_DIR`` pointing at a new
  directory) and again with that cache filled (warm).

Two regimes: "large" (16M parameters in 64 tensors) and "small" (500
tensors of 4096); a third, "tiny" (8 tensors of 4096), only when asked for,
is for smoke tests. ``--scale`` multiplies the tensor sizes (use it on a GPU so
a step moves several GB). The tables go to ``--output`` (docs/benchmarks.md)
with the machine they were measured on.

Usage::

    python benchmarks/step_speed.py                      # everything, CPU
    python benchmarks/step_speed.py --quick              # adam + adabelief, few repeats
    python benchmarks/step_speed.py --optimizers adabelief yogi --regimes small
    python benchmarks/step_speed.py --optimizers adam lion --state-dtypes none bfloat16 int8
    optlab speed --help                                  # the same, from the CLI
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import importlib
import inspect
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optlab.optim.registry import list_optimizers

REGIMES = {"large": (64, 262_144), "small": (500, 4096), "tiny": (8, 4096)}
#: Regimes of tensors of different sizes: "mixed", 32 pairs of a 500,000-element weight
#: and a 1,024-element bias (uneven work per tensor inside one bucket's OpenMP region).
MIXED_REGIMES = {"mixed": [500_000, 1_024] * 32}


def regime_sizes(regime: str) -> list[int]:
    """The element counts of a regime's tensors (before ``--scale``)."""
    if regime in MIXED_REGIMES:
        return list(MIXED_REGIMES[regime])
    count, size = REGIMES[regime]
    return [size] * count


def regime_title(regime: str, scale: int) -> str:
    if regime in MIXED_REGIMES:
        sizes = regime_sizes(regime)
        return (
            f"{len(sizes) // 2} pairs of {sizes[0] * scale:,} and {sizes[1] * scale:,} "
            f"({sum(sizes) * scale / 1e6:.1f}M parameters)"
        )
    count, size = REGIMES[regime]
    return f"{count} tensors of {size * scale:,} ({count * size * scale / 1e6:.1f}M parameters)"


#: What ``--regimes`` measures unless told ("tiny" is for smoke tests).
DEFAULT_REGIMES = ("large", "small")
#: ``--state-dtypes`` values: optlab's ``state_dtype`` option (``none``: full precision).
STATE_DTYPES = {"none": None, "bfloat16": "bfloat16", "int8": "int8"}
#: How the tables name a row's state.
STATE_LABELS = {"none": "fp32", "bfloat16": "bf16", "int8": "int8"}
#: Bytes torch.optim.Adam(fused=True), the yardstick, moves per parameter (g; p, m, v read and written).
YARDSTICK_BYTES = 28
#: What is measured by default: optlab's own optimizers of the default study.
OPTLAB_NAMES = tuple(list_optimizers("core", builtin_only=True))
#: What may be measured: every optimizer in the registry (a user's registered ones too).
MEASURABLE = tuple(list_optimizers())


@functools.cache
def step_bytes_per_param(name: str) -> int:
    """Bytes one step of ``name`` must read and write per fp32 parameter: the gradient
    read (4), the parameter read and written (8), and every state tensor the size of the
    parameter read and written (8 each), counted off the state it keeps after one step
    with its registry defaults (``step`` and other scalars aside)."""
    import torch

    from optlab.optim import create_optimizer

    generator = torch.Generator().manual_seed(0)
    param = torch.nn.Parameter(torch.randn(7, generator=generator))
    param.grad = torch.randn(7, generator=generator)
    optimizer = create_optimizer([param], name)
    optimizer.step()
    state = [
        value
        for key, value in optimizer.state[param].items()
        if key != "step" and torch.is_tensor(value) and value.shape == param.shape
    ]
    return 4 + 8 + 8 * len(state)


def state_nbytes(optimizer: Any) -> int:
    """Bytes of the state ``optimizer`` keeps: every tensor in ``optimizer.state``, at any
    depth of nesting (heavyball keeps a dict per parameter and transform), except those
    under the key ``step``; a tensor found twice (bitsandbytes shares its quantization
    maps among parameters) counts once."""
    import torch

    seen: set[tuple[str, int, int]] = set()
    total = 0

    def walk(value: Any) -> None:
        nonlocal total
        if torch.is_tensor(value):
            identity = (str(value.device), value.data_ptr(), value.nbytes)
            if identity not in seen:
                seen.add(identity)
                total += value.nbytes
        elif isinstance(value, dict):
            for key, item in value.items():
                if key != "step":
                    walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    for per_param in optimizer.state.values():
        walk(per_param)
    return total


class Regrad:
    """An optimizer that consumes the gradients (heavyball sets ``p.grad = None`` in its
    step), with :meth:`prepare` to give them back before each step, outside the timed
    region: the same gradient tensors each time, as every other row steps on."""

    def __init__(self, optimizer: Any, params: list) -> None:
        self.optimizer = optimizer
        self.grads = [(param, param.grad) for param in params]

    @property
    def state(self) -> Any:
        return self.optimizer.state

    def prepare(self) -> None:
        for param, grad in self.grads:
            param.grad = grad

    def step(self) -> Any:
        return self.optimizer.step()


#: torch.optim counterparts: class name and keyword arguments.
TORCH_EQUIVALENT = {
    "sgd": ("SGD", {"lr": 1e-3}),
    "momentum": ("SGD", {"lr": 1e-3, "momentum": 0.9}),
    "nag": ("SGD", {"lr": 1e-3, "momentum": 0.9, "nesterov": True}),
    "adagrad": ("Adagrad", {}),
    "adadelta": ("Adadelta", {}),
    "rmsprop": ("RMSprop", {}),
    "adam": ("Adam", {}),
    "adamw": ("AdamW", {}),
    "amsgrad": ("Adam", {"amsgrad": True}),
}


@dataclass
class Reference:
    """An implementation outside optlab and torch.optim, for one optlab name and state dtype."""

    label: str
    state: str  # a key of STATE_DTYPES: the state it keeps
    factory: Callable[[list], Any]


def _quietly_import(module: str) -> Any:
    """Import ``module`` with what it prints on import (bitsandbytes' backend notices) held back."""
    with (
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        return importlib.import_module(module)


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


def _reference_factories(
    state_dtypes: tuple[str, ...] = ("none",),
) -> tuple[dict[str, list[Reference]], list[str]]:
    """Reference implementations outside torch.optim, per optlab name (those installed and
    keeping one of ``state_dtypes``), and a note for each package that could not be used."""
    references: dict[str, list[Reference]] = {}
    notes: list[str] = []

    def add(name: str, label: str, state: str, factory: Callable[[list], Any]) -> None:
        if state in state_dtypes:
            references.setdefault(name, []).append(Reference(label, state, factory))

    def missing(package: str, error: Exception, rows: str) -> None:
        notes.append(f"{package}: not used ({type(error).__name__}: {error}); {rows} skipped")

    try:
        import adabelief_pytorch

        add(
            "adabelief",
            "adabelief-pytorch 0.2.1",
            "none",
            lambda ps: adabelief_pytorch.AdaBelief(ps, print_change_log=False),
        )
    except ImportError:
        pass
    try:
        import torch_optimizer

        add("adabelief", "torch-optimizer AdaBelief", "none", torch_optimizer.AdaBelief)
        add("yogi", "torch-optimizer Yogi", "none", torch_optimizer.Yogi)
    except ImportError:
        pass
    try:
        import pytorch_optimizer

        add("adabelief", "pytorch_optimizer AdaBelief", "none", pytorch_optimizer.AdaBelief)
        add("yogi", "pytorch_optimizer Yogi", "none", pytorch_optimizer.Yogi)
    except ImportError:
        pass
    # heavyball: a compile-first library; its AdamW steps every tensor in a few
    # torch.compile'd multi-tensor functions (Adam is its AdamW without decay).
    # storage_dtype="bfloat16" keeps its moments in bf16 with stochastic rounding.
    # Its step sets p.grad = None: Regrad gives the gradients back between steps.
    if "none" in state_dtypes or "bfloat16" in state_dtypes:
        try:
            heavyball = _quietly_import("heavyball")
            heavyball_adamw = heavyball.AdamW
        except Exception as error:  # not installed, or does not import here
            missing("heavyball", error, "its AdamW rows (fp32 and bf16 state)")
        else:

            def heavyball_factory(weight_decay: float, storage: str) -> Callable[[list], Any]:
                def build(params: list) -> Regrad:
                    optimizer = heavyball_adamw(
                        params,
                        lr=1e-3,
                        betas=(0.9, 0.999),
                        eps=1e-8,
                        weight_decay=weight_decay,
                        storage_dtype=storage,
                    )
                    return Regrad(optimizer, params)

                return build

            label = f"heavyball {_version('heavyball')} AdamW"
            for name, decay in (("adam", 0.0), ("adamw", 1e-2)):
                add(name, label, "none", heavyball_factory(decay, "float32"))
                add(name, label, "bfloat16", heavyball_factory(decay, "bfloat16"))
    # bitsandbytes: 8-bit blockwise state (blocks of 256, a float32 absmax each, a
    # dynamic quantization map). On CPU its wheel runs the update as eager torch
    # ops (dequantize, update, quantize) rather than its CUDA kernel.
    if "int8" in state_dtypes:
        try:
            bitsandbytes = _quietly_import("bitsandbytes.optim")
            eight_bit = {
                "adam": bitsandbytes.Adam8bit,
                "adamw": bitsandbytes.AdamW8bit,
                "lion": bitsandbytes.Lion8bit,
            }
        except Exception as error:  # not installed, or does not import here
            missing("bitsandbytes", error, "its 8-bit Adam, AdamW and Lion rows")
        else:
            version = _version("bitsandbytes")
            for name, optimizer_class in eight_bit.items():
                label = f"bitsandbytes {version} {optimizer_class.__name__}"
                add(name, label, "int8", optimizer_class)
    return references, notes


# --------------------------------------------------------------------------
# Measuring one row.
# --------------------------------------------------------------------------


@dataclass
class Row:
    regime: str
    name: str  # optlab registry name the row belongs to
    implementation: str  # "optlab", "torch.optim" or a reference package
    path: str  # loop / foreach / fused / default
    state: str = "none"  # a key of STATE_DTYPES: the state dtype the row keeps
    median_ms: float = float("nan")
    first_step_s: float = float("nan")
    compiles: int = 0
    peak_extra_mb: float = float("nan")
    numel: int = 0
    #: bytes a step moves per parameter: the byte model until measured, then 12 + 2 x state
    bytes_per_param: float = YARDSTICK_BYTES
    #: bytes of state per parameter, off the row's optimizer after its warm-up steps
    state_bytes_per_param: float = float("nan")
    note: str = ""
    times_ms: list[float] = field(default_factory=list)
    #: torch's fused Adam on the same tensors, one step after each of this row's steps
    yardstick_ms: float = float("nan")
    yardstick_times_ms: list[float] = field(default_factory=list)
    failed: bool = False

    @property
    def time_ratio(self) -> float:
        """This row's time over torch fused Adam's, their steps interleaved."""
        return self.median_ms / self.yardstick_ms

    @property
    def gbps_ratio(self) -> float:
        return (self.bytes_per_param / YARDSTICK_BYTES) / self.time_ratio

    @property
    def gbps(self) -> float:
        return self.numel * self.bytes_per_param / (self.median_ms * 1e-3) / 1e9

    @property
    def params_per_s(self) -> float:
        return self.numel / (self.median_ms * 1e-3)


class Bench:
    def __init__(
        self, device: str, repeats: int, scale: int, memory: bool, rounds: int = 5
    ) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.repeats = repeats
        self.rounds = max(1, min(rounds, repeats))
        self.scale = scale
        self.memory = memory
        self._base: dict[str, tuple[list, list]] = {}

    def fresh_params(self, regime: str) -> list:
        """New copies of this regime's tensors (new memory), each with its gradient."""
        torch = self.torch
        values, grads = self.tensors(regime)
        params = [torch.nn.Parameter(v.clone()) for v in values]
        for param, grad in zip(params, grads, strict=True):
            param.grad = grad.clone()
        return params

    def yardstick(self, regime: str) -> Any:
        """torch.optim.Adam(fused=True) on fresh copies of this regime's tensors, warmed up."""
        yardstick = self.torch.optim.Adam(self.fresh_params(regime), fused=True)
        for _ in range(3):
            yardstick.step()
        return yardstick

    def time_ms(self, step: Callable[[], Any]) -> float:
        self.sync()
        start = time.perf_counter()
        step()
        self.sync()
        return (time.perf_counter() - start) * 1e3

    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def tensors(self, regime: str) -> tuple[list, list]:
        """The regime's parameter values and gradients (made once, copied per row)."""
        if regime not in self._base:
            torch = self.torch
            sizes = regime_sizes(regime)
            generator = torch.Generator().manual_seed(0)
            values = [
                torch.randn(size * self.scale, generator=generator).to(self.device)
                for size in sizes
            ]
            grads = [
                torch.randn(size * self.scale, generator=generator).to(self.device)
                for size in sizes
            ]
            self._base[regime] = (values, grads)
        return self._base[regime]

    def measure_all(
        self, planned: list[tuple[Row, Callable[[list], Any]]], log: Callable[[str], None]
    ) -> None:
        """Time every planned row against the yardstick, in ``rounds`` rounds over all rows.

        Round after round, every row builds its optimizer, and a yardstick, on
        fresh copies of the tensors and takes its share of the timed steps.
        So each row's medians pool several memory placements (where tensors
        land moves a memory-bound step by a few percent) and several moments
        minutes apart: a burst of load on the shared machine, which can slow
        one kernel more than another for a second or two, then touches one
        round of a row, not all its steps.
        """
        share, extra = divmod(self.repeats, self.rounds)
        for round_index in range(self.rounds):
            if self.rounds > 1:
                log(f"  round {round_index + 1} of {self.rounds}")
            for row, factory in planned:
                if not row.failed:
                    self.measure_round(row, factory, round_index, share + (round_index < extra))
        for row, _ in planned:
            if row.failed:
                row.times_ms, row.yardstick_times_ms = [], []
                continue
            row.median_ms = statistics.median(row.times_ms)
            row.yardstick_ms = statistics.median(row.yardstick_times_ms)

    def measure_round(
        self, row: Row, factory: Callable[[list], Any], round_index: int, steps: int
    ) -> None:
        """One round of ``row``: a new optimizer and yardstick, ``steps`` timed steps of each."""
        from optlab.optim import _fused

        row.numel = sum(v.numel() for v in self.tensors(row.regime)[0])
        params = optimizer = yardstick = None
        compiles = _fused.compile_count()
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                params = self.fresh_params(row.regime)
                optimizer = factory(params)
                # Gives back the gradients an optimizer consumed (heavyball), untimed.
                prepare = getattr(optimizer, "prepare", lambda: None)
                prepare()
                self.sync()
                start = time.perf_counter()
                optimizer.step()
                self.sync()
                if round_index == 0:
                    row.first_step_s = time.perf_counter() - start
                for _ in range(2):
                    prepare()
                    optimizer.step()
                if round_index == 0:
                    state = state_nbytes(optimizer) / row.numel
                    row.state_bytes_per_param = state
                    row.bytes_per_param = 4 + 8 + 2 * state  # g; p and the state, both ways
                # Each step of this row, then one of torch's fused Adam: the two
                # medians see the same machine load, whatever it does meanwhile.
                yardstick = self.yardstick(row.regime)
                for _ in range(steps):
                    prepare()
                    row.times_ms.append(self.time_ms(optimizer.step))
                    row.yardstick_times_ms.append(self.time_ms(yardstick.step))
                if self.memory and round_index == self.rounds - 1:
                    prepare()
                    row.peak_extra_mb = self.peak_extra_bytes(optimizer.step) / 1e6
        except Exception as error:  # a reference that cannot run here: say so, go on
            row.failed = True
            row.note = f"{type(error).__name__}: {str(error).splitlines()[0][:80]}"
        row.compiles += _fused.compile_count() - compiles
        del params, optimizer, yardstick
        gc.collect()

    def peak_extra_bytes(self, step: Callable[[], Any]) -> float:
        torch = self.torch
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            step()
            torch.cuda.synchronize()
            return float(torch.cuda.max_memory_allocated() - before)
        from torch.profiler import ProfilerActivity, profile

        try:
            with profile(
                activities=[ProfilerActivity.CPU],
                profile_memory=True,
                record_shapes=True,
                with_stack=True,
            ) as profiler:
                step()
            current = peak = 0
            for _, action, _, size in profiler._memory_profile().timeline:
                name = getattr(action, "name", str(action))
                if name == "CREATE":
                    current += size
                elif name == "DESTROY":
                    current -= size
                peak = max(peak, current)
            return float(peak)
        except Exception:  # the profiler's memory timeline is private API
            return float("nan")

    def copy_bandwidth_gbps(self) -> float:
        """Bytes read + written per second by a plain copy of 256 MB (the floor to compare with)."""
        torch = self.torch
        numel = (256 << 20) // 4 * (self.scale if self.device.type == "cuda" else 1)
        source = torch.randn(numel, device=self.device)
        target = torch.empty_like(source)
        times = []
        for _ in range(max(self.repeats, 5)):
            self.sync()
            start = time.perf_counter()
            target.copy_(source)
            self.sync()
            times.append(time.perf_counter() - start)
        return 2 * numel * 4 / statistics.median(times) / 1e9


def optlab_factory(name: str, flags: dict[str, Any]) -> Callable[[list], Any]:
    from optlab.optim import create_optimizer

    return lambda params: create_optimizer(params, name, **flags)


def torch_factory(name: str, flags: dict[str, Any]) -> Callable[[list], Any]:
    import torch

    class_name, hparams = TORCH_EQUIVALENT[name]
    return lambda params: getattr(torch.optim, class_name)(params, **hparams, **flags)


OPTLAB_PATHS = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
TORCH_PATHS = {
    "loop": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}


def default_paths(
    bench: Bench, name: str, regime: str, state: str = "none"
) -> tuple[str, str | None]:
    """Which implementation optlab's (with this state dtype) and torch's defaults pick here."""
    import torch
    from torch.optim.optimizer import _default_to_fused_or_foreach

    from optlab.optim import create_optimizer

    values, _ = bench.tensors(regime)
    params = [torch.nn.Parameter(v) for v in values]
    optimizer = create_optimizer(params, name, **state_flags(state))
    ours = optimizer._implementation(optimizer.param_groups[0], params)
    theirs = None
    if name in TORCH_EQUIVALENT:
        fused, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
        theirs = "fused" if fused else "foreach" if foreach else "loop"
    return ours, theirs


def state_flags(state: str) -> dict[str, Any]:
    """optlab's keyword for a ``--state-dtypes`` value: none for full precision, the default."""
    return {} if STATE_DTYPES[state] is None else {"state_dtype": STATE_DTYPES[state]}


def takes_state_dtype(name: str) -> bool:
    from optlab.optim.registry import get_spec

    return "state_dtype" in get_spec(name).hparam_names()


def run_regime(
    bench: Bench,
    regime: str,
    names: list[str],
    log: Callable[[str], None],
    state_dtypes: tuple[str, ...] = ("none",),
    paths: tuple[str, ...] = tuple(OPTLAB_PATHS),
    references: dict[str, list[Reference]] | None = None,
) -> list[Row]:
    """Plan and measure the rows of one regime: per optimizer and state dtype, optlab's
    ``paths``, then (full precision only) torch.optim's, then the references keeping that
    state; torch's fused Adam in fp32, the yardstick, first."""
    if references is None:
        references = _reference_factories(state_dtypes)[0]
    rows: list[Row] = []
    planned: list[tuple[Row, Callable[[list], Any]]] = []

    def add(row: Row, factory: Callable[[list], Any]) -> None:
        rows.append(row)
        planned.append((row, factory))

    # The yardstick first: torch's fused Adam on the same tensors.
    yardstick = Row(regime, "adam", "torch.optim", "fused", bytes_per_param=YARDSTICK_BYTES)
    add(yardstick, torch_factory("adam", {"fused": True}))
    for name in names:
        moved = step_bytes_per_param(name)  # the fp32 byte model, until the state is measured
        for state in state_dtypes:
            if state != "none" and not takes_state_dtype(name):
                continue  # no state_dtype option: its state is full precision only
            ours_default, torch_default = default_paths(bench, name, regime, state)
            for path, flags in OPTLAB_PATHS.items():
                if path not in paths:
                    continue
                row = Row(regime, name, "optlab", path, state=state, bytes_per_param=moved)
                if path == ours_default:
                    row.note = "default"
                add(row, optlab_factory(name, {**flags, **state_flags(state)}))
            if name in TORCH_EQUIVALENT and state == "none":
                for path, flags in TORCH_PATHS.items():
                    if (name == "adam" and path == "fused") or path not in paths:
                        continue  # adam fused: measured first, as the yardstick
                    torch_class = getattr(
                        importlib.import_module("torch.optim"), TORCH_EQUIVALENT[name][0]
                    )
                    takes_fused = "fused" in inspect.signature(torch_class).parameters
                    if "fused" in flags and not takes_fused:
                        continue  # torch has no fused Adadelta / RMSprop
                    row = Row(regime, name, "torch.optim", path, bytes_per_param=moved)
                    add(row, torch_factory(name, flags))
                    if path == torch_default and not row.note:
                        row.note = "default"
                if name == "adam" and torch_default == "fused" and not rows[0].note:
                    rows[0].note = "default"
            for reference in references.get(name, []):
                if reference.state == state:
                    row = Row(regime, name, reference.label, "default", state=state)
                    row.bytes_per_param, row.note = moved, "default"
                    add(row, reference.factory)
    bench.measure_all(planned, log)
    for row in rows:
        shown = f"{row.median_ms:9.2f} ms" if row.times_ms else f"skipped ({row.note})"
        log(
            f"  {regime:<6} {row.name:<10} {row.implementation:<30} {row.path:<8} "
            f"{STATE_LABELS[row.state]:<5} {shown}"
        )
    return rows


# --------------------------------------------------------------------------
# First fused step in a fresh process (cold and warm compile cache).
# --------------------------------------------------------------------------


def probe_first_step(name: str, regime: str, device: str, scale: int) -> dict[str, Any]:
    """Run in a child process: the first fused step of a fresh optimizer, timed."""
    start_import = time.perf_counter()
    import torch

    from optlab.optim import _fused, create_optimizer

    import_s = time.perf_counter() - start_import
    params = [
        torch.nn.Parameter(torch.randn(size * scale, device=device))
        for size in regime_sizes(regime)
    ]
    for param in params:
        param.grad = torch.randn_like(param)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimizer = create_optimizer(params, name, fused=True)
    start = time.perf_counter()
    optimizer.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    first = time.perf_counter() - start
    start = time.perf_counter()
    optimizer.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    second = time.perf_counter() - start
    return {
        "first_step_s": first,
        "second_step_s": second,
        "compiles": _fused.compile_count(),
        "import_s": import_s,
    }


def first_step_table(names: list[str], device: str, scale: int, log) -> list[dict[str, Any]]:
    results = []
    for name in names:
        with tempfile.TemporaryDirectory(prefix="optlab-inductor-") as cache:
            env = {
                **os.environ,
                "TORCHINDUCTOR_CACHE_DIR": cache,
                "TRITON_CACHE_DIR": cache + "/triton",
            }
            measured: dict[str, Any] = {"name": name}
            for label in ("cold", "warm"):
                command = [
                    sys.executable, __file__, "--probe-first-step", name,
                    "--device", device, "--scale", str(scale),
                ]  # fmt: skip
                done = subprocess.run(command, env=env, capture_output=True, text=True)
                if done.returncode != 0:
                    measured[label] = {"error": done.stderr.strip().splitlines()[-1:]}
                else:
                    measured[label] = json.loads(done.stdout.strip().splitlines()[-1])
            results.append(measured)
            cold, warm = measured["cold"], measured["warm"]
            log(
                f"  first fused step {name:<10} cold {cold.get('first_step_s', float('nan')):6.2f} s"
                f"  warm {warm.get('first_step_s', float('nan')):6.2f} s"
            )
    return results


# --------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------


def machine_description(bench: Bench) -> list[str]:
    torch = bench.torch
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    lines = [
        f"- CPU: {cpu}, {os.cpu_count()} logical cores visible, "
        f"torch.get_num_threads() = {torch.get_num_threads()}",
        f"- torch {torch.__version__}, Python {platform.python_version()}, {platform.platform()}",
    ]
    if bench.device.type == "cuda":
        lines.append(f"- GPU: {torch.cuda.get_device_name(bench.device)}")
    return lines


def _fmt(value: float, digits: int = 2) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"


def regime_table(rows: list[Row]) -> list[str]:
    count = rows[0].numel
    lines = [
        "| optimizer | implementation | path | state | state B/param | median ms | Mparams/s "
        "| GB/s | GB/s vs torch fused Adam | time vs torch fused Adam | first step s | compiles "
        "| peak extra MB (x model) |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        state = STATE_LABELS[row.state]
        if row.note and not row.times_ms:
            lines.append(
                f"| {row.name} | {row.implementation} | {row.path} | {state} | n/a | {row.note} "
                "| | | | | | | |"
            )
            continue
        path = row.path + (" (default)" if row.note == "default" and row.path != "default" else "")
        model_mb = count * 4 / 1e6
        lines.append(
            f"| {row.name} | {row.implementation} | {path} | {state} "
            f"| {_fmt(row.state_bytes_per_param)} | {row.median_ms:.2f} "
            f"| {row.params_per_s / 1e6:.0f} | {row.gbps:.1f} "
            f"| {100 * row.gbps_ratio:.0f} % "
            f"| {row.time_ratio:.2f} x "
            f"| {row.first_step_s:.2f} | {row.compiles} "
            f"| {_fmt(row.peak_extra_mb, 1)} ({_fmt(row.peak_extra_mb / model_mb)}) |"
        )
    return lines


def state_comparisons(all_rows: dict[str, list[Row]]) -> list[str]:
    """Each compact-state row against the same optimizer's full-precision row (same path)
    and against the references keeping the same state, from their ratios to the yardstick."""
    lines = []
    for regime, rows in all_rows.items():
        measured = [row for row in rows if row.times_ms]
        full = {
            (row.name, row.path): row
            for row in measured
            if row.implementation == "optlab" and row.state == "none"
        }
        for row in measured:
            if row.implementation != "optlab" or row.state == "none":
                continue
            label = f"- {regime}: {row.name} {row.path} {STATE_LABELS[row.state]}"
            parts = []
            baseline = full.get((row.name, row.path))
            if baseline:
                parts.append(
                    f"{row.time_ratio / baseline.time_ratio:.2f} x its fp32 time, "
                    f"{row.state_bytes_per_param:.2f} vs {baseline.state_bytes_per_param:.2f} "
                    "B/param of state"
                )
            for other in measured:
                if other.name == row.name and other.state == row.state:
                    if other.implementation not in ("optlab", "torch.optim"):
                        parts.append(
                            f"{row.time_ratio / other.time_ratio:.2f} x {other.implementation}'s "
                            f"time ({other.state_bytes_per_param:.2f} B/param)"
                        )
            if parts:
                lines.append(f"{label}: " + "; ".join(parts))
    return lines


def bar_checks(all_rows: dict[str, list[Row]], first_steps: list[dict[str, Any]]) -> list[str]:
    """The issue's bars, checked against this run's numbers."""
    lines = []
    # The bars are about full-precision state: the compact-state rows have their own section.
    all_rows = {
        regime: [row for row in rows if row.state == "none"] for regime, rows in all_rows.items()
    }

    def find(rows, name, implementation, path=None, default=False):
        for row in rows:
            if row.name == name and row.implementation == implementation and row.times_ms:
                if default and row.note == "default":
                    return row
                if not default and row.path == path:
                    return row
        return None

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    limits = {"large": 1.10, "small": 1.00}
    for regime, rows in all_rows.items():
        fused = find(rows, "adabelief", "optlab", "fused")
        if fused and regime in limits:
            ratio = fused.time_ratio
            lines.append(
                f"- {regime}: fused AdaBelief {ratio:.2f} x torch fused Adam's time "
                f"(bar <= {limits[regime]:.2f}): {verdict(ratio <= limits[regime])}"
            )
        slowest = [
            (row.gbps_ratio, row.name)
            for row in rows
            if row.implementation == "optlab" and row.path == "fused" and row.times_ms
        ]
        if slowest:
            worst, worst_name = min(slowest)
            lines.append(
                f"- {regime}: lowest fused effective GB/s {100 * worst:.0f} % of torch fused Adam's "
                f"({worst_name}; bar >= 85 %): {verdict(worst >= 0.85)}"
            )
        ours = find(rows, "adabelief", "optlab", default=True)
        if ours:
            for label in ("adabelief-pytorch 0.2.1", "torch-optimizer AdaBelief"):
                theirs = find(rows, "adabelief", label, "default")
                if theirs:
                    speedup = theirs.time_ratio / ours.time_ratio
                    lines.append(
                        f"- {regime}: default AdaBelief ({ours.path}) {ours.median_ms:.2f} ms vs "
                        f"{label} {theirs.median_ms:.2f} ms, {speedup:.1f}x faster "
                        f"(from their ratios to torch fused Adam): {verdict(speedup > 1.0)}"
                    )
        for name in TORCH_EQUIVALENT:
            ours = find(rows, name, "optlab", default=True)
            theirs = find(rows, name, "torch.optim", default=True)
            if ours and theirs:
                ratio = ours.time_ratio / theirs.time_ratio  # drift-free: both vs the yardstick
                lines.append(
                    f"- {regime}: default {name} ({ours.path}) {ratio:.2f} x torch.optim's default "
                    f"({theirs.path}) time: {verdict(ratio <= 1.0)}"
                )
        extra = [
            (row.peak_extra_mb / (row.numel * 4 / 1e6), row.name)
            for row in rows
            if row.implementation == "optlab" and row.path == "fused" and row.times_ms
        ]
        if extra and all(value == value for value, _ in extra):
            worst, worst_name = max(extra)
            lines.append(
                f"- {regime}: largest peak extra memory of a fused step {worst:.3f} x the model "
                f"({worst_name}; bar <= one parameter-sized buffer): {verdict(worst <= 1.0)}"
            )
    for measured in first_steps:
        cold = measured["cold"].get("first_step_s", float("nan"))
        warm = measured["warm"].get("first_step_s", float("nan"))
        lines.append(
            f"- first fused {measured['name']} step, 500 tensors: cold {cold:.1f} s (bar <= 30 s): "
            f"{verdict(cold <= 30)}; warm {warm:.1f} s (bar <= 3 s): {verdict(warm <= 3)}"
        )
    return lines


def bytes_sentence(all_rows: dict[str, list[Row]]) -> str:
    """``12 for sgd; 20 for momentum, nag`` ...: the byte model of the measured optimizers."""
    names = dict.fromkeys(row.name for rows in all_rows.values() for row in rows)
    by_bytes: dict[int, list[str]] = {}
    for name in names:
        by_bytes.setdefault(step_bytes_per_param(name), []).append(name)
    return "; ".join(f"{count} for {', '.join(group)}" for count, group in sorted(by_bytes.items()))


def write_report(
    path: Path,
    bench: Bench,
    all_rows: dict[str, list[Row]],
    first_steps: list[dict[str, Any]],
    copy_gbps: float,
    command: str,
    notes: list[str] | None = None,
) -> None:
    lines = [
        "# Optimizer step speed",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {bench.device.type} "
        f"by `{command}`.",
        "",
        *machine_description(bench),
        f"- plain copy bandwidth (read + write) on this device: {copy_gbps:.1f} GB/s",
        "",
        f"Each row: the median of its timed steps, taken in {bench.rounds} round(s) over all "
        "the rows of a regime (so a row's steps come from moments minutes apart), each round on "
        "fresh copies of the same tensors (new memory) after that round's first step and two "
        "warm-up steps. Effective GB/s counts the bytes a step must move per fp32 parameter: "
        "4 to read g, 8 to read and write p, and the state read and written at its real size: "
        "'state B/param' is the bytes of every state tensor but `step` (int8 codes and their "
        "float32 block scales included; a tensor shared among parameters once) over the "
        "parameters, off each row's optimizer after its warm-up steps, and a step moves twice "
        "that. In full precision this is 8 to read and write each state tensor the "
        f"optimizer keeps ({bytes_sentence(all_rows)}). 'state' is the moments' storage: fp32, "
        "bf16 (optlab's `state_dtype=torch.bfloat16`, heavyball's `storage_dtype='bfloat16'`) "
        "or int8 (optlab's `state_dtype='int8'`, bitsandbytes' 8-bit optimizers). `(default)` marks "
        "what `foreach=None, fused=None` picks. Peak extra memory: the most memory a step holds "
        "beyond the parameters, gradients and state, in MB and as a multiple of the model's size. "
        "The two 'vs torch fused Adam' columns compare each row with torch.optim.Adam(fused=True) "
        "on its own fresh copy of the same tensors each round, one yardstick step timed after "
        "each of the row's steps (so both medians see the same machine load); the first row is the yardstick against "
        "a second instance of itself. Comparisons between two rows (the bars below) divide "
        "their ratios to the yardstick, which cancels the machine's drift between rows.",
        "",
    ]
    if bench.device.type == "cpu":
        lines += [
            "The machine is shared: absolute times move with its load, the ratios measured in "
            "the same run much less.",
            "",
        ]
    for regime, rows in all_rows.items():
        lines += [
            f"## Regime `{regime}`: {regime_title(regime, bench.scale)}",
            "",
            *regime_table(rows),
            "",
        ]
    if notes:
        lines += ["## Not measured", "", *(f"- {note}" for note in notes), ""]
    compared = state_comparisons(all_rows)
    if compared:
        lines += [
            "## Compact state against full precision and the references",
            "",
            "Time ratios divide the two rows' ratios to torch fused Adam (drift-free).",
            "",
            *compared,
            "",
        ]
    if first_steps:
        lines += [
            "## First fused step of the 500-tensor model, in a fresh process",
            "",
            "Cold: an empty compile cache (`TORCHINDUCTOR_CACHE_DIR` set to a new directory). "
            "Warm: a second process with that cache. The time includes importing and "
            "starting the compiler; 'compiles' counts kernels compiled or loaded.",
            "",
            "| optimizer | cold s | warm s | compiles | second step ms (warm) |",
            "|---|---:|---:|---:|---:|",
        ]
        for measured in first_steps:
            cold, warm = measured["cold"], measured["warm"]
            lines.append(
                f"| {measured['name']} | {_fmt(cold.get('first_step_s', float('nan')))} "
                f"| {_fmt(warm.get('first_step_s', float('nan')))} "
                f"| {cold.get('compiles', 'n/a')} "
                f"| {_fmt(1e3 * warm.get('second_step_s', float('nan')))} |"
            )
        lines.append("")
    lines += [
        "## The issue's bars, checked against this run",
        "",
        *bar_checks(all_rows, first_steps),
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


# --------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--optimizers", nargs="+", default=list(OPTLAB_NAMES), metavar="NAME",
        help="registry names to measure (default: the twelve of the default study)",
    )  # fmt: skip
    parser.add_argument(
        "--regimes", nargs="+", default=list(DEFAULT_REGIMES),
        choices=[*REGIMES, *MIXED_REGIMES],
        help="large: 64 tensors of 262144; small: 500 tensors of 4096 (default: both); "
        "tiny: 8 tensors of 4096, for smoke tests; mixed: 32 pairs of 500000 and 1024 "
        "(weights and biases)",
    )  # fmt: skip
    parser.add_argument(
        "--state-dtypes", nargs="+", default=["none"], choices=list(STATE_DTYPES),
        metavar="DTYPE",
        help="state dtypes to measure, each a row per optimizer and path: none (full "
        "precision, the default), bfloat16, int8 (optlab's state_dtype, for the optimizers "
        "that take it; heavyball bf16 and bitsandbytes 8-bit as references)",
    )  # fmt: skip
    parser.add_argument(
        "--paths", nargs="+", default=list(OPTLAB_PATHS), choices=list(OPTLAB_PATHS),
        help="optlab's and torch.optim's paths to measure (default: loop foreach fused; "
        "the yardstick, torch fused Adam, always)",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per row (default 20)")
    parser.add_argument(
        "--rounds", type=int, default=5,
        help="rounds over all rows; in each, every row and its yardstick are built on "
        "fresh copies of the tensors and take their share of the timed steps (default 5)",
    )  # fmt: skip
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--scale", type=int, default=1, help="multiply every tensor's size (use 16+ on a GPU)"
    )
    parser.add_argument(
        "--output", type=Path, default=Path("docs/benchmarks.md"), help="markdown report to write"
    )
    parser.add_argument(
        "--no-first-step", action="store_true",
        help="skip the cold/warm first-step measurements in fresh processes",
    )  # fmt: skip
    parser.add_argument(
        "--first-step-optimizers", nargs="+", metavar="NAME",
        help="names for the cold/warm first-step table (default: the measured ones)",
    )  # fmt: skip
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory step")
    parser.add_argument(
        "--no-references", action="store_true",
        help="skip the reference packages (adabelief-pytorch, torch-optimizer, "
        "pytorch_optimizer, heavyball, bitsandbytes): optlab and torch.optim only",
    )  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true",
        help="adam and adabelief, 5 repeats, first step for adabelief only",
    )  # fmt: skip
    parser.add_argument("--probe-first-step", metavar="NAME", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    if args.probe_first_step:
        result = probe_first_step(args.probe_first_step, "small", args.device, args.scale)
        print(json.dumps(result))
        return 0
    if args.quick:
        args.optimizers = [n for n in args.optimizers if n in ("adam", "adabelief")] or [
            "adabelief"
        ]
        args.repeats = min(args.repeats, 5)
        args.first_step_optimizers = args.first_step_optimizers or ["adabelief"]
    unknown = sorted(set(args.optimizers) - set(MEASURABLE))
    if unknown:
        print(f"unknown optimizers {unknown}; valid: {', '.join(MEASURABLE)}", file=sys.stderr)
        return 2

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    # The profiler's tracing library logs every start and stop to stderr unless told not to.
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    if args.repeats < 1 or args.rounds < 1:
        print(
            f"--repeats and --rounds must be at least 1, got {args.repeats} and {args.rounds}",
            file=sys.stderr,
        )
        return 2
    bench = Bench(
        args.device, args.repeats, args.scale, memory=not args.no_memory, rounds=args.rounds
    )
    copy_gbps = bench.copy_bandwidth_gbps()
    log(f"plain copy: {copy_gbps:.1f} GB/s")
    state_dtypes = tuple(dict.fromkeys(args.state_dtypes))
    paths = tuple(dict.fromkeys(args.paths))
    if args.no_references:
        references, notes = {}, ["the reference packages: --no-references"]
    else:
        references, notes = _reference_factories(state_dtypes)
    if state_dtypes != ("none",):
        fixed = [name for name in args.optimizers if not takes_state_dtype(name)]
        if fixed:
            notes.append(
                f"{', '.join(fixed)}: no state_dtype option (optlab keeps their state at full "
                "precision); measured in fp32 only"
                + ("" if "none" in state_dtypes else ", and fp32 was not asked for")
            )
    for note in notes:
        log(f"note: {note}")
    all_rows = {
        regime: run_regime(bench, regime, args.optimizers, log, state_dtypes, paths, references)
        for regime in args.regimes
    }
    first_steps = []
    if not args.no_first_step:
        names = args.first_step_optimizers or args.optimizers
        first_steps = first_step_table(names, args.device, args.scale, log)
    command = "python benchmarks/step_speed.py " + " ".join(sys.argv[1:])
    write_report(args.output, bench, all_rows, first_steps, copy_gbps, command.strip(), notes)
    log(f"wrote {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
