"""The classic optimizers equal torch.optim 2.13, for every combination of their flags.

Each case runs four optimizers side by side for 100 steps on the same model
(several param groups with different hyper-parameters, odd shapes, a 0-dim
parameter, non-contiguous parameters, a complex parameter and one whose grad
is None on some steps): optlab's loop and foreach paths and torch.optim's
loop and foreach paths. The gradient depends on each copy's own parameters
(``noise + 0.1 * p``), so a difference in one step shows in the next.

Parameters and every state tensor must agree: optlab-loop with torch-loop,
optlab-foreach with torch-foreach, and optlab-loop with optlab-foreach, to
1e-10 relative in float64 and 1e-5 in float32 (the oracle is torch.optim).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
import torch

import optlab

STEPS = 100
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
COMPLEX = {torch.float64: torch.complex128, torch.float32: torch.complex64}
#: Index (in parameter order) of the parameter whose grad is None on some steps.
SOMETIMES_NONE = 6


def build_params(dtype: torch.dtype) -> list[torch.Tensor]:
    """The model's parameters; identical values and layouts on every call."""
    gen = torch.Generator().manual_seed(1234)

    def randn(*shape: int, dtype: torch.dtype = dtype) -> torch.Tensor:
        return torch.randn(shape, generator=gen, dtype=dtype)

    params = [
        randn(7, 5),  # odd shape
        randn(5),  # a bias
        randn(),  # 0-dim
        randn(4, 6).t(),  # non-contiguous (transposed), still dense
        randn(5, 8)[:, ::3],  # non-contiguous, not dense
        randn(4, 3, dtype=COMPLEX[dtype]),  # complex
        randn(2, 3, 2),  # grad None on some steps
    ]
    assert not params[3].is_contiguous() and not params[4].is_contiguous()
    return [p.requires_grad_() for p in params]


def param_groups(params: list[torch.Tensor], group_hparams: list[dict[str, Any]]) -> list[dict]:
    slices = [params[0:2], params[2:5], params[5:7]]
    return [{"params": ps, **hp} for ps, hp in zip(slices, group_hparams, strict=True)]


def set_grads(params: list[torch.Tensor], noise: list[torch.Tensor], step: int) -> None:
    for index, (param, n) in enumerate(zip(params, noise, strict=True)):
        if index == SOMETIMES_NONE and step % 3 == 1:
            param.grad = None
        else:
            param.grad = n + 0.1 * param.detach()


def assert_relative_close(actual: Any, expected: Any, tol: float, what: str) -> None:
    if not torch.is_tensor(expected):
        assert actual == expected, f"{what}: {actual!r} != {expected!r}"
        return
    assert torch.is_tensor(actual), f"{what}: not a tensor ({actual!r})"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if expected.is_complex():
        actual, expected = torch.view_as_real(actual), torch.view_as_real(expected)
    actual, expected = actual.detach().double(), expected.detach().double()
    assert torch.isfinite(expected).all(), f"{what}: the oracle is not finite"
    if expected.numel() == 0:
        return
    scale = max(expected.abs().max().item(), 1e-300)
    error = (actual - expected).abs().max().item()
    assert error <= tol * scale, f"{what}: relative error {error / scale:.3e} > {tol:g}"


def assert_same_optimizer(
    ours: torch.optim.Optimizer,
    ours_params: list[torch.Tensor],
    ref: torch.optim.Optimizer,
    ref_params: list[torch.Tensor],
    tol: float,
    label: str,
) -> None:
    for index, (a, b) in enumerate(zip(ours_params, ref_params, strict=True)):
        assert_relative_close(a, b, tol, f"{label}: param {index}")
    ours_sd, ref_sd = ours.state_dict(), ref.state_dict()
    ours_state = {k: v for k, v in ours_sd["state"].items() if v}
    ref_state = {k: v for k, v in ref_sd["state"].items() if v}
    assert ours_state.keys() == ref_state.keys(), f"{label}: parameters with state differ"
    for index, ref_param_state in ref_state.items():
        assert ours_state[index].keys() == ref_param_state.keys(), (
            f"{label}: state keys of param {index}: {sorted(ours_state[index])} != "
            f"{sorted(ref_param_state)}"
        )
        for key, value in ref_param_state.items():
            assert_relative_close(ours_state[index][key], value, tol, f"{label}: {key}[{index}]")
    for index, (ours_group, ref_group) in enumerate(
        zip(ours_sd["param_groups"], ref_sd["param_groups"], strict=True)
    ):
        for key, value in ref_group.items():
            if key in ("differentiable", "capturable", "foreach", "fused"):
                continue
            assert ours_group.get(key) == value, f"{label}: group {index} {key}"


