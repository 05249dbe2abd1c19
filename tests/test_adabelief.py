"""AdaBelief against its reference, ``adabelief-pytorch==0.2.1``, side by side.

The reference package is the oracle for every option combination; for its
0.0.5-style settings ``torch-optimizer==0.3.0``'s AdaBelief is a second,
independent one. The reference prints on construction (silenced here with
``redirect_stdout``) and writes the L2 term into ``p.grad``, so every step
gives both sides fresh copies of the same gradient.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import itertools
import warnings

import pytest
import torch
import torch_optimizer
from adabelief_pytorch import AdaBelief as ReferenceAdaBelief

import optlab
from optlab.optim.adabelief import AdaBelief

FLAGS = ("amsgrad", "weight_decouple", "fixed_decay", "rectify", "degenerated_to_sgd")
EVERY_FLAG_COMBINATION = [
    dict(zip(FLAGS, values, strict=True)) for values in itertools.product((False, True), repeat=5)
]
RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}
STATE_KEYS = ("exp_avg", "exp_avg_var", "max_exp_avg_var")


def quiet_reference(*args, **kwargs) -> ReferenceAdaBelief:
    with contextlib.redirect_stdout(io.StringIO()):
        return ReferenceAdaBelief(*args, **kwargs)


def quiet_optlab(*args, **kwargs) -> AdaBelief:
    """optlab's AdaBelief without the amsgrad+rectify warning (tested on its own below)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return AdaBelief(*args, **kwargs)


def strided_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A non-contiguous 2-d tensor (every other row of a wider one) holding ``tensor``'s values."""
    rows, columns = tensor.shape
    view = torch.zeros(2 * rows, columns + 1, dtype=tensor.dtype)[::2, 1:]
    view.copy_(tensor)
    assert not view.is_contiguous()
    return view


def make_params(dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    """A matrix, a 0-dim tensor and a non-contiguous one: odd shapes the kernels must handle."""
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    zero_dim = torch.randn((), generator=generator, dtype=torch.float64)
    strided = torch.randn(3, 3, generator=generator, dtype=torch.float64)
    return [matrix.to(dtype), zero_dim.to(dtype), strided_copy(strided.to(dtype))]


def copies(params: list[torch.Tensor], dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """Independent copies (optionally cast) in the same layout (``clone`` makes them contiguous)."""
    dtype = dtype or params[0].dtype
    return [
        p.to(dtype, copy=True) if p.is_contiguous() else strided_copy(p.to(dtype)) for p in params
    ]


def groups_of(params: list[torch.Tensor]) -> list[dict]:
    """Two groups: the defaults without decay; other lr and betas, an eps large enough to
    matter at 1e-10 and a decay."""
    return [
        {"params": params[:2], "weight_decay": 0.0},
        {"params": params[2:], "lr": 3e-3, "betas": (0.8, 0.99), "eps": 1e-3, "weight_decay": 0.05},
    ]


def gradients(params: list[torch.Tensor], step: int, generator: torch.Generator):
    """A noisy quadratic's gradient, 2 (p - 1) + noise; ``None`` for the 0-dim one every 4th step."""
    grads = []
    for index, param in enumerate(params):
        noise = torch.randn(param.shape, generator=generator, dtype=torch.float64)
        grad = 2 * (param.double() - 1.0) + 0.5 * noise
        grads.append(None if index == 1 and step % 4 == 3 else grad.to(param.dtype))
    return grads


def set_grads(params: list[torch.Tensor], grads) -> None:
    for param, grad in zip(params, grads, strict=True):
        param.grad = None if grad is None else grad.clone()


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, what: str):
    """Elementwise within ``rtol`` of the expected value, relative to the tensor's largest entry."""
    assert actual.dtype == expected.dtype, what
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale, msg=what)


def assert_same_run(ours, ours_params, reference, reference_params, rtol: float, where: str):
    for index, (mine, theirs) in enumerate(zip(ours_params, reference_params, strict=True)):
        assert_rel_close(mine, theirs, rtol, f"{where}: param {index}")
        their_state = reference.state[theirs]
        assert set(ours.state[mine]) == set(their_state), f"{where}: state keys of param {index}"
        assert ours.state[mine]["step"].item() == their_state["step"]
        for key in STATE_KEYS:
            if key in their_state:
                assert_rel_close(
                    ours.state[mine][key], their_state[key], rtol, f"{where}: {key} of {index}"
                )


