"""EAdam and Yogi against their published rules, and Yogi against torch-optimizer 0.3.0.

The oracles below are written per parameter, straight from the papers'
equations (bias-corrected moments, then the step), deliberately not in the
operation order optlab uses, so they check the algebra, not the code.
"""

from __future__ import annotations

import io
import itertools
import math

import pytest
import torch
import torch_optimizer

import optlab
from optlab.optim.eadam import EAdam
from optlab.optim.yogi import Yogi

RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def strided_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A non-contiguous 2-d tensor (every other row of a wider one) holding ``tensor``'s values."""
    rows, columns = tensor.shape
    view = torch.zeros(2 * rows, columns + 1, dtype=tensor.dtype)[::2, 1:]
    view.copy_(tensor)
    return view


def make_params(dtype: torch.dtype) -> list[torch.Tensor]:
    """A matrix, a 0-dim tensor and a non-contiguous one."""
    generator = torch.Generator().manual_seed(0)
    matrix = torch.randn(3, 4, generator=generator, dtype=torch.float64).to(dtype)
    zero_dim = torch.randn((), generator=generator, dtype=torch.float64).to(dtype)
    strided = strided_copy(torch.randn(3, 3, generator=generator, dtype=torch.float64).to(dtype))
    return [matrix, zero_dim, strided]


def copies(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.clone() if p.is_contiguous() else strided_copy(p) for p in params]


def groups_of(params: list[torch.Tensor], **second_group) -> list[dict]:
    return [{"params": params[:2]}, {"params": params[2:], **second_group}]


def gradients(params: list[torch.Tensor], step: int, generator: torch.Generator):
    """A noisy quadratic's gradient; ``None`` for the 0-dim parameter every 4th step."""
    grads = []
    for index, param in enumerate(params):
        noise = torch.randn(param.shape, generator=generator, dtype=torch.float64)
        grad = (2 * (param.double() - 1.0) + 0.5 * noise).to(param.dtype)
        grads.append(None if index == 1 and step % 4 == 3 else grad)
    return grads


def set_grads(params, grads) -> None:
    for param, grad in zip(params, grads, strict=True):
        param.grad = None if grad is None else grad.clone()


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, what: str):
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale, msg=what)


# --------------------------------------------------------------------------
# The published rules, per parameter.
# --------------------------------------------------------------------------


class PublishedEAdam:
    """Yuan & Gao, arXiv:2011.02150, Algorithm 1 (+ L2, maximize, and amsgrad as optlab defines it)."""

    def __init__(self, lr, betas, eps, weight_decay, amsgrad, maximize):
        self.lr, (self.beta1, self.beta2), self.eps = lr, betas, eps
        self.weight_decay, self.amsgrad, self.maximize = weight_decay, amsgrad, maximize
        self.state: dict[int, dict] = {}

    def step(self, index: int, param: torch.Tensor, grad: torch.Tensor) -> None:
        state = self.state.setdefault(
            index, {"t": 0, "m": torch.zeros_like(param), "v": torch.zeros_like(param)}
        )
        state["t"] += 1
        t = state["t"]
        g = -grad if self.maximize else grad
        g = g + self.weight_decay * param
        state["m"] = self.beta1 * state["m"] + (1 - self.beta1) * g
        state["v"] = self.beta2 * state["v"] + (1 - self.beta2) * g**2 + self.eps
        v = state["v"]
        if self.amsgrad:
            state["v_max"] = torch.maximum(state.get("v_max", torch.zeros_like(v)), v)
            v = state["v_max"]
        m_hat = state["m"] / (1 - self.beta1**t)
        v_hat = v / (1 - self.beta2**t)
        param.sub_(self.lr * m_hat / torch.sqrt(v_hat))


class PublishedYogi:
    """Zaheer et al., NeurIPS 2018, Algorithm 2 with Adam's bias correction (+ L2, maximize)."""

    def __init__(self, lr, betas, eps, initial_accumulator_value, weight_decay, maximize):
        self.lr, (self.beta1, self.beta2), self.eps = lr, betas, eps
        self.v0, self.weight_decay, self.maximize = (
            initial_accumulator_value,
            weight_decay,
            maximize,
        )
        self.state: dict[int, dict] = {}

    def step(self, index: int, param: torch.Tensor, grad: torch.Tensor) -> None:
        state = self.state.setdefault(
            index,
            {"t": 0, "m": torch.zeros_like(param), "v": torch.full_like(param, self.v0)},
        )
        state["t"] += 1
        t = state["t"]
        g = -grad if self.maximize else grad
        g = g + self.weight_decay * param
        state["m"] = self.beta1 * state["m"] + (1 - self.beta1) * g
        state["v"] = state["v"] - (1 - self.beta2) * torch.sign(state["v"] - g**2) * g**2
        m_hat = state["m"] / (1 - self.beta1**t)
        v_hat = state["v"] / (1 - self.beta2**t)
        param.sub_(self.lr * m_hat / (torch.sqrt(v_hat) + self.eps))


