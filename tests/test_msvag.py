"""M-SVAG against the published algorithm written here, cross-checked with pytorch_optimizer.

Balles & Hennig, "Dissecting Adam: The Sign, Magnitude and Variance of
Stochastic Gradients", ICML 2018, M-SVAG (Algorithm 2), written per tensor
in the paper's own terms (``rho``, ``s``, ``gamma``), with the first step's
``s = 0`` as the authors' code intends it. Every flag combination (L2,
decoupled decay, none; maximize on/off; different lr and beta) runs at once,
one param group each, over 120 steps with odd shapes, a coordinate whose
gradient is always zero (``gamma`` is 0/0 there) and a parameter whose
gradient is missing every third step, on each implementation (loop,
foreach, fused): float64 within 1e-10, float32 within 1e-5.

``pytorch_optimizer.MSVAG`` 4.1.0 is the cross-check: equal to 1e-10 in
float64 where every parameter has a gradient every step (it counts steps
per group); in float32 from the second step on (its first step carries the
rounding noise of ``(v - m^2) / (1 - 0.9999)``, about 1e-3 of the step).
"""

from __future__ import annotations

import copy
import io
import itertools

import pytest
import pytorch_optimizer
import torch

from optlab.optim import _fused
from optlab.optim.msvag import MSVAG

STEPS = 120
SHAPES = [(3,), (5, 7), (2, 3, 4), ()]
MISSING = 2  # this parameter of every group has no gradient on every third step
RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}

#: One param group per combination of the options that change the update.
COMBOS = [
    {"weight_decay": wd, "decoupled_weight_decay": decoupled, "maximize": maximize, **settings}
    for ((wd, decoupled), maximize), settings in zip(
        itertools.product([(0.0, False), (0.05, False), (0.05, True)], [False, True]),
        [
            {"lr": 0.05, "beta": 0.9},
            {"lr": 0.02, "beta": 0.95},
            {"lr": 0.1, "beta": 0.5},
            {"lr": 0.03, "beta": 0.99},
            {"lr": 0.05, "beta": 0.0},
            {"lr": 0.08, "beta": 0.8},
        ],
        strict=True,
    )
]

needs_fused = pytest.mark.skipif(
    _fused.fused_unavailable_reason("cpu") is not None,
    reason=f"fused kernels unavailable: {_fused.fused_unavailable_reason('cpu')}",
)
IMPLEMENTATIONS = [
    pytest.param({"foreach": False}, id="loop"),
    pytest.param({"foreach": True}, id="foreach"),
    pytest.param({"fused": True}, id="fused", marks=needs_fused),
]


