"""optlab optimizers under PyTorch's distributed stack and mixed precision.

Distributed scenarios (DDP, FSDP2, ZeroRedundancyOptimizer) each spawn two
gloo processes ONCE and train every (optimizer, implementation) pair inside
that spawn (tests/_dist_worker.py); the tests below compare what the ranks
measured with the oracle, the same optimizer in this process on full batches.
"Float32 rounding" here means: after 20 steps the largest observed difference
is ~4e-7 absolute (summing two half-batch gradients rounds differently from
one full-batch gradient); the tolerance is atol=2e-6, rtol=1e-5.

Mixed-precision scenarios run in this process: bf16 autocast, fp16 autocast
with ``torch.amp.GradScaler`` (a step skipped on inf leaves parameters and
state untouched), bf16 parameters (optimizers with ``fp32_for_low_precision``
keep float32 state and equal the float32 update rounded once to bf16; the
others keep bf16 state, as torch.optim does), fp32 optimizer state for bf16
parameters of *every* optimizer through float32 master parameters (the
documented route, docs/distributed.md), and a ``torch.compile``-d model
(compiled once, reused by every optimizer).
"""

from __future__ import annotations

import copy
import functools
import importlib
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from optlab.optim import list_optimizers, optimizer_class

sys.path.insert(0, str(Path(__file__).resolve().parent))
worker = importlib.import_module("_dist_worker")

PAIRS, MISSING = worker.combos()
PAIR_PARAMS = [pytest.param(name, impl, id=f"{name}-{impl}") for name, impl in PAIRS] + [
    pytest.param(
        name,
        "?",
        id=f"{name}-missing",
        marks=pytest.mark.skip(reason=f"optimizer module not importable yet: {reason}"),
    )
    for name, reason in MISSING.items()
]

needs_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="this torch build has no torch.distributed with the gloo backend",
)


def _has(module: str, attribute: str) -> bool:
    try:
        return hasattr(importlib.import_module(module), attribute)
    except ImportError:
        return False


needs_fsdp2 = pytest.mark.skipif(
    not _has("torch.distributed.fsdp", "fully_shard"),
    reason="this torch build has no torch.distributed.fsdp.fully_shard (FSDP2)",
)
needs_zero = pytest.mark.skipif(
    not _has("torch.distributed.optim", "ZeroRedundancyOptimizer"),
    reason="this torch build has no torch.distributed.optim.ZeroRedundancyOptimizer",
)


def assert_float32_close(actual, expected, what: str) -> None:
    for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
        torch.testing.assert_close(
            a, e, rtol=1e-5, atol=2e-6, msg=lambda m, i=index: f"{what}, parameter {i}: {m}"
        )


def assert_identical(actual, expected, what: str) -> None:
    for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
        assert torch.equal(a, e), (
            f"{what}, parameter {index}: max |diff| {(a - e).abs().max().item():.3g}"
        )


@functools.cache
def oracle(name: str, implementation: str) -> list[torch.Tensor]:
    """One process, full batches, no wrapper: what every sharded run must reproduce."""
    return worker.single_process_params(name, implementation, worker.STEPS)


def result(results, scenario: str, name: str, implementation: str, rank: int = 0) -> dict:
    measured = results[rank][scenario][name, implementation]
    if "error" in measured:
        pytest.fail(
            f"{scenario}: rank {rank} raised for {name}/{implementation}:\n{measured['error']}"
        )
    return measured


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    """DDP, FSDP2 and ZeRO for every pair: one spawn of two gloo processes."""
    available = {
        "ddp": True,
        "fsdp2": _has("torch.distributed.fsdp", "fully_shard"),
        "zero": _has("torch.distributed.optim", "ZeroRedundancyOptimizer"),
    }
    scenarios = [scenario for scenario, ok in available.items() if ok]
    return worker.spawn(scenarios, tmp_path_factory.mktemp("spawned"), PAIRS)


def test_every_registered_optimizer_is_covered():
    assert {name for name, _ in PAIRS} == set(list_optimizers(builtin_only=True)), (
        f"missing modules: {MISSING}"
    )


# --------------------------------------------------------------------------
# DDP
# --------------------------------------------------------------------------


