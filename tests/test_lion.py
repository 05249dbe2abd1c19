"""Lion against lion-pytorch 0.2.5 and against the paper's Algorithm 2 written here.

Chen et al., "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023,
Algorithm 2. Every flag combination (weight decay on/off, maximize on/off,
different lr and betas) runs at once, one param group each, for 120 steps,
with odd shapes and a parameter whose gradient is missing every third step,
on each implementation (loop, foreach, fused): float64 within 1e-10 of the
oracle, float32 within 1e-5.
"""

from __future__ import annotations

import copy
import io
import itertools

import lion_pytorch
import pytest
import torch

from optlab.optim import _fused
from optlab.optim.lion import Lion

STEPS = 120
SHAPES = [(3,), (5, 7), (2, 3, 4), ()]
MISSING = 2  # this parameter of every group has no gradient on every third step
RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}

#: One param group per combination of the options that change the update.
COMBOS = [
    {"weight_decay": weight_decay, "maximize": maximize, "lr": lr, "betas": betas}
    for (weight_decay, maximize), (lr, betas) in zip(
        itertools.product([0.0, 0.3], [False, True]),
        [(1e-2, (0.9, 0.99)), (3e-3, (0.95, 0.98)), (2e-2, (0.8, 0.999)), (5e-3, (0.0, 0.9))],
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


def make_params(dtype: torch.dtype, seed: int = 0) -> list[list[torch.Tensor]]:
    """One list of parameters (the odd shapes) per group."""
    generator = torch.Generator().manual_seed(seed)
    return [
        [torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype) for shape in SHAPES]
        for _ in COMBOS
    ]


def clone(groups: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
    return [[p.detach().clone() for p in params] for params in groups]


def gradients(groups, step: int) -> list[list[torch.Tensor | None]]:
    """A noisy quadratic's gradients; ``None`` for parameter MISSING every third step."""
    generator = torch.Generator().manual_seed(1000 + step)
    grads = []
    for params in groups:
        row = []
        for index, param in enumerate(params):
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float64)
            grad = (2 * (param.double() - 0.5) + noise).to(param.dtype)
            row.append(None if index == MISSING and step % 3 == 0 else grad)
        grads.append(row)
    return grads


def set_grads(groups, grads, negate=()) -> None:
    for group_index, (params, row) in enumerate(zip(groups, grads, strict=True)):
        for param, grad in zip(params, row, strict=True):
            if grad is None:
                param.grad = None
            else:
                param.grad = -grad if group_index in negate else grad.clone()


def optlab_groups(groups):
    return [{"params": params, **combo} for params, combo in zip(groups, COMBOS, strict=True)]


def assert_rel_close(actual, expected, rtol, what) -> None:
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale, msg=what)


class PublishedLion:
    """Algorithm 2 of the paper, per tensor, in float64 (plus optlab's ``maximize``)."""

    def __init__(self, groups, combos):
        self.groups, self.combos = groups, combos
        self.m = {id(p): torch.zeros_like(p) for params in groups for p in params}

    def step(self, grads) -> None:
        for params, row, combo in zip(self.groups, grads, self.combos, strict=True):
            lr, (beta1, beta2), wd = combo["lr"], combo["betas"], combo["weight_decay"]
            for theta, g in zip(params, row, strict=True):
                if g is None:
                    continue
                g = -g if combo["maximize"] else g
                m = self.m[id(theta)]
                c = beta1 * m + (1 - beta1) * g
                theta.copy_(theta - lr * (torch.sign(c) + wd * theta))
                self.m[id(theta)] = beta2 * m + (1 - beta2) * g


def run_ours(dtype, flags, steps=STEPS, seed=0):
    groups = make_params(dtype, seed)
    optimizer = Lion(optlab_groups(groups), **flags)
    for step in range(steps):
        set_grads(groups, gradients(groups, step))
        optimizer.step()
    return optimizer, groups