@pytest.fixture(autouse=True)
def one_thread():
    """Fused kernels on one thread: on a busy 2-core machine an OpenMP kernel waits ~30 ms
    a call for its threads, and this file makes about a thousand calls on tiny tensors."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_params(dtype: torch.dtype, seed: int = 0, combos=COMBOS) -> list[list[torch.Tensor]]:
    """One list of parameters (the odd shapes) per group."""
    generator = torch.Generator().manual_seed(seed)
    return [
        [torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype) for shape in SHAPES]
        for _ in combos
    ]


def gradients(groups, step: int, missing: bool = True) -> list[list[torch.Tensor | None]]:
    """A noisy quadratic's gradients; coordinate 0 of the (5, 7) parameter always 0;
    ``None`` for parameter MISSING every third step (when ``missing``)."""
    generator = torch.Generator().manual_seed(1000 + step)
    grads = []
    for params in groups:
        row = []
        for index, param in enumerate(params):
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float64)
            grad = (2 * (param.double() - 0.5) + noise).to(param.dtype)
            if index == 1:
                grad[0, 0] = 0.0
            row.append(None if missing and index == MISSING and step % 3 == 0 else grad)
        grads.append(row)
    return grads


def set_grads(groups, grads) -> None:
    for params, row in zip(groups, grads, strict=True):
        for param, grad in zip(params, row, strict=True):
            param.grad = None if grad is None else grad.clone()


def optlab_groups(groups, combos=COMBOS):
    return [{"params": params, **combo} for params, combo in zip(groups, combos, strict=True)]


def assert_rel_close(actual, expected, rtol, what) -> None:
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale, msg=what)


class PublishedMSVAG:
    """M-SVAG as the paper writes it, per tensor, in the tensors' dtype.

    Plus optlab's options: ``maximize``, L2 or decoupled weight decay.
    """

    def __init__(self, groups, combos):
        self.groups, self.combos = groups, combos
        self.state = {
            id(p): {"t": 0, "m": torch.zeros_like(p), "v": torch.zeros_like(p)}
            for params in groups
            for p in params
        }

    def step(self, grads) -> None:
        for params, row, combo in zip(self.groups, grads, self.combos, strict=True):
            lr, beta, wd = combo["lr"], combo["beta"], combo["weight_decay"]
            for theta, g in zip(params, row, strict=True):
                if g is None:
                    continue
                state = self.state[id(theta)]
                state["t"] += 1
                t = state["t"]
                g = -g if combo["maximize"] else g
                if combo["decoupled_weight_decay"]:
                    theta.mul_(1 - lr * wd)
                else:
                    g = g + wd * theta
                state["m"] = beta * state["m"] + (1 - beta) * g
                state["v"] = beta * state["v"] + (1 - beta) * g**2
                m = state["m"] / (1 - beta**t)
                v = state["v"] / (1 - beta**t)
                rho = (1 - beta) * (1 + beta**t) / ((1 + beta) * (1 - beta**t))
                if t == 1 or beta == 0:
                    s = torch.zeros_like(v)  # rho = 1: one sample, no variance estimate
                else:
                    s = (v - m**2) / (1 - rho)
                gamma = m**2 / (m**2 + rho * s)
                gamma = torch.nan_to_num(gamma.clamp(0, 1), nan=0.0)  # 0/0 where m = v = 0
                theta.sub_(lr * gamma * m)


def run_ours(dtype, flags, steps=STEPS, seed=0, missing=True):
    groups = make_params(dtype, seed)
    optimizer = MSVAG(optlab_groups(groups), **flags)
    for step in range(steps):
        set_grads(groups, gradients(groups, step, missing))
        optimizer.step()
    return optimizer, groups


# --------------------------------------------------------------------------
# The oracles.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("flags", IMPLEMENTATIONS)
def test_every_combination_matches_the_published_algorithm(flags, dtype):
    ours, our_groups = run_ours(dtype, flags)
    reference_groups = make_params(dtype)
    published = PublishedMSVAG(reference_groups, COMBOS)
    for step in range(STEPS):
        published.step(gradients(reference_groups, step))
    rtol = RTOL[dtype]
    for mine_list, theirs_list in zip(our_groups, reference_groups, strict=True):
        for index, (mine, theirs) in enumerate(zip(mine_list, theirs_list, strict=True)):
            assert_rel_close(mine, theirs, rtol, f"param {index}")
            state, expected = ours.state[mine], published.state[id(theirs)]
            assert set(state) == {"step", "exp_avg", "exp_avg_sq"}
            assert state["step"].item() == expected["t"]
            assert_rel_close(state["exp_avg"], expected["m"], rtol, "exp_avg")
            assert_rel_close(state["exp_avg_sq"], expected["v"], rtol, "exp_avg_sq")
    start = make_params(dtype)
    assert (our_groups[0][1] - start[0][1]).abs().max() > 0.1  # it moved
    assert our_groups[0][1][0, 0] == start[0][1][0, 0]  # gamma = 0/0 -> 0 where m = v = 0


def pytorch_optimizer_groups(groups, combos):
    return [
        {"params": params, "lr": combo["lr"], "beta": combo["beta"]}
        for params, combo in zip(groups, combos, strict=True)
    ]


#: pytorch_optimizer has no weight decay and keeps maximize on the instance.
CROSS_COMBOS = [{"lr": c["lr"], "beta": c["beta"]} for c in COMBOS]


@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("their_foreach", [False, True], ids=["their-loop", "their-foreach"])
@pytest.mark.parametrize("flags", IMPLEMENTATIONS)
def test_float64_matches_pytorch_optimizer_where_every_parameter_has_a_gradient(
    flags, their_foreach, maximize
):
    combos = [{**c, "maximize": maximize} for c in CROSS_COMBOS]
    our_groups, reference_groups = make_params(torch.float64), make_params(torch.float64)
    ours = MSVAG(optlab_groups(our_groups, combos), **flags)
    reference = pytorch_optimizer.MSVAG(
        pytorch_optimizer_groups(reference_groups, combos), maximize=maximize, foreach=their_foreach
    )
    for step in range(STEPS):
        grads = gradients(our_groups, step, missing=False)
        set_grads(our_groups, grads)
        set_grads(reference_groups, grads)  # copies: pytorch_optimizer negates p.grad in place
        ours.step()
        reference.step()
    for mine_list, theirs_list in zip(our_groups, reference_groups, strict=True):
        for mine, theirs in zip(mine_list, theirs_list, strict=True):
            assert_rel_close(mine, theirs, 1e-10, "param")
            for key in ("exp_avg", "exp_avg_sq"):
                assert_rel_close(ours.state[mine][key], reference.state[theirs][key], 1e-10, key)


@pytest.mark.parametrize("flags", IMPLEMENTATIONS)
def test_float32_matches_pytorch_optimizer_from_the_second_step(flags):
    our_groups = make_params(torch.float32)
    ours = MSVAG(optlab_groups(our_groups, CROSS_COMBOS), **flags)
    set_grads(our_groups, gradients(our_groups, 0, missing=False))
    ours.step()
    reference_groups = [[p.detach().clone() for p in params] for params in our_groups]
    reference = pytorch_optimizer.MSVAG(pytorch_optimizer_groups(reference_groups, CROSS_COMBOS))
    for group in reference.param_groups:
        group["step"] = 1
    for mine_list, theirs_list in zip(our_groups, reference_groups, strict=True):
        for mine, theirs in zip(mine_list, theirs_list, strict=True):
            reference.state[theirs] = {
                key: ours.state[mine][key].clone() for key in ("exp_avg", "exp_avg_sq")
            }
    for step in range(1, STEPS):
        grads = gradients(our_groups, step, missing=False)
        set_grads(our_groups, grads)
        set_grads(reference_groups, grads)
        ours.step()
        reference.step()
    for mine_list, theirs_list in zip(our_groups, reference_groups, strict=True):
        for mine, theirs in zip(mine_list, theirs_list, strict=True):
            assert_rel_close(mine, theirs, 1e-5, "param")


def test_pytorch_optimizer_counts_steps_per_group_optlab_per_parameter():
    """The departure, shown: a parameter that missed a step gets the group's bias correction
    in pytorch_optimizer, its own in optlab (and in the published algorithm above)."""
    late, early = torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    late_ref, early_ref = late.clone(), early.clone()
    ours = MSVAG([late, early], lr=0.1)
    reference = pytorch_optimizer.MSVAG([late_ref, early_ref], lr=0.1)
    for step in range(3):
        grad = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) * (step + 1)
        early.grad, early_ref.grad = grad.clone(), grad.clone()
        late.grad = late_ref.grad = None if step == 0 else grad.clone()
        ours.step()
        reference.step()
    assert ours.state[late]["step"].item() == 2 and reference.param_groups[0]["step"] == 3
    assert not torch.allclose(late, late_ref)
    torch.testing.assert_close(early, early_ref, rtol=1e-12, atol=0)


def test_the_first_step_is_sgd_and_beta_zero_is_sgd():
    """rho = 1 (first step; every step for beta = 0): gamma = 1, the step is -lr * g."""
    param = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    optimizer = MSVAG([param], lr=0.1, beta=0.9)
    grad = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    param.grad = grad
    optimizer.step()
    expected = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) - 0.1 * grad
    torch.testing.assert_close(param, expected, rtol=1e-15, atol=0)

    sgd_param, param = param.detach().clone(), param.detach().clone()
    optimizer = MSVAG([param], lr=0.1, beta=0.0)
    sgd = torch.optim.SGD([sgd_param], lr=0.1)
    for step in range(5):
        param.grad = sgd_param.grad = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64) * step
        optimizer.step()
        sgd.step()
    assert torch.equal(param, sgd_param)


# --------------------------------------------------------------------------
# Checkpoints, validation, low precision.
# --------------------------------------------------------------------------


def through_file(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("flags", IMPLEMENTATIONS)
def test_checkpoint_round_trip_is_bitwise(flags):
    straight, straight_groups = run_ours(torch.float64, flags, steps=40)
    first_groups = make_params(torch.float64)
    first = MSVAG(optlab_groups(first_groups), **flags)
    for step in range(16):
        set_grads(first_groups, gradients(first_groups, step))
        first.step()
    checkpoint = through_file(first.state_dict())
    resumed_groups = [[p.detach().clone() for p in params] for params in first_groups]
    resumed = MSVAG([{"params": p, "lr": 0.5} for p in resumed_groups], **flags)
    resumed.load_state_dict(checkpoint)
    for step in range(16, 40):
        set_grads(resumed_groups, gradients(resumed_groups, step))
        resumed.step()
    for mine_list, theirs_list in zip(resumed_groups, straight_groups, strict=True):
        for mine, theirs in zip(mine_list, theirs_list, strict=True):
            assert torch.equal(mine, theirs)
            for key, value in straight.state[theirs].items():
                assert torch.equal(resumed.state[mine][key], value), key


INVALID = [
    ({"lr": -1e-3}, "lr must be a finite number >= 0, got -0.001"),
    ({"beta": 1.0}, "beta must be in [0, 1), got 1.0"),
    ({"beta": -0.1}, "beta must be in [0, 1), got -0.1"),
    ({"beta": "0.9"}, "beta must be a number, got '0.9'"),
    ({"weight_decay": -0.1}, "weight_decay must be a finite number >= 0, got -0.1"),
    ({"decoupled_weight_decay": 1}, "decoupled_weight_decay must be True or False, got 1"),
    ({"maximize": None}, "maximize must be True or False, got None"),
]


@pytest.mark.parametrize(("options", "message"), INVALID, ids=[str(o) for o, _ in INVALID])
def test_bad_hyperparameters_raise_named_errors_and_change_nothing(options, message):
    with pytest.raises(ValueError) as error:
        MSVAG([torch.zeros(2, requires_grad=True)], **options)
    assert message in str(error.value)

    params = make_params(torch.float64)[0]
    optimizer = MSVAG(params[:2])
    set_grads([params[:2]], [gradients([params[:2]], 0)[0]])
    optimizer.step()
    before = copy.deepcopy(optimizer.state_dict())
    with pytest.raises(ValueError) as error:
        optimizer.add_param_group({"params": params[2:], **options})
    assert message in str(error.value) and "param group 1" in str(error.value)
    assert len(optimizer.param_groups) == 1
    bad = copy.deepcopy(before)
    bad["param_groups"][0].update(options)
    with pytest.raises(ValueError, match="checkpoint param group 0"):
        optimizer.load_state_dict(bad)
    after = optimizer.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for key, value in before["state"][0].items():
        assert torch.equal(after["state"][0][key], value)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_computes_in_float32_and_keeps_float32_state(dtype):
    """Oracle: the same optimizer on float32 copies, rounded to ``dtype`` after each step."""
    generator = torch.Generator().manual_seed(7)
    low = torch.randn(4, 3, generator=generator).to(dtype)
    high = low.float()
    low_opt = MSVAG([low], lr=1e-2, weight_decay=0.1)
    high_opt = MSVAG([high], lr=1e-2, weight_decay=0.1)
    for _ in range(30):
        grad = (2 * (low.float() - 1) + torch.randn(4, 3, generator=generator)).to(dtype)
        low.grad, high.grad = grad, grad.float()
        low_opt.step()
        high_opt.step()
        with torch.no_grad():
            high.copy_(high.to(dtype).float())
    for key in ("exp_avg", "exp_avg_sq"):
        assert low_opt.state[low][key].dtype == torch.float32
        assert torch.equal(low_opt.state[low][key], high_opt.state[high][key])
    assert torch.equal(low.float(), high)