Factory = Callable[[list[dict], bool], torch.optim.Optimizer]


def run_side_by_side(
    make_ours: Factory,
    make_ref: Factory,
    group_hparams: list[dict[str, Any]],
    dtype: torch.dtype,
    steps: int = STEPS,
) -> None:
    tol = TOLERANCE[dtype]
    runs = {}
    for label, factory in (("ours", make_ours), ("torch", make_ref)):
        for foreach in (False, True):
            params = build_params(dtype)
            runs[label, foreach] = (params, factory(param_groups(params, group_hparams), foreach))
    gen = torch.Generator().manual_seed(99)
    for step in range(steps):
        template = runs["torch", False][0]
        noise = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in template]
        for params, optimizer in runs.values():
            set_grads(params, noise, step)
            optimizer.step()
    for (a, b), label in (
        ((("ours", False), ("torch", False)), "loop vs torch loop"),
        ((("ours", True), ("torch", True)), "foreach vs torch foreach"),
        ((("ours", False), ("ours", True)), "our loop vs our foreach"),
    ):
        ours_params, ours = runs[a]
        ref_params, ref = runs[b]
        assert_same_optimizer(ours, ours_params, ref, ref_params, tol, label)
    # Something happened: the parameters moved.
    moved = runs["ours", True][0][0].detach() - build_params(dtype)[0].detach()
    assert moved.abs().max() > 1e-4


def _flag_cases(**options: list[Any]) -> list[dict[str, Any]]:
    keys = list(options)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*options.values())]


def _case_id(case: dict[str, Any]) -> str:
    return "-".join(f"{k}={v}" for k, v in case.items())


DTYPES = [pytest.param(torch.float64, id="f64"), pytest.param(torch.float32, id="f32")]
COMMON = dict(maximize=[False, True], weight_decay=[0.0, 0.05])


# ----- SGD and its aliases ---------------------------------------------------

SGD_CASES = [
    case
    for case in _flag_cases(
        momentum=[0.0, 0.9], dampening=[0.0, 0.3], nesterov=[False, True], **COMMON
    )
    if not (case["nesterov"] and (case["momentum"] == 0 or case["dampening"] != 0))
    and not (case["momentum"] == 0 and case["dampening"] != 0)  # dampening acts on momentum only
]


def _sgd_groups(case: dict[str, Any]) -> list[dict[str, Any]]:
    wd = case.get("weight_decay", 0.0)
    momentum = case.get("momentum", 0.9)
    return [
        {},
        {"lr": 0.02, "weight_decay": 2 * wd, "momentum": momentum / 2},
        {"lr": 0.07},
    ]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", SGD_CASES, ids=_case_id)
def test_sgd_matches_torch_for_every_flag_combination(case, dtype):
    def ours(groups, foreach):
        return optlab.SGD(groups, lr=0.05, foreach=foreach, **case)

    def ref(groups, foreach):
        return torch.optim.SGD(groups, lr=0.05, foreach=foreach, **case)

    run_side_by_side(ours, ref, _sgd_groups(case), dtype)


