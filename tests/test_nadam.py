"""NAdam / NAdamW against torch.optim.NAdam 2.13 (the oracle), for every flag and implementation.

Every flag combination torch takes (L2 or decoupled weight decay, maximize,
momentum_decay), two param groups with different options, odd shapes, a
gradient missing on some steps and an lr change, over 100 steps: float64
parameters and state within 1e-10 of torch's (``mu_product`` bitwise: both
multiply it in float32), float32 within 1e-5, for the per-tensor loop, the
multi-tensor path and the fused kernel. Checkpoints round-trip bitwise and
move between torch and optlab; bad hyper-parameters are refused by name and
change nothing.
"""

from __future__ import annotations

import copy
import inspect
import io
import itertools
import re

import pytest
import torch

from _torch_oracle import (
    IMPLEMENTATIONS,
    RTOL,
    SHAPES,
    STEPS,
    assert_rel_close,
    gradients,
    groups_of,
    make_params,
    needs_fused,
    set_grads,
)
from _torch_oracle import run_side_by_side as _side_by_side
from optlab.optim import _fused
from optlab.optim.nadam import NAdam


def run_side_by_side(options: list[dict], implementation, dtype, steps=STEPS, **defaults):
    """optlab's NAdam and torch.optim.NAdam, side by side (see ``_torch_oracle``)."""
    return _side_by_side(
        torch.optim.NAdam, NAdam, options, implementation, dtype, steps, **defaults
    )


