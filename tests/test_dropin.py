"""Drop-in means drop-in: code and checkpoints written for torch.optim 2.13 run on optlab.

Each test pins one part of the contract against torch.optim itself, the
oracle: checkpoints round-trip unchanged, torch's constructor arguments are
taken (those optlab does not implement only switched off), ``fused=True``
builds on the meta device, plain SGD keeps no state, ``torch.amp.GradScaler``
drives the fused path as it drives torch's fused optimizers, and every input
torch.optim refuses is refused with an exception of torch's type.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import math

import pytest
import torch

import optlab
from _registry_grid import builtin_names
from optlab.optim import _fused

CLASSIC = ["SGD", "Adagrad", "Adadelta", "RMSprop", "Adam", "AdamW"]

#: Options torch.optim's class has no argument for, that optlab adds.
OPTLAB_ONLY = {"Adadelta": {"fused"}, "RMSprop": {"fused"}}

needs_fused = pytest.mark.skipif(
    _fused.fused_unavailable_reason("cpu") is not None,
    reason=f"fused kernels unavailable: {_fused.fused_unavailable_reason('cpu')}",
)


def make_params(dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    shapes = [(4, 3), (3,), (), (2, 4)]
    return [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in shapes]


def set_grads(params: list[torch.Tensor], step: int, skip_last_before: int = 2) -> None:
    gen = torch.Generator().manual_seed(100 + step)
    for index, param in enumerate(params):
        param.grad = torch.randn(param.shape, generator=gen, dtype=param.dtype)
        if index == len(params) - 1 and step < skip_last_before:
            param.grad = None  # a parameter that has no state yet at the checkpoint


def assert_state_dicts_identical(ours: dict, reference: dict) -> None:
    assert ours["param_groups"] == reference["param_groups"]
    assert ours["state"].keys() == reference["state"].keys()
    for index, state in reference["state"].items():
        assert ours["state"][index].keys() == state.keys(), f"state keys of param {index}"
        for key, value in state.items():
            mine = ours["state"][index][key]
            if torch.is_tensor(value):
                assert mine.dtype == value.dtype and mine.device == value.device, key
                assert torch.equal(mine, value), f"state {key!r} of param {index}"
            else:
                assert mine == value, f"state {key!r} of param {index}"


# ----- 1. save -> load -> save is the identity --------------------------------


@pytest.mark.parametrize("name", builtin_names())
def test_save_load_save_gives_back_the_same_checkpoint_for_every_optimizer(name):
    params = make_params()
    first = optlab.create_optimizer(params, name, lr=0.01)
    for step in range(3):
        set_grads(params, step)
        first.step()
    saved = copy.deepcopy(first.state_dict())
    second = optlab.create_optimizer([p.detach().clone() for p in params], name, lr=0.5)
    second.load_state_dict(saved)
    assert_state_dicts_identical(second.state_dict(), saved)


def _torch_flag_combinations(name: str) -> list[dict]:
    """Every combination of the flags torch.optim's ``name`` takes, that optlab runs too."""
    flags = {
        "SGD": {"momentum": [0.0, 0.9], "nesterov": [False, True], "fused": [None, True]},
        "Adagrad": {"lr_decay": [0.0, 0.01], "fused": [None, True]},
        "Adadelta": {"weight_decay": [0.0, 0.1]},
        "RMSprop": {"momentum": [0.0, 0.5], "centered": [False, True]},
        "Adam": {"amsgrad": [False, True], "weight_decay": [0.0, 0.1], "fused": [None, True]},
        "AdamW": {"amsgrad": [False, True], "fused": [None, True]},
    }[name]
    flags = {**flags, "maximize": [False, True], "foreach": [None, False, True]}
    combos = []
    for values in itertools.product(*flags.values()):
        combo = dict(zip(flags, values, strict=True))
        if combo.get("nesterov") and not combo["momentum"]:
            continue
        if combo.get("fused") and combo["foreach"]:
            continue
        combos.append(combo)
    return combos


@pytest.mark.parametrize("name", CLASSIC)
def test_torch_checkpoints_loaded_and_saved_again_are_identical_for_every_flag_combination(name):
    if _fused.fused_unavailable_reason("cpu") is not None:
        pytest.skip("fused kernels unavailable")
    for combo in _torch_flag_combinations(name):
        params = make_params()
        reference = getattr(torch.optim, name)(params, lr=0.01, **combo)
        # torch.optim.SGD(fused=True) fails when only some parameters have buffers.
        late = 0 if combo.get("fused") else 2
        for step in range(3):
            set_grads(params, step, skip_last_before=late)
            reference.step()
        written = copy.deepcopy(reference.state_dict())
        ours = getattr(optlab, name)([p.detach().clone() for p in params], lr=0.3)
        ours.load_state_dict(written)
        try:
            assert_state_dicts_identical(ours.state_dict(), written)
        except AssertionError as error:
            raise AssertionError(f"{name}({combo}): {error}") from None