@needs_gloo
@pytest.mark.slow
@pytest.mark.parametrize(("name", "implementation"), PAIR_PARAMS)
def test_ddp_on_two_processes_equals_one_process_on_the_full_batch(spawned, name, implementation):
    rank0 = result(spawned, "ddp", name, implementation, 0)
    rank1 = result(spawned, "ddp", name, implementation, 1)
    assert_identical(rank1["params"], rank0["params"], "rank 1 vs rank 0")
    expected = oracle(name, implementation)
    assert_float32_close(rank0["params"], expected, f"DDP {name}/{implementation}")
    start = [p.detach() for p in worker.make_model().parameters()]
    assert any(not torch.allclose(p, s) for p, s in zip(expected, start, strict=True)), (
        "nothing trained"
    )


# --------------------------------------------------------------------------
# FSDP2
# --------------------------------------------------------------------------


@needs_gloo
@needs_fsdp2
@pytest.mark.slow
@pytest.mark.parametrize(("name", "implementation"), PAIR_PARAMS)
def test_fsdp2_matches_one_process_and_shards_the_optimizer_state(spawned, name, implementation):
    rank0 = result(spawned, "fsdp2", name, implementation, 0)
    rank1 = result(spawned, "fsdp2", name, implementation, 1)
    assert rank0["param_types"] == ["DTensor"]
    assert_identical(rank1["params"], rank0["params"], "rank 1 vs rank 0")
    assert_float32_close(rank0["params"], oracle(name, implementation), f"FSDP2 {name}")

    total = rank0["state_global_numel"]
    if total:  # SGD without momentum keeps no state tensors
        assert rank0["state_types"] == ["DTensor"]
        assert rank1["state_global_numel"] == total
        assert rank0["state_local_numel"] + rank1["state_local_numel"] == total
        for rank, measured in enumerate((rank0, rank1)):
            share = measured["state_local_numel"] / total
            assert 0.3 < share < 0.7, f"rank {rank} holds {share:.0%} of the optimizer state"

    # The fused kernels take plain tensors: on DTensors fused=True runs foreach and says
    # so once per optimizer (not per step, not on the DCP save's extra step).
    ours = [w for w in rank0["warnings"] if "optlab" in w]
    if implementation == "fused":
        assert len(ours) == 1 and "multi-tensor" in ours[0], rank0["warnings"]
    else:
        assert ours == [], rank0["warnings"]


@needs_gloo
@needs_fsdp2
@pytest.mark.slow
@pytest.mark.parametrize(("name", "implementation"), PAIR_PARAMS)
def test_fsdp2_sharded_checkpoint_round_trip_continues_identically(spawned, name, implementation):
    for rank in (0, 1):
        measured = result(spawned, "fsdp2", name, implementation, rank)
        assert_identical(measured["resumed"], measured["params"], f"rank {rank} resumed")


# --------------------------------------------------------------------------
# ZeroRedundancyOptimizer
# --------------------------------------------------------------------------


@needs_gloo
@needs_zero
@pytest.mark.slow
@pytest.mark.parametrize(("name", "implementation"), PAIR_PARAMS)
def test_zero_redundancy_optimizer_matches_the_unsharded_run(spawned, name, implementation):
    rank0 = result(spawned, "zero", name, implementation, 0)
    rank1 = result(spawned, "zero", name, implementation, 1)
    assert rank0["local_optimizer_class"] == optimizer_class(name).__name__
    owned = [rank0["local_params"], rank1["local_params"]]
    assert sum(owned) == 4 and min(owned) >= 1, f"parameters per rank: {owned}"
    assert_identical(rank1["params"], rank0["params"], "rank 1 vs rank 0")
    assert_float32_close(rank0["params"], oracle(name, implementation), f"ZeRO {name}")


@needs_gloo
@needs_zero
@pytest.mark.slow
@pytest.mark.parametrize(("name", "implementation"), PAIR_PARAMS)
def test_zero_consolidated_state_dict_reloads_and_continues_identically(
    spawned, name, implementation
):
    for rank in (0, 1):
        measured = result(spawned, "zero", name, implementation, rank)
        assert_identical(measured["resumed"], measured["params"], f"rank {rank} resumed")


# --------------------------------------------------------------------------
# Mixed precision (one process)
# --------------------------------------------------------------------------


def _optimizer(params, name, implementation):
    return worker.make_optimizer(params, name, implementation)


def _full_batch_loss(model) -> float:
    inputs, targets = worker.batch(0)
    with torch.no_grad():
        return nn.functional.mse_loss(model(inputs), targets).item()


