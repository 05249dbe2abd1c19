"""torch's LR schedulers, ``torch.amp.GradScaler`` and tensor learning rates drive optlab as torch.optim.

The oracle is the torch.optim counterpart under the same scheduler or scaler:
the same learning rates (and momenta / betas where OneCycleLR cycles them)
in every param group after every step, and bitwise the same parameters.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch

import optlab

STEPS = 30


def make_params(dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    shapes = [(5, 4), (5,), (), (2, 5)]
    return [torch.randn(shape, generator=gen, dtype=dtype).requires_grad_() for shape in shapes]


def groups_of(params: list[torch.Tensor]) -> list[dict[str, Any]]:
    return [{"params": params[:2]}, {"params": params[2:], "lr": 0.02}]


def loss_of(params: list[torch.Tensor], step: int) -> torch.Tensor:
    w, b, s, v = params
    gen = torch.Generator().manual_seed(100 + step)
    x = torch.randn(8, 4, generator=gen, dtype=w.dtype)
    return ((torch.tanh(x @ w.T + b) * s @ v.T) ** 2).mean() + (w**2).sum() * 0.01


#: (name, optlab class, torch class, options); the momentum-free ones cannot cycle momentum.
OPTIMIZERS = [
    ("SGD", {"lr": 0.05, "momentum": 0.9}),
    ("Adam", {"lr": 0.01}),
    ("AdamW", {"lr": 0.01, "amsgrad": True}),
    ("RMSprop", {"lr": 0.01, "momentum": 0.5, "centered": True}),
    ("Adagrad", {"lr": 0.1}),
    ("Adadelta", {"lr": 1.0}),
]
HAS_MOMENTUM = {"SGD", "Adam", "AdamW", "RMSprop"}

SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer, bool], Any]] = {
    "StepLR": lambda opt, _: torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5),
    "CosineAnnealingLR": lambda opt, _: torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=12, eta_min=1e-4
    ),
    "OneCycleLR": lambda opt, cycle: torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[0.1, 0.05], total_steps=STEPS, cycle_momentum=cycle
    ),
    "ReduceLROnPlateau": lambda opt, _: torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, factor=0.5, patience=1, threshold=1e-2
    ),
}

#: The metric ReduceLROnPlateau sees: improves, then plateaus twice.
PLATEAU_METRIC = [1.0, 0.8, 0.7, 0.7, 0.7, 0.7, 0.69, 0.5] + [0.5] * (STEPS - 8)

#: Group keys torch keeps that optlab does not implement.
TORCH_ONLY_KEYS = {"differentiable", "capturable"}


def assert_groups_equal(ours: torch.optim.Optimizer, ref: torch.optim.Optimizer, where: str):
    for index, (a, b) in enumerate(zip(ours.param_groups, ref.param_groups, strict=True)):
        for key, value in b.items():
            if key in TORCH_ONLY_KEYS or key == "params":
                continue
            assert a[key] == value, f"{where}: group {index} {key}: {a[key]!r} != {value!r}"


def assert_params_equal(a: list[torch.Tensor], b: list[torch.Tensor], where: str) -> None:
    for index, (x, y) in enumerate(zip(a, b, strict=True)):
        assert torch.equal(x, y), f"{where}: param {index} differs"


@pytest.mark.parametrize("scheduler_name", list(SCHEDULERS))
@pytest.mark.parametrize(("name", "options"), OPTIMIZERS, ids=[n for n, _ in OPTIMIZERS])
def test_schedulers_drive_optlab_exactly_as_torch(name, options, scheduler_name):
    cycle = scheduler_name == "OneCycleLR" and name in HAS_MOMENTUM
    runs = []
    for module in (optlab, torch.optim):
        params = make_params()
        optimizer = getattr(module, name)(groups_of(params), foreach=False, **options)
        runs.append((params, optimizer, SCHEDULERS[scheduler_name](optimizer, cycle)))
    (ours_params, ours, ours_sched), (ref_params, ref, ref_sched) = runs
    learning_rates = set()
    for step in range(STEPS):
        for params, optimizer, scheduler in runs:
            optimizer.zero_grad()
            loss_of(params, step).backward()
            optimizer.step()
            if scheduler_name == "ReduceLROnPlateau":
                scheduler.step(PLATEAU_METRIC[step])
            else:
                scheduler.step()
        assert ours_sched.get_last_lr() == ref_sched.get_last_lr()
        assert_groups_equal(ours, ref, f"step {step}")
        assert_params_equal(ours_params, ref_params, f"step {step}")
        learning_rates.add(ours.param_groups[0]["lr"])
    assert len(learning_rates) > 2, "the schedule never changed the learning rate"
    if cycle:
        key = "betas" if "betas" in ours.defaults else "momentum"
        assert ours.param_groups[0][key] != options.get(key, ours.defaults[key])


# ----- AMP GradScaler -------------------------------------------------------

AMP_OPTIMIZERS = [
    ("SGD", {"lr": 0.05, "momentum": 0.9}),
    ("Adam", {"lr": 0.01}),
    ("AdamW", {"lr": 0.01}),
    ("RMSprop", {"lr": 0.01, "momentum": 0.5}),
    ("Adagrad", {"lr": 0.1}),
    ("Adadelta", {"lr": 1.0}),
]


@pytest.mark.parametrize(("name", "options"), AMP_OPTIMIZERS, ids=[n for n, _ in AMP_OPTIMIZERS])
def test_grad_scaler_steps_as_torch_and_skips_steps_with_inf_grads(name, options):
    runs = []
    for module in (optlab, torch.optim):
        params = make_params(torch.float32)
        optimizer = getattr(module, name)(params, foreach=False, **options)
        runs.append((params, optimizer, torch.amp.GradScaler("cpu", init_scale=2.0**10)))
    inf_step = 5
    for step in range(10):
        for params, optimizer, scaler in runs:
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = loss_of(params, step)
            scaler.scale(loss.float()).backward()
            if step == inf_step:
                params[0].grad[0, 0] = float("inf")
                before_params = [p.detach().clone() for p in params]
                before_state = copy.deepcopy(optimizer.state_dict()["state"])
                scale_before = scaler.get_scale()
            scaler.step(optimizer)
            scaler.update()
            if step == inf_step:
                for before, after in zip(before_params, params, strict=True):
                    assert torch.equal(before, after), "a step with inf grads moved a parameter"
                after_state = optimizer.state_dict()["state"]
                assert before_state.keys() == after_state.keys()
                for index, state in before_state.items():
                    for key, value in state.items():
                        assert torch.equal(after_state[index][key], value), f"{key} changed"
                assert scaler.get_scale() == scale_before * 0.5
        assert_params_equal(runs[0][0], runs[1][0], f"step {step}")
    # The other steps were taken.
    assert not torch.equal(runs[0][0][0], make_params(torch.float32)[0])


# ----- tensor learning rates -------------------------------------------------


def assert_params_close(ours: list[torch.Tensor], ref: list[torch.Tensor], tol: float) -> None:
    for index, (a, b) in enumerate(zip(ours, ref, strict=True)):
        scale = max(b.detach().abs().max().item(), 1e-300)
        error = (a - b).detach().abs().max().item()
        assert error <= tol * scale, f"param {index}: relative error {error / scale:.2e} > {tol:g}"


#: torch.optim.Adam/AdamW refuse a tensor lr with foreach=True (unless capturable).
TORCH_REFUSES_TENSOR_LR_WITH_FOREACH = {"Adam", "AdamW"}


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
@pytest.mark.parametrize(("name", "options"), OPTIMIZERS, ids=[n for n, _ in OPTIMIZERS])
def test_tensor_lr_steps_as_torch_and_schedulers_update_it_in_place(name, options, foreach):
    extra = {"lr_decay": 0.05} if name == "Adagrad" else {}
    ref_foreach = foreach and name not in TORCH_REFUSES_TENSOR_LR_WITH_FOREACH
    runs = []
    for module, use_foreach in ((optlab, foreach), (torch.optim, ref_foreach)):
        params = make_params()
        lr = torch.tensor(options["lr"], dtype=torch.float64)
        optimizer = getattr(module, name)(
            params, foreach=use_foreach, **{**options, "lr": lr, **extra}
        )
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.5)
        runs.append((params, optimizer, scheduler, lr))
    for step in range(12):
        for params, optimizer, scheduler, _ in runs:
            optimizer.zero_grad()
            loss_of(params, step).backward()
            optimizer.step()
            scheduler.step()
    assert_params_close(runs[0][0], runs[1][0], 1e-10)
    ours_optimizer, ours_lr = runs[0][1], runs[0][3]
    assert ours_optimizer.param_groups[0]["lr"] is ours_lr, "the scheduler replaced the tensor"
    assert ours_lr.item() == options["lr"] * 0.5**3


FLOAT32_LR_CASES = [pytest.param(name, options, id=name) for name, options in OPTIMIZERS]


@pytest.mark.parametrize(("name", "options"), FLOAT32_LR_CASES)
def test_float32_tensor_lr_matches_torch(name, options):
    # A float32 lr tensor rounds differently from a Python float; torch's
    # arithmetic with it (e.g. Adagrad's lr / (1 + (t - 1) * lr_decay)) is the oracle.
    extra = {"lr_decay": 0.05} if name == "Adagrad" else {}
    runs = []
    for module in (optlab, torch.optim):
        params = make_params()
        lr = torch.tensor(options["lr"], dtype=torch.float32)
        optimizer = getattr(module, name)(params, foreach=False, **{**options, "lr": lr, **extra})
        runs.append((params, optimizer))
    for step in range(20):
        for params, optimizer in runs:
            optimizer.zero_grad()
            loss_of(params, step).backward()
            optimizer.step()
    assert_params_close(runs[0][0], runs[1][0], 1e-10)
