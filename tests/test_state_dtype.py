"""``state_dtype`` (moments in bfloat16 or 8-bit blocks) against an independent reference.

The reference (``tests/_lowp_reference.py``) is written from the
specification in :mod:`optlab.optim._lowp`'s docstring in numpy, Python ints
and float64; nothing here compares the optimizers with ``_lowp``'s own
functions. (``_lowp.compress`` is called once, as the thing under test, by
the rounding's unbiasedness test.)

Every step is checked with teacher forcing: the step starts from the state
the optimizer actually stored, decoded by the reference; a float64 oracle
computes the step from there, and the reference rounds the oracle's new
moments with the documented seeds. The oracles:

- ``torch.optim`` Adam, AdamW, Adagrad, Adadelta, RMSprop, RAdam, NAdam;
- the reference packages of the ``dev`` extra: ``adabelief_pytorch``
  (AdaBelief), ``adabound`` (AdaBound, AMSBound), ``lion_pytorch`` (Lion),
  ``schedulefree`` (AdamWScheduleFree);
- optlab's own full-precision optimizer (``state_dtype=None``) in float64
  for those without a package here: Yogi, EAdam, MSVAG, BeliefEps and its
  cells, AdaBoundW. Their full-precision steps are checked against their
  references in their own test files.

The oracle runs in float64 and the optimizer in float32, so parameters are
compared to a tolerance that scales with the step, and stored codes must be
equal except for a small share off by exactly one code / one bf16 spacing
(a float32 value that lands on the other side of a rounding threshold than
its float64 counterpart).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import json
import math
import re
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import adabelief_pytorch
import adabound
import lion_pytorch
import numpy as np
import pytest
import schedulefree
import torch

import _lowp_reference as ref
import optlab
from optlab.optim import _fused, _inductor, _lowp
from optlab.optim.adabound import AdaBoundW

#: Parameter shapes: 300 = a block + 44, 259 = a block + 3, 1030 = 4 blocks + 6, 150 (one
#: short block only) and 512 (full blocks only); the first three in group 0, the rest in group 1.
SHAPES = [(300,), (7, 37), (1030,), (10, 15), (2, 256)]
SPLIT = 3
STEPS = 6
FORMATS = ["bfloat16", "int8"]
#: At most this share of the stored codes may be off by one from the reference's.
MAX_OFF_BY_ONE = 0.005
#: A parameter's tolerance: this much of its own step, plus of the largest step, plus 2 ulp.
STEP_RTOL, STEP_ATOL = 2e-5, 1e-6

needs_fused = pytest.mark.skipif(
    _fused.fused_unavailable_reason("cpu") is not None,
    reason=f"fused kernels unavailable: {_fused.fused_unavailable_reason('cpu')}",
)
IMPLEMENTATIONS = [
    pytest.param({"foreach": False}, id="loop"),
    pytest.param({"foreach": True}, id="foreach"),
]


@dataclass(frozen=True)
class Case:
    """One optimizer configuration: registry name (or ``adaboundw``), options, oracle."""

    name: str
    options: dict[str, Any]
    oracle: str
    #: A moment's initial value where it is not 0.
    init: dict[str, float] = field(default_factory=dict)
    #: Moments born on a parameter's first step from its gradient (SGD's buffer): the
    #: reference is given none before it.
    born: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.name


CASES = [
    Case(
        "adagrad",
        dict(lr=0.05, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1),
        "torch",
        {"sum": 0.1},
    ),
    Case("adadelta", dict(lr=1.0, rho=0.9, weight_decay=0.01), "torch"),
    Case("rmsprop", dict(lr=1e-2, centered=True, momentum=0.9, weight_decay=0.01), "torch"),
    Case("adam", dict(lr=1e-2, weight_decay=0.01), "torch"),
    Case("amsgrad", dict(lr=1e-2), "torch"),
    Case("adamw", dict(lr=1e-2, weight_decay=0.1), "torch"),
    Case("radam", dict(lr=1e-2, betas=(0.9, 0.99)), "torch"),
    Case("nadam", dict(lr=1e-2, weight_decay=0.01), "torch"),
    Case("adabelief", dict(lr=1e-2, weight_decay=0.01), "adabelief_pytorch"),
    Case("adabound", dict(lr=1e-2, weight_decay=0.01), "adabound"),
    Case("amsbound", dict(lr=1e-2), "adabound"),
    Case("lion", dict(lr=1e-3, weight_decay=0.1), "lion_pytorch"),
    Case("adamw-schedulefree", dict(lr=1e-2, warmup_steps=2, weight_decay=0.01), "schedulefree"),
    Case("yogi", dict(lr=1e-2, initial_accumulator_value=0.3), "optlab", {"exp_avg_sq": 0.3}),
    Case("eadam", dict(lr=1e-2, amsgrad=True), "optlab"),
    Case("msvag", dict(lr=1e-2), "optlab"),
    Case("belief-eps", dict(lr=1e-2, amsgrad=True, weight_decay=0.01), "optlab"),
    *(
        Case(cell, dict(lr=1e-2), "optlab")
        for cell in (
            "g2-outside",
            "g2-inside",
            "g2-accum",
            "belief-outside",
            "belief-inside",
            "belief-accum",
        )
    ),
    Case(
        "momentum", dict(lr=1e-2, dampening=0.1, weight_decay=0.01), "torch",
        born=("momentum_buffer",),
    ),  # fmt: skip
    Case("nag", dict(lr=1e-2, weight_decay=0.01), "torch", born=("momentum_buffer",)),
    Case("adaboundw", dict(lr=1e-2, weight_decay=1e-3), "optlab"),  # last: not in TAKERS
]
CASE_BY_NAME = {case.name: case for case in CASES}


def case_params(cases=CASES) -> list:
    return [
        pytest.param(
            case,
            id=case.name,
        )
        for case in cases
    ]


# --------------------------------------------------------------------------
# Building and stepping.
# --------------------------------------------------------------------------


@contextlib.contextmanager
def quiet():
    """Silence the reference packages (AdaBelief prints, adabound's deprecated calls warn)."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def make_params(seed: int = 0, shapes=SHAPES) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator).requires_grad_() for shape in shapes]


def build(case: Case, params, fmt, implementation: dict, **overrides) -> torch.optim.Optimizer:
    """``case``'s optimizer on two groups (the second at half the lr)."""
    options = {**case.options, **overrides}
    groups = [
        {"params": params[:SPLIT]},
        {"params": params[SPLIT:], "lr": options["lr"] / 2},
    ]
    kwargs = {**options, **implementation, "state_dtype": fmt}
    with quiet():
        if case.name == "adaboundw":
            return AdaBoundW(groups, **kwargs)
        return optlab.create_optimizer(groups, case.name, **kwargs)


def gradients(params, step: int) -> list[torch.Tensor]:
    """Step ``step``'s gradients: normal values with magnitudes spread over a few octaves."""
    generator = torch.Generator().manual_seed(1000 + step)
    return [
        torch.randn(p.shape, generator=generator)
        * torch.exp(0.7 * torch.randn(p.shape, generator=generator))
        for p in params
    ]


def step_with(optimizer, params, step: int) -> None:
    for param, grad in zip(params, gradients(params, step), strict=True):
        param.grad = grad
    with quiet():
        optimizer.step()


def clone_state(state) -> dict[str, Any]:
    return {
        key: value.clone() if torch.is_tensor(value) else copy.deepcopy(value)
        for key, value in state.items()
    }


def bits(tensor: torch.Tensor) -> tuple:
    """A tensor's dtype, shape and bytes (bf16 read as int16): equal means bitwise equal."""
    data = tensor.detach()
    if data.dtype == torch.bfloat16:
        data = data.view(torch.int16)
    return (tensor.dtype, tuple(tensor.shape), data.contiguous().numpy().tobytes())


def assert_same_bits(actual: dict, expected: dict, what: str) -> None:
    assert set(actual) == set(expected), what
    for key, value in expected.items():
        if torch.is_tensor(value):
            assert bits(actual[key]) == bits(value), f"{what}: {key!r}"
        else:
            assert actual[key] == value, f"{what}: {key!r}"


def snapshot(optimizer, params) -> tuple:
    """Everything a step may change: parameters, state, group options (bitwise)."""
    return (
        [bits(p) for p in params],
        [
            {k: bits(v) if torch.is_tensor(v) else v for k, v in optimizer.state[p].items()}
            for p in params
            if p in optimizer.state
        ],
        [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups],
    )


# --------------------------------------------------------------------------
# Reading stored moments.
# --------------------------------------------------------------------------


def stored(state, key: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A stored moment as numpy: bf16 values (float64) or int codes, and int8 absmax."""
    codes = state[key]
    absmax = state.get(f"{key}_absmax")
    if codes.dtype == torch.bfloat16:
        values = codes.float().numpy().astype(np.float64).reshape(-1)
    else:
        values = codes.numpy().astype(np.int64).reshape(-1)
    return values, None if absmax is None else absmax.numpy().astype(np.float64)


def check_format(state, key: str, kind: str, fmt, param: torch.Tensor) -> None:
    fmt = "bfloat16" if fmt is torch.bfloat16 else fmt
    codes = state[key]
    assert codes.shape == param.shape, key
    if fmt == "bfloat16":
        assert codes.dtype == torch.bfloat16, key
        assert f"{key}_absmax" not in state
    else:
        assert codes.dtype == (torch.int8 if kind == "signed" else torch.uint8), key
        absmax = state[f"{key}_absmax"]
        assert absmax.dtype == torch.float32, key
        assert absmax.shape == (math.ceil(param.numel() / ref.BLOCK),), key


class CodeTally:
    """Compares stored codes with the reference's, counting those off by one."""

    def __init__(self) -> None:
        self.checked = 0
        self.off = 0

    def compare(self, fmt: str, actual, expected, what: str) -> None:
        (codes, absmax), (expected_codes, expected_absmax) = actual, expected
        if fmt == "bfloat16":
            diff = ref.bf16_ordinal(codes) - ref.bf16_ordinal(expected_codes)
        else:
            diff = codes - expected_codes
            np.testing.assert_allclose(absmax, expected_absmax, rtol=1e-6, atol=0, err_msg=what)
        worst = int(np.abs(diff).max()) if diff.size else 0
        assert worst <= 1, f"{what}: codes off by {worst} (at most 1 allowed)"
        self.checked += diff.size
        self.off += int(np.count_nonzero(diff))

    def assert_few_off(self) -> None:
        assert self.checked > 0
        assert self.off <= MAX_OFF_BY_ONE * self.checked, (
            f"{self.off} of {self.checked} codes off by one (at most {MAX_OFF_BY_ONE:.1%})"
        )


def assert_step_close(actual32, expected64, before64, what: str) -> None:
    """``actual`` (float32) within STEP_RTOL of its own step, STEP_ATOL of the largest, 2 ulp."""
    actual = actual32.detach().double()
    step = (expected64 - before64).abs()
    ulp = torch.finfo(torch.float32).eps * expected64.abs()
    bound = STEP_RTOL * step + STEP_ATOL * step.max() + 2 * ulp
    error = (actual - expected64).abs()
    worst = (error / bound).max().item()
    assert worst <= 1, f"{what}: error {worst:.3g} x the tolerance"


# --------------------------------------------------------------------------
# The float64 oracles.
# --------------------------------------------------------------------------

#: How each oracle keeps a parameter's step count: a float tensor, an int, or none.
STEP_STYLE = {
    "torch": "tensor",
    "optlab": "tensor",
    "adabelief_pytorch": "int",
    "adabound": "int",
    "lion_pytorch": None,
    "schedulefree": None,
}
_NOT_PASSED = {
    "params", "lr", "foreach", "fused", "capturable", "differentiable", "state_dtype",
    "print_change_log",
}  # fmt: skip


def _taken(cls, options: dict) -> dict:
    names = inspect.signature(cls).parameters
    return {k: v for k, v in options.items() if k in names and k not in _NOT_PASSED}


def make_oracle(case: Case, optimizer, groups_before: list[dict], params64: list[list]):
    """The float64 oracle of ``case``, its groups as ``optimizer``'s were before the step."""
    options = groups_before[0]
    groups = [{"params": ps, "lr": g["lr"]} for ps, g in zip(params64, groups_before, strict=True)]
    with quiet():
        if case.oracle == "torch":
            cls = getattr(torch.optim, type(optimizer).__name__)
            return cls(groups, foreach=False, **_taken(cls, options))
        if case.oracle == "adabelief_pytorch":
            cls = adabelief_pytorch.AdaBelief
            return cls(groups, print_change_log=False, **_taken(cls, options))
        if case.oracle == "adabound":
            return adabound.AdaBound(groups, **_taken(adabound.AdaBound, options))
        if case.oracle == "lion_pytorch":
            return lion_pytorch.Lion(groups, lr=options["lr"], **_taken(lion_pytorch.Lion, options))
        if case.oracle == "schedulefree":
            cls = schedulefree.AdamWScheduleFree
            oracle = cls(groups, foreach=False, **_taken(cls, options))
            for group, before in zip(oracle.param_groups, groups_before, strict=True):
                group["train_mode"] = True  # the package starts in eval mode
                for counter in ("k", "lr_max", "weight_sum"):
                    group[counter] = before[counter]
            return oracle
        assert case.oracle == "optlab"
        own = [
            {
                "params": ps,
                **{k: v for k, v in g.items() if k not in _NOT_PASSED | {"rounding_step"}},
                "lr": g["lr"],
            }
            for ps, g in zip(params64, groups_before, strict=True)
        ]
        if case.name == "adaboundw":
            return AdaBoundW(own, foreach=False)
        return type(optimizer)(own, foreach=False)


def _initial_extra(key: str, param_before: torch.Tensor) -> torch.Tensor:
    """A non-moment state tensor before the first step (Schedule-Free's z, NAdam's mu_product)."""
    if key == "z":
        return param_before.double().clone()
    if key == "mu_product":
        return torch.ones((), dtype=torch.float64)
    raise AssertionError(f"no initial value known for {key!r}")


# --------------------------------------------------------------------------
# One teacher-forced step.
# --------------------------------------------------------------------------


def check_step(case, fmt, optimizer, params, step, before_params, before_states, before_groups,
               grads, tally) -> None:  # fmt: skip
    """Check ``optimizer``'s step number ``step`` (just taken) against the reference."""
    kinds = optimizer.moment_kinds
    group_of = [gi for gi, g in enumerate(optimizer.param_groups) for _ in g["params"]]
    positions = {id(p): i for i, p in enumerate(params)}
    params64 = [p.double().clone() for p in before_params]
    oracle_groups = [
        [params64[positions[id(p)]] for p in g["params"]] for g in optimizer.param_groups
    ]
    oracle = make_oracle(case, optimizer, before_groups, oracle_groups)
    style = STEP_STYLE[case.oracle] if optimizer.counts_steps else None
    for i, param in enumerate(params):
        after, before = optimizer.state[param], before_states[i]
        slots = optimizer._rule_state_keys(optimizer.param_groups[group_of[i]])
        moment_keys = [k for k in after if k in kinds]
        extras = [k for k in after if k not in kinds and k != "step" and not k.endswith("_absmax")]
        n = param.numel()
        injected: dict[str, Any] = {}
        if style == "tensor":
            injected["step"] = torch.tensor(float(step - 1))
        elif style == "int":
            injected["step"] = step - 1
        for key in moment_keys:
            kind, slot = kinds[key], slots.index(key)
            initial = np.full(n, np.float32(case.init.get(key, 0.0)), dtype=np.float64)
            # The initial state is rounded at step 0.
            initial_codes = ref.moment_encode(fmt, kind, initial, i, 0, slot)
            if key in before:
                old_codes = stored(before, key)
                if step == 1:  # made before the first step (Adagrad does): check it
                    tally.compare(fmt, old_codes, initial_codes, f"initial {key} of param {i}")
            elif key in case.born:
                continue  # born from the gradient in this step, by the reference too
            else:
                old_codes = initial_codes
            old = ref.decode(fmt, kind, *old_codes)
            injected[key] = torch.from_numpy(old.reshape(param.shape)).clone()
        for key in extras:
            value = before.get(key)
            injected[key] = (
                value.double().clone()
                if value is not None
                else _initial_extra(key, before_params[i])
            )
        oracle.state[params64[i]] = injected
        params64[i].grad = grads[i].double().clone()
    with quiet():
        oracle.step()
    for i, param in enumerate(params):
        what = f"{case.name} {fmt} step {step} param {i} {tuple(param.shape)}"
        after, theirs = optimizer.state[param], oracle.state[params64[i]]
        slots = optimizer._rule_state_keys(optimizer.param_groups[group_of[i]])
        absmax_keys = {f"{k}_absmax" for k in after if k in kinds} if fmt == "int8" else set()
        assert set(after) == set(theirs) | absmax_keys, what
        assert_step_close(param, params64[i], before_params[i].double(), f"{what}: param")
        if "step" in after:
            assert float(after["step"]) == step, what
        else:  # Lion, Schedule-Free: the group counts the rounding steps
            assert optimizer.param_groups[group_of[i]]["rounding_step"] == step, what
        for key in after:
            if key in kinds:
                check_format(after, key, kinds[key], fmt, param)
                expected = ref.moment_encode(
                    fmt, kinds[key], theirs[key].numpy(), i, step, slots.index(key)
                )
                tally.compare(fmt, stored(after, key), expected, f"{what}: {key}")
            elif key == "z":
                z_before = before_states[i].get("z", before_params[i]).double()
                assert_step_close(after[key], theirs[key], z_before, f"{what}: z")
            elif key == "mu_product":
                torch.testing.assert_close(after[key].double(), theirs[key], rtol=1e-6, atol=0)


def run_checked(case: Case, fmt: str, implementation: dict, steps: int = STEPS):
    """``steps`` steps of ``case``, each checked against the reference; the optimizer, params."""
    params = make_params()
    optimizer = build(case, params, fmt, implementation)
    tally = CodeTally()
    for step in range(1, steps + 1):
        before_params = [p.detach().clone() for p in params]
        before_states = [clone_state(optimizer.state.get(p, {})) for p in params]
        before_groups = [
            {k: copy.deepcopy(v) for k, v in g.items() if k != "params"}
            for g in optimizer.param_groups
        ]
        grads = gradients(params, step)
        for param, grad in zip(params, grads, strict=True):
            param.grad = grad.clone()
        with quiet():
            optimizer.step()
        check_step(case, fmt, optimizer, params, step, before_params, before_states,
                   before_groups, grads, tally)  # fmt: skip
    tally.assert_few_off()
    return optimizer, params


# --------------------------------------------------------------------------
# 1. Every step against the reference.
# --------------------------------------------------------------------------

# Each fused compact kernel costs 20-75 s to compile on a cold 2-core machine (int8 two:
# full blocks and tails), so the fused grid covers each format twice, not every pair.
FUSED = [
    ("adam", "int8"), ("adam", "bfloat16"), ("adabelief", "bfloat16"), ("lion", "int8"),
    ("momentum", "int8"),
]  # fmt: skip


# The fused tests come first in the file: their compiles (tens of seconds each, every process
# for int8) start while the other worker takes the rest, and both fused tests of a kernel run
# in one process, which compiles it once.
@needs_fused
@pytest.mark.parametrize(
    ("name", "fmt"),
    [pytest.param(*nf) for nf in FUSED],
    ids=[f"{n}-{f}" for n, f in FUSED],
)
def test_fused_steps_match_the_reference(name, fmt):
    """The fused kernels (bf16: one; int8: full blocks and tails) against the reference."""
    run_checked(CASE_BY_NAME[name], fmt, {"fused": True})


@needs_fused
@pytest.mark.parametrize(("name", "fmt"), FUSED, ids=[f"{n}-{f}" for n, f in FUSED])
def test_fused_runs_are_reproducible_and_resume_bitwise(name, fmt):
    """Two fused runs agree bitwise and a checkpoint resumes bitwise; for Adam with bf16
    state, GradScaler unscales the gradients itself and skips an inf step."""
    assert_resumes_bitwise(CASE_BY_NAME[name], fmt, {"fused": True}, steps=4, at=2)
    if name == "adam" and fmt == "bfloat16":
        check_grad_scaler_unscales_for_compact_state()


# Two int8 steps of fused Adam, bitwise summarised; run here and in a fresh process.
INT8_STEPS = """
import hashlib, torch, optlab
generator = torch.Generator().manual_seed(5)
shapes = [(300,), (7, 37), (1030,), (2, 256)]
params = [torch.randn(s, generator=generator).requires_grad_() for s in shapes]
optimizer = optlab.create_optimizer(params, "adam", lr=1e-2, fused=True, state_dtype="int8")
for _ in range(2):
    for param in params:
        param.grad = torch.randn(param.shape, generator=generator)
    optimizer.step()
digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in params)).hexdigest()
"""


def _int8_kernels():
    return [k for k in _fused._kernels.values() if k.layout and k.layout.part != "flat"]


@needs_fused
def test_a_fresh_process_loads_recorded_int8_kernels_without_tracing():
    """int8 kernels are called through Inductor's wrapper (it makes buffers of its own);
    the record keeps that wrapper's module, so a later process loads it instead of
    tracing the rule again (19 s a process here before) and takes bitwise the same steps."""
    namespace: dict[str, Any] = {}
    exec(INT8_STEPS, namespace)
    kernels = _int8_kernels()
    assert {k.layout.part for k in kernels} >= {"blocks", "tail"}
    records = [_fused._recorded(k) for k in kernels]
    assert all(records), "every int8 kernel is recorded"
    assert any("wrapper" in record for record in records)
    script = (
        "from optlab.optim import _fused\n"
        "def refuse(self, num_scalars):\n"
        "    raise AssertionError('compiled although a checked record exists')\n"
        "_fused._Kernel.compile = refuse\n" + INT8_STEPS + "print(digest)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == namespace["digest"]


@needs_fused
def test_int8_kernels_make_no_temporaries_the_size_of_the_parameters():
    """A blocks kernel is one pass over its tensors: a block's new moments stay in
    per-row local buffers (``_inductor.blockwise_fusion``); its own buffers are one
    float32 per block and moment. (Before, three float32 temporaries per element:
    24 bytes an element of extra traffic, and the memory held between steps.)"""
    generator = torch.Generator().manual_seed(6)
    params = [torch.randn(256 * (40 + k), generator=generator).requires_grad_() for k in range(3)]
    optimizer = optlab.create_optimizer(params, "adam", lr=1e-2, fused=True, state_dtype="int8")
    for param in params:
        param.grad = torch.randn(param.shape, generator=generator)
    optimizer.step()
    kernels = [k for k in _int8_kernels() if k.layout.part == "blocks" and k._direct is not None]
    assert kernels, "the int8 blocks kernel is called through its wrapper"
    for kernel in kernels:
        source = Path(_inductor.wrapper_file(kernel._direct)).read_text()
        assert "local_buffer_data" in source
        assert not re.findall(r"empty_strided_cpu\(\(\w+, 256\)", source)


@needs_fused
@pytest.mark.parametrize("swap", ["same dtype", "other dtype"])
def test_a_wrapper_record_with_its_inputs_reordered_is_not_used(swap):
    """A plan that hands the kernel a moment's block scales (float32, another length)
    or its int8 codes where it reads the parameter is refused, the first by the
    self-check (it checks element counts), the second before any call (the
    record names each input's dtype; such a call would read past the codes), and
    the process goes on. (The record is trusted as a whole otherwise: it names a
    module that is imported.)"""
    exec(INT8_STEPS, {})
    kernel = next(k for k in _int8_kernels() if "wrapper" in (_fused._recorded(k) or {}))
    path = _fused._record_path(kernel)
    original = path.read_text()
    record = json.loads(original)
    plan = record["plan"]

    def member(entry):
        index, is_size = entry
        return (
            None
            if is_size or index >= kernel.arity * kernel.width
            else kernel.members[index % kernel.width]
        )

    other = (torch.float32, "absmax") if swap == "same dtype" else (torch.int8, "codes")
    first = next(i for i, entry in enumerate(plan) if member(entry) == (torch.float32, "plain"))
    second = next(i for i, entry in enumerate(plan) if member(entry) == other)
    plan[first], plan[second] = plan[second], plan[first]

    def fresh():
        return _fused._Kernel(
            kernel.rule, kernel.flags, kernel.present, kernel.device, kernel.dtype,
            kernel.arity, kernel.scaled, kernel.layout,
        )  # fmt: skip

    # The scalar vector: the rule's scalars, then each tensor set's seeds.
    num_scalars = kernel.layout.num_scalars + kernel.arity * len(kernel.layout.seed_slots)
    try:
        path.write_text(json.dumps(record))
        assert not fresh().load(num_scalars)
    finally:
        path.write_text(original)
    assert fresh().load(num_scalars)  # the intact record is used


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", case_params())
def test_every_step_matches_the_reference(case, implementation, fmt):
    run_checked(case, fmt, implementation)


@pytest.mark.parametrize("half", [0, 1])
def test_the_uniforms_are_the_reference_uniforms_exactly(half):
    """``u`` is built on the float32 bit pattern (``1 + u`` from the mantissa, minus 1): the
    same values as the hash's 16 bits divided by 2^16, for eager code and kernels alike."""
    for seed_value in (0, 1, 0x7FFFFFFF, 123456789):
        got = _lowp.uniform(torch.empty(70_001), seed_value, half)
        assert got.dtype == torch.float32
        assert np.array_equal(
            got.numpy().astype(np.float64), ref.uniforms(70_001, seed_value, half)
        )


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_seeds_of_many_parameters_at_once_are_the_reference_seeds(fmt):
    """The vectorised seeds (numpy uint64) are splitmix64's, as the reference computes them
    with Python ints: one per bf16 moment, one per int8 part (full blocks, then a tail)."""
    rng = np.random.default_rng(7)
    numels = [int(n) for n in rng.choice([1, 255, 256, 257, 300, 512, 1030, 4096], 400)]
    positions = [int(p) for p in rng.integers(0, 1 << 20, 400)]
    steps = [int(s) for s in rng.integers(0, 1 << 40, 400)]
    for slot in (0, 1, 2):
        got = _lowp.seeds_of(fmt, numels, positions, steps, slot)
        want = []
        for numel, position, step in zip(numels, positions, steps, strict=True):
            count = 1 if fmt == "bfloat16" else len(_lowp.parts(numel))
            want.append(tuple(ref.seed(position, step, slot, part) for part in range(count)))
        assert got == want


def test_the_grid_covers_every_optimizer_that_takes_state_dtype():
    takes = {
        name
        for name in optlab.list_optimizers(builtin_only=True)
        if "state_dtype" in optlab.get_spec(name).hparam_names()
    }
    assert takes == set(CASE_BY_NAME) - {"adaboundw"} | {"sgd"}  # sgd: below
    for name in ("lars", "lamb", "fromage"):
        assert "state_dtype" not in optlab.get_spec(name).hparam_names()


# --------------------------------------------------------------------------
# 2. Stochastic rounding is unbiased.
# --------------------------------------------------------------------------

SEEDS = 256  #: roundings of every value, one seed each
FAILURE = 1e-9  #: the probability a correct rounding fails a bound below (per bound)


def third_between_bf16(count: int) -> np.ndarray:
    """float32 values 1/3 of a bf16 spacing above a bf16 value, over many binades, both signs."""
    rng = np.random.default_rng(0)
    lo = (rng.uniform(1, 2, count) * 2.0 ** rng.integers(-60, 60, count)).astype(np.float32)
    lo = ref.bf16_neighbours(lo)[0]
    spacing = ref.bf16_neighbours(lo)[1] - lo
    value = (lo + spacing / 3).astype(np.float32).astype(np.float64)  # exact: 16 bits below
    return np.where(np.arange(count) % 2 == 1, -value, value)


def test_bf16_stochastic_rounding_is_unbiased_and_not_round_to_nearest():
    """Each rounding of ``x`` is ``lo`` or ``hi``, ``hi`` with probability ``f = (|x| - lo) /
    (hi - lo)``: a Bernoulli(f) in spacing units. Per element the mean of SEEDS roundings is
    within Hoeffding's radius of ``f`` (union bound over the elements); over all of them within
    6 standard deviations of the mean. Round-to-nearest gives 0 for ``f = 1/3`` everywhere."""
    values = third_between_bf16(512)
    lo, hi = ref.bf16_neighbours(np.abs(values))
    fraction = (np.abs(values) - lo) / (hi - lo)
    np.testing.assert_allclose(fraction, 1 / 3, atol=2**-15)
    x = torch.from_numpy(values.astype(np.float32))
    ups = np.zeros(values.size)
    for seed_value in range(SEEDS):
        rounded = _lowp.compress("bfloat16", "signed", x, [seed_value * 7919])[0]
        magnitude = rounded.float().abs().numpy().astype(np.float64)
        assert np.all((magnitude == lo) | (magnitude == hi))
        assert np.all(np.sign(rounded.float().numpy()) == np.sign(values))
        ups += magnitude == hi
    per_element = ups / SEEDS
    radius = ref.hoeffding_radius(SEEDS, FAILURE / values.size)
    assert np.abs(per_element - fraction).max() <= radius
    overall = per_element.mean()
    sd = math.sqrt(float(np.mean(fraction * (1 - fraction))) / (SEEDS * values.size))
    assert abs(overall - fraction.mean()) <= 6 * sd
    assert abs(0.0 - fraction.mean()) > 6 * sd + radius  # what round-to-nearest would give


@pytest.mark.parametrize("kind", ["signed", "nonnegative"])
def test_int8_stochastic_rounding_is_unbiased_and_not_round_to_nearest(kind):
    """Codes of values 1/3 of a code step above a code (in the square-root domain for
    nonnegative moments): each code is ``k`` or ``k + 1``, ``k + 1`` with probability 1/3 (up
    to the 2^-16 grid of u and float32 rounding), bounded as for bf16. Also the decoded mean:
    the signed decode is linear, so it is unbiased too."""
    rng = np.random.default_rng(1)
    levels = 127 if kind == "signed" else 255
    blocks = 8
    low = -levels + 1 if kind == "signed" else 1
    k = rng.integers(low, levels - 1, (blocks, ref.BLOCK))
    scale = rng.uniform(0.5, 4.0, (blocks, 1))  # each block's absmax
    coded = (k + 1 / 3) * scale / levels
    coded[:, 0] = scale[:, 0]  # the block's absmax itself: coded exactly
    values = (coded if kind == "signed" else coded**2).reshape(-1)
    x = torch.from_numpy(values.astype(np.float32))
    target = (np.abs(coded) * levels / scale).reshape(-1) * np.sign(coded).reshape(-1)
    ups = np.zeros(values.size)
    decoded_sum = np.zeros(values.size)
    for seed_value in range(SEEDS):
        codes, absmax = _lowp.compress("int8", kind, x, [seed_value * 7919 + 1])
        codes = codes.numpy().astype(np.float64)
        np.testing.assert_allclose(absmax.numpy(), scale[:, 0], rtol=1e-6)
        assert np.all((codes == np.floor(target)) | (codes == np.floor(target) + 1)
                      | (np.abs(codes - target) < 1e-3))  # fmt: skip
        ups += codes > np.floor(target + 1e-3)
        decoded_sum += ref.decode_int8(codes, absmax.numpy(), kind)
    interior = np.ones(values.size, dtype=bool)
    interior[:: ref.BLOCK] = False  # the absmax elements
    fraction = (target - np.floor(target))[interior]
    np.testing.assert_allclose(fraction, 1 / 3, atol=1e-4)
    per_element = ups[interior] / SEEDS
    radius = ref.hoeffding_radius(SEEDS, FAILURE / interior.sum())
    assert np.abs(per_element - 1 / 3).max() <= radius + 1e-4
    sd = math.sqrt((1 / 3) * (2 / 3) / (SEEDS * interior.sum()))
    assert abs(per_element.mean() - 1 / 3) <= 6 * sd + 1e-4
    assert 1 / 3 > 6 * sd + radius  # round-to-nearest (always k) would fail the bounds
    if kind == "signed":  # E[code * A / 127] = x: the mean decoded value, in code steps
        error = (decoded_sum / SEEDS - values) / (np.repeat(scale[:, 0], ref.BLOCK) / levels)
        assert abs(error[interior].mean()) <= 6 * sd + 1e-4


#: (optimizer, moment, options) for the moving average of a constant gradient below.
EMA_CASES = [
    ("adam", "exp_avg", 0, dict(betas=(0.99, 0.999))),
    ("lion", "exp_avg", 1, dict(betas=(0.9, 0.99))),
    ("adamw-schedulefree", "exp_avg_sq", 1, dict(betas=(0.9, 0.99))),
]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    ("name", "key", "beta_index", "options"), EMA_CASES, ids=[c[0] for c in EMA_CASES]
)
def test_a_moving_average_of_a_constant_gradient_is_unbiased(name, key, beta_index, options, fmt):
    """``m = beta * m + (1 - beta) * c`` from 0, stored compactly: with unbiased rounding and
    fresh random bits every step, ``E[m_T] = c (1 - beta^T)``; the rounding errors ``e_t``
    (mean 0, spread at most one code step ``s``: variance <= s^2 / 4) add up to
    ``sum_t beta^(T-t) e_t``, variance <= s^2 / (4 (1 - beta^2)), independent between
    elements. So the mean over N elements is within 6 sqrt(s^2 / (4 (1 - beta^2) N)) of it.
    Rounding with the same bits every step sticks each element below c (its increment
    ``(1 - beta) (c - m)`` is a fraction of a code step, rounded down where u is large):
    for bf16 that is a bias of ~15 % here (measured with the rounding step pinned to 0); int8's
    block scale moves with the average, which hides it, so there this is a sanity check.

    The nonnegative int8 moment rounds its square root unbiasedly, so its decoded value is
    biased up by the rounding variance, at most s_r^2 / 4 a step (s_r the step of the root):
    s_r^2 / (4 (1 - beta)) in all, allowed on top; its error spread is 2 A s_r."""
    count, steps = 2048, 300
    beta = options["betas"][beta_index]
    if fmt == "bfloat16":
        spacing = 2.0**-7  # values in [1, 2): bf16 spacing 2^-7
        c = np.full(count, 1 + spacing / 3 if key == "exp_avg" else 1.1)
    else:
        c = np.linspace(0.5, 1.0, count)
    target = c if key == "exp_avg" else c**2  # what the moment averages
    if key == "exp_avg_sq":  # the gradient whose square is ``target``
        grad = torch.from_numpy(np.sqrt(target.astype(np.float32).astype(np.float64)))
    else:
        grad = torch.from_numpy(target)
    grad = grad.float()
    param = torch.zeros(count, requires_grad=True)
    with quiet():
        optimizer = optlab.create_optimizer(
            [param], name, lr=1e-3, state_dtype=fmt, foreach=False, **options
        )
    for _ in range(steps):
        param.grad = grad.clone()
        optimizer.step()
    state = optimizer.state[param]
    kind = optimizer.moment_kinds[key]
    decoded = ref.decode(fmt, kind, *stored(state, key))
    expected = grad.double().numpy() ** (1 if key == "exp_avg" else 2) * (1 - beta**steps)
    bias = 0.0
    if fmt == "bfloat16":
        biggest = np.abs(expected).max()
        spread = 2.0 ** (math.floor(math.log2(biggest)) - 7)  # the largest bf16 spacing used
    elif kind == "signed":
        spread = stored(state, key)[1].max() / 127
    else:
        root_step = stored(state, key)[1].max() / 255
        bias = root_step**2 / (4 * (1 - beta))
        spread = 2 * stored(state, key)[1].max() * root_step
    sd = math.sqrt(spread**2 / (4 * (1 - beta**2) * count))
    error = float(np.mean(decoded - expected))
    assert -6 * sd <= error <= bias + 6 * sd, (error, sd, bias)


# --------------------------------------------------------------------------
# 3. Reproducible, and checkpoints resume bitwise.
# --------------------------------------------------------------------------


def assert_resumes_bitwise(case, fmt, implementation, steps, at) -> None:
    """Two runs agree bitwise; one checkpointed at step ``at`` (through torch.save / torch.load
    into a fresh optimizer) continues bitwise as the one not interrupted."""
    runs = []
    for _ in range(2):
        params = make_params()
        optimizer = build(case, params, fmt, implementation)
        for step in range(1, steps + 1):
            step_with(optimizer, params, step)
        runs.append((optimizer, params))
    (first, first_params), (second, second_params) = runs
    assert snapshot(first, first_params) == snapshot(second, second_params)

    params = make_params()
    interrupted = build(case, params, fmt, implementation)
    for step in range(1, at + 1):
        step_with(interrupted, params, step)
    buffer = io.BytesIO()
    torch.save(interrupted.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    resumed_params = [p.detach().clone().requires_grad_() for p in params]
    resumed = build(case, resumed_params, fmt, implementation)
    resumed.load_state_dict(saved)
    kinds = resumed.moment_kinds
    for param, original in zip(resumed_params, params, strict=True):
        state = resumed.state[param]
        for key in state:
            if key in kinds:
                check_format(state, key, kinds[key], fmt, param)
            elif key == "step":
                assert state[key].dtype == torch.float32
        assert_same_bits(state, interrupted.state[original], "loaded")
    for step in range(at + 1, steps + 1):
        step_with(resumed, resumed_params, step)
    assert snapshot(resumed, resumed_params) == snapshot(first, first_params)


RESUME_CASES = [
    "adam", "adagrad", "rmsprop", "lion", "adamw-schedulefree", "belief-inside", "nag",
]  # fmt: skip


@pytest.mark.parametrize("fmt", [*FORMATS, torch.bfloat16], ids=str)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("name", RESUME_CASES)
def test_runs_are_reproducible_and_resume_bitwise_from_a_checkpoint(name, implementation, fmt):
    assert_resumes_bitwise(CASE_BY_NAME[name], fmt, implementation, steps=5, at=3)


def test_loop_and_foreach_store_the_same_codes():
    """Not required by the specification, but both eager forms compute in float32 on the same
    decoded values; they should round the same way (else the reference check is what holds)."""
    case = CASE_BY_NAME["adam"]
    results = []
    for implementation in ({"foreach": False}, {"foreach": True}):
        params = make_params()
        optimizer = build(case, params, "int8", implementation)
        for step in range(1, 4):
            step_with(optimizer, params, step)
        results.append(snapshot(optimizer, params))
    assert results[0][1] == results[1][1]


# --------------------------------------------------------------------------
# 4. Every optimizer and format round-trips through state_dict bitwise.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", case_params())
def test_state_dict_round_trips_bitwise(case, fmt):
    params = make_params()
    optimizer = build(case, params, fmt, {"foreach": False})
    for step in (1, 2):
        step_with(optimizer, params, step)
    saved = optimizer.state_dict()
    kinds = optimizer.moment_kinds
    for param in params:
        assert any(key in kinds for key in optimizer.state[param])
        for key in optimizer.state[param]:
            if key in kinds:
                check_format(optimizer.state[param], key, kinds[key], fmt, param)
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer)
    fresh_params = [p.detach().clone().requires_grad_() for p in params]
    fresh = build(case, fresh_params, fmt, {"foreach": False})
    fresh.load_state_dict(loaded)
    again = fresh.state_dict()
    assert again["param_groups"] == saved["param_groups"]
    assert set(again["state"]) == set(saved["state"])
    for index, state in saved["state"].items():
        assert_same_bits(again["state"][index], state, f"state of param {index}")
    step_with(fresh, fresh_params, 3)  # and it steps on
    step_with(optimizer, params, 3)
    assert snapshot(fresh, fresh_params) == snapshot(optimizer, params)


# --------------------------------------------------------------------------
# 5. Errors are clear and change nothing.
# --------------------------------------------------------------------------

BAD_VALUES = ["float16", 8, torch.float32, torch.float16, "int4", "fp32", "BFLOAT16", True]
TAKERS = sorted(
    {type(build(c, make_params(), None, {})).__name__: c.name for c in CASES[:-1]}.values()
)


@pytest.mark.parametrize("name", TAKERS)
def test_bad_state_dtype_values_are_refused_naming_the_value(name):
    params = make_params()
    for value in BAD_VALUES:
        with pytest.raises(ValueError) as error:
            optlab.create_optimizer(params, name, state_dtype=value)
        message = str(error.value)
        assert repr(value) in message, message
        assert "bfloat16" in message and "int8" in message and "None" in message, message
    optimizer = build(CASE_BY_NAME[name], params, "int8", {"foreach": False})
    step_with(optimizer, params, 1)
    before = snapshot(optimizer, params)
    for value in BAD_VALUES:
        with pytest.raises(ValueError, match="state_dtype"):
            optimizer.set_state_dtype(value)
        with pytest.raises(ValueError, match="state_dtype"):
            optimizer.add_param_group({"params": [torch.zeros(3)], "state_dtype": value})
    assert snapshot(optimizer, params) == before
    assert len(optimizer.param_groups) == 2


@pytest.mark.parametrize("fmt", FORMATS)
def test_sgd_without_momentum_takes_state_dtype_and_keeps_no_state(fmt):
    """Plain SGD has no moment: ``state_dtype`` is accepted (as for the registry's
    ``momentum``, the same class) and the steps are those of full precision, bitwise."""
    runs = []
    for state_dtype in (None, fmt):
        params = make_params()
        optimizer = optlab.create_optimizer(params, "sgd", lr=0.1, state_dtype=state_dtype)
        for step in range(1, 4):
            step_with(optimizer, params, step)
        assert all(not optimizer.state[p] for p in params)
        runs.append([p.detach().clone() for p in params])
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


@pytest.mark.parametrize("name", ["lars", "lamb", "fromage"])
def test_optimizers_without_elementwise_moments_refuse_state_dtype(name):
    params = make_params()
    with pytest.raises(ValueError, match="state_dtype"):
        optlab.create_optimizer(params, name, state_dtype="int8")
    cls = optlab.get_spec(name).cls
    for fmt in ("int8", "bfloat16", torch.bfloat16):
        with pytest.raises(ValueError, match=f"not available for {cls.__name__}"):
            cls([{"params": params, "state_dtype": fmt}], lr=0.1)
    optimizer = cls([{"params": params, "state_dtype": None}], lr=0.1)  # the default: fine
    step_with(optimizer, params, 1)
    before = snapshot(optimizer, params)
    with pytest.raises(ValueError, match="not available"):
        optimizer.set_state_dtype("int8")
    with pytest.raises(ValueError, match="not available"):
        optimizer.add_param_group({"params": [torch.zeros(3)], "state_dtype": "bfloat16"})
    assert snapshot(optimizer, params) == before
    optimizer.set_state_dtype(None)  # a no-op


@pytest.mark.parametrize("fmt", FORMATS)
def test_complex_parameters_are_refused(fmt):
    complex_param = torch.randn(4, dtype=torch.complex64, requires_grad=True)
    with pytest.raises(ValueError, match="complex"):
        optlab.create_optimizer([complex_param], "adam", state_dtype=fmt)
    params = make_params()
    optimizer = build(CASE_BY_NAME["adam"], params, fmt, {"foreach": False})
    step_with(optimizer, params, 1)
    before = snapshot(optimizer, params)
    with pytest.raises(ValueError, match="complex"):
        optimizer.add_param_group({"params": [complex_param]})
    assert len(optimizer.param_groups) == 2
    assert snapshot(optimizer, params) == before
    full = optlab.create_optimizer([complex_param], "adam")
    complex_param.grad = torch.randn(4, dtype=torch.complex64)
    full.step()
    with pytest.raises(ValueError, match="complex"):
        full.set_state_dtype(fmt)
    assert full.param_groups[0].get("state_dtype") is None
    assert full.state[complex_param]["exp_avg"].dtype == torch.complex64


CHANGES = [(None, "int8"), ("int8", "bfloat16"), ("bfloat16", None), ("int8", None)]


@pytest.mark.parametrize(("old", "new"), CHANGES, ids=[f"{a}-to-{b}" for a, b in CHANGES])
@pytest.mark.parametrize("name", ["adam", "lion", "adamw-schedulefree"])
def test_changing_the_option_by_hand_is_refused_at_the_next_step(name, old, new):
    params = make_params()
    optimizer = build(CASE_BY_NAME[name], params, old, {"foreach": False})
    step_with(optimizer, params, 1)
    before = snapshot(optimizer, params)
    optimizer.param_groups[0]["state_dtype"] = new
    with pytest.raises(ValueError, match="set_state_dtype"):
        step_with(optimizer, params, 2)
    set_option(optimizer.param_groups[0], old)
    assert snapshot(optimizer, params) == before
    step_with(optimizer, params, 2)  # set back: it steps


@pytest.mark.parametrize("name", ["adam", "adamw-schedulefree"])
def test_changing_the_option_of_a_later_group_changes_no_group(name):
    """The refusal is an error of the step as a whole: no group may have been updated."""
    params = make_params()
    optimizer = build(CASE_BY_NAME[name], params, "int8", {"foreach": False})
    step_with(optimizer, params, 1)
    before = snapshot(optimizer, params)
    optimizer.param_groups[1]["state_dtype"] = "bfloat16"
    with pytest.raises(ValueError, match="set_state_dtype"):
        step_with(optimizer, params, 2)
    set_option(optimizer.param_groups[1], "int8")
    assert snapshot(optimizer, params) == before


def set_option(group: dict, value) -> None:
    """Put a group's state_dtype back as it was: absent for full precision."""
    if value is None:
        group.pop("state_dtype", None)
    else:
        group["state_dtype"] = value


def stored_format(state, key: str) -> str | None:
    dtype = state[key].dtype
    if dtype == torch.bfloat16:
        return "bfloat16"
    return "int8" if dtype in (torch.int8, torch.uint8) else None


def decoded(optimizer, param, key) -> np.ndarray:
    state = optimizer.state[param]
    if state[key].dtype in (torch.float32, torch.float64):
        return state[key].double().numpy().reshape(-1)
    fmt = "bfloat16" if state[key].dtype == torch.bfloat16 else "int8"
    return ref.decode(fmt, optimizer.moment_kinds[key], *stored(state, key))


@pytest.mark.parametrize("name", ["adam", "lion"])
def test_set_state_dtype_converts_with_the_seeds_of_the_current_step(name):
    """Full precision -> int8 (group 1 only, then all) -> bf16 -> full precision, each time the
    codes the reference makes of the decoded values with the seeds of the current step, and
    the option set; stepping goes on."""
    case = CASE_BY_NAME[name]
    params = make_params()
    optimizer = build(case, params, None, {"foreach": False})
    for step in (1, 2, 3):
        step_with(optimizer, params, step)
    kinds = optimizer.moment_kinds
    tally = CodeTally()

    def convert(fmt, groups=None) -> None:
        indices = range(len(optimizer.param_groups)) if groups is None else groups
        members = {id(p) for i in indices for p in optimizer.param_groups[i]["params"]}
        old = {
            (i, key): decoded(optimizer, p, key)
            for i, p in enumerate(params)
            for key in optimizer.state[p]
            if key in kinds
        }
        steps_of = [
            int(optimizer.state[p]["step"]) if "step" in optimizer.state[p]
            else optimizer.param_groups[0 if i < SPLIT else 1].get("rounding_step", 0)
            for i, p in enumerate(params)
        ]  # fmt: skip
        formats = {(i, key): stored_format(optimizer.state[params[i]], key) for (i, key) in old}
        untouched = {
            (i, key): bits(optimizer.state[params[i]][key])
            for (i, key) in old
            if id(params[i]) not in members or formats[i, key] == fmt
        }
        optimizer.set_state_dtype(fmt, groups)
        for i in indices:
            assert optimizer.param_groups[i].get("state_dtype") == fmt
        for (i, key), value in old.items():
            param = params[i]
            if (i, key) in untouched:  # another group's, or stored so already
                assert bits(optimizer.state[param][key]) == untouched[i, key]
                continue
            if fmt is None:  # decoded exactly
                assert optimizer.state[param][key].dtype == torch.float32
                assert f"{key}_absmax" not in optimizer.state[param]
                np.testing.assert_array_equal(decoded(optimizer, param, key), value)
                continue
            check_format(optimizer.state[param], key, kinds[key], fmt, param)
            slot = optimizer._rule_state_keys(optimizer.param_groups[0]).index(key)
            expected = ref.moment_encode(fmt, kinds[key], value, i, steps_of[i], slot)
            tally.compare(
                fmt, stored(optimizer.state[param], key), expected, f"param {i} {key} to {fmt}"
            )
            close = decoded(optimizer, param, key)
            np.testing.assert_allclose(close, value, rtol=0.02, atol=0.02 * np.abs(value).max())

    convert("int8", groups=[1])
    assert optimizer.param_groups[0].get("state_dtype") is None
    step_with(optimizer, params, 4)
    convert("int8")
    step_with(optimizer, params, 5)
    convert("bfloat16")
    step_with(optimizer, params, 6)
    convert(None)
    step_with(optimizer, params, 7)
    tally.assert_few_off()
    before = snapshot(optimizer, params)
    with pytest.raises(ValueError, match="groups"):
        optimizer.set_state_dtype("int8", groups=[0, 2])
    with pytest.raises(ValueError, match="state_dtype"):
        optimizer.set_state_dtype("float16")
    assert snapshot(optimizer, params) == before


def _int8_checkpoint():
    params = make_params()
    optimizer = build(CASE_BY_NAME["adam"], params, "int8", {"foreach": False})
    for step in (1, 2):
        step_with(optimizer, params, step)
    return optimizer.state_dict()


def _edit_group_option(checkpoint, value):
    checkpoint["param_groups"][0]["state_dtype"] = value


def _drop_absmax(checkpoint):
    checkpoint["param_groups"][0]["state_dtype"] = "bfloat16"
    for state in checkpoint["state"].values():
        for key in [k for k in state if k.endswith("_absmax")]:
            del state[key]
        for key in ("exp_avg", "exp_avg_sq"):
            state[key] = torch.zeros(state[key].shape, dtype=torch.bfloat16)


def _bad_absmax_shape(checkpoint):
    checkpoint["state"][0]["exp_avg_absmax"] = torch.ones(1)


def _bf16_state_int8_group(checkpoint):
    _drop_absmax(checkpoint)
    checkpoint["param_groups"][0]["state_dtype"] = "int8"


MISMATCHES = {
    "int8-state-bf16-group": (lambda c: _edit_group_option(c, "bfloat16"), "stored as int8"),
    "int8-state-full-group": (lambda c: _edit_group_option(c, None), "stored as int8"),
    "bf16-state-int8-group": (_bf16_state_int8_group, "lacks"),
    "absmax-shape": (_bad_absmax_shape, "shape"),
}


@pytest.mark.parametrize("mismatch", MISMATCHES)
def test_loading_a_checkpoint_whose_state_does_not_match_its_option_changes_nothing(mismatch):
    edit, message = MISMATCHES[mismatch]
    checkpoint = _int8_checkpoint()
    edit(checkpoint)
    params = make_params(seed=5)
    optimizer = build(CASE_BY_NAME["adam"], params, "bfloat16", {"foreach": False})
    step_with(optimizer, params, 1)
    before = snapshot(optimizer, params)
    with pytest.raises(ValueError, match=message):
        optimizer.load_state_dict(checkpoint)
    assert snapshot(optimizer, params) == before
    step_with(optimizer, params, 2)


def test_a_full_precision_checkpoint_loads_as_full_precision_then_converts():
    """A checkpoint's groups without state_dtype (full precision, as torch.optim's) stay full
    precision when loaded, whatever the loading optimizer was built with (the checkpoint's
    options win, as in torch.optim); set_state_dtype then converts it."""
    case = CASE_BY_NAME["adam"]
    params = make_params()
    full = build(case, params, None, {"foreach": False})
    step_with(full, params, 1)
    checkpoint = full.state_dict()
    assert all("state_dtype" not in g for g in checkpoint["param_groups"])
    compact_params = make_params(seed=3)
    compact = build(case, compact_params, "int8", {"foreach": False})
    compact.load_state_dict(checkpoint)
    assert all(g.get("state_dtype") is None for g in compact.param_groups)
    for param in compact_params:
        assert compact.state[param]["exp_avg"].dtype == torch.float32
    step_with(compact, compact_params, 2)  # steps in full precision
    compact.set_state_dtype("int8")
    for param in compact_params:
        check_format(compact.state[param], "exp_avg", "signed", "int8", param)
    step_with(compact, compact_params, 3)


def test_adaboundw_takes_state_dtype():
    param = torch.randn(300, requires_grad=True)
    optimizer = AdaBoundW([param], state_dtype="int8")
    assert optimizer.param_groups[0]["state_dtype"] == "int8"
    with pytest.raises(ValueError, match="float16"):
        AdaBoundW([param], state_dtype="float16")


# --------------------------------------------------------------------------
# 6. GradScaler's fused route is not taken for compact state.
# --------------------------------------------------------------------------


@needs_fused
def test_compact_state_does_not_take_grad_scalers_fused_route():
    params = make_params()
    plain = optlab.create_optimizer(params, "adam", fused=True)
    assert plain._step_supports_amp_scaling  # the route exists for fused CPU groups ...
    for fmt in FORMATS:
        compact = optlab.create_optimizer(params, "adam", fused=True, state_dtype=fmt)
        assert not compact._step_supports_amp_scaling  # ... not with compact state
        mixed = optlab.create_optimizer(
            [{"params": params[:2]}, {"params": params[2:], "state_dtype": fmt}], "adam", fused=True
        )
        assert not mixed._step_supports_amp_scaling
        mixed.set_state_dtype(None)
        assert mixed._step_supports_amp_scaling


def check_grad_scaler_unscales_for_compact_state() -> None:
    """A GradScaler step of fused Adam with bf16 state: the scaler unscales the gradients
    itself (a power of two: exact), so the step is bitwise the unscaled one; an inf
    gradient skips the step, changing nothing."""
    case = CASE_BY_NAME["adam"]
    params, twin_params = make_params(), make_params()
    optimizer = build(case, params, "bfloat16", {"fused": True})
    twin = build(case, twin_params, "bfloat16", {"fused": True})
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for step in (1, 2):
        grads = gradients(params, step)
        optimizer.zero_grad()
        loss = sum((p * g).sum() for p, g in zip(params, grads, strict=True))
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        # The scaler unscaled the gradients itself: it handed the optimizer no found_inf.
        assert getattr(optimizer, "found_inf", None) is None
        scaler.update()
        step_with(twin, twin_params, step)
        assert snapshot(optimizer, params)[:2] == snapshot(twin, twin_params)[:2]
    before = snapshot(optimizer, params)
    optimizer.zero_grad()
    loss = sum((p * float("inf")).sum() for p in params)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    assert snapshot(optimizer, params) == before