@pytest.mark.parametrize(("name", "implementation"), PAIR_PARAMS)
def test_bf16_autocast_training_stays_finite_and_lowers_the_loss(name, implementation):
    model = worker.make_model()
    optimizer = _optimizer(model.parameters(), name, implementation)
    inputs, targets = worker.batch(0)
    before = _full_batch_loss(model)
    for _ in range(10):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output = model(inputs)
        assert output.dtype == torch.bfloat16
        nn.functional.mse_loss(output.float(), targets).backward()
        optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert _full_batch_loss(model) < before
    # float32 parameters under bf16 autocast: the state is float32 for every optimizer
    assert _state_dtypes(optimizer, model.parameters()) <= {torch.float32}


def _state_dtypes(optimizer, params) -> set[torch.dtype]:
    return {
        value.dtype
        for param in params
        for key, value in optimizer.state[param].items()
        if key != "step" and torch.is_tensor(value)
    }


class Bf16WithFloat32Master:
    """The recipe of docs/distributed.md: a bf16 model, the optimizer on float32 copies."""

    def __init__(self, model: nn.Module, make_optimizer) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.masters = [nn.Parameter(p.detach().float()) for p in self.params]
        self.optimizer = make_optimizer(self.masters)

    def step(self) -> None:
        for master, param in zip(self.masters, self.params, strict=True):
            master.grad = None if param.grad is None else param.grad.float()
        self.optimizer.step()
        with torch.no_grad():
            for master, param in zip(self.masters, self.params, strict=True):
                param.copy_(master)  # one rounding to bf16 per step

    def zero_grad(self) -> None:
        for param in self.params:
            param.grad = None


def _snapshot(model, optimizer):
    return (
        [p.detach().clone() for p in model.parameters()],
        copy.deepcopy(optimizer.state_dict()["state"]),
    )


def _assert_same_state(after, before):
    assert after.keys() == before.keys()
    for index in before:
        assert after[index].keys() == before[index].keys()
        for key, value in before[index].items():
            if torch.is_tensor(value):
                assert torch.equal(after[index][key], value), f"state {index}/{key} changed"
            else:
                assert after[index][key] == value


@pytest.mark.parametrize(("name", "implementation"), PAIR_PARAMS)
def test_fp16_grad_scaler_skips_the_step_on_inf_and_touches_nothing(name, implementation):
    model = worker.make_model()
    optimizer = _optimizer(model.parameters(), name, implementation)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    inputs, targets = worker.batch(0)
    before_training = _full_batch_loss(model)

    def scaled_backward(poison: bool) -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.float16):
            output = model(inputs)
        assert output.dtype == torch.float16
        scaler.scale(nn.functional.mse_loss(output.float(), targets)).backward()
        if poison:
            model[0].weight.grad[0, 0] = math.inf

    for _ in range(3):
        scaled_backward(poison=False)
        scaler.step(optimizer)
        scaler.update()
    params, state = _snapshot(model, optimizer)
    scale = scaler.get_scale()

    scaled_backward(poison=True)
    scaler.step(optimizer)
    scaler.update()
    assert scaler.get_scale() == scale / 2, "GradScaler did not see the inf"
    assert_identical([p.detach() for p in model.parameters()], params, "after a skipped step")
    _assert_same_state(optimizer.state_dict()["state"], state)

    scaled_backward(poison=False)
    scaler.step(optimizer)
    scaler.update()
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), params, strict=True)), (
        "a finite step after the skipped one changed nothing"
    )
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert _full_batch_loss(model) < before_training


@pytest.mark.parametrize(("name", "implementation"), PAIR_PARAMS)
def test_bf16_parameters_train_and_keep_the_documented_state_dtype(name, implementation):
    cls = optimizer_class(name)
    generator = torch.Generator().manual_seed(3)
    start = torch.randn(5, 4, generator=generator)
    param = nn.Parameter(start.to(torch.bfloat16))
    shadow = nn.Parameter(param.detach().float())  # float32 twin on the same bf16 values
    optimizer = _optimizer([param], name, implementation)
    shadow_optimizer = _optimizer([shadow], name, implementation)
    for _ in range(8):
        grad = torch.randn(5, 4, generator=generator).to(torch.bfloat16)
        param.grad, shadow.grad = grad, grad.float()
        optimizer.step()
        shadow_optimizer.step()
        if cls.fp32_for_low_precision:
            # float32 state, float32 arithmetic, one rounding to bf16 at the end
            assert torch.equal(param.detach(), shadow.detach().to(torch.bfloat16))
        with torch.no_grad():
            shadow.copy_(param.float())  # the next step starts from the rounded value
    assert param.dtype == torch.bfloat16
    assert torch.isfinite(param).all()
    assert not torch.equal(param.detach().float(), start.to(torch.bfloat16).float())
    expected = torch.float32 if cls.fp32_for_low_precision else torch.bfloat16
    dtypes = {
        value.dtype
        for key, value in optimizer.state[param].items()
        if key != "step" and torch.is_tensor(value)
    }
    assert dtypes <= {expected}, f"state dtypes {dtypes}, expected {expected}"