def run_against_published(optimizer_cls, oracle_cls, options, dtype, foreach, steps=200):
    """Run optlab (one group, one options set) and the oracle side by side; compare all."""
    oracle_params = make_params(dtype)
    our_params = copies(oracle_params)
    oracle = oracle_cls(**options)
    ours = optimizer_cls(our_params, foreach=foreach, **options)
    generator = torch.Generator().manual_seed(1)
    for step in range(steps):
        grads = gradients(oracle_params, step, generator)
        for index, (param, grad) in enumerate(zip(oracle_params, grads, strict=True)):
            if grad is not None:
                oracle.step(index, param, grad)
        set_grads(our_params, grads)
        ours.step()
    rtol = RTOL[dtype]
    for index, (mine, theirs) in enumerate(zip(our_params, oracle_params, strict=True)):
        assert_rel_close(mine, theirs, rtol, f"param {index}")
        state = ours.state[mine]
        assert state["step"].item() == oracle.state[index]["t"]
        assert_rel_close(state["exp_avg"], oracle.state[index]["m"], rtol, f"exp_avg {index}")
        assert_rel_close(state["exp_avg_sq"], oracle.state[index]["v"], rtol, f"exp_avg_sq {index}")
    assert (our_params[0] - make_params(dtype)[0]).abs().max() > 1e-2  # it moved
    return ours, our_params


# --------------------------------------------------------------------------
# EAdam.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize(
    ("amsgrad", "weight_decay", "maximize"),
    list(itertools.product([False, True], [0.0, 0.05], [False, True])),
)
def test_eadam_matches_the_published_algorithm(amsgrad, weight_decay, maximize, dtype, foreach):
    """eps=1e-4 so the accumulated eps is far above rounding at 1e-10; max over v after eps."""
    options = dict(
        lr=1e-2,
        betas=(0.9, 0.999),
        eps=1e-4,
        weight_decay=weight_decay,
        amsgrad=amsgrad,
        maximize=maximize,
    )
    ours, params = run_against_published(EAdam, PublishedEAdam, options, dtype, foreach)
    assert ("max_exp_avg_sq" in ours.state[params[0]]) == amsgrad


def test_eadam_is_adam_with_eps_inside_the_root_scaled_by_one_over_one_minus_beta2():
    """Unrolled EAdam v after t steps = Adam's v + eps (1 - beta2^t) / (1 - beta2)."""
    eadam_param, adam_param = (
        torch.zeros(5, dtype=torch.float64),
        torch.zeros(5, dtype=torch.float64),
    )
    eps, beta2 = 1e-3, 0.99
    eadam = EAdam([eadam_param], betas=(0.9, beta2), eps=eps)
    adam = torch.optim.Adam([adam_param], betas=(0.9, beta2))
    generator = torch.Generator().manual_seed(2)
    for _ in range(30):
        grad = torch.randn(5, generator=generator, dtype=torch.float64)
        eadam_param.grad, adam_param.grad = grad.clone(), grad.clone()
        eadam.step()
        adam.step()
    expected = adam.state[adam_param]["exp_avg_sq"] + eps * (1 - beta2**30) / (1 - beta2)
    assert_rel_close(eadam.state[eadam_param]["exp_avg_sq"], expected, 1e-12, "v")


# --------------------------------------------------------------------------
# Yogi.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize(
    ("initial_accumulator_value", "weight_decay", "maximize"),
    [(1e-6, 0.0, False), (1e-6, 0.05, False), (0.5, 0.0, True), (0.5, 0.05, True)],
)
def test_yogi_matches_the_published_rule(
    initial_accumulator_value, weight_decay, maximize, dtype, foreach
):
    options = dict(
        lr=1e-2,
        betas=(0.9, 0.999),
        eps=1e-3,
        initial_accumulator_value=initial_accumulator_value,
        weight_decay=weight_decay,
        maximize=maximize,
    )
    run_against_published(Yogi, PublishedYogi, options, dtype, foreach)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize(("initial", "weight_decay"), [(1e-6, 0.0), (1e-6, 0.1), (0.3, 0.0)])
