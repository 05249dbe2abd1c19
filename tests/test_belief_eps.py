"""The belief / eps factorial (optlab.optim.belief_eps): its cells against their oracles.

The cells that are existing optimizers are run side by side with them, 200
float64 steps, every relevant flag, loop, foreach and fused, to 1e-10
relative: ``g2-outside`` against ``torch.optim.Adam`` / ``AdamW``,
``g2-accum`` against ``optlab.EAdam`` (itself proven against the published
algorithm), ``belief-accum`` with ``eps_out = eps`` against
``adabelief_pytorch.AdaBelief`` 0.2.1. Every cell, the two ``inside`` ones
included, is also run against :class:`PublishedCells`, the equations of the
module docstring written per parameter in bias-corrected form (not in the
operation order optlab uses), so they check the algebra, not the code.
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import math

import pytest
import torch
from adabelief_pytorch import AdaBelief as ReferenceAdaBelief

import optlab
from optlab.optim import _fused
from optlab.optim.belief_eps import BeliefEps

RTOL = 1e-10
STEPS = 200
CELLS = ["g2-outside", "g2-inside", "g2-accum", "belief-outside", "belief-inside", "belief-accum"]

IMPLEMENTATIONS = [
    pytest.param({"foreach": False}, id="loop"),
    pytest.param({"foreach": True}, id="foreach"),
    pytest.param(
        {"fused": True},
        id="fused",
        marks=pytest.mark.skipif(
            _fused.fused_unavailable_reason("cpu") is not None,
            reason=f"fused kernels unavailable: {_fused.fused_unavailable_reason('cpu')}",
        ),
    ),
]


def strided_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A non-contiguous 2-d tensor (every other row of a wider one) holding ``tensor``'s values."""
    rows, columns = tensor.shape
    view = torch.zeros(2 * rows, columns + 1, dtype=tensor.dtype)[::2, 1:]
    view.copy_(tensor)
    return view


def make_params(dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    """A matrix, a 0-dim tensor, a 3-d one and a non-contiguous one."""
    generator = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (), (2, 3, 2)]
    params = [torch.randn(s, generator=generator, dtype=torch.float64).to(dtype) for s in shapes]
    params.append(strided_copy(torch.randn(3, 3, generator=generator, dtype=torch.float64)))
    return params


def copies(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.clone() if p.is_contiguous() else strided_copy(p) for p in params]


def groups_of(params: list[torch.Tensor]) -> list[dict]:
    """Two groups: the options as given, and another lr and betas."""
    return [{"params": params[:2]}, {"params": params[2:], "lr": 3e-3, "betas": (0.8, 0.99)}]


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


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, what: str, rtol=RTOL) -> None:
    """Elementwise within ``rtol`` of the expected value, relative to the tensor's largest entry."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale, msg=what)


def run_side_by_side(ours_factory, reference_factory, steps: int = STEPS):
    """Step optlab and the reference on the same gradients; return both and their params."""
    reference_params = make_params()
    ours_params = copies(reference_params)
    reference = reference_factory(groups_of(reference_params))
    ours = ours_factory(groups_of(ours_params))
    generator = torch.Generator().manual_seed(1)
    for step in range(steps):
        grads = gradients(reference_params, step, generator)
        set_grads(reference_params, grads)
        set_grads(ours_params, grads)
        reference.step()
        ours.step()
    assert (ours_params[0] - make_params()[0]).abs().max() > 1e-2  # it moved
    return ours, ours_params, reference, reference_params


def assert_same_run(ours, ours_params, reference, reference_params, state_keys=None) -> None:
    """Parameters and every state tensor agree; the state keys are the reference's."""
    for index, (mine, theirs) in enumerate(zip(ours_params, reference_params, strict=True)):
        assert_rel_close(mine, theirs, f"param {index}")
        our_state, their_state = ours.state[mine], reference.state[theirs]
        assert set(our_state) == set(their_state if state_keys is None else state_keys)
        assert float(our_state["step"]) == float(their_state["step"])
        for key, value in their_state.items():
            if key != "step" and torch.is_tensor(value):
                assert_rel_close(our_state[key], value, f"{key} of param {index}")