ALIAS_CASES = [
    pytest.param("momentum", torch.optim.SGD, {"momentum": 0.9}, id="momentum"),
    pytest.param("nag", torch.optim.SGD, {"momentum": 0.9, "nesterov": True}, id="nag"),
    pytest.param("amsgrad", torch.optim.Adam, {"amsgrad": True}, id="amsgrad"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("flags", _flag_cases(**COMMON), ids=_case_id)
@pytest.mark.parametrize(("name", "torch_cls", "implied"), ALIAS_CASES)
def test_registry_aliases_match_torch(name, torch_cls, implied, flags, dtype):
    lr = 0.01

    def ours(groups, foreach):
        return optlab.create_optimizer(groups, name, lr=lr, foreach=foreach, **flags)

    def ref(groups, foreach):
        return torch_cls(groups, lr=lr, foreach=foreach, **implied, **flags)

    groups = [{}, {"lr": 0.02, "weight_decay": 2 * flags["weight_decay"]}, {"lr": 0.005}]
    run_side_by_side(ours, ref, groups, dtype)


# ----- Adagrad ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", _flag_cases(lr_decay=[0.0, 0.01], **COMMON), ids=_case_id)
def test_adagrad_matches_torch_for_every_flag_combination(case, dtype):
    # torch.optim.Adagrad takes initial_accumulator_value from the constructor
    # for every group, so it is not varied per group here (see the test below).
    def ours(groups, foreach):
        return optlab.Adagrad(
            groups, lr=0.1, initial_accumulator_value=0.1, foreach=foreach, **case
        )

    def ref(groups, foreach):
        return torch.optim.Adagrad(
            groups, lr=0.1, initial_accumulator_value=0.1, foreach=foreach, **case
        )

    wd, lr_decay = case["weight_decay"], case["lr_decay"]
    groups = [
        {},
        {"lr": 0.05, "weight_decay": 2 * wd, "lr_decay": 3 * lr_decay, "eps": 1e-6},
        {"lr": 0.2},
    ]
    run_side_by_side(ours, ref, groups, dtype)


def test_adagrad_honours_initial_accumulator_value_per_group():
    first, second = torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)
    optimizer = optlab.Adagrad(
        [{"params": [first]}, {"params": [second], "initial_accumulator_value": 0.5}],
        initial_accumulator_value=0.25,
    )
    assert torch.equal(optimizer.state[first]["sum"], torch.full((3,), 0.25))
    assert torch.equal(optimizer.state[second]["sum"], torch.full((2,), 0.5))
    # A later group gets its state on its first step, from its own value.
    third = torch.zeros(4, requires_grad=True)
    optimizer.add_param_group({"params": [third], "initial_accumulator_value": 2.0})
    assert third not in optimizer.state or not optimizer.state[third]
    third.grad = torch.ones(4)
    optimizer.step()
    assert torch.equal(optimizer.state[third]["sum"], torch.full((4,), 3.0))


def test_adagrad_state_is_created_in_the_constructor_as_in_torch():
    params = build_params(torch.float64)
    ours = optlab.Adagrad(params, initial_accumulator_value=0.3)
    ref = torch.optim.Adagrad(build_params(torch.float64), initial_accumulator_value=0.3)
    assert_same_optimizer(ours, params, ref, build_params(torch.float64), 0.0, "fresh Adagrad")


# ----- Adadelta --------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", _flag_cases(**COMMON), ids=_case_id)
def test_adadelta_matches_torch_for_every_flag_combination(case, dtype):
    def ours(groups, foreach):
        return optlab.Adadelta(groups, foreach=foreach, **case)

    def ref(groups, foreach):
        return torch.optim.Adadelta(groups, foreach=foreach, **case)

    wd = case["weight_decay"]
    groups = [{}, {"lr": 0.5, "rho": 0.8, "weight_decay": 2 * wd}, {"eps": 1e-4, "rho": 0.95}]
    run_side_by_side(ours, ref, groups, dtype)


# ----- RMSprop ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "case", _flag_cases(momentum=[0.0, 0.8], centered=[False, True], **COMMON), ids=_case_id
)
def test_rmsprop_matches_torch_for_every_flag_combination(case, dtype):
    def ours(groups, foreach):
        return optlab.RMSprop(groups, lr=0.01, foreach=foreach, **case)

    def ref(groups, foreach):
        return torch.optim.RMSprop(groups, lr=0.01, foreach=foreach, **case)

    wd = case["weight_decay"]
    groups = [
        {},
        {"lr": 0.003, "alpha": 0.9, "weight_decay": 2 * wd, "momentum": case["momentum"] / 2},
        {"eps": 1e-5},
    ]
    run_side_by_side(ours, ref, groups, dtype)


