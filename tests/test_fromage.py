"""Fromage against the published algorithm (Bernstein et al., NeurIPS 2020, Algorithm 1).

The oracle is the paper's update written out per tensor in float64; the
authors' code (under a non-commercial licence) is not used. Where the
formula is undefined (``||g|| = 0``) or leaves a zero tensor at zero, optlab
takes the ratio 1; the oracle spells that choice out too.
"""

from __future__ import annotations

import copy
import functools
import math
import re
import sys
from pathlib import Path

import pytest
import torch

from optlab.optim.fromage import Fromage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_lars import (  # noqa: E402
    IMPLEMENTATIONS,
    RTOL,
    assert_complex_and_strided_take_the_plain_steps,
    assert_rel_close,
    count_passes,
    gradients,
    initial_params,
    round_trip,
    set_grads,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One thread: no OpenMP region per kernel call to wait for on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def published_step(w: torch.Tensor, g: torch.Tensor, lr: float, maximize: bool) -> None:
    """``W <- (W - lr ||W|| / ||g|| g) / sqrt(1 + lr^2)``; ratio 1 where a norm is 0."""
    g = -g if maximize else g
    w_norm, g_norm = torch.linalg.vector_norm(w).item(), torch.linalg.vector_norm(g).item()
    ratio = w_norm / g_norm if w_norm > 0 and g_norm > 0 else 1.0
    w.copy_((w - lr * ratio * g) / math.sqrt(1 + lr**2))


GROUPS = [dict(lr=lr, maximize=maximize) for maximize in (False, True) for lr in (0.01, 0.05, 0.2)]


@functools.cache
def published_run(dtype: torch.dtype) -> list[torch.Tensor]:
    count = 3 * len(GROUPS)
    params = [p.to(dtype).double() for p in initial_params(count)]
    for grads in gradients(count):
        for index, (param, grad) in enumerate(zip(params, grads, strict=True)):
            if grad is not None:
                published_step(param, grad.to(dtype).double(), **GROUPS[index // 3])
    return params


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_every_option_combination_matches_the_published_algorithm(implementation, dtype):
    count = 3 * len(GROUPS)
    params = [p.to(dtype).requires_grad_() for p in initial_params(count)]
    groups = [{"params": params[3 * i : 3 * i + 3], **GROUPS[i]} for i in range(len(GROUPS))]
    optimizer = Fromage(groups, **IMPLEMENTATIONS[implementation])
    for grads in gradients(count):
        set_grads(params, grads)
        optimizer.step()
    for index, (mine, theirs) in enumerate(zip(params, published_run(dtype), strict=True)):
        assert mine.dtype == dtype
        assert_rel_close(mine.detach(), theirs, RTOL[dtype], f"param {index} {GROUPS[index // 3]}")
        assert mine not in optimizer.state  # no state, no entry (as torch.optim.SGD)
    assert optimizer.state_dict()["state"] == {}


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_steps_orthogonal_to_the_weights_keep_their_norm(implementation):
    """The paper's point of 1 / sqrt(1 + lr^2): a step orthogonal to W would grow ||W||."""
    param = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    norm = param.detach().norm().item()
    optimizer = Fromage([param], lr=0.1, **IMPLEMENTATIONS[implementation])
    generator = torch.Generator().manual_seed(4)
    for _ in range(100):
        grad = torch.randn(5, 7, generator=generator, dtype=torch.float64)
        w = param.detach()
        param.grad = grad - (grad * w).sum() / (w * w).sum() * w  # orthogonal to W
        optimizer.step()
    assert param.detach().norm().item() == pytest.approx(norm, rel=1e-12)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_zero_norms_take_the_plain_gradient_step(implementation):
    zero, still = torch.zeros(4, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    params = [zero.clone().requires_grad_(), still.clone().requires_grad_()]
    optimizer = Fromage(params, lr=0.1, **IMPLEMENTATIONS[implementation])
    params[0].grad = torch.ones(4, dtype=torch.float64)
    params[1].grad = torch.zeros(3, dtype=torch.float64)
    optimizer.step()
    shrink = 1 / math.sqrt(1 + 0.01)
    torch.testing.assert_close(
        params[0].detach(), -0.1 * shrink * torch.ones(4, dtype=torch.float64)
    )
    torch.testing.assert_close(params[1].detach(), shrink * still)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_complex_and_non_contiguous_parameters_take_the_plain_steps(implementation):
    assert_complex_and_strided_take_the_plain_steps(
        Fromage, {**dict(lr=0.05), **IMPLEMENTATIONS[implementation]}
    )


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_resumed_run_is_bitwise_the_uninterrupted_one(implementation):
    count = 6
    options = dict(lr=0.05, **IMPLEMENTATIONS[implementation])

    def make_params():
        return [p.float().requires_grad_() for p in initial_params(count)]

    round_trip(Fromage, make_params, options, 9, 11, gradients(count, steps=20))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"lr": -0.01}, "lr must be a finite number >= 0, got -0.01"),
        ({"lr": math.inf}, "lr must be a finite number >= 0, got inf"),
        ({"maximize": 1}, "maximize must be True or False, got 1"),
    ],
)
def test_bad_hyperparameters_raise_named_errors_and_change_nothing(options, message):
    param = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match=re.escape(message)):
        Fromage([param], **options)
    optimizer = Fromage([param])
    before = copy.deepcopy(optimizer.state_dict())
    with pytest.raises(ValueError, match="param group 1"):
        optimizer.add_param_group({"params": [torch.zeros(2, requires_grad=True)], **options})
    assert optimizer.state_dict() == before and len(optimizer.param_groups) == 1


def test_defaults_and_state_dict_hold_every_option():
    optimizer = Fromage([torch.zeros(2, requires_grad=True)])
    group = optimizer.state_dict()["param_groups"][0]
    assert {k: v for k, v in group.items() if k != "params"} == dict(
        lr=1e-2, maximize=False, foreach=None, fused=None
    )


@pytest.mark.parametrize(
    ("implementation", "maximize", "expected"),
    [
        ("loop", False, 16),  # the rule run eagerly: a temporary per operation
        ("foreach", False, 7),  # norms 2, addcmul 3, scale 2
        ("foreach", True, 9),  # the negated gradient: 2 more
        ("fused", True, 2),  # the norms; the kernel adds 3 (read W, g; write W)
    ],
)
def test_passes_over_memory_are_the_documented_ones(implementation, maximize, expected):
    passes = count_passes(
        lambda params: Fromage(params, maximize=maximize, **IMPLEMENTATIONS[implementation])
    )
    assert passes == expected