@pytest.mark.parametrize("name", CLASSIC)
def test_fresh_param_groups_hold_the_same_keys_as_torchs(name):
    params = [torch.zeros(2, requires_grad=True)]
    ours = getattr(optlab, name)(params)
    reference = getattr(torch.optim, name)(params)
    extra = OPTLAB_ONLY.get(name, set())
    assert set(ours.param_groups[0]) - extra == set(reference.param_groups[0])
    assert set(ours.defaults) - extra == set(reference.defaults)


# ----- 2. torch's arguments: the "off" value accepted, "on" refused -----------


@pytest.mark.parametrize("name", CLASSIC)
def test_every_torch_argument_is_taken_in_torchs_positions(name):
    ours = inspect.signature(getattr(optlab, name).__init__).parameters
    theirs = inspect.signature(getattr(torch.optim, name).__init__).parameters
    assert set(theirs) <= set(ours), sorted(set(theirs) - set(ours))
    positional = [
        key for key, p in theirs.items() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    ]
    assert list(ours)[: len(positional)] == positional
    for key, parameter in theirs.items():
        assert ours[key].default == parameter.default or key == "fused", key


@pytest.mark.parametrize("name", CLASSIC)
def test_unimplemented_torch_options_are_taken_off_and_refused_on(name):
    cls = getattr(optlab, name)
    torch_args = inspect.signature(getattr(torch.optim, name).__init__).parameters
    unsupported = [key for key in ("capturable", "differentiable") if key in torch_args]
    assert unsupported and set(cls.torch_off_only) == set(unsupported)
    params = [torch.zeros(2, requires_grad=True)]
    for key in unsupported:
        optimizer = cls(params, **{key: False})
        assert optimizer.param_groups[0][key] is False
        assert optimizer.defaults[key] is False
        with pytest.raises(ValueError, match=rf"{key}=True is not supported by optlab's {name}"):
            cls(params, **{key: True})
        optimizer = cls(params)
        with pytest.raises(ValueError, match=rf"param group 1: {key}=True is not supported"):
            optimizer.add_param_group({"params": [torch.zeros(1, requires_grad=True)], key: True})
        assert len(optimizer.param_groups) == 1


# ----- 3. fused=True on the meta device ---------------------------------------


def _linear(device: str) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(5, 4, device=device, dtype=torch.float64),
        torch.nn.Linear(4, 2, device=device, dtype=torch.float64),
    )