@pytest.mark.parametrize(("name", "implementation"), PAIR_PARAMS)
def test_bf16_model_with_float32_master_parameters_keeps_float32_state_for_every_optimizer(
    name, implementation
):
    model = worker.make_model().to(torch.bfloat16)
    route = Bf16WithFloat32Master(model, lambda ps: _optimizer(ps, name, implementation))
    # Oracle: the float32 update on float32 parameters fed the same gradients.
    twin = [nn.Parameter(m.detach().clone()) for m in route.masters]
    twin_optimizer = _optimizer(twin, name, implementation)
    for step in range(5):
        inputs, targets = worker.batch(step)
        route.zero_grad()
        nn.functional.mse_loss(model(inputs.bfloat16()).float(), targets).backward()
        for param, master in zip(twin, route.params, strict=True):
            param.grad = master.grad.float()
        route.step()
        twin_optimizer.step()
        assert_identical([m.detach() for m in route.masters], [t.detach() for t in twin], "master")
        for param, master in zip(route.params, route.masters, strict=True):
            assert param.dtype == torch.bfloat16
            assert torch.equal(param.detach(), master.detach().to(torch.bfloat16))
    dtypes = _state_dtypes(route.optimizer, route.masters)
    # Plain SGD keeps no state tensors, nor does an optimizer without state keys (Fromage).
    if name != "sgd" and type(route.optimizer).state_keys:
        assert dtypes == {torch.float32}


def test_float32_master_parameters_keep_updates_below_bf16_resolution():
    # SGD, lr 1e-3, gradient 1 from w = 1: each step is 1e-3, below half of bf16's spacing
    # at 1 (2**-8 = 0.0039), so bf16 parameters updated in place never move, while the
    # float32 master reaches 1 - 64e-3 (to float32 rounding) and the model its rounding.
    direct = nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    direct_optimizer = optimizer_class("sgd")([direct], lr=1e-3)
    model = nn.Linear(4, 1, bias=False).to(torch.bfloat16)
    with torch.no_grad():
        model.weight.fill_(1.0)
    route = Bf16WithFloat32Master(model, lambda ps: optimizer_class("sgd")(ps, lr=1e-3))
    for _ in range(64):
        direct.grad = torch.ones_like(direct)
        direct_optimizer.step()
        route.zero_grad()
        model.weight.grad = torch.ones_like(model.weight)
        route.step()
    assert torch.equal(direct.detach(), torch.ones(4, dtype=torch.bfloat16))
    expected = 1.0 - 64 * 1e-3
    torch.testing.assert_close(
        route.masters[0].detach(), torch.full((1, 4), expected), rtol=0, atol=1e-6
    )
    assert torch.equal(model.weight.detach(), torch.full((1, 4), expected).to(torch.bfloat16))
    assert model.weight[0, 0].item() != 1.0


@pytest.fixture(scope="module")
def compiled_model():
    """One compiled model for every optimizer: parameters are reset, never re-compiled."""
    model = worker.make_model()
    return model, torch.compile(model), [p.detach().clone() for p in model.parameters()]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "implementation"), PAIR_PARAMS)
def test_compiled_model_trains_like_the_eager_model(compiled_model, name, implementation):
    model, compiled, start = compiled_model
    with torch.no_grad():
        for param, value in zip(model.parameters(), start, strict=True):
            param.copy_(value)
    optimizer = _optimizer(model.parameters(), name, implementation)
    worker.train(compiled, optimizer, range(5))

    eager = worker.make_model()
    eager_optimizer = _optimizer(eager.parameters(), name, implementation)
    worker.train(eager, eager_optimizer, range(5))
    assert_float32_close(
        [p.detach() for p in model.parameters()],
        [p.detach() for p in eager.parameters()],
        f"compiled {name}/{implementation}",
    )