def cell(name: str, implementation: dict, **options):
    return lambda params: optlab.create_optimizer(params, name, **implementation, **options)


# --------------------------------------------------------------------------
# The cells that are existing optimizers.
# --------------------------------------------------------------------------

#: weight decay settings: none, L2, decoupled (AdamW's), decoupled fixed (AdaBelief's)
DECAYS = {
    "none": {"weight_decay": 0.0},
    "l2": {"weight_decay": 0.05},
    "decoupled": {"weight_decay": 0.05, "decoupled_weight_decay": True},
    "fixed": {"weight_decay": 0.01, "decoupled_weight_decay": True, "fixed_decay": True},
}


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("decay", ["none", "l2", "decoupled"])
@pytest.mark.parametrize(("amsgrad", "maximize"), list(itertools.product([False, True], repeat=2)))
@pytest.mark.parametrize("eps", [1e-8, 1e-3])
def test_g2_outside_equals_torch_adam_and_adamw(eps, amsgrad, maximize, decay, implementation):
    options = dict(lr=1e-2, eps=eps, amsgrad=amsgrad, maximize=maximize, **DECAYS[decay])
    torch_options = {k: v for k, v in options.items() if k != "decoupled_weight_decay"}
    torch_cls = torch.optim.AdamW if decay == "decoupled" else torch.optim.Adam
    runs = run_side_by_side(
        cell("g2-outside", implementation, **options),
        lambda params: torch_cls(params, foreach=False, **torch_options),
    )
    assert_same_run(*runs)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("decay", ["none", "l2"])
@pytest.mark.parametrize(("amsgrad", "maximize"), list(itertools.product([False, True], repeat=2)))
def test_g2_accum_equals_eadam(amsgrad, maximize, decay, implementation):
    """eps=1e-4 so the accumulated eps is far above rounding at 1e-10 (EAdam has L2 decay only)."""
    options = dict(lr=1e-2, eps=1e-4, amsgrad=amsgrad, maximize=maximize, **DECAYS[decay])
    runs = run_side_by_side(
        cell("g2-accum", implementation, **options),
        lambda params: optlab.EAdam(params, foreach=False, **options),
    )
    assert_same_run(*runs)


def quiet_reference(params, **options) -> ReferenceAdaBelief:
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on construction
        return ReferenceAdaBelief(params, **options)


ADABELIEF_FLAGS = [
    # (amsgrad, rectify, degenerated_to_sgd): amsgrad has no effect with rectify in the
    # package, and is refused with it here.
    (False, False, True),
    (True, False, True),
    (False, True, True),
    (False, True, False),
]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("decay", list(DECAYS))
@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize(("amsgrad", "rectify", "degenerated_to_sgd"), ADABELIEF_FLAGS)
def test_belief_accum_with_eps_out_equals_adabelief(
    amsgrad, rectify, degenerated_to_sgd, maximize, decay, implementation
):
    """AdaBelief is the belief / accumulated cell plus its own outside eps (eps_out = eps);
    its ``weight_decouple`` is ``decoupled_weight_decay`` here."""
    eps = 1e-4
    decay_options = DECAYS[decay]
    ours = cell(
        "belief-accum",
        implementation,
        lr=1e-2,
        eps=eps,
        eps_out=eps,
        amsgrad=amsgrad,
        rectify=rectify,
        degenerated_to_sgd=degenerated_to_sgd,
        maximize=maximize,
        **decay_options,
    )
    sign = -1.0 if maximize else 1.0  # the package has no maximize: it gets the negated loss

    def reference(params):
        optimizer = quiet_reference(
            params,
            lr=1e-2,
            eps=eps,
            weight_decay=decay_options["weight_decay"],
            amsgrad=amsgrad,
            weight_decouple=decay_options.get("decoupled_weight_decay", False),
            fixed_decay=decay_options.get("fixed_decay", False),
            rectify=rectify,
            degenerated_to_sgd=degenerated_to_sgd,
        )
        original_step = optimizer.step

        def step():
            for group in optimizer.param_groups:
                for param in group["params"]:
                    if param.grad is not None:
                        param.grad.mul_(sign)
            original_step()

        optimizer.step = step
        return optimizer

    assert_same_run(*run_side_by_side(ours, reference))