def test_yogi_matches_torch_optimizer_with_the_initial_state_primed_equal(
    initial, weight_decay, dtype, foreach
):
    """torch-optimizer starts exp_avg at the initial accumulator value; optlab at 0 (the paper).

    Priming torch-optimizer's state with exp_avg = 0 makes the two comparable
    step by step; the step itself must then agree.
    """
    reference_params = make_params(dtype)
    our_params = copies(reference_params)
    reference = torch_optimizer.Yogi(
        groups_of(reference_params, lr=3e-3),
        lr=1e-2,
        initial_accumulator=initial,
        weight_decay=weight_decay,
    )
    for param in reference_params:
        reference.state[param] = {
            "step": 0,
            "exp_avg": torch.zeros_like(param),
            "exp_avg_sq": torch.full_like(param, initial),
        }
    ours = Yogi(
        groups_of(our_params, lr=3e-3),
        lr=1e-2,
        initial_accumulator_value=initial,
        weight_decay=weight_decay,
        foreach=foreach,
    )
    generator = torch.Generator().manual_seed(3)
    for step in range(200):
        # torch-optimizer steps every parameter that has a gradient, so give all of them one.
        grads = gradients(reference_params, step, generator)
        grads[1] = torch.zeros_like(reference_params[1]) if grads[1] is None else grads[1]
        set_grads(reference_params, grads)
        set_grads(our_params, grads)
        reference.step()
        ours.step()
    rtol = RTOL[dtype]
    for index, (mine, theirs) in enumerate(zip(our_params, reference_params, strict=True)):
        assert_rel_close(mine, theirs, rtol, f"param {index}")
        for key in ("exp_avg", "exp_avg_sq"):
            assert_rel_close(
                ours.state[mine][key], reference.state[theirs][key], rtol, f"{key} {index}"
            )


def test_yogi_exp_avg_starts_at_zero_and_exp_avg_sq_at_the_initial_accumulator():
    param = torch.zeros(3, dtype=torch.float64)
    optimizer = Yogi([param], initial_accumulator_value=0.25, betas=(0.9, 0.99))
    grad = torch.tensor([1.0, 0.1, -0.2], dtype=torch.float64)
    param.grad = grad
    optimizer.step()
    state = optimizer.state[param]
    assert torch.equal(state["exp_avg"], (1 - 0.9) * grad)
    # sign(0.25 - g^2) is -1, +1, +1: v grows where g^2 > v, shrinks elsewhere.
    expected = 0.25 - 0.01 * torch.sign(0.25 - grad**2) * grad**2
    assert_rel_close(state["exp_avg_sq"], expected, 1e-15, "v")


# --------------------------------------------------------------------------
# Both: loop vs foreach, checkpoints, low precision, validation, registry.
# --------------------------------------------------------------------------

OPTIMIZERS = {
    "eadam": (EAdam, dict(lr=1e-2, amsgrad=True, weight_decay=0.01)),
    "yogi": (Yogi, dict(lr=1e-2, weight_decay=0.01)),
}


def mixed_params() -> list[torch.Tensor]:
    """float64 and float32 tensors in one group (two foreach runs), a complex one, a 0-dim one."""
    generator = torch.Generator().manual_seed(4)
    return [
        torch.randn(4, 3, generator=generator, dtype=torch.float64),
        torch.randn(5, generator=generator),
        torch.randn(3, generator=generator, dtype=torch.complex128),
        torch.randn((), generator=generator, dtype=torch.float64),
        strided_copy(torch.randn(2, 2, generator=generator)),
    ]


def mixed_gradients(params, step, generator):
    grads = []
    for index, param in enumerate(params):
        noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
        grads.append(None if index == 3 and step % 3 == 1 else 2 * (param - 1) + 0.3 * noise)
    return grads


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_loop_and_foreach_paths_agree(name):
    """Bitwise on CPU: the foreach path runs the same operations in the same order."""
    optimizer_cls, options = OPTIMIZERS[name]
    loop_params, foreach_params = mixed_params(), mixed_params()
    loop = optimizer_cls(loop_params, foreach=False, **options)
    foreach = optimizer_cls(foreach_params, foreach=True, **options)
    generator = torch.Generator().manual_seed(5)
    for step in range(60):
        grads = mixed_gradients(loop_params, step, generator)
        set_grads(loop_params, grads)
        set_grads(foreach_params, grads)
        loop.step()
        foreach.step()
    for mine, theirs in zip(foreach_params, loop_params, strict=True):
        assert torch.equal(mine, theirs)
        for key, value in loop.state[theirs].items():
            assert torch.equal(foreach.state[mine][key], value), key


def test_complex_parameters_are_optimized_as_real_pairs():
    """A complex parameter steps exactly like its real view given as a real parameter."""
    for optimizer_cls, options in OPTIMIZERS.values():
        complex_param = torch.tensor([1 + 2j, -0.5 + 0.1j], dtype=torch.complex128)
        real_param = torch.view_as_real(complex_param).clone()
        complex_opt = optimizer_cls([complex_param], **options)
        real_opt = optimizer_cls([real_param], **options)
        for step in range(10):
            grad = torch.tensor([0.3 - 1j, 2 + 0.5j], dtype=torch.complex128) * (step + 1)
            complex_param.grad, real_param.grad = grad, torch.view_as_real(grad).clone()
            complex_opt.step()
            real_opt.step()
        assert torch.equal(torch.view_as_real(complex_param), real_param)