# --------------------------------------------------------------------------
# The oracles.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("flags", IMPLEMENTATIONS)
def test_every_combination_matches_lion_pytorch(flags, dtype):
    ours, our_groups = run_ours(dtype, flags)
    reference_groups = make_params(dtype)
    # lion-pytorch has no maximize: it is the same optimizer on the negated gradient.
    reference = lion_pytorch.Lion(
        [
            {"params": params, **{k: v for k, v in combo.items() if k != "maximize"}}
            for params, combo in zip(reference_groups, COMBOS, strict=True)
        ]
    )
    maximized = {index for index, combo in enumerate(COMBOS) if combo["maximize"]}
    for step in range(STEPS):
        set_grads(reference_groups, gradients(reference_groups, step), negate=maximized)
        reference.step()
    rtol = RTOL[dtype]
    for mine_list, theirs_list in zip(our_groups, reference_groups, strict=True):
        for index, (mine, theirs) in enumerate(zip(mine_list, theirs_list, strict=True)):
            assert_rel_close(mine, theirs, rtol, f"param {index}")
            assert set(ours.state[mine]) == set(reference.state[theirs]) == {"exp_avg"}
            assert_rel_close(
                ours.state[mine]["exp_avg"], reference.state[theirs]["exp_avg"], rtol, "exp_avg"
            )
    assert (our_groups[0][1] - make_params(dtype)[0][1]).abs().max() > 0.1  # it moved


@pytest.mark.parametrize("flags", IMPLEMENTATIONS)
def test_every_combination_matches_the_published_algorithm(flags):
    ours, our_groups = run_ours(torch.float64, flags)
    reference_groups = make_params(torch.float64)
    published = PublishedLion(reference_groups, COMBOS)
    for step in range(STEPS):
        published.step(gradients(reference_groups, step))
    for mine_list, theirs_list in zip(our_groups, reference_groups, strict=True):
        for mine, theirs in zip(mine_list, theirs_list, strict=True):
            assert_rel_close(mine, theirs, 1e-10, "param")
            assert_rel_close(ours.state[mine]["exp_avg"], published.m[id(theirs)], 1e-10, "m")


def test_lion_pytorch_decoupled_weight_decay_is_weight_decay_over_the_initial_lr():
    """lion-pytorch's ``decoupled_weight_decay=True`` divides wd by its constructor's lr;
    optlab takes the quotient as ``weight_decay``: the same steps, under a schedule too."""
    lr0, wd = 2e-2, 1e-3
    ours_params, reference_params = [p[1] for p in make_params(torch.float64)[:2]], None
    reference_params = [p.clone() for p in ours_params]
    ours = Lion(ours_params, lr=lr0, weight_decay=wd / lr0)
    reference = lion_pytorch.Lion(
        reference_params, lr=lr0, weight_decay=wd, decoupled_weight_decay=True
    )
    schedulers = [torch.optim.lr_scheduler.StepLR(o, 7, 0.5) for o in (ours, reference)]
    for step in range(40):
        grads = gradients([ours_params], step)[0]
        for mine, theirs, grad in zip(ours_params, reference_params, grads, strict=True):
            mine.grad, theirs.grad = grad.clone(), grad.clone()
        ours.step()
        reference.step()
        for scheduler in schedulers:
            scheduler.step()
    for mine, theirs in zip(ours_params, reference_params, strict=True):
        assert_rel_close(mine, theirs, 1e-12, "param")


def test_a_zero_direction_moves_only_by_the_decay():
    param = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    optimizer = Lion([param], lr=0.1, weight_decay=0.5)
    param.grad = torch.tensor([0.0, 3.0, -1.0], dtype=torch.float64)
    optimizer.step()
    expected = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) * (1 - 0.1 * 0.5)
    expected -= 0.1 * torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64)
    assert torch.equal(param, expected)
    assert torch.equal(optimizer.state[param]["exp_avg"], (1 - 0.99) * param.grad)


# --------------------------------------------------------------------------
# Checkpoints.
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
    first = Lion(optlab_groups(first_groups), **flags)
    for step in range(15):
        set_grads(first_groups, gradients(first_groups, step))
        first.step()
    checkpoint = through_file(first.state_dict())
    resumed_groups = clone(first_groups)
    resumed = Lion(
        [{"params": p, "lr": 0.5} for p in resumed_groups], **flags
    )  # its own options are replaced by the checkpoint's
    resumed.load_state_dict(checkpoint)
    for step in range(15, 40):
        set_grads(resumed_groups, gradients(resumed_groups, step))
        resumed.step()
    for mine_list, theirs_list in zip(resumed_groups, straight_groups, strict=True):
        for mine, theirs in zip(mine_list, theirs_list, strict=True):
            assert torch.equal(mine, theirs)
            assert torch.equal(resumed.state[mine]["exp_avg"], straight.state[theirs]["exp_avg"])