@needs_fused
@pytest.mark.parametrize(
    ("name", "options"), [("Adam", {}), ("SGD", {"momentum": 0.9})], ids=["Adam", "SGD"]
)
def test_fused_optimizer_built_on_meta_trains_after_to_empty_like_one_built_on_cpu(
    name, options, monkeypatch
):
    # to_empty keeps the parameter objects (which the optimizer holds) when it
    # swaps their contents; torch's default for meta -> cpu makes new ones.
    monkeypatch.setattr(torch.__future__, "_swap_module_params_on_conversion", True)
    meta_model = _linear("meta")
    meta_optimizer = getattr(optlab, name)(meta_model.parameters(), lr=0.01, fused=True, **options)
    # torch.optim.Adam / SGD(fused=True) take meta parameters too and check at step().
    getattr(torch.optim, name)(_linear("meta").parameters(), lr=0.01, fused=True, **options)
    for param in meta_model.parameters():
        param.grad = torch.zeros_like(param)
    with pytest.raises(RuntimeError, match="cannot step parameters on the meta device"):
        meta_optimizer.step()
    assert not any(meta_optimizer.state.get(p, {}).get("step", 0) for p in meta_model.parameters())

    meta_model.to_empty(device="cpu")
    cpu_model = _linear("cpu")
    with torch.no_grad():
        for a, b in zip(meta_model.parameters(), cpu_model.parameters(), strict=True):
            a.copy_(b)
    cpu_optimizer = getattr(optlab, name)(cpu_model.parameters(), lr=0.01, fused=True, **options)
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for _ in range(3):
        for model, optimizer in ((meta_model, meta_optimizer), (cpu_model, cpu_optimizer)):
            optimizer.zero_grad()
            model(x).square().sum().backward()
            optimizer.step()
    for a, b in zip(meta_model.parameters(), cpu_model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert_state_dicts_identical(meta_optimizer.state_dict(), cpu_optimizer.state_dict())


# ----- 4. SGD without momentum keeps no state ----------------------------------


@pytest.mark.parametrize("flags", [{"foreach": False}, {"foreach": True}, {"fused": True}])
def test_sgd_without_momentum_keeps_no_state_entries_like_torch(flags):
    if flags.get("fused") and _fused.fused_unavailable_reason("cpu") is not None:
        pytest.skip("fused kernels unavailable")
    runs = []
    for module in (optlab, torch.optim):
        params = make_params()
        optimizer = module.SGD(params, lr=0.1, weight_decay=0.01, **flags)
        for step in range(3):
            set_grads(params, step)
            optimizer.step()
        runs.append((params, optimizer))
    (ours_params, ours), (ref_params, reference) = runs
    assert len(ours.state) == 0
    assert ours.state_dict()["state"] == reference.state_dict()["state"] == {}
    for a, b in zip(ours_params, ref_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)  # fused: not bitwise
    # Switching momentum on later creates the buffers as torch does.
    for optimizer, params in ((ours, ours_params), (reference, ref_params)):
        optimizer.param_groups[0]["momentum"] = 0.9
        set_grads(params, 5)
        optimizer.step()
    ours_state, ref_state = ours.state_dict()["state"], reference.state_dict()["state"]
    assert ours_state.keys() == ref_state.keys() == set(range(len(ours_params)))
    for index, state in ref_state.items():
        torch.testing.assert_close(
            ours_state[index]["momentum_buffer"], state["momentum_buffer"], rtol=1e-12, atol=1e-14
        )


# ----- 5. GradScaler and the fused path -------------------------------------------

#: Steps whose loss is multiplied by inf: GradScaler must skip them (and halve its scale).
INF_STEPS = (2, 5)


def _scaled_run(module, name, options, dtype, *, inf_steps=INF_STEPS, unscale_first=False):
    gen = torch.Generator().manual_seed(11)
    params = [
        torch.randn(shape, generator=gen).to(dtype).requires_grad_()
        for shape in ((33,), (4, 5), ())
    ]
    optimizer = getattr(module, name)(params, fused=True, **options)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=3)
    history = []
    for step in range(8):
        optimizer.zero_grad()
        x = torch.linspace(-1, 1, 33) * (1 + step / 10)
        loss = (params[0].float() * x).sin().sum() + params[1].float().square().sum()
        loss = loss + params[2].float() ** 2
        if step in inf_steps:
            loss = loss * math.inf
        scaler.scale(loss).backward()
        if unscale_first:  # e.g. to clip gradients: step() then skips only
            scaler.unscale_(optimizer)
        scaler.step(optimizer)
        scaler.update()
        history.append(
            (
                [p.detach().clone() for p in params],
                [p.grad.clone() for p in params],
                copy.deepcopy(optimizer.state_dict()["state"]),
                scaler.get_scale(),
            )
        )
    return optimizer, history


def _assert_scaled_runs_agree(ours, reference, tolerance):
    for step, (mine, theirs) in enumerate(zip(ours, reference, strict=True)):
        (params, grads, state, scale), (ref_params, ref_grads, ref_state, ref_scale) = mine, theirs
        assert scale == ref_scale, f"step {step}: scale"
        for a, b in zip(params + grads, ref_params + ref_grads, strict=True):
            assert a.dtype == b.dtype
            finite = b[torch.isfinite(b)].double().abs()
            size = finite.max().item() if finite.numel() else 1.0
            torch.testing.assert_close(
                a.double(), b.double(), rtol=tolerance, atol=tolerance * size, equal_nan=True,
                msg=lambda text, step=step: f"step {step}: {text}",
            )  # fmt: skip
        assert state.keys() == ref_state.keys(), f"step {step}: states"
        for index, values in ref_state.items():
            assert state[index].keys() == values.keys()
            if "step" in values:
                assert state[index]["step"] == values["step"], f"step {step}: step count"