# --------------------------------------------------------------------------
# Every cell against the equations.
# --------------------------------------------------------------------------


class PublishedCells:
    """The module docstring's rule per parameter, in bias-corrected form.

    ``m_hat = m / bc1`` and ``v_hat = v / bc2``; the denominators are
    ``sqrt(v_hat) + eps`` (outside), ``sqrt(v_hat + eps / bc2) + eps_out``
    (inside: eps under the root of the raw ``v``, so ``eps / bc2`` under that of
    ``v_hat``) and ``sqrt(v_hat) + eps_out`` with ``v`` holding the accumulated
    eps. Rectified: RAdam's ``r_t`` times ``m_hat / (sqrt(v_hat) ...)``, written
    from Liu et al., ICLR 2020, Algorithm 2.
    """

    def __init__(self, groups, *, second_moment, eps_mode, lr, eps, eps_out=0.0, **flags):
        self.groups = [{"lr": lr, "betas": (0.9, 0.999), **group} for group in groups]
        self.second_moment, self.eps_mode, self.eps, self.eps_out = (
            second_moment,
            eps_mode,
            eps,
            eps_out,
        )
        self.weight_decay = flags.get("weight_decay", 0.0)
        self.decoupled = flags.get("decoupled_weight_decay", False)
        self.fixed_decay = flags.get("fixed_decay", False)
        self.amsgrad = flags.get("amsgrad", False)
        self.maximize = flags.get("maximize", False)
        self.rectify = flags.get("rectify", False)
        self.degenerated_to_sgd = flags.get("degenerated_to_sgd", True)
        self.state: dict[torch.Tensor, dict] = {}

    def step(self) -> None:
        for group in self.groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, param.grad, group["lr"], *group["betas"])

    def _update(self, param, grad, lr, beta1, beta2) -> None:
        state = self.state.setdefault(
            param, {"step": 0, "m": torch.zeros_like(param), "v": torch.zeros_like(param)}
        )
        state["step"] += 1
        t = state["step"]
        g = -grad if self.maximize else grad
        if self.decoupled:
            param.mul_(1 - (self.weight_decay if self.fixed_decay else lr * self.weight_decay))
        else:
            g = g + self.weight_decay * param
        state["m"] = beta1 * state["m"] + (1 - beta1) * g
        u = (g - state["m"]) ** 2 if self.second_moment == "belief" else g**2
        state["v"] = beta2 * state["v"] + (1 - beta2) * u
        if self.eps_mode == "accumulated":
            state["v"] = state["v"] + self.eps
        v = state["v"]
        if self.amsgrad:
            state["v_max"] = torch.maximum(state.get("v_max", torch.zeros_like(v)), v)
            v = state["v_max"]
        bc1, bc2 = 1 - beta1**t, 1 - beta2**t
        m_hat, v_hat = state["m"] / bc1, v / bc2
        under_root = self.eps / bc2 if self.eps_mode == "inside" else 0.0
        outside = self.eps if self.eps_mode == "outside" else self.eps_out
        if not self.rectify:
            param.sub_(lr * m_hat / (torch.sqrt(v_hat + under_root) + outside))
            return
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 * t * beta2**t / bc2
        if rho_t >= 5:
            r_t = math.sqrt(
                (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
            )
            # RAdam's sqrt(v_hat) with the outside eps taken at the raw v's scale, as
            # AdaBelief 0.2.1 does: sqrt(v) + eps = sqrt(bc2) (sqrt(v_hat) + eps / sqrt(bc2)).
            scale = math.sqrt(bc2)
            denom = torch.sqrt(v_hat + under_root) + outside / scale
            param.sub_(lr * r_t * m_hat / denom)
        elif self.degenerated_to_sgd:
            param.sub_(lr * m_hat)

    def state_of(self, param) -> dict:
        return self.state[param]


ORACLE_VARIANTS = {
    "plain": {},
    "l2-maximize": {"weight_decay": 0.05, "maximize": True},
    "amsgrad-decoupled": {"amsgrad": True, "weight_decay": 0.05, "decoupled_weight_decay": True},
    "rectify-l2": {"rectify": True, "weight_decay": 0.05},
    "rectify-no-sgd-fixed": {
        "rectify": True,
        "degenerated_to_sgd": False,
        "weight_decay": 0.01,
        "decoupled_weight_decay": True,
        "fixed_decay": True,
    },
}


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("variant", list(ORACLE_VARIANTS))
@pytest.mark.parametrize("name", CELLS)
def test_every_cell_follows_its_equations(name, variant, implementation):
    """eps=1e-4 (and eps_out=1e-3 where eps is inside the root) so eps matters at 1e-10."""
    spec = optlab.get_spec(name)
    eps_mode = spec.overrides["eps_mode"]
    options = dict(lr=1e-2, eps=1e-4, **ORACLE_VARIANTS[variant])
    if eps_mode != "outside":
        options["eps_out"] = 1e-3
    factors = {key: spec.overrides[key] for key in ("second_moment", "eps_mode")}
    ours, ours_params, oracle, oracle_params = run_side_by_side(
        cell(name, implementation, **options),
        lambda groups: PublishedCells(groups, **factors, **options),
    )
    second_key = "exp_avg_var" if factors["second_moment"] == "belief" else "exp_avg_sq"
    for index, (mine, theirs) in enumerate(zip(ours_params, oracle_params, strict=True)):
        assert_rel_close(mine, theirs, f"param {index}")
        state, expected = ours.state[mine], oracle.state_of(theirs)
        assert state["step"].item() == expected["step"]
        assert_rel_close(state["exp_avg"], expected["m"], f"exp_avg of {index}")
        assert_rel_close(state[second_key], expected["v"], f"{second_key} of {index}")
        assert (f"max_{second_key}" in state) == options.get("amsgrad", False)


def test_the_accumulated_eps_is_a_floor_of_eps_over_one_minus_beta2_under_the_root():
    """Unrolled: the accumulated cell's v after t steps = the outside cell's v + eps bc2 / (1 - beta2),
    so v / bc2 carries eps / (1 - beta2) (1000 eps at beta2 = 0.999) on top of the average."""
    eps, beta2, steps = 1e-3, 0.99, 30
    outside_params = [torch.zeros(5, dtype=torch.float64)]
    accumulated_params = [torch.zeros(5, dtype=torch.float64)]
    outside = optlab.create_optimizer(outside_params, "belief-outside", betas=(0.9, beta2), lr=0.0)
    accumulated = optlab.create_optimizer(
        accumulated_params, "belief-accum", betas=(0.9, beta2), eps=eps, lr=0.0
    )
    generator = torch.Generator().manual_seed(2)
    for _ in range(steps):
        grad = torch.randn(5, generator=generator, dtype=torch.float64)
        outside_params[0].grad, accumulated_params[0].grad = grad.clone(), grad.clone()
        outside.step()
        accumulated.step()
    bias_correction2 = 1 - beta2**steps
    floor = (
        accumulated.state[accumulated_params[0]]["exp_avg_var"]
        - outside.state[outside_params[0]]["exp_avg_var"]
    ) / bias_correction2
    assert_rel_close(
        floor, torch.full((5,), eps / (1 - beta2), dtype=torch.float64), "floor", 1e-12
    )


# --------------------------------------------------------------------------
# Checkpoints, state keys, low precision.
# --------------------------------------------------------------------------


def _train(optimizer, params, steps) -> None:
    for step in steps:
        generator = torch.Generator().manual_seed(100 + step)
        set_grads(params, gradients(params, step, generator))
        optimizer.step()


def _through_file(state_dict: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("options", [{}, {"amsgrad": True}, {"rectify": True}], ids=str)
@pytest.mark.parametrize("name", CELLS)
def test_a_resumed_run_is_bitwise_equal_to_an_uninterrupted_one(name, options, implementation):
    options = {"lr": 1e-2, "weight_decay": 0.01, **options, **implementation}
    uninterrupted_params = make_params()
    uninterrupted = optlab.create_optimizer(groups_of(uninterrupted_params), name, **options)
    _train(uninterrupted, uninterrupted_params, range(12))

    first_params = make_params()
    first = optlab.create_optimizer(groups_of(first_params), name, **options)
    _train(first, first_params, range(7))
    checkpoint = _through_file(first.state_dict())
    resumed_params = copies(first_params)
    resumed = optlab.create_optimizer(groups_of(resumed_params), name, **{**options, "lr": 0.5})
    resumed.load_state_dict(checkpoint)
    _train(resumed, resumed_params, range(7, 12))

    for index, (a, b) in enumerate(zip(resumed_params, uninterrupted_params, strict=True)):
        assert torch.equal(a, b), f"param {index}"
    saved, expected = resumed.state_dict(), uninterrupted.state_dict()
    assert saved["param_groups"] == expected["param_groups"]
    for index, state in expected["state"].items():
        assert saved["state"][index].keys() == state.keys()
        for key, value in state.items():
            assert torch.equal(saved["state"][index][key], value), f"{key} of {index}"


@pytest.mark.parametrize(
    ("name", "amsgrad", "keys"),
    [
        ("g2-outside", False, {"step", "exp_avg", "exp_avg_sq"}),
        ("g2-accum", True, {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}),
        ("belief-inside", False, {"step", "exp_avg", "exp_avg_var"}),
        ("belief-accum", True, {"step", "exp_avg", "exp_avg_var", "max_exp_avg_var"}),
    ],
)
def test_state_keys_follow_the_reference_of_the_second_moment(name, amsgrad, keys):
    params = make_params()
    optimizer = optlab.create_optimizer(params, name, amsgrad=amsgrad)
    _train(optimizer, params, range(2))
    assert set(optimizer.state[params[0]]) == keys


def test_a_torch_adam_checkpoint_loads_into_g2_outside_and_continues_as_torch_does():
    torch_params = make_params()
    reference = torch.optim.Adam(groups_of(torch_params), lr=1e-2, amsgrad=True, foreach=False)
    _train(reference, torch_params, range(5))
    ours_params = copies(torch_params)
    ours = optlab.create_optimizer(groups_of(ours_params), "g2-outside", amsgrad=True)
    ours.load_state_dict(copy.deepcopy(reference.state_dict()))
    _train(reference, torch_params, range(5, 40))
    _train(ours, ours_params, range(5, 40))
    assert_same_run(ours, ours_params, reference, torch_params)


def test_a_checkpoint_carries_its_cell_and_a_state_of_the_other_moment_is_refused():
    """The checkpoint's options win, the factors included (as its lr does); a group that
    says ``belief`` with a ``g*g`` state is refused and changes nothing."""
    params = make_params()
    g2 = optlab.create_optimizer(params, "g2-accum")
    _train(g2, params, range(3))
    belief = optlab.create_optimizer(copies(params), "belief-accum")
    belief.load_state_dict(g2.state_dict())
    assert belief.param_groups[0]["second_moment"] == "grad_sq"
    assert belief.param_groups[0]["eps"] == 1e-8

    belief_params = copies(params)
    belief = optlab.create_optimizer(belief_params, "belief-accum")
    _train(belief, belief_params, range(2))
    before = copy.deepcopy(belief.state_dict())
    tampered = copy.deepcopy(g2.state_dict())
    tampered["param_groups"][0]["second_moment"] = "belief"
    with pytest.raises(ValueError, match=r"lacks \['exp_avg_var'\]"):
        belief.load_state_dict(tampered)
    after = belief.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for index, state in before["state"].items():
        for key, value in state.items():
            assert torch.equal(after["state"][index][key], value)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_parameters_keep_float32_state(dtype):
    """eps=1e-16 accumulated in a half-precision state would be lost; the state is float32
    and equals a float32 run's on the same gradients (no decay: it depends on them only)."""
    low = [p.to(dtype) for p in make_params()[:3]]
    high = [p.float() for p in low]
    ours = optlab.create_optimizer(low, "belief-accum", lr=1e-2)
    reference = optlab.create_optimizer(high, "belief-accum", lr=1e-2)
    for step in range(5):
        generator = torch.Generator().manual_seed(step)
        grads = [torch.randn(p.shape, generator=generator).to(dtype) for p in low]
        set_grads(low, grads)
        set_grads(high, [g.float() for g in grads])
        ours.step()
        reference.step()
    for mine, theirs in zip(low, high, strict=True):
        assert mine.dtype == dtype
        for key in ("exp_avg", "exp_avg_var"):
            assert ours.state[mine][key].dtype == torch.float32
            assert torch.equal(ours.state[mine][key], reference.state[theirs][key]), key


# --------------------------------------------------------------------------
# Validation.
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"eps_mode": "insde"},
            "eps_mode must be one of 'outside', 'inside', 'accumulated', got 'insde'",
        ),
        (
            {"second_moment": "g2"},
            "second_moment must be one of 'grad_sq', 'belief', got 'g2'",
        ),
        ({"second_moment": None}, "second_moment must be one of .*, got None"),
        ({"eps": -1e-8}, "eps must be a finite number >= 0, got -1e-08"),
        ({"eps_out": float("nan")}, "eps_out must be a finite number >= 0, got nan"),
        ({"betas": (0.9, 1.0)}, r"betas\[1\] must be in \[0, 1\), got 1.0"),
        ({"rectify": 1}, "rectify must be True or False, got 1"),
        (
            {"eps_mode": "outside", "eps_out": 1e-8},
            "eps_out must be 0 with eps_mode='outside' .*got 1e-08",
        ),
        ({"fixed_decay": True}, "fixed_decay=True applies to decoupled decay only"),
        ({"amsgrad": True, "rectify": True}, "amsgrad=True cannot be combined with rectify=True"),
    ],
)
def test_bad_options_are_refused_naming_the_option_and_the_value(options, message):
    params = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match=message):
        BeliefEps(params, **options)
    optimizer = BeliefEps(params)
    with pytest.raises(ValueError, match=f"param group 1: {message}"):
        optimizer.add_param_group({"params": [torch.zeros(1, requires_grad=True)], **options})
    assert len(optimizer.param_groups) == 1