@pytest.mark.parametrize("direction", ["lion_pytorch->optlab", "optlab->lion_pytorch"])
def test_checkpoints_move_between_lion_pytorch_and_optlab(direction):
    def make(cls, params):
        return cls([{"params": params[:2], "lr": 1e-2}, {"params": params[2:]}], weight_decay=0.1)

    writer_cls, reader_cls = (
        (lion_pytorch.Lion, Lion)
        if direction == "lion_pytorch->optlab"
        else (Lion, lion_pytorch.Lion)
    )
    reference_params = make_params(torch.float64)[0]
    writer_params = [p.clone() for p in reference_params]
    reference, writer = make(reader_cls, reference_params), make(writer_cls, writer_params)
    for step in range(20):
        grads = gradients([reference_params], step)[0]
        set_grads([reference_params], [grads])
        reference.step()
        if step < 8:
            set_grads([writer_params], [grads])
            writer.step()
        elif step == 8:
            reader_params = [p.clone() for p in writer_params]
            reader = make(reader_cls, reader_params)
            reader.load_state_dict(through_file(writer.state_dict()))
        if step >= 8:
            set_grads([reader_params], [grads])
            reader.step()
    for mine, theirs in zip(reader_params, reference_params, strict=True):
        assert_rel_close(mine, theirs, 1e-12, "param")
        if theirs in reference.state:
            assert_rel_close(
                reader.state[mine]["exp_avg"], reference.state[theirs]["exp_avg"], 1e-12, "m"
            )


# --------------------------------------------------------------------------
# Validation, low precision.
# --------------------------------------------------------------------------

INVALID = [
    ({"lr": -1e-3}, "lr must be a finite number >= 0, got -0.001"),
    ({"betas": (1.5, 0.99)}, "betas[0] must be in [0, 1], got 1.5"),
    ({"betas": (0.9, -0.1)}, "betas[1] must be in [0, 1], got -0.1"),
    ({"betas": (0.9,)}, "betas must be a pair (beta1, beta2), got (0.9,)"),
    ({"betas": 0.9}, "betas must be a pair"),
    ({"weight_decay": -0.1}, "weight_decay must be a finite number >= 0, got -0.1"),
    ({"maximize": 1}, "maximize must be True or False, got 1"),
]


@pytest.mark.parametrize(("options", "message"), INVALID, ids=[str(o) for o, _ in INVALID])
def test_bad_hyperparameters_raise_named_errors_and_change_nothing(options, message):
    with pytest.raises(ValueError) as error:
        Lion([torch.zeros(2, requires_grad=True)], **options)
    assert message in str(error.value)

    params = make_params(torch.float64)[0]
    optimizer = Lion(params[:2], lr=1e-2)
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
    assert torch.equal(after["state"][0]["exp_avg"], before["state"][0]["exp_avg"])


def test_betas_at_the_ends_of_the_interval_are_accepted_and_beta2_one_is_signsgd():
    param = torch.tensor([0.3, -0.2], dtype=torch.float64)
    optimizer = Lion([param], lr=0.1, betas=(1.0, 1.0))
    param.grad = torch.tensor([1.0, 1.0], dtype=torch.float64)
    optimizer.step()  # beta1 = 1: the direction is the (zero) momentum alone
    assert torch.equal(param, torch.tensor([0.3, -0.2], dtype=torch.float64))
    optimizer.param_groups[0]["betas"] = (0.5, 1.0)
    for _ in range(3):
        param.grad = torch.tensor([2.0, -1.0], dtype=torch.float64)
        optimizer.step()  # beta2 = 1: m stays 0, every step is -lr * sign(g)
    assert torch.allclose(param, torch.tensor([0.0, 0.1], dtype=torch.float64), atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_computes_in_float32_and_keeps_float32_state(dtype):
    """Oracle: the same optimizer on float32 copies, rounded to ``dtype`` after each step."""
    generator = torch.Generator().manual_seed(7)
    low = torch.randn(4, 3, generator=generator).to(dtype)
    high = low.float()
    low_opt = Lion([low], lr=1e-2, weight_decay=0.1)
    high_opt = Lion([high], lr=1e-2, weight_decay=0.1)
    for _ in range(30):
        grad = (2 * (low.float() - 1) + torch.randn(4, 3, generator=generator)).to(dtype)
        low.grad, high.grad = grad, grad.float()
        low_opt.step()
        high_opt.step()
        with torch.no_grad():
            high.copy_(high.to(dtype).float())
    assert low_opt.state[low]["exp_avg"].dtype == torch.float32
    assert torch.equal(low.float(), high)
    assert torch.equal(low_opt.state[low]["exp_avg"], high_opt.state[high]["exp_avg"])