@needs_fused
@pytest.mark.parametrize(
    ("name", "options", "dtype"),
    [
        ("Adam", {"lr": 0.01}, torch.float32),
        ("SGD", {"lr": 0.01, "momentum": 0.9, "dampening": 0.5}, torch.float32),
        ("Adam", {"lr": 0.01}, torch.float16),
    ],
    ids=["Adam-fp32", "SGD-fp32", "Adam-fp16"],
)
def test_grad_scaler_drives_fused_optimizers_as_torchs_fused_ones(name, options, dtype):
    ours, ours_history = _scaled_run(optlab, name, options, dtype)
    reference, ref_history = _scaled_run(torch.optim, name, options, dtype)
    assert ours._step_supports_amp_scaling and reference._step_supports_amp_scaling
    _assert_scaled_runs_agree(ours_history, ref_history, 1e-6 if dtype == torch.float32 else 2e-3)
    for step in INF_STEPS:  # nothing moved on a skipped step, gradients left as they were
        before, after = ours_history[step - 1], ours_history[step]
        for a, b in zip(before[0], after[0], strict=True):
            assert torch.equal(a, b)
        assert not all(torch.isfinite(g).all() for g in after[1])


@needs_fused
def test_grad_scaler_after_unscale_skips_in_the_kernel_without_unscaling_again():
    _, ours = _scaled_run(optlab, "Adam", {"lr": 0.01}, torch.float32, unscale_first=True)
    _, reference = _scaled_run(torch.optim, "Adam", {"lr": 0.01}, torch.float32, unscale_first=True)
    _assert_scaled_runs_agree(ours, reference, 1e-6)


@needs_fused
def test_grad_scaler_skipping_a_first_momentum_step_starts_no_buffer():
    # torch.optim.SGD(fused=True) keeps an uninitialised buffer here (a torch bug);
    # optlab does what the non-fused route does: no buffer until a step is taken.
    options = {"lr": 0.01, "momentum": 0.9, "dampening": 0.5}
    _, ours = _scaled_run(optlab, "SGD", options, torch.float32, inf_steps=(0,))
    params, grads, state, scale = ours[0]
    assert state == {}
    gen = torch.Generator().manual_seed(11)
    expected = [torch.randn(shape, generator=gen) for shape in ((33,), (4, 5), ())]
    for a, b in zip(params, expected, strict=True):
        assert torch.equal(a, b)
    # The first step taken starts the buffers at its (unscaled) gradients, undampened.
    _, step_grads, step_state, _ = ours[1]
    for index, grad in enumerate(step_grads):
        assert torch.equal(step_state[index]["momentum_buffer"], grad)


def test_grad_scaler_takes_the_unscaling_route_where_the_optimizer_is_not_fused_on_cpu():
    params = [torch.zeros(3, requires_grad=True)]
    assert not optlab.Adam(params).__dict__.get("_step_supports_amp_scaling")
    assert optlab.Adam(params)._step_supports_amp_scaling is False
    assert optlab.Adam(params, foreach=True)._step_supports_amp_scaling is False
    if _fused.fused_unavailable_reason("cpu") is None:
        assert optlab.Adam(params, fused=True)._step_supports_amp_scaling is True
        assert (
            optlab.Adam(
                [
                    {"params": params, "fused": True},
                    {"params": [torch.zeros(1, requires_grad=True)]},
                ],
            )._step_supports_amp_scaling
            is False
        )


# ----- 6. invalid inputs: torch's exception types ----------------------------------

T = torch.tensor
COMMON_INVALID = [
    {"lr": -0.1}, {"lr": "0.1"}, {"lr": None}, {"lr": [0.1]}, {"lr": T([0.1, 0.2])},
    {"weight_decay": -1.0}, {"weight_decay": "x"}, {"weight_decay": None},
    {"foreach": True, "fused": True}, {"fused": True, "differentiable": True},
    {"no_such_option": 1},
]  # fmt: skip
INVALID = {
    "SGD": [
        {"capturable": True}, {"capturable": False},  # torch.optim.SGD has no capturable
        {"momentum": -0.9}, {"momentum": "x"}, {"momentum": None}, {"nesterov": True},
        {"nesterov": True, "momentum": 0.9, "dampening": 0.1},
    ],
    "Adagrad": [
        {"capturable": True}, {"capturable": False},
        {"lr_decay": -0.01}, {"lr_decay": "x"}, {"initial_accumulator_value": -0.1},
        {"initial_accumulator_value": "x"}, {"eps": -1e-10}, {"eps": "x"}, {"eps": None},
        {"lr": math.nan}, {"weight_decay": math.nan},
    ],
    "Adadelta": [
        {"rho": -0.1}, {"rho": 1.1}, {"rho": "x"}, {"eps": -1e-6}, {"eps": "x"}, {"eps": None},
        {"lr": math.nan},
    ],
    "RMSprop": [
        {"alpha": -0.5}, {"alpha": "x"}, {"eps": -1e-8}, {"eps": "x"}, {"momentum": -0.1},
        {"momentum": "x"}, {"lr": math.nan},
    ],
    "Adam": [
        {"eps": -1e-8}, {"eps": "x"}, {"eps": None}, {"betas": (1.0, 0.999)},
        {"betas": (0.9, 1.0)}, {"betas": (-0.1, 0.999)}, {"betas": (0.9,)}, {"betas": 0.9},
        {"betas": ("a", 0.9)}, {"betas": None}, {"betas": (T([0.9, 0.8]), T(0.99))},
        {"lr": math.nan}, {"weight_decay": math.nan},
    ],
}  # fmt: skip
INVALID["AdamW"] = INVALID["Adam"]