def assert_same_run(theirs, theirs_params, ours, ours_params, dtype) -> None:
    rtol = RTOL[dtype]
    start = make_params(dtype, len(ours.param_groups))
    for index, (mine, reference) in enumerate(zip(ours_params, theirs_params, strict=True)):
        group = ours.param_groups[index // len(SHAPES)]
        what = f"param {index} ({ {k: v for k, v in group.items() if k != 'params'} })"
        assert_rel_close(mine.detach(), reference.detach(), rtol, what)
        state, reference_state = ours.state[mine], theirs.state[reference]
        assert set(state) == set(reference_state), what
        assert state["step"] == reference_state["step"], what
        for key in ("exp_avg", "exp_avg_sq"):
            assert state[key].dtype == reference_state[key].dtype
            assert_rel_close(state[key], reference_state[key], rtol, f"{key} of {what}")
        mu_product = state["mu_product"]
        assert mu_product.dtype == torch.float32 and mu_product.device.type == "cpu"
        assert torch.equal(mu_product, reference_state["mu_product"]), what
        assert (mine.detach() - start[index]).abs().max() > 1e-2, f"{what} did not move"


#: Every flag combination torch takes: no decay, L2, NAdamW's decoupled decay, x maximize.
DECAYS = [(0.0, False), (0.1, False), (0.1, True)]
COMBOS = [
    dict(weight_decay=wd, decoupled_weight_decay=decoupled, maximize=maximize)
    for (wd, decoupled), maximize in itertools.product(DECAYS, [False, True])
]
#: Other options per group, in turn: lr, betas, eps, momentum_decay.
VARIED = [
    dict(lr=1e-2),
    dict(lr=3e-2, betas=(0.8, 0.99), eps=1e-6, momentum_decay=0.05),
    dict(lr=2e-2, betas=(0.95, 0.9), momentum_decay=1e-3),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_matches_torch_nadam_for_every_flag(implementation, dtype):
    """One param group per flag combination (six groups, each with its own lr, betas, eps,
    momentum_decay)."""
    options = [{**combo, **VARIED[i % len(VARIED)]} for i, combo in enumerate(COMBOS)]
    run = run_side_by_side(options, implementation, dtype)
    assert_same_run(*run, dtype)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_tensor_lr_no_momentum_decay_and_beta1_zero_match_torch(implementation):
    """momentum_decay=0: mu_t = beta1 / 2 every step; beta1=0: no momentum at all."""
    options = [
        {"lr": torch.tensor(1e-2, dtype=torch.float64), "momentum_decay": 0.0},
        {"lr": 2e-2, "betas": (0.0, 0.9)},
    ]
    run = run_side_by_side(options, implementation, torch.float64, steps=30)
    assert_same_run(*run, torch.float64)


def test_mu_product_is_the_product_of_the_momentum_schedule():
    param = torch.zeros(3, dtype=torch.float64)
    optimizer = NAdam([param], betas=(0.9, 0.999), momentum_decay=0.01)
    product = torch.tensor(1.0)
    for step in range(1, 6):
        param.grad = torch.ones(3, dtype=torch.float64)
        optimizer.step()
        product *= 0.9 * (1 - 0.5 * 0.96 ** (step * 0.01))
    assert torch.equal(optimizer.state[param]["mu_product"], product)


# ----- checkpoints ---------------------------------------------------------------


def through_file(state_dict: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_checkpoint_round_trip_continues_bitwise(implementation):
    """Saved at step 7 (a (5, 7) parameter a step behind, the second group without state yet),
    reloaded into an optimizer built with another lr, continued: bitwise the uninterrupted run."""
    defaults = {"lr": 1e-2, "weight_decay": 0.01, "decoupled_weight_decay": True, **implementation}
    options = [{}, {"betas": (0.8, 0.99), "maximize": True, "momentum_decay": 0.02}]
    generator = torch.Generator().manual_seed(2)
    all_grads = [gradients(make_params(torch.float64), step, generator) for step in range(20)]
    for grads in all_grads[:8]:
        grads[len(SHAPES) :] = [None] * len(SHAPES)
    straight_params, first_params = make_params(torch.float64), make_params(torch.float64)
    straight = NAdam(groups_of(straight_params, options), **defaults)
    first = NAdam(groups_of(first_params, options), **defaults)
    for step, grads in enumerate(all_grads):
        set_grads(straight_params, grads)
        straight.step()
        if step < 7:
            set_grads(first_params, grads)
            first.step()
    saved = through_file(first.state_dict())
    resumed = NAdam(groups_of(first_params, options), **{**defaults, "lr": 0.5})
    resumed.load_state_dict(saved)
    for grads in all_grads[7:]:
        set_grads(first_params, grads)
        resumed.step()
    for mine, theirs in zip(first_params, straight_params, strict=True):
        assert torch.equal(mine, theirs)
        assert straight.state[theirs].keys() == resumed.state[mine].keys()
        for key, value in straight.state[theirs].items():
            assert resumed.state[mine][key].dtype == value.dtype, key
            assert torch.equal(resumed.state[mine][key], value), key


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16], ids=str)
def test_checkpoints_move_between_torch_and_optlab(dtype):
    """torch's checkpoint loads and saves again unchanged (mu_product float32 included; fp16
    moments as float32), and torch continues from optlab's as optlab does."""
    params = make_params(dtype)
    options = [{}, {"weight_decay": 0.1, "momentum_decay": 0.01}]
    reference = torch.optim.NAdam(groups_of(params, options), lr=1e-2)
    generator = torch.Generator().manual_seed(3)
    for step in range(8):
        set_grads(params, gradients(params, step, generator))
        reference.step()
    written = copy.deepcopy(reference.state_dict())
    ours_params = [p.detach().clone() for p in params]
    ours = NAdam(groups_of(ours_params, [{}, {}]), lr=0.3)
    ours.load_state_dict(copy.deepcopy(written))  # torch's load keeps the step tensors given
    saved = copy.deepcopy(ours.state_dict())
    assert saved["param_groups"] == written["param_groups"]
    for index, state in written["state"].items():
        assert saved["state"][index].keys() == state.keys()
        for key, value in state.items():
            low_precision_moment = dtype == torch.float16 and key in ("exp_avg", "exp_avg_sq")
            expected = value.float() if low_precision_moment else value
            assert saved["state"][index][key].dtype == expected.dtype, key
            assert torch.equal(saved["state"][index][key], expected), key
    if dtype != torch.float64:
        return
    back_params = [p.detach().clone() for p in ours_params]
    back = torch.optim.NAdam(groups_of(back_params, [{}, {}]), lr=0.3)
    back.load_state_dict(copy.deepcopy(saved))
    for state in back.state.values():  # undo torch's cast of mu_product to float64 on load
        state["mu_product"] = state["mu_product"].float()
    for step in range(8, 20):
        grads = gradients(ours_params, step, generator)
        set_grads(ours_params, grads)
        set_grads(back_params, grads)
        ours.step()
        back.step()
    for mine, theirs in zip(ours_params, back_params, strict=True):
        assert_rel_close(mine, theirs, 1e-10, "param")
        assert torch.equal(ours.state[mine]["mu_product"], back.state[theirs]["mu_product"])


def test_a_python_number_mu_product_from_an_old_checkpoint_loads_as_float32():
    params = make_params(torch.float64)
    ours = NAdam(params, lr=1e-2)
    set_grads(params, gradients(params, 0, torch.Generator().manual_seed(4)))
    ours.step()
    old = copy.deepcopy(ours.state_dict())
    for state in old["state"].values():
        state["step"], state["mu_product"] = int(state["step"]), state["mu_product"].item()
    resumed = NAdam([p.detach().clone() for p in params], lr=1e-2)
    resumed.load_state_dict(old)
    assert_same_checkpoint = resumed.state_dict()["state"]
    for index, state in ours.state_dict()["state"].items():
        for key, value in state.items():
            assert torch.equal(assert_same_checkpoint[index][key], value), key
            assert assert_same_checkpoint[index][key].dtype == value.dtype, key


@pytest.mark.parametrize(
    ("mu_product", "message"),
    [
        (torch.ones(3), "must be one number (torch.optim.NAdam's 0-dim tensor), got a tensor"),
        (torch.tensor(1.5), "mu_product must be in [0, 1], got tensor(1.5000)"),
        (float("nan"), "mu_product must be in [0, 1], got nan"),
    ],
    ids=["shape", "above-one", "nan"],
)
def test_a_checkpoint_with_a_bad_mu_product_is_refused_and_changes_nothing(mu_product, message):
    params = make_params(torch.float64)
    ours = NAdam(params, lr=1e-2)
    set_grads(params, gradients(params, 0, torch.Generator().manual_seed(5)))
    ours.step()
    before = copy.deepcopy(ours.state_dict())
    bad = copy.deepcopy(before)
    bad["state"][1]["mu_product"] = mu_product
    with pytest.raises(ValueError, match=re.escape(message)) as raised:
        ours.load_state_dict(bad)
    assert "'mu_product' of parameter 1" in str(raised.value)
    del bad["state"][1]["mu_product"]
    with pytest.raises(ValueError, match=r"lacks \['mu_product'\]"):
        ours.load_state_dict(bad)
    after = ours.state_dict()
    for index, state in before["state"].items():
        for key, value in state.items():
            assert torch.equal(after["state"][index][key], value), key


@needs_fused
def test_grad_scaler_skips_the_step_in_the_fused_kernel_and_keeps_mu_product():
    """All-fused on CPU: GradScaler hands NAdam its scale (torch's fused route); a skipped step
    moves nothing, mu_product included, and the run equals the unscaling route's."""
    runs = []
    for implementation in ({"fused": True}, {"foreach": False}):
        params = make_params(torch.float32)
        optimizer = NAdam(params, lr=1e-2, **implementation)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=3)
        history = []
        for step in range(8):
            optimizer.zero_grad()
            loss = sum(((p - 1) ** 2).sum() * (1 + 0.1 * step) for p in params)
            scaler.scale(loss * (float("inf") if step in (2, 5) else 1.0)).backward()
            scaler.step(optimizer)
            scaler.update()
            history.append(copy.deepcopy(optimizer.state_dict()["state"]))
        runs.append((optimizer, params, history))
    (fused, fused_params, fused_history), (loop, loop_params, loop_history) = runs
    assert fused._step_supports_amp_scaling and not loop._step_supports_amp_scaling
    for step, (mine, theirs) in enumerate(zip(fused_history, loop_history, strict=True)):
        for index, state in theirs.items():
            assert torch.equal(mine[index]["step"], state["step"]), step
            assert torch.equal(mine[index]["mu_product"], state["mu_product"]), step
            assert_rel_close(mine[index]["exp_avg"], state["exp_avg"], 1e-5, f"step {step}")
    assert fused_history[2][0]["step"] == fused_history[1][0]["step"] == 2
    for mine, theirs in zip(fused_params, loop_params, strict=True):
        assert_rel_close(mine.detach(), theirs.detach(), 1e-5, "param")