def test_a_checkpoint_with_a_bad_eps_mode_is_refused_and_changes_nothing():
    params = make_params()
    optimizer = optlab.create_optimizer(params, "g2-inside")
    _train(optimizer, params, range(2))
    checkpoint = copy.deepcopy(optimizer.state_dict())
    checkpoint["param_groups"][0]["eps_mode"] = "both"
    before = copy.deepcopy(optimizer.state_dict())
    with pytest.raises(ValueError, match="checkpoint param group 0: eps_mode must be one of"):
        optimizer.load_state_dict(checkpoint)
    assert optimizer.state_dict()["param_groups"] == before["param_groups"]


def test_registry_cells_set_both_factors_and_the_class_entry_is_the_adam_cell():
    expected = {
        "g2-outside": ("grad_sq", "outside", 1e-8),
        "g2-inside": ("grad_sq", "inside", 1e-16),
        "g2-accum": ("grad_sq", "accumulated", 1e-8),
        "belief-outside": ("belief", "outside", 1e-8),
        "belief-inside": ("belief", "inside", 1e-16),
        "belief-accum": ("belief", "accumulated", 1e-16),
    }
    for name, (second_moment, eps_mode, eps) in expected.items():
        defaults = optlab.get_spec(name).defaults()
        assert (defaults["second_moment"], defaults["eps_mode"], defaults["eps"]) == (
            second_moment,
            eps_mode,
            eps,
        ), name
        assert defaults["eps_out"] == 0.0 and defaults["rectify"] is False, name
        assert optlab.get_spec(name).cls is BeliefEps
    assert optlab.get_spec("belief-eps").defaults() == optlab.get_spec("g2-outside").defaults()
    assert optlab.BeliefEps is BeliefEps
