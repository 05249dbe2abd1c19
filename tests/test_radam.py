"""RAdam against torch.optim.RAdam 2.13 (the oracle), for every flag and implementation.

Every flag combination torch takes (L2 or decoupled weight decay, maximize),
two param groups with different options, odd shapes, a gradient missing on
some steps and an lr change, over 100 steps: float64 parameters and state
within 1e-10 of torch's, float32 within 1e-5, for the per-tensor loop, the
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
    set_grads,
)
from _torch_oracle import run_side_by_side as _side_by_side
from optlab.optim.radam import RAdam, rectification


def run_side_by_side(options: list[dict], implementation, dtype, steps=STEPS, **defaults):
    """optlab's RAdam and torch.optim.RAdam, side by side (see ``_torch_oracle``)."""
    return _side_by_side(
        torch.optim.RAdam, RAdam, options, implementation, dtype, steps, **defaults
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
        assert (mine.detach() - start[index]).abs().max() > 1e-2, f"{what} did not move"


#: Every flag combination torch takes: no decay, L2, AdamW's decoupled decay, x maximize.
DECAYS = [(0.0, False), (0.1, False), (0.1, True)]
COMBOS = [
    dict(weight_decay=wd, decoupled_weight_decay=decoupled, maximize=maximize)
    for (wd, decoupled), maximize in itertools.product(DECAYS, [False, True])
]
#: Other options per group, in turn: lr, betas (0.99 is rectified from step 6 as 0.999 is, at
#: other factors), eps.
VARIED = [
    dict(lr=1e-2),
    dict(lr=3e-2, betas=(0.8, 0.99), eps=1e-6),
    dict(lr=2e-2, betas=(0.95, 0.9)),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_matches_torch_radam_for_every_flag(implementation, dtype):
    """One param group per flag combination (six groups, each with its own lr, betas, eps)."""
    options = [{**combo, **VARIED[i % len(VARIED)]} for i, combo in enumerate(COMBOS)]
    run = run_side_by_side(options, implementation, dtype)
    assert_same_run(*run, dtype)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_tensor_lr_and_beta2_without_rectified_steps_match_torch(implementation):
    """beta2=0.5: rho_inf = 3, so every step is an SGD step; a tensor lr for the first group."""
    options = [{"lr": torch.tensor(1e-2, dtype=torch.float64), "betas": (0.9, 0.5)}, {"lr": 2e-2}]
    run = run_side_by_side(options, implementation, torch.float64, steps=30)
    assert_same_run(*run, torch.float64)


def test_the_first_steps_are_sgd_steps_with_bias_corrected_momentum():
    """beta2=0.999: rho_t is 4.996 at step 5 (an SGD step) and 5.994 at step 6 (rectified)."""
    assert rectification(5, 0.999) is None and rectification(6, 0.999) is not None
    param = torch.tensor([1.0, -2.0], dtype=torch.float64)
    optimizer = RAdam([param], lr=0.1)
    grad = torch.tensor([0.5, 3.0], dtype=torch.float64)
    param.grad = grad
    optimizer.step()
    assert torch.equal(param, torch.tensor([1.0, -2.0], dtype=torch.float64) - 0.1 * grad)


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
    options = [{}, {"betas": (0.8, 0.99), "maximize": True}]
    generator = torch.Generator().manual_seed(2)
    all_grads = [gradients(make_params(torch.float64), step, generator) for step in range(20)]
    for grads in all_grads[:8]:
        grads[len(SHAPES) :] = [None] * len(SHAPES)
    straight_params, first_params = make_params(torch.float64), make_params(torch.float64)
    straight = RAdam(groups_of(straight_params, options), **defaults)
    first = RAdam(groups_of(first_params, options), **defaults)
    for step, grads in enumerate(all_grads):
        set_grads(straight_params, grads)
        straight.step()
        if step < 7:
            set_grads(first_params, grads)
            first.step()
    saved = through_file(first.state_dict())
    resumed = RAdam(groups_of(first_params, options), **{**defaults, "lr": 0.5})
    resumed.load_state_dict(saved)
    for grads in all_grads[7:]:
        set_grads(first_params, grads)
        resumed.step()
    for mine, theirs in zip(first_params, straight_params, strict=True):
        assert torch.equal(mine, theirs)
        assert straight.state[theirs].keys() == resumed.state[mine].keys()
        for key, value in straight.state[theirs].items():
            assert torch.equal(resumed.state[mine][key], value), key


def test_checkpoints_move_between_torch_and_optlab():
    params = make_params(torch.float64)
    reference = torch.optim.RAdam(groups_of(params, [{}, {"weight_decay": 0.1}]), lr=1e-2)
    generator = torch.Generator().manual_seed(3)
    for step in range(8):
        set_grads(params, gradients(params, step, generator))
        reference.step()
    written = copy.deepcopy(reference.state_dict())
    ours_params = [p.detach().clone() for p in params]
    ours = RAdam(groups_of(ours_params, [{}, {}]), lr=0.3)
    ours.load_state_dict(copy.deepcopy(written))  # torch's load keeps the step tensors given
    saved = copy.deepcopy(ours.state_dict())
    assert saved["param_groups"] == written["param_groups"]
    for index, state in written["state"].items():
        assert saved["state"][index].keys() == state.keys()
        for key, value in state.items():
            assert saved["state"][index][key].dtype == value.dtype
            assert torch.equal(saved["state"][index][key], value), key
    # ... and back: torch continues from optlab's checkpoint as optlab does.
    back_params = [p.detach().clone() for p in ours_params]
    back = torch.optim.RAdam(groups_of(back_params, [{}, {}]), lr=0.3)
    back.load_state_dict(saved)
    for step in range(8, 20):
        grads = gradients(ours_params, step, generator)
        set_grads(ours_params, grads)
        set_grads(back_params, grads)
        ours.step()
        back.step()
    for mine, theirs in zip(ours_params, back_params, strict=True):
        assert_rel_close(mine, theirs, 1e-10, "param")


# ----- drop-in: arguments, groups, refusals -------------------------------------


def test_takes_torchs_arguments_in_torchs_positions_with_torchs_defaults():
    ours = inspect.signature(RAdam.__init__).parameters
    theirs = inspect.signature(torch.optim.RAdam.__init__).parameters
    assert list(ours) == [*theirs, "fused", "state_dtype"]
    for name, parameter in theirs.items():
        assert ours[name].kind == parameter.kind and ours[name].default == parameter.default, name
    param = torch.zeros(2, requires_grad=True)
    assert set(RAdam([param]).param_groups[0]) == {
        *torch.optim.RAdam([param]).param_groups[0],
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
        (dict(decoupled_weight_decay=1), "decoupled_weight_decay must be True or False, got 1"),
        (dict(capturable=True), "capturable=True is not supported by optlab's RAdam"),
        (dict(differentiable=True), "differentiable=True is not supported by optlab's RAdam"),
    ],
)
def test_bad_hyperparameters_are_refused_by_name_and_change_nothing(options, message):
    with pytest.raises(ValueError) as raised:
        RAdam([torch.zeros(2, requires_grad=True)], **options)
    assert str(raised.value).startswith(message)
    param = torch.zeros(2, requires_grad=True)
    optimizer = RAdam([param], lr=0.1)
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
    assert torch.equal(after["state"][0]["exp_avg"], before["state"][0]["exp_avg"])


def test_low_precision_parameters_keep_float32_state():
    param = torch.randn(5, dtype=torch.float64).to(torch.bfloat16).requires_grad_()
    reference = param.detach().float().clone()
    optimizer, reference_optimizer = RAdam([param], lr=1e-2), RAdam([reference], lr=1e-2)
    for step in range(10):
        grad = torch.randn(5, generator=torch.Generator().manual_seed(step))
        param.grad, reference.grad = grad.to(torch.bfloat16), grad.to(torch.bfloat16).float()
        optimizer.step()
        reference_optimizer.step()
        with torch.no_grad():
            reference.copy_(reference.to(torch.bfloat16).float())
    assert optimizer.state[param]["exp_avg"].dtype == torch.float32
    assert torch.equal(param.float(), reference)