def _failing_compile(self, num_scalars):
    raise _fused.FusedCompileError("simulated: the C++ compiler crashed")


def test_a_failed_compile_changes_nothing_and_the_fallback_advances_mu_product_once(monkeypatch):
    monkeypatch.setattr(_fused, "_kernels", {})
    monkeypatch.setattr(_fused, "_failed_device_types", set())
    monkeypatch.setattr(_fused._Kernel, "load", lambda self, num_scalars: False)
    monkeypatch.setattr(_fused._Kernel, "compile", _failing_compile)
    params = make_params(torch.float64)
    fused = NAdam(params, lr=1e-2, fused=True)
    set_grads(params, gradients(params, 0, torch.Generator().manual_seed(7)))
    with pytest.raises(RuntimeError, match="simulated"):
        fused.step()
    assert all(torch.equal(p, q) for p, q in zip(params, make_params(torch.float64), strict=True))
    for state in fused.state.values():
        assert state["step"] == 0 and state["mu_product"] == 1.0
    # The default picks fused for a "large" group, fails, and runs the rule eagerly instead.
    monkeypatch.setattr(_fused, "FUSED_DEFAULT_MIN_NUMEL", 1)
    default_params, loop_params = make_params(torch.float64), make_params(torch.float64)
    default = NAdam(default_params, lr=1e-2)
    loop = NAdam(loop_params, lr=1e-2, foreach=False)
    generator = torch.Generator().manual_seed(8)
    for step in range(3):
        grads = gradients(default_params, step, generator)
        set_grads(default_params, grads)
        set_grads(loop_params, grads)
        default.step()
        loop.step()
    for mine, theirs in zip(default_params, loop_params, strict=True):
        assert torch.equal(mine, theirs)
        assert torch.equal(default.state[mine]["mu_product"], loop.state[theirs]["mu_product"])