#: Inputs torch.optim 2.13 refuses and optlab takes: computed correctly (tested
#: in test_schedulers_amp.py and test_classic_match_torch.py) and in the README.
ACCEPTED_ONLY_BY_OPTLAB = {
    "Adam": [
        {"lr": T(0.01), "foreach": True},
        {"betas": (T(0.9), 0.99)},
        {"betas": (T(0.9), T(0.99)), "foreach": True},
    ],
    "Adadelta": [{"fused": True}, {"fused": False}],
    "RMSprop": [{"fused": True}, {"fused": False}],
}
ACCEPTED_ONLY_BY_OPTLAB["AdamW"] = ACCEPTED_ONLY_BY_OPTLAB["Adam"]


def _outcome(factory):
    try:
        factory()
    except Exception as error:  # noqa: BLE001 - the type is what is compared
        return error
    return None


def _cases(table):
    return [(name, kwargs) for name in CLASSIC for kwargs in table.get(name, [])]


def _id(case):
    return f"{case[0]}-" + ",".join(f"{k}={v!r}" for k, v in case[1].items())


INVALID_CASES = _cases({name: COMMON_INVALID + INVALID[name] for name in CLASSIC})


@pytest.mark.parametrize("case", INVALID_CASES, ids=[_id(c) for c in INVALID_CASES])
def test_inputs_torch_refuses_are_refused_with_an_exception_of_torchs_type(case):
    name, kwargs = case
    if set(kwargs) & OPTLAB_ONLY.get(name, set()):
        pytest.skip(f"torch.optim.{name} refuses {set(kwargs)} as unknown; optlab takes them")

    def build(module):
        return lambda: getattr(module, name)([torch.zeros(2, requires_grad=True)], **kwargs)

    theirs = _outcome(build(torch.optim))
    assert theirs is not None, f"torch.optim.{name}({kwargs}) is accepted: not an invalid input"
    ours = _outcome(build(optlab))
    assert ours is not None, f"optlab.{name}({kwargs}) is accepted, torch raises {theirs!r}"
    assert isinstance(ours, type(theirs)), f"optlab raised {ours!r}, torch {theirs!r}"
    if not isinstance(theirs, TypeError) or "unexpected keyword" not in str(theirs):
        assert isinstance(ours, ValueError)  # optlab's own contract: every refusal is one


ACCEPTED_CASES = _cases(ACCEPTED_ONLY_BY_OPTLAB)


@pytest.mark.parametrize("case", ACCEPTED_CASES, ids=[_id(c) for c in ACCEPTED_CASES])
def test_inputs_only_optlab_accepts_are_the_documented_ones(case):
    name, kwargs = case
    if kwargs.get("fused") and _fused.fused_unavailable_reason("cpu") is not None:
        pytest.skip("fused kernels unavailable")

    def build(module):
        return lambda: getattr(module, name)([torch.zeros(2, requires_grad=True)], **kwargs)

    assert _outcome(build(torch.optim)) is not None
    assert _outcome(build(optlab)) is None


def test_step_time_refusals_have_torchs_types():
    # Sparse gradients: torch.optim.Adam refuses them at step() with RuntimeError.
    for module in (optlab, torch.optim):
        param = torch.zeros(3, requires_grad=True)
        param.grad = torch.zeros(3).to_sparse()
        with pytest.raises(RuntimeError, match="sparse"):
            module.Adam([param]).step()
    # A checkpoint of the wrong size: ValueError in both.
    for module in (optlab, torch.optim):
        optimizer = module.Adam([torch.zeros(3, requires_grad=True)])
        with pytest.raises(ValueError):
            optimizer.load_state_dict({"state": {}, "param_groups": []})