# --------------------------------------------------------------------------
# The update rule against the reference.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize(
    "flags", EVERY_FLAG_COMBINATION, ids=lambda f: "-".join(k for k, v in f.items() if v) or "none"
)
def test_adabelief_matches_reference_for_every_option(flags, dtype):
    """200 steps cross the rectification threshold (rho_t >= 5 from step 6); both paths checked.

    Group 0 has weight_decay 0, group 1 a non-zero one, so every combination
    runs with both; the 0-dim parameter misses its gradient every 4th step,
    so the tensors of group 0 are at different steps.
    """
    reference_params = make_params(dtype)
    loop_params = copies(reference_params)
    foreach_params = copies(reference_params)
    kwargs = dict(lr=1e-2, **flags)
    reference = quiet_reference(groups_of(reference_params), **kwargs)
    loop = quiet_optlab(groups_of(loop_params), foreach=False, **kwargs)
    foreach = quiet_optlab(groups_of(foreach_params), foreach=True, **kwargs)
    generator = torch.Generator().manual_seed(1)
    for step in range(200):
        grads = gradients(reference_params, step, generator)
        for params, optimizer in (
            (reference_params, reference),
            (loop_params, loop),
            (foreach_params, foreach),
        ):
            set_grads(params, grads)
            optimizer.step()
    rtol = RTOL[dtype]
    assert_same_run(loop, loop_params, reference, reference_params, rtol, "loop")
    assert_same_run(foreach, foreach_params, reference, reference_params, rtol, "foreach")
    # The parameters moved far from their start: the comparison is not vacuous.
    assert (reference_params[0] - make_params(dtype)[0]).abs().max() > 1e-2


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("decoupling", ["l2", "decoupled", "fixed"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_adabelief_0_0_5_settings_match_torch_optimizer(dtype, decoupling, weight_decay):
    """eps=1e-8, rectify=False: torch-optimizer 0.3.0's AdaBelief is an independent oracle.

    Not with amsgrad: torch-optimizer adds eps to the running maximum instead
    of to exp_avg_var, a different rule from adabelief-pytorch's.
    """
    options = dict(
        lr=1e-2,
        eps=1e-8,
        weight_decay=weight_decay,
        weight_decouple=decoupling != "l2",
        fixed_decay=decoupling == "fixed",
        rectify=False,
    )
    reference_params = make_params(dtype)
    our_params = copies(reference_params)
    reference = torch_optimizer.AdaBelief(reference_params, **options)
    ours = AdaBelief(our_params, **options)
    generator = torch.Generator().manual_seed(2)
    for step in range(200):
        grads = gradients(reference_params, step, generator)
        set_grads(reference_params, grads)
        set_grads(our_params, grads)
        reference.step()
        ours.step()
    rtol = RTOL[dtype]
    for index, (mine, theirs) in enumerate(zip(our_params, reference_params, strict=True)):
        assert_rel_close(mine, theirs, rtol, f"param {index}")
        for key in ("exp_avg", "exp_avg_var"):
            assert_rel_close(
                ours.state[mine][key], reference.state[theirs][key], rtol, f"{key} of {index}"
            )


@pytest.mark.parametrize("rectify", [False, True])
def test_maximize_is_the_reference_on_the_negated_gradient(rectify):
    reference_params = make_params(torch.float64)
    our_params = copies(reference_params)
    options = dict(lr=1e-2, weight_decay=0.1, weight_decouple=False, rectify=rectify)
    reference = quiet_reference(reference_params, **options)
    ours = AdaBelief(our_params, maximize=True, **options)
    generator = torch.Generator().manual_seed(3)
    for step in range(20):
        grads = gradients(reference_params, step, generator)
        set_grads(reference_params, [None if g is None else -g for g in grads])
        set_grads(our_params, grads)
        reference.step()
        ours.step()
    for mine, theirs in zip(our_params, reference_params, strict=True):
        assert_rel_close(mine, theirs, 1e-10, "maximize")


def test_groups_added_later_with_other_betas_follow_the_published_rectification():
    """The reference caches rectification terms per step in a buffer it shares with
    groups added by add_param_group, whatever their betas; optlab computes them
    from each group's own betas, checked here against a group built up front."""
    first, later, upfront = (torch.zeros(3, dtype=torch.float64) for _ in range(3))
    grow = AdaBelief([first], lr=1e-2)
    grow.add_param_group({"params": [later], "betas": (0.5, 0.9)})
    built = AdaBelief([{"params": [upfront], "betas": (0.5, 0.9)}], lr=1e-2)
    for _ in range(8):
        for param in (first, later, upfront):
            param.grad = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
        grow.step()
        built.step()
    assert torch.equal(later, upfront)


# --------------------------------------------------------------------------
# What optlab adds: per-group options, no printing, one warning, grads untouched.
# --------------------------------------------------------------------------


def test_constructor_takes_the_reference_arguments_in_order_with_its_defaults():
    theirs = inspect.signature(ReferenceAdaBelief.__init__).parameters
    ours = inspect.signature(AdaBelief.__init__).parameters
    assert list(ours)[: len(theirs)] == list(theirs)
    for name, parameter in theirs.items():
        assert ours[name].default == parameter.default, name
        assert ours[name].kind == inspect.Parameter.POSITIONAL_OR_KEYWORD, name
    assert {"maximize", "foreach", "fused"} <= set(ours)


def test_every_option_is_a_per_group_hyperparameter_saved_in_state_dict():
    a, b = torch.zeros(2), torch.zeros(2)
    optimizer = AdaBelief([{"params": [a]}, {"params": [b], "rectify": False, "eps": 1e-8}])
    saved = optimizer.state_dict()["param_groups"]
    for key in FLAGS + ("lr", "betas", "eps", "weight_decay", "maximize", "foreach", "fused"):
        assert key in saved[0] and key in saved[1], key
    assert saved[0]["rectify"] is True and saved[1]["rectify"] is False
    assert saved[1]["eps"] == 1e-8 and saved[0]["eps"] == 1e-16
    assert "print_change_log" not in saved[0]


def test_nothing_is_printed(capsys):
    param = torch.zeros(3)
    optimizer = AdaBelief([param], amsgrad=False, print_change_log=True)
    for _ in range(10):
        param.grad = torch.ones(3)
        optimizer.step()
    optimizer.load_state_dict(optimizer.state_dict())
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_amsgrad_with_rectify_warns_once_that_it_has_no_effect():
    params = [torch.zeros(2), torch.zeros(2), torch.zeros(2)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optimizer = AdaBelief([{"params": [params[0]]}, {"params": [params[1]]}], amsgrad=True)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert "amsgrad" in messages[0] and "no effect" in messages[0] and "rectify" in messages[0]
    assert caught[0].category is UserWarning and caught[0].filename == __file__

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optimizer.add_param_group({"params": [params[2]]})
    assert len(caught) == 1 and caught[0].filename == __file__


@pytest.mark.parametrize(
    "options", [dict(amsgrad=True, rectify=False), dict(amsgrad=False), dict()], ids=str
)
def test_no_warning_when_amsgrad_takes_effect_or_is_off(options):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AdaBelief([torch.zeros(2)], **options)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_grad_is_never_modified(foreach, dtype):
    param = torch.ones(4, dtype=dtype)
    grad = torch.tensor([1.0, -2.0, 3.0, 0.0], dtype=dtype)
    param.grad = grad
    optimizer = AdaBelief(
        [param], weight_decay=0.1, weight_decouple=False, maximize=True, foreach=foreach
    )
    optimizer.step()
    assert param.grad is grad and param.grad.dtype == dtype
    assert torch.equal(grad, torch.tensor([1.0, -2.0, 3.0, 0.0], dtype=dtype))


# --------------------------------------------------------------------------
# Low precision: computed in float32, state kept in float32.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_is_the_reference_in_float32_rounded_each_step(dtype, foreach):
    """Oracle: the reference on float32 copies, its params rounded to ``dtype`` after each step.

    (That is what the reference itself does for fp16; for bf16 it would keep
    bf16 state, which optlab deliberately does not.)
    """
    reference_params = copies(copies(make_params(torch.float64), dtype), torch.float32)
    our_params = copies(reference_params, dtype)
    options = dict(lr=1e-2, rectify=True, amsgrad=False)
    reference = quiet_reference(groups_of(reference_params), **options)
    ours = AdaBelief(groups_of(our_params), foreach=foreach, **options)
    generator = torch.Generator().manual_seed(4)
    for step in range(30):
        grads = [None if g is None else g.to(dtype) for g in gradients(our_params, step, generator)]
        set_grads(our_params, grads)
        set_grads(reference_params, [None if g is None else g.float() for g in grads])
        ours.step()
        reference.step()
        for param in reference_params:
            param.copy_(param.to(dtype).float())
    for mine, theirs in zip(our_params, reference_params, strict=True):
        assert mine.dtype == dtype
        assert torch.equal(mine, theirs.to(dtype))
        for key in ("exp_avg", "exp_avg_var"):
            assert ours.state[mine][key].dtype == torch.float32
            assert torch.equal(ours.state[mine][key], reference.state[theirs][key])


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_trains_without_nan_where_float32_does(dtype, foreach):
    """Least squares with fp32, fp16 and bf16 weights and the default eps=1e-16.

    One input feature is always zero, so its weights' gradient, ``m`` and
    ``g - m`` are exactly zero: in half-precision state ``s`` would be
    0 + 1e-16 = 0 and the non-rectified step 0/0 = NaN.
    """
    generator = torch.Generator().manual_seed(5)
    inputs = torch.randn(64, 6, generator=generator)
    inputs[:, 0] = 0.0
    targets = inputs @ torch.randn(6, 2, generator=generator) + 0.1
    start = torch.randn(6, 2, generator=generator)

    def train(param_dtype):
        weight = start.to(param_dtype, copy=True)
        optimizer = AdaBelief([weight], lr=3e-2, rectify=False, foreach=foreach)
        losses = []
        for _ in range(100):
            residual = inputs @ weight.float() - targets
            losses.append(residual.square().mean().item())
            weight.grad = (inputs.T @ residual * (2 / residual.numel())).to(param_dtype)
            optimizer.step()
        return weight, optimizer, losses

    _, _, fp32_losses = train(torch.float32)
    weight, optimizer, losses = train(dtype)
    assert fp32_losses[-1] < 0.1 * fp32_losses[0]
    assert weight.dtype == dtype and torch.isfinite(weight).all()
    assert losses[-1] < 0.1 * losses[0]
    assert losses[-1] < 2 * fp32_losses[-1] + 0.05
    state = optimizer.state[weight]
    assert state["exp_avg"].dtype == state["exp_avg_var"].dtype == torch.float32
    assert state["exp_avg_var"][0].min() > 0  # the zero feature's row: eps accumulated


# --------------------------------------------------------------------------
# Checkpoints.
# --------------------------------------------------------------------------


def reloaded(state_dict: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize(
    "options",
    [dict(), dict(amsgrad=True, rectify=False, weight_decouple=False, weight_decay=0.1)],
    ids=["defaults", "amsgrad-l2"],
)
def test_reference_checkpoint_continues_identically(options):
    """Saved by adabelief-pytorch before the rectification threshold, continued past it."""
    reference_params = make_params(torch.float64)
    reference = quiet_reference(groups_of(reference_params), lr=1e-2, **options)
    generator = torch.Generator().manual_seed(7)
    for step in range(3):
        set_grads(reference_params, gradients(reference_params, step, generator))
        reference.step()
    checkpoint = reloaded(reference.state_dict())
    assert isinstance(checkpoint["state"][0]["step"], int)
    assert "buffer" in checkpoint["param_groups"][0]
    assert "rectify" not in checkpoint["param_groups"][0]

    our_params = copies(reference_params)
    ours = AdaBelief(groups_of(our_params), lr=1e-2, **options)
    ours.load_state_dict(checkpoint)
    assert all("buffer" not in group for group in ours.param_groups)
    assert ours.param_groups[1]["rectify"] == options.get("rectify", True)
    assert torch.is_tensor(ours.state[our_params[0]]["step"])
    for step in range(3, 40):
        grads = gradients(reference_params, step, generator)
        set_grads(reference_params, grads)
        set_grads(our_params, grads)
        reference.step()
        ours.step()
    assert_same_run(ours, our_params, reference, reference_params, 1e-10, "continued")


def test_fp16_reference_checkpoint_keeps_its_float32_state():
    """The reference keeps fp32 state for fp16 params; torch's loader would cast it to fp16."""
    reference_param = torch.linspace(-1, 1, 5, dtype=torch.float16)
    reference = quiet_reference([reference_param], lr=1e-2)
    for _ in range(3):
        reference_param.grad = torch.linspace(1, 2, 5, dtype=torch.float16) * 1e-3
        reference.step()
    saved = reference.state[reference_param]
    assert saved["exp_avg_var"].dtype == torch.float32

    our_param = reference_param.clone()
    ours = AdaBelief([our_param], lr=1e-2)
    ours.load_state_dict(reloaded(reference.state_dict()))
    for key in ("exp_avg", "exp_avg_var"):
        assert ours.state[our_param][key].dtype == torch.float32
        assert torch.equal(ours.state[our_param][key], saved[key])


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_checkpoint_round_trip_is_bitwise(dtype, foreach):
    options = dict(lr=1e-2, amsgrad=True, rectify=False, weight_decay=0.01, foreach=foreach)
    generator = torch.Generator().manual_seed(8)
    all_grads = [gradients(make_params(dtype), step, generator) for step in range(20)]

    straight_params = make_params(dtype)
    straight = AdaBelief(groups_of(straight_params), **options)
    resumed_params = make_params(dtype)
    first = AdaBelief(groups_of(resumed_params), **options)
    for step, grads in enumerate(all_grads):
        set_grads(straight_params, grads)
        straight.step()
        if step < 7:
            set_grads(resumed_params, grads)
            first.step()
    resumed = AdaBelief(groups_of(resumed_params), **options)
    resumed.load_state_dict(reloaded(first.state_dict()))
    for grads in all_grads[7:]:
        set_grads(resumed_params, grads)
        resumed.step()
    for mine, theirs in zip(resumed_params, straight_params, strict=True):
        assert torch.equal(mine, theirs)
        for key in STATE_KEYS + ("step",):
            assert resumed.state[mine][key].dtype == straight.state[theirs][key].dtype
            assert torch.equal(resumed.state[mine][key], straight.state[theirs][key]), key


# --------------------------------------------------------------------------
# Bad input and the registry.
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(lr=-1e-3), "lr must be a finite number >= 0, got -0.001"),
        (dict(eps=-1e-16), "eps must be a finite number >= 0, got -1e-16"),
        (dict(weight_decay=-0.1), "weight_decay must be a finite number >= 0, got -0.1"),
        (dict(betas=(0.9, 1.0)), "betas[1] must be in [0, 1), got 1.0"),
        (dict(betas=(-0.1, 0.999)), "betas[0] must be in [0, 1), got -0.1"),
        (dict(betas=0.9), "betas must be a pair (beta1, beta2), got 0.9"),
        (dict(rectify="yes"), "rectify must be True or False, got 'yes'"),
        (dict(weight_decouple=1), "weight_decouple must be True or False, got 1"),
        (dict(fixed_decay=None), "fixed_decay must be True or False, got None"),
        (dict(degenerated_to_sgd=0), "degenerated_to_sgd must be True or False, got 0"),
        (dict(amsgrad="no"), "amsgrad must be True or False, got 'no'"),
    ],
)
def test_bad_input_names_parameter_value_and_range(options, message):
    with pytest.raises(ValueError) as raised:
        AdaBelief([torch.zeros(2)], **options)
    assert str(raised.value) == message


def test_bad_group_option_names_the_group():
    with pytest.raises(ValueError, match=r"^param group 1: eps must be a finite number >= 0"):
        AdaBelief([{"params": [torch.zeros(2)]}, {"params": [torch.zeros(2)], "eps": -1.0}])


def test_registry_builds_adabelief_with_the_reference_defaults():
    optimizer = optlab.create_optimizer([torch.zeros(2)], "adabelief")
    assert type(optimizer) is AdaBelief and optlab.AdaBelief is AdaBelief
    group = optimizer.param_groups[0]
    assert group["eps"] == 1e-16 and group["lr"] == 1e-3 and group["betas"] == (0.9, 0.999)
    assert group["weight_decouple"] and group["rectify"] and group["degenerated_to_sgd"]
    assert not group["amsgrad"] and not group["fixed_decay"]
    assert "2010.07468" in optlab.get_spec("adabelief").paper