# ----- drop-in: arguments, groups, refusals -------------------------------------


def test_takes_torchs_arguments_in_torchs_positions_with_torchs_defaults():
    ours = inspect.signature(NAdam.__init__).parameters
    theirs = inspect.signature(torch.optim.NAdam.__init__).parameters
    assert list(ours) == [*theirs, "fused", "state_dtype"]
    for name, parameter in theirs.items():
        assert ours[name].kind == parameter.kind and ours[name].default == parameter.default, name
    param = torch.zeros(2, requires_grad=True)
    assert set(NAdam([param]).param_groups[0]) == {
        *torch.optim.NAdam([param]).param_groups[0],
        "fused",
    }


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(lr=-1e-3), "lr must be a finite number >= 0, got -0.001"),
        (dict(betas=(1.0, 0.999)), "betas[0] must be in [0, 1), got 1.0"),
        (dict(betas=(0.9, 1.0)), "betas[1] must be in [0, 1), got 1.0"),
        (dict(eps=-1e-8), "eps must be a finite number >= 0, got -1e-08"),
        (dict(weight_decay=float("nan")), "weight_decay must be a finite number >= 0, got nan"),
        (dict(momentum_decay=-4e-3), "momentum_decay must be a finite number >= 0, got -0.004"),
        (dict(decoupled_weight_decay=1), "decoupled_weight_decay must be True or False, got 1"),
        (dict(capturable=True), "capturable=True is not supported by optlab's NAdam"),
        (dict(differentiable=True), "differentiable=True is not supported by optlab's NAdam"),
    ],
)
def test_bad_hyperparameters_are_refused_by_name_and_change_nothing(options, message):
    with pytest.raises(ValueError) as raised:
        NAdam([torch.zeros(2, requires_grad=True)], **options)
    assert str(raised.value).startswith(message)
    param = torch.zeros(2, requires_grad=True)
    optimizer = NAdam([param], lr=0.1)
    param.grad = torch.ones(2)
    optimizer.step()
    before = copy.deepcopy(optimizer.state_dict())
    name = re.escape(message.split(" ")[0])
    with pytest.raises(ValueError, match="param group 1: " + name):
        optimizer.add_param_group({"params": [torch.zeros(3, requires_grad=True)], **options})
    bad = copy.deepcopy(before)
    bad["param_groups"][0].update(options)
    with pytest.raises(ValueError, match="checkpoint param group 0: " + name):
        optimizer.load_state_dict(bad)
    after = optimizer.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for key in ("exp_avg", "mu_product"):
        assert torch.equal(after["state"][0][key], before["state"][0][key])


def test_low_precision_parameters_keep_float32_state():
    param = torch.randn(5, dtype=torch.float64).to(torch.bfloat16).requires_grad_()
    reference = param.detach().float().clone()
    optimizer, reference_optimizer = NAdam([param], lr=1e-2), NAdam([reference], lr=1e-2)
    for step in range(10):
        grad = torch.randn(5, generator=torch.Generator().manual_seed(step))
        param.grad, reference.grad = grad.to(torch.bfloat16), grad.to(torch.bfloat16).float()
        optimizer.step()
        reference_optimizer.step()
        with torch.no_grad():
            reference.copy_(reference.to(torch.bfloat16).float())
    assert optimizer.state[param]["exp_avg"].dtype == torch.float32
    assert optimizer.state[param]["mu_product"].dtype == torch.float32
    assert torch.equal(param.float(), reference)
