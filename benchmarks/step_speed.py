"""Optimizer step speed: optlab's loop, foreach and fused paths against torch.optim and the references.

For every optlab optimizer and implementation, and in the same run
torch.optim's loop/foreach/fused (where torch has the optimizer) and the
reference packages (adabelief-pytorch, torch-optimizer, pytorch_optimizer),
this measures on the same tensors:

- the median step time over ``--repeats`` steps, shared among ``--rounds``
  rounds over all rows of a regime, each building every row's optimizer on
  fresh copies of the tensors (after the round's first step and two warm-up
  steps), parameters per second and
  effective GB/s: the bytes a step must read and write (the byte model
  below) divided by the time;
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
tensors of 4096). ``--scale`` multiplies the tensor sizes (use it on a GPU so
a step moves several GB). The tables go to ``--output`` (docs/benchmarks.md)
with the machine they were measured on.

Usage::

    python benchmarks/step_speed.py                      # everything, CPU
    python benchmarks/step_speed.py --quick              # adam + adabelief, few repeats
    python benchmarks/step_speed.py --optimizers adabelief yogi --regimes small
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

REGIMES = {"large": (64, 262_144), "small": (500, 4096)}
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


def _reference_factories() -> dict[str, list[tuple[str, Callable[[list], Any]]]]:
    """Reference implementations outside torch.optim, per optlab name (those installed)."""
    references: dict[str, list[tuple[str, Callable[[list], Any]]]] = {"adabelief": [], "yogi": []}
    try:
        import adabelief_pytorch

        references["adabelief"].append(
            (
                "adabelief-pytorch 0.2.1",
                lambda ps: adabelief_pytorch.AdaBelief(ps, print_change_log=False),
            )
        )
    except ImportError:
        pass
    try:
        import torch_optimizer

        references["adabelief"].append(("torch-optimizer AdaBelief", torch_optimizer.AdaBelief))
        references["yogi"].append(("torch-optimizer Yogi", torch_optimizer.Yogi))
    except ImportError:
        pass
    try:
        import pytorch_optimizer

        references["adabelief"].append(("pytorch_optimizer AdaBelief", pytorch_optimizer.AdaBelief))
        references["yogi"].append(("pytorch_optimizer Yogi", pytorch_optimizer.Yogi))
    except ImportError:
        pass
    return references


# --------------------------------------------------------------------------
# Measuring one row.
# --------------------------------------------------------------------------


@dataclass
class Row:
    regime: str
    name: str  # optlab registry name the row belongs to
    implementation: str  # "optlab", "torch.optim" or a reference package
    path: str  # loop / foreach / fused / default
    median_ms: float = float("nan")
    first_step_s: float = float("nan")
    compiles: int = 0
    peak_extra_mb: float = float("nan")
    numel: int = 0
    bytes_per_param: int = 28
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
        return (self.bytes_per_param / 28) / self.time_ratio

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
            count, size = REGIMES[regime]
            generator = torch.Generator().manual_seed(0)
            values = [
                torch.randn(size * self.scale, generator=generator).to(self.device)
                for _ in range(count)
            ]
            grads = [
                torch.randn(size * self.scale, generator=generator).to(self.device)
                for _ in range(count)
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
                self.sync()
                start = time.perf_counter()
                optimizer.step()
                self.sync()
                if round_index == 0:
                    row.first_step_s = time.perf_counter() - start
                for _ in range(2):
                    optimizer.step()
                # Each step of this row, then one of torch's fused Adam: the two
                # medians see the same machine load, whatever it does meanwhile.
                yardstick = self.yardstick(row.regime)
                for _ in range(steps):
                    row.times_ms.append(self.time_ms(optimizer.step))
                    row.yardstick_times_ms.append(self.time_ms(yardstick.step))
                if self.memory and round_index == self.rounds - 1:
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


def default_paths(bench: Bench, name: str, regime: str) -> tuple[str, str | None]:
    """Which implementation optlab's and torch's defaults pick for this regime."""
    import torch
    from torch.optim.optimizer import _default_to_fused_or_foreach

    from optlab.optim import create_optimizer

    values, _ = bench.tensors(regime)
    params = [torch.nn.Parameter(v) for v in values]
    optimizer = create_optimizer(params, name)
    ours = optimizer._implementation(optimizer.param_groups[0], params)
    theirs = None
    if name in TORCH_EQUIVALENT:
        fused, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
        theirs = "fused" if fused else "foreach" if foreach else "loop"
    return ours, theirs


def run_regime(
    bench: Bench, regime: str, names: list[str], log: Callable[[str], None]
) -> list[Row]:
    references = _reference_factories()
    rows: list[Row] = []
    planned: list[tuple[Row, Callable[[list], Any]]] = []

    def add(row: Row, factory: Callable[[list], Any]) -> None:
        rows.append(row)
        planned.append((row, factory))

    # The yardstick first: torch's fused Adam on the same tensors.
    yardstick = Row(regime, "adam", "torch.optim", "fused", bytes_per_param=28)
    add(yardstick, torch_factory("adam", {"fused": True}))
    for name in names:
        ours_default, torch_default = default_paths(bench, name, regime)
        moved = step_bytes_per_param(name)  # torch's and the references' keep the same state
        for path, flags in OPTLAB_PATHS.items():
            row = Row(regime, name, "optlab", path, bytes_per_param=moved)
            if path == ours_default:
                row.note = "default"
            add(row, optlab_factory(name, flags))
        if name in TORCH_EQUIVALENT:
            for path, flags in TORCH_PATHS.items():
                if name == "adam" and path == "fused":
                    continue  # measured first, as the yardstick
                torch_class = getattr(
                    importlib.import_module("torch.optim"), TORCH_EQUIVALENT[name][0]
                )
                if "fused" in flags and "fused" not in inspect.signature(torch_class).parameters:
                    continue  # torch has no fused Adadelta / RMSprop
                row = Row(regime, name, "torch.optim", path, bytes_per_param=moved)
                add(row, torch_factory(name, flags))
                if path == torch_default and not row.note:
                    row.note = "default"
            if name == "adam" and torch_default == "fused" and not rows[0].note:
                rows[0].note = "default"
        for label, factory in references.get(name, []):
            add(Row(regime, name, label, "default", bytes_per_param=moved), factory)
            rows[-1].note = "default"
    bench.measure_all(planned, log)
    for row in rows:
        shown = f"{row.median_ms:9.2f} ms" if row.times_ms else f"skipped ({row.note})"
        log(f"  {regime:<6} {row.name:<10} {row.implementation:<28} {row.path:<8} {shown}")
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
    count, size = REGIMES[regime]
    params = [torch.nn.Parameter(torch.randn(size * scale, device=device)) for _ in range(count)]
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
        "| optimizer | implementation | path | median ms | Mparams/s | GB/s | GB/s vs torch fused Adam "
        "| time vs torch fused Adam | first step s | compiles | peak extra MB (x model) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if row.note and not row.times_ms:
            lines.append(
                f"| {row.name} | {row.implementation} | {row.path} | {row.note} | | | | | | | |"
            )
            continue
        path = row.path + (" (default)" if row.note == "default" and row.path != "default" else "")
        model_mb = count * 4 / 1e6
        lines.append(
            f"| {row.name} | {row.implementation} | {path} | {row.median_ms:.2f} "
            f"| {row.params_per_s / 1e6:.0f} | {row.gbps:.1f} "
            f"| {100 * row.gbps_ratio:.0f} % "
            f"| {row.time_ratio:.2f} x "
            f"| {row.first_step_s:.2f} | {row.compiles} "
            f"| {_fmt(row.peak_extra_mb, 1)} ({_fmt(row.peak_extra_mb / model_mb)}) |"
        )
    return lines


def bar_checks(all_rows: dict[str, list[Row]], first_steps: list[dict[str, Any]]) -> list[str]:
    """The issue's bars, checked against this run's numbers."""
    lines = []

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
        "4 to read g, 8 to read and write p, 8 to read and write each state tensor the "
        f"optimizer keeps ({bytes_sentence(all_rows)}). `(default)` marks "
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
        count, size = REGIMES[regime]
        lines += [
            f"## Regime `{regime}`: {count} tensors of {size * bench.scale:,} "
            f"({count * size * bench.scale / 1e6:.1f}M parameters)",
            "",
            *regime_table(rows),
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
        "--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES),
        help="large: 64 tensors of 262144; small: 500 tensors of 4096 (default: both)",
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
    all_rows = {regime: run_regime(bench, regime, args.optimizers, log) for regime in args.regimes}
    first_steps = []
    if not args.no_first_step:
        names = args.first_step_optimizers or args.optimizers
        first_steps = first_step_table(names, args.device, args.scale, log)
    command = "python benchmarks/step_speed.py " + " ".join(sys.argv[1:])
    write_report(args.output, bench, all_rows, first_steps, copy_gbps, command.strip())
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
