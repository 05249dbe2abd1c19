"""LAMB against Algorithm 2 of the paper, and against the public PyTorch ports.

The oracle is You et al. (ICLR 2020) Algorithm 2 written out per tensor in
float64, with and without its bias correction; every option combination is
a param group of one optimizer. The ports are checked to their documented
differences (see optlab.optim.lamb): ``pytorch-lamb`` 1.0.0 and
``torch_optimizer`` 0.3.0 (``debias=False``) are ``bias_correction=False``
with ``clamp_value=10``, ``torch_optimizer``'s ``debias=True`` scales the
step by ``sqrt(bc2) / bc1`` outside the ratio, ``pytorch_optimizer`` 4.1.0
by ``1 / bc1``.
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
import re
import sys
from pathlib import Path

import pytest
import pytorch_lamb
import pytorch_optimizer
import torch
import torch_optimizer

from optlab.optim.lamb import Lamb

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

pytestmark = pytest.mark.filterwarnings("ignore:This overload of add_? is deprecated")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One thread: no OpenMP region per kernel call to wait for on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class PublishedLAMB:
    """Algorithm 2 of arXiv:1904.00962 (ICLR 2020), per tensor.

    ``bias_correction=False`` drops the two divisions by ``1 - beta^t`` (arXiv
    v3); ``phi(z) = min(z, clamp_value)``; the ratio is 1 where ``||w||`` or
    ``||r + wd w||`` is 0 (the formula divides by zero there).
    """

    def __init__(self, lr, betas, eps, weight_decay, bias_correction, clamp_value, maximize):
        self.lr, (self.beta1, self.beta2), self.eps = lr, betas, eps
        self.weight_decay, self.bias_correction = weight_decay, bias_correction
        self.clamp_value, self.maximize = clamp_value, maximize
        self.state: dict[int, dict] = {}

    def step(self, key: int, w: torch.Tensor, g: torch.Tensor) -> None:
        g = -g if self.maximize else g
        state = self.state.setdefault(
            key, {"t": 0, "m": torch.zeros_like(w), "v": torch.zeros_like(w)}
        )
        state["t"] += 1
        t = state["t"]
        state["m"] = self.beta1 * state["m"] + (1 - self.beta1) * g
        state["v"] = self.beta2 * state["v"] + (1 - self.beta2) * g * g
        m_hat, v_hat = state["m"], state["v"]
        if self.bias_correction:
            m_hat, v_hat = m_hat / (1 - self.beta1**t), v_hat / (1 - self.beta2**t)
        r = m_hat / (torch.sqrt(v_hat) + self.eps)
        update = r + self.weight_decay * w
        w_norm, u_norm = torch.linalg.vector_norm(w).item(), torch.linalg.vector_norm(update).item()
        ratio = min(w_norm, self.clamp_value) / u_norm if w_norm > 0 and u_norm > 0 else 1.0
        w.sub_(self.lr * ratio * update)


COMBOS = [
    dict(bias_correction=bc, weight_decay=wd, clamp_value=clamp, maximize=maximize)
    for bc, wd, clamp, maximize in itertools.product(
        [True, False], [0.0, 0.01], [math.inf, 1.5], [False, True]
    )
]  # 16; ||w|| ~ 5 for the matrices: the clamp at 1.5 is active, at inf never
LRS = (0.01, 0.03, 0.1)


def _group_options(index: int) -> dict:
    return {**COMBOS[index], "lr": LRS[index % 3], "betas": (0.9, 0.99), "eps": 1e-6}


@functools.cache
def published_run(dtype: torch.dtype):
    count = 3 * len(COMBOS)
    params = [p.to(dtype).double() for p in initial_params(count)]
    oracles = [PublishedLAMB(**_group_options(i)) for i in range(len(COMBOS))]
    for grads in gradients(count):
        for index, (param, grad) in enumerate(zip(params, grads, strict=True)):
            if grad is not None:
                oracles[index // 3].step(index, param, grad.to(dtype).double())
    return params, [oracles[index // 3].state[index] for index in range(count)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_every_option_combination_matches_algorithm_2(implementation, dtype):
    count = 3 * len(COMBOS)
    params = [p.to(dtype).requires_grad_() for p in initial_params(count)]
    groups = [
        {"params": params[3 * i : 3 * i + 3], **_group_options(i)} for i in range(len(COMBOS))
    ]
    optimizer = Lamb(groups, **IMPLEMENTATIONS[implementation])
    for grads in gradients(count):
        set_grads(params, grads)
        optimizer.step()
    expected, states = published_run(dtype)
    rtol = RTOL[dtype]
    for index, (mine, theirs, oracle_state) in enumerate(
        zip(params, expected, states, strict=True)
    ):
        what = f"param {index} ({COMBOS[index // 3]})"
        assert_rel_close(mine.detach(), theirs, rtol, what)
        state = optimizer.state[mine]
        assert set(state) == {"step", "exp_avg", "exp_avg_sq"}
        assert state["step"].item() == oracle_state["t"], what
        assert state["exp_avg"].dtype == dtype
        assert_rel_close(state["exp_avg"], oracle_state["m"], rtol, f"exp_avg of {what}")
        assert_rel_close(state["exp_avg_sq"], oracle_state["v"], rtol, f"exp_avg_sq of {what}")
    start = initial_params(count)
    moved = [
        (p.detach().double() - s).abs().max() > 1e-3 for p, s in zip(params, start, strict=True)
    ]
    assert all(moved), "some tensor did not move"


# --------------------------------------------------------------------------
# The public ports.
# --------------------------------------------------------------------------


def _side_by_side(reference_class, reference_options, options, *, zero_biases, steps=100,
                  missing=True, lr_at=None):  # fmt: skip
    """Run a port and optlab (foreach) on the same gradients; return both parameter lists."""
    count = 6
    start = initial_params(count, zero_biases=zero_biases)
    theirs = [p.clone().requires_grad_() for p in start]
    ours = [p.clone().requires_grad_() for p in start]
    reference = reference_class(theirs, **reference_options)
    optimizer = Lamb(ours, foreach=True, **options)
    for step, grads in enumerate(gradients(count, steps=steps)):
        if not missing:
            grads = [torch.ones(p.shape, dtype=p.dtype) * 0.1 if g is None else g
                     for p, g in zip(start, grads, strict=True)]  # fmt: skip
        if lr_at is not None:
            optimizer.param_groups[0]["lr"] = lr_at(step + 1)
        set_grads(theirs, grads)
        reference.step()
        set_grads(ours, grads)
        optimizer.step()
    return ours, theirs, optimizer, reference


def test_pytorch_lamb_is_bias_correction_false_with_the_weight_norm_capped_at_10():
    options = dict(lr=0.05, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.01)
    ours, theirs, optimizer, reference = _side_by_side(
        pytorch_lamb.Lamb, options, {**options, "bias_correction": False, "clamp_value": 10.0},
        zero_biases=False,
    )  # fmt: skip
    for index, (mine, other) in enumerate(zip(ours, theirs, strict=True)):
        assert_rel_close(mine.detach(), other.detach(), 1e-10, f"param {index}")
        for key in ("exp_avg", "exp_avg_sq"):
            assert_rel_close(optimizer.state[mine][key], reference.state[other][key], 1e-10, key)


def test_pytorch_lamb_freezes_zero_parameters_and_turns_zero_updates_into_nan():
    """Its unguarded ratio ||p|| / ||u||: a zero bias never moves, a zero update gives NaN."""
    bias, silent = torch.zeros(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    theirs = [bias.clone().requires_grad_(), silent.clone().requires_grad_()]
    ours = [bias.clone().requires_grad_(), silent.clone().requires_grad_()]
    reference = pytorch_lamb.Lamb(theirs, lr=0.01)
    optimizer = Lamb(ours, lr=0.01, bias_correction=False)
    for params in (theirs, ours):
        params[0].grad = torch.ones(4, dtype=torch.float64)
        params[1].grad = torch.zeros(4, dtype=torch.float64)
    reference.step()
    optimizer.step()
    assert torch.equal(theirs[0].detach(), bias) and theirs[1].isnan().all()
    assert (ours[0].detach() != 0).all()  # ratio 1: the bias moves
    assert torch.equal(ours[1].detach(), silent)  # a zero update moves nothing


@pytest.mark.parametrize("zero_biases", [False, True])
def test_torch_optimizer_without_debias_is_bias_correction_false(zero_biases):
    options = dict(lr=0.05, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.01)
    ours, theirs, _, _ = _side_by_side(
        torch_optimizer.Lamb, {**options, "clamp_value": 10}, {**options, "bias_correction": False},
        zero_biases=zero_biases,
    )  # fmt: skip
    for index, (mine, other) in enumerate(zip(ours, theirs, strict=True)):
        assert_rel_close(mine.detach(), other.detach(), 1e-10, f"param {index}")


def test_torch_optimizer_debias_scales_the_step_outside_the_ratio():
    """debias=True is ``bias_correction=False`` with the learning rate times sqrt(bc2) / bc1."""
    lr, (beta1, beta2) = 0.02, (0.9, 0.99)
    options = dict(lr=lr, betas=(beta1, beta2), eps=1e-6, weight_decay=0.01)
    ours, theirs, _, _ = _side_by_side(
        torch_optimizer.Lamb, {**options, "debias": True}, {**options, "bias_correction": False},
        zero_biases=False, missing=False, steps=50,
        lr_at=lambda t: lr * math.sqrt(1 - beta2**t) / (1 - beta1**t),
    )  # fmt: skip
    for index, (mine, other) in enumerate(zip(ours, theirs, strict=True)):
        assert_rel_close(mine.detach(), other.detach(), 1e-10, f"param {index}")


def test_pytorch_optimizer_divides_the_step_by_bc1_outside_the_ratio():
    """Its default claims no bias correction; its step is ``lr / bc1 * ratio * u``. With
    coupled decay and eps=0 (its eps also enters the ratio's denominator) it equals
    optlab's ``bias_correction=False`` at a learning rate of ``lr / bc1``."""
    lr, beta1 = 0.02, 0.9
    options = dict(lr=lr, betas=(beta1, 0.99), eps=0.0, weight_decay=0.01)
    ours, theirs, _, _ = _side_by_side(
        pytorch_optimizer.Lamb, {**options, "weight_decouple": False, "foreach": True},
        {**options, "bias_correction": False},
        zero_biases=False, missing=False, steps=50, lr_at=lambda t: lr / (1 - beta1**t),
    )  # fmt: skip
    for index, (mine, other) in enumerate(zip(ours, theirs, strict=True)):
        assert_rel_close(mine.detach(), other.detach(), 1e-10, f"param {index}")


# --------------------------------------------------------------------------
# Checkpoints, validation, passes over memory.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_complex_and_non_contiguous_parameters_take_the_plain_steps(implementation):
    assert_complex_and_strided_take_the_plain_steps(
        Lamb, {**dict(lr=0.02, weight_decay=0.01), **IMPLEMENTATIONS[implementation]}
    )


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_resumed_run_is_bitwise_the_uninterrupted_one(implementation):
    count = 6
    options = dict(lr=0.02, weight_decay=0.01, **IMPLEMENTATIONS[implementation])

    def make_params():
        return [p.float().requires_grad_() for p in initial_params(count)]

    round_trip(Lamb, make_params, options, 9, 11, gradients(count, steps=20))


INVALID = [
    ({"lr": -1e-3}, "lr must be a finite number >= 0, got -0.001"),
    ({"betas": (0.9, 1.0)}, "betas[1] must be in [0, 1), got 1.0"),
    ({"betas": (-0.1, 0.9)}, "betas[0] must be in [0, 1), got -0.1"),
    ({"eps": -1e-6}, "eps must be a finite number >= 0, got -1e-06"),
    ({"weight_decay": -0.1}, "weight_decay must be a finite number >= 0, got -0.1"),
    ({"bias_correction": "yes"}, "bias_correction must be True or False, got 'yes'"),
    ({"clamp_value": 0.0}, "clamp_value must be in (0, inf], got 0.0"),
    ({"clamp_value": float("nan")}, "clamp_value must be in (0, inf], got nan"),
]


@pytest.mark.parametrize(("options", "message"), INVALID)
def test_bad_hyperparameters_raise_named_errors_and_change_nothing(options, message):
    param = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match=re.escape(message)):
        Lamb([param], **options)
    optimizer = Lamb([param])
    before = copy.deepcopy(optimizer.state_dict())
    with pytest.raises(ValueError, match="param group 1"):
        optimizer.add_param_group({"params": [torch.zeros(2, requires_grad=True)], **options})
    assert optimizer.state_dict() == before and len(optimizer.param_groups) == 1