# ----- Adam / AdamW ----------------------------------------------------------


ADAM_VARIANTS = {
    "Adam": {},
    "AdamW": {},
    "Adam-decoupled": {"decoupled_weight_decay": True},  # torch's Adam takes it too
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", _flag_cases(amsgrad=[False, True], **COMMON), ids=_case_id)
@pytest.mark.parametrize("variant", list(ADAM_VARIANTS))
def test_adam_and_adamw_match_torch_for_every_flag_combination(variant, case, dtype):
    name, extra = variant.split("-")[0], ADAM_VARIANTS[variant]

    def ours(groups, foreach):
        return getattr(optlab, name)(groups, lr=0.01, foreach=foreach, **case, **extra)

    def ref(groups, foreach):
        return getattr(torch.optim, name)(groups, lr=0.01, foreach=foreach, **case, **extra)

    wd = case["weight_decay"]
    groups = [
        {},
        {"lr": 0.003, "betas": (0.8, 0.99), "weight_decay": 2 * wd},
        {"eps": 1e-6, "betas": (0.95, 0.9)},
    ]
    run_side_by_side(ours, ref, groups, dtype)


# ----- the step contract -------------------------------------------------------

ALL_FLAGS_ON = [
    pytest.param("SGD", {"momentum": 0.9, "nesterov": True}, id="SGD-nesterov"),
    pytest.param("SGD", {"momentum": 0.9, "dampening": 0.5}, id="SGD-dampening"),
    pytest.param("Adagrad", {"lr_decay": 0.1}, id="Adagrad"),
    pytest.param("Adadelta", {}, id="Adadelta"),
    pytest.param("RMSprop", {"momentum": 0.5, "centered": True}, id="RMSprop"),
    pytest.param("Adam", {"amsgrad": True}, id="Adam"),
    pytest.param("AdamW", {"amsgrad": True}, id="AdamW"),
]


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
@pytest.mark.parametrize(("name", "options"), ALL_FLAGS_ON)
def test_step_never_writes_into_the_gradients(name, options, foreach, maximize, weight_decay):
    # torch.optim.SGD's foreach Nesterov path does (without maximize/weight decay); optlab never.
    params = build_params(torch.float64)
    optimizer = getattr(optlab, name)(
        params, foreach=foreach, maximize=maximize, weight_decay=weight_decay, **options
    )
    for step in range(3):
        gen = torch.Generator().manual_seed(step)
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        saved = [p.grad.clone() for p in params]
        optimizer.step()
        for index, (p, grad) in enumerate(zip(params, saved, strict=True)):
            assert torch.equal(p.grad, grad), f"step {step} changed the gradient of param {index}"


@pytest.mark.parametrize(("name", "options"), ALL_FLAGS_ON)
def test_step_calls_the_closure_with_grad_enabled_and_returns_its_loss(name, options):
    runs = []
    for module in (optlab, torch.optim):
        params = [p for p in build_params(torch.float64) if not p.is_complex()]
        runs.append((params, getattr(module, name)(params, foreach=False, **options)))
    for step in range(5):
        losses = []
        for params, optimizer in runs:

            def closure(params=params, optimizer=optimizer, step=step):
                assert torch.is_grad_enabled()
                optimizer.zero_grad()
                loss = sum((p.abs() ** 2).sum() for p in params) * (1 + step)
                loss.backward()
                return loss

            with torch.no_grad():  # step() turns grad on for the closure
                losses.append(optimizer.step(closure))
        assert torch.equal(losses[0], losses[1])
    for a, b in zip(runs[0][0], runs[1][0], strict=True):
        assert torch.equal(a, b)