def reloaded(state_dict: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_checkpoint_round_trip_is_bitwise(name, foreach):
    optimizer_cls, options = OPTIMIZERS[name]
    generator = torch.Generator().manual_seed(6)
    all_grads = [mixed_gradients(mixed_params(), step, generator) for step in range(16)]
    straight_params, resumed_params = mixed_params(), mixed_params()
    straight = optimizer_cls(straight_params, foreach=foreach, **options)
    first = optimizer_cls(resumed_params, foreach=foreach, **options)
    for step, grads in enumerate(all_grads):
        set_grads(straight_params, grads)
        straight.step()
        if step < 5:
            set_grads(resumed_params, grads)
            first.step()
    resumed = optimizer_cls(resumed_params, foreach=foreach, **options)
    resumed.load_state_dict(reloaded(first.state_dict()))
    for grads in all_grads[5:]:
        set_grads(resumed_params, grads)
        resumed.step()
    for mine, theirs in zip(resumed_params, straight_params, strict=True):
        assert torch.equal(mine, theirs)
        for key, value in straight.state[theirs].items():
            assert torch.equal(resumed.state[mine][key], value), key


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_low_precision_computes_in_float32_and_keeps_float32_state(name, dtype):
    """Oracle: the same optimizer on float32 copies, rounded to ``dtype`` after each step."""
    optimizer_cls, options = OPTIMIZERS[name]
    generator = torch.Generator().manual_seed(7)
    start = torch.randn(4, 3, generator=generator)
    low = start.to(dtype)
    high = low.float()
    low_opt = optimizer_cls([low], **options)
    high_opt = optimizer_cls([high], **options)
    for _ in range(40):
        grad = (2 * (low.float() - 1) + torch.randn(4, 3, generator=generator)).to(dtype)
        grad[0, 0] = 0.0  # a zero gradient: EAdam's state then holds only the eps
        low.grad, high.grad = grad, grad.float()
        low_opt.step()
        high_opt.step()
        high.copy_(high.to(dtype).float())
    assert low.dtype == dtype and torch.isfinite(low).all()
    assert torch.equal(low, high.to(dtype))
    for key, value in low_opt.state[low].items():
        if key != "step":
            assert value.dtype == torch.float32, key
            assert torch.equal(value, high_opt.state[high][key]), key


@pytest.mark.parametrize(
    ("optimizer_cls", "options", "message"),
    [
        (EAdam, dict(lr=-1.0), "lr must be a finite number >= 0, got -1.0"),
        (EAdam, dict(eps=-1e-8), "eps must be in (0, inf), got -1e-08"),
        (EAdam, dict(eps=0.0), "eps must be in (0, inf), got 0.0"),
        (EAdam, dict(weight_decay=-0.1), "weight_decay must be a finite number >= 0, got -0.1"),
        (EAdam, dict(betas=(1.0, 0.999)), "betas[0] must be in [0, 1), got 1.0"),
        (EAdam, dict(amsgrad=1), "amsgrad must be True or False, got 1"),
        (Yogi, dict(lr=float("nan")), "lr must be a finite number >= 0, got nan"),
        (Yogi, dict(betas=(0.9, 1.5)), "betas[1] must be in [0, 1), got 1.5"),
        (Yogi, dict(eps=-1e-3), "eps must be a finite number >= 0, got -0.001"),
        (
            Yogi,
            dict(initial_accumulator_value=-1e-6),
            "initial_accumulator_value must be a finite number >= 0, got -1e-06",
        ),
        (Yogi, dict(weight_decay=math.inf), "weight_decay must be a finite number >= 0, got inf"),
    ],
)
def test_bad_input_names_parameter_value_and_range(optimizer_cls, options, message):
    with pytest.raises(ValueError) as raised:
        optimizer_cls([torch.zeros(2)], **options)
    assert str(raised.value) == message


def test_registry_builds_them_with_the_published_defaults():
    eadam = optlab.create_optimizer([torch.zeros(2)], "eadam").param_groups[0]
    assert eadam["lr"] == 1e-3 and eadam["betas"] == (0.9, 0.999)
    assert eadam["eps"] == 1e-8 and eadam["amsgrad"] is False
    yogi = optlab.create_optimizer([torch.zeros(2)], "yogi").param_groups[0]
    assert yogi["lr"] == 1e-2 and yogi["betas"] == (0.9, 0.999)
    assert yogi["eps"] == 1e-3 and yogi["initial_accumulator_value"] == 1e-6
    assert optlab.EAdam is EAdam and optlab.Yogi is Yogi
    assert "2011.02150" in optlab.get_spec("eadam").paper
    assert "Nonconvex" in optlab.get_spec("yogi").paper