def test_defaults_and_state_dict_hold_every_option():
    optimizer = Lamb([torch.zeros(2, requires_grad=True)], clamp_value=math.inf)
    group = optimizer.state_dict()["param_groups"][0]
    assert {k: v for k, v in group.items() if k != "params"} == dict(
        lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, bias_correction=True,
        clamp_value=math.inf, maximize=False, foreach=None, fused=None,
    )  # fmt: skip


def test_grad_scaler_unscales_before_the_step_and_skips_inf_steps():
    """The ratio depends on the gradient's norm: GradScaler unscales it first (the fused
    kernels are not handed the scale), and a step with an inf gradient changes nothing."""
    results = []
    for scaled in (False, True):
        param = torch.nn.Parameter(torch.randn(5, 7, generator=torch.Generator().manual_seed(0)))
        optimizer = Lamb([param], lr=0.01, fused=True)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, enabled=scaled)
        for step in range(3):
            loss = (param * torch.full((5, 7), 0.5 + step)).sum()
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            param.grad = None
        results.append(param.detach().clone())
        before = copy.deepcopy(optimizer.state_dict()), param.detach().clone()
        param.grad = torch.full((5, 7), math.inf)
        scaler.step(optimizer)
        if scaled:
            assert torch.equal(param.detach(), before[1])
            assert optimizer.state[param]["step"].item() == 3
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize(
    ("implementation", "weight_decay", "bias_correction", "expected"),
    [
        ("loop", 0.01, True, 57),  # the rules run eagerly: a temporary per operation
        ("foreach", 0.0, False, 20),
        ("foreach", 0.0, True, 22),
        ("foreach", 0.01, True, 23),
        (
            "fused",
            0.0,
            True,
            5,
        ),  # norms 2, apply 3; the kernel adds 7 (read p, g, m, v; write m, v, u)
        ("fused", 0.01, False, 5),
    ],
)
def test_passes_over_memory_are_the_documented_ones(
    implementation, weight_decay, bias_correction, expected
):
    passes = count_passes(
        lambda params: Lamb(
            params,
            weight_decay=weight_decay,
            bias_correction=bias_correction,
            **IMPLEMENTATIONS[implementation],
        )  # fmt: skip
    )
    assert passes == expected
