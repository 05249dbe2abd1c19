"""AdaBound / AMSBound against the authors' package ``adabound`` 0.0.5, and AdaBoundW's decay
against the published equations written here.

One optimizer holds sixteen param groups, one per flag combination:
the package's (amsbound x L2 weight decay or none x maximize, the package
fed the negated gradient for maximize) and the decoupled ones the package
does not have (amsbound x AdamW-style or the repository's fixed decay x
maximize), checked against :class:`PublishedAdaBound`, a float64 per-tensor
transcription of the paper's Algorithms 2 and 3 with the package's bias
correction and ``final_lr * lr / base_lr``. Every group has its own lr,
betas, final_lr, gamma and eps, over 100 steps with an lr change, odd shapes
and gradients missing on some steps: float64 within 1e-10 relative, float32
within 1e-5, for the loop, the multi-tensor path and the fused kernel.
"""

from __future__ import annotations

import copy
import inspect
import io
import itertools
import math
import re
import warnings

import adabound
import pytest
import torch

from optlab.optim import _fused
from optlab.optim.adabound import AdaBound, AdaBoundW, bounds

RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}
SHAPES = [(3,), (5, 7), (2, 3, 4)]
STEPS = 100

needs_fused = pytest.mark.skipif(
    _fused.fused_unavailable_reason("cpu") is not None,
    reason=f"fused kernels unavailable: {_fused.fused_unavailable_reason('cpu')}",
)
IMPLEMENTATIONS = [
    pytest.param({"foreach": False}, id="loop"),
    pytest.param({"foreach": True}, id="foreach"),
    pytest.param({"fused": True}, id="fused", marks=needs_fused),
]

#: Other options per group, in turn: bounds that bind from the first steps (gamma 0.2), late
#: (the default gamma 1e-3) and in between, with other lr, betas, final_lr and eps.
VARIED = [
    dict(lr=1e-2, final_lr=0.05, gamma=0.2),
    dict(lr=3e-2, betas=(0.8, 0.99), final_lr=0.1, gamma=1e-3, eps=1e-6),
    dict(lr=2e-2, betas=(0.95, 0.9), final_lr=0.005, gamma=0.05),
]
PACKAGE_FLAGS = [
    dict(amsbound=amsbound, weight_decay=weight_decay, maximize=maximize)
    for amsbound, weight_decay, maximize in itertools.product(
        [False, True], [0.0, 0.1], [False, True]
    )
]
DECOUPLED_FLAGS = [
    dict(amsbound=amsbound, weight_decay=0.1, weight_decouple=True, fixed_decay=fixed, maximize=m)
    for amsbound, fixed, m in itertools.product([False, True], [False, True], [False, True])
]


def with_varied(flags: list[dict]) -> list[dict]:
    return [{**combo, **VARIED[i % len(VARIED)]} for i, combo in enumerate(flags)]


def make_params(dtype: torch.dtype, groups: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [
        torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype).requires_grad_()
        for _ in range(groups)
        for shape in SHAPES
    ]


def groups_of(params, options: list[dict]) -> list[dict]:
    size = len(SHAPES)
    return [{"params": params[size * i : size * (i + 1)], **o} for i, o in enumerate(options)]


def gradients(params, step: int, generator: torch.Generator) -> list[torch.Tensor | None]:
    """A noisy quadratic's gradient; none for the first (5, 7) parameter every fourth step and
    for the whole last group every seventh."""
    grads = []
    last_group = len(params) - len(SHAPES)
    for index, param in enumerate(params):
        noise = torch.randn(param.shape, generator=generator, dtype=torch.float64)
        grad = (2 * (param.detach().double() - 1.0) + 0.5 * noise).to(param.dtype)
        missing = (index == 1 and step % 4 == 3) or (index >= last_group and step % 7 == 0)
        grads.append(None if missing else grad)
    return grads


def set_grads(params, grads) -> None:
    for param, grad in zip(params, grads, strict=True):
        param.grad = None if grad is None else grad.clone()


def assert_rel_close(actual, expected, rtol: float, what: str) -> None:
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale, msg=what)


class PublishedAdaBound:
    """Luo et al., ICLR 2019, Algorithms 2 (AdaBound) and 3 (AMSBound), per tensor, in float64.

    With the package's bias correction ``lr sqrt(1 - beta2^t) / (1 - beta1^t)``,
    its bounds ``final_lr * lr / base_lr * (1 -+ 1 / (gamma t (+ 1)))``, and the
    decay options (L2, AdamW-style decoupled, the repository's AdaBoundW
    ``p - wd * p``) and maximize.
    """

    def __init__(self, params, options: list[dict]) -> None:
        defaults = dict(
            lr=1e-3, betas=(0.9, 0.999), final_lr=0.1, gamma=1e-3, eps=1e-8, weight_decay=0.0,
            amsbound=False, weight_decouple=False, fixed_decay=False, maximize=False,
        )  # fmt: skip
        self.param_groups = groups_of(params, [{**defaults, **o} for o in options])
        for group in self.param_groups:
            group["base_lr"] = group["lr"]
        self.state: dict[int, dict] = {}
        self.clipped = {"lower": 0, "upper": 0, "none": 0}  # coordinates per side of the clip

    def step(self) -> None:
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._step(param, param.grad.double(), group)

    def _step(self, param: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        state = self.state.setdefault(id(param), {"t": 0, "m": 0.0, "v": 0.0, "v_max": 0.0})
        state["t"] += 1
        t, (beta1, beta2), wd = state["t"], group["betas"], group["weight_decay"]
        p = param.detach().double()
        g = -grad if group["maximize"] else grad
        if group["weight_decouple"]:
            p = p - (wd if group["fixed_decay"] else group["lr"] * wd) * p
        else:
            g = g + wd * p
        state["m"] = beta1 * state["m"] + (1 - beta1) * g
        state["v"] = beta2 * state["v"] + (1 - beta2) * g**2
        v = state["v"]
        if group["amsbound"]:
            state["v_max"] = torch.maximum(torch.as_tensor(state["v_max"]), v)
            v = state["v_max"]
        alpha = group["lr"] * math.sqrt(1 - beta2**t) / (1 - beta1**t)
        final = group["final_lr"] * group["lr"] / group["base_lr"]
        lower = final * (1 - 1 / (group["gamma"] * t + 1))
        upper = final * (1 + 1 / (group["gamma"] * t))
        adam_step = alpha / (torch.sqrt(v) + group["eps"])
        eta = torch.clamp(adam_step, lower, upper)
        below, above = int((adam_step < lower).sum()), int((adam_step > upper).sum())
        self.clipped["lower"] += below
        self.clipped["upper"] += above
        self.clipped["none"] += adam_step.numel() - below - above
        with torch.no_grad():
            param.copy_(p - eta * state["m"])


def package(params, options: list[dict]) -> adabound.AdaBound:
    """The package's AdaBound, maximize dropped from the groups (its gradient is negated)."""
    groups = [{k: v for k, v in o.items() if k != "maximize"} for o in options]
    return adabound.AdaBound(groups_of(params, groups))


def package_step(optimizer: adabound.AdaBound, maximized: list[bool]) -> None:
    """Step the package; for groups that maximize, on the negated gradient."""
    for group, maximize in zip(optimizer.param_groups, maximized, strict=True):
        for param in group["params"]:
            if maximize and param.grad is not None:
                param.grad.neg_()
    with warnings.catch_warnings():  # its deprecated add(Number, Tensor) calls
        warnings.simplefilter("ignore", UserWarning)
        optimizer.step()


def package_state(optimizer, param) -> dict:
    state = optimizer.state[param]
    return {"t": state["step"], "m": state["exp_avg"], "v": state["exp_avg_sq"]}


def published_state(optimizer, param) -> dict:
    state = optimizer.state[id(param)]
    return {"t": state["t"], "m": state["m"], "v": state["v"]}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_matches_the_package_and_the_published_equations_for_every_flag(implementation, dtype):
    """Fused in float32: the combinations without amsbound only, so that this file compiles
    three kernels, not four (AMSBound's float32 kernel is the float64 one's maths in float32)."""
    package_flags, decoupled_flags = PACKAGE_FLAGS, DECOUPLED_FLAGS
    if dtype == torch.float32 and implementation.get("fused"):
        package_flags = [f for f in package_flags if not f["amsbound"]]
        decoupled_flags = [f for f in decoupled_flags if not f["amsbound"]]
    package_options = with_varied(package_flags)
    published_options = with_varied(decoupled_flags)
    options = package_options + published_options
    ours_params = make_params(dtype, len(options))
    split = len(SHAPES) * len(package_options)
    package_params = [p.detach().clone().requires_grad_() for p in ours_params[:split]]
    published_params = [p.detach().clone() for p in ours_params[split:]]
    oracles = [
        (package(package_params, package_options), package_params, package_state),
        (PublishedAdaBound(published_params, published_options), published_params, published_state),
    ]
    ours = AdaBound(groups_of(ours_params, options), **implementation)
    generator = torch.Generator().manual_seed(1)
    for step in range(STEPS):
        if step == 60:  # the bounds follow: final_lr * lr / base_lr
            for optimizer in (ours, oracles[0][0], oracles[1][0]):
                for group in optimizer.param_groups:
                    group["lr"] *= 0.5
        grads = gradients(ours_params, step, generator)
        set_grads(ours_params, grads)
        set_grads(package_params, grads[:split])
        set_grads(published_params, grads[split:])
        ours.step()
        package_step(oracles[0][0], [o["maximize"] for o in package_options])
        oracles[1][0].step()
    rtol = RTOL[dtype]
    references = package_params + published_params
    reference_state = [oracles[0][2]] * split + [oracles[1][2]] * (len(references) - split)
    owners = [oracles[0][0]] * split + [oracles[1][0]] * (len(references) - split)
    start = make_params(dtype, len(options))
    for index, (mine, reference) in enumerate(zip(ours_params, references, strict=True)):
        group = ours.param_groups[index // len(SHAPES)]
        what = f"param {index} ({ {k: v for k, v in group.items() if k != 'params'} })"
        assert_rel_close(mine.detach().double(), reference.detach().double(), rtol, what)
        state, expected = ours.state[mine], reference_state[index](owners[index], reference)
        assert state["step"] == expected["t"], what
        assert_rel_close(state["exp_avg"].double(), expected["m"].double(), rtol, f"m of {what}")
        assert_rel_close(state["exp_avg_sq"].double(), expected["v"].double(), rtol, f"v of {what}")
        assert ("max_exp_avg_sq" in state) == group["amsbound"], what
        assert (mine.detach() - start[index]).abs().max() > 1e-2, f"{what} did not move"
    clipped = oracles[1][0].clipped
    assert min(clipped.values()) > 0.02 * sum(clipped.values()), f"the clip sides met: {clipped}"


def test_decoupled_decay_agrees_with_pytorch_optimizer_where_it_has_no_1e_15_in_the_root():
    """A cross-check of the decoupled options (pytorch_optimizer 4.1.0's AdaBound has them).

    It adds 1e-15 to ``v`` inside the root and counts steps per group, so it is
    compared with every gradient given, to 1e-10, not as an oracle.
    """
    import pytorch_optimizer

    options = [
        dict(weight_decouple=True, fixed_decay=fixed, amsbound=amsbound, **VARIED[i % 3])
        for i, (fixed, amsbound) in enumerate(itertools.product([False, True], [False, True]))
    ]
    ours_params = make_params(torch.float64, len(options))
    theirs_params = [p.detach().clone().requires_grad_() for p in ours_params]
    ours = AdaBound(groups_of(ours_params, options), weight_decay=0.1, foreach=False)
    renamed = [{("ams_bound" if k == "amsbound" else k): v for k, v in o.items()} for o in options]
    theirs = pytorch_optimizer.AdaBound(groups_of(theirs_params, renamed), weight_decay=0.1)
    generator = torch.Generator().manual_seed(4)
    for step in range(100):
        grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(
            gradients(ours_params, step, generator), ours_params, strict=True)]  # fmt: skip
        set_grads(ours_params, grads)
        set_grads(theirs_params, grads)
        ours.step()
        theirs.step()
    for mine, reference in zip(ours_params, theirs_params, strict=True):
        assert_rel_close(mine.detach(), reference.detach(), 1e-10, "param")


def test_gamma_zero_is_adam_with_eps_outside_the_root():
    """Bounds [0, inf): with eps=0 this is torch.optim.Adam exactly (up to rounding)."""
    assert bounds(0.1, 0.0, 7) == (0.0, math.inf)
    ours_params, adam_params = make_params(torch.float64, 1), make_params(torch.float64, 1)
    ours = AdaBound(ours_params, lr=1e-2, gamma=0.0, eps=0.0)
    adam = torch.optim.Adam(adam_params, lr=1e-2, eps=0.0)
    generator = torch.Generator().manual_seed(5)
    for step in range(50):
        grads = gradients(ours_params, step, generator)
        set_grads(ours_params, grads)
        set_grads(adam_params, grads)
        ours.step()
        adam.step()
    for mine, reference in zip(ours_params, adam_params, strict=True):
        assert_rel_close(mine.detach(), reference.detach(), 1e-12, "param")


def test_adaboundw_is_adabound_with_the_repositorys_fixed_decoupled_decay():
    w_params, params = make_params(torch.float64, 1), make_params(torch.float64, 1)
    w = AdaBoundW(w_params, lr=1e-2, weight_decay=0.01, amsbound=True)
    assert w.param_groups[0]["weight_decouple"] and w.param_groups[0]["fixed_decay"]
    plain = AdaBound(
        params, lr=1e-2, weight_decay=0.01, amsbound=True, weight_decouple=True, fixed_decay=True
    )
    for step in range(20):
        grads = gradients(w_params, step, torch.Generator().manual_seed(step))
        set_grads(w_params, grads)
        set_grads(params, grads)
        w.step()
        plain.step()
    for mine, reference in zip(w_params, params, strict=True):
        assert torch.equal(mine, reference)
    ours = inspect.signature(AdaBoundW.__init__).parameters
    theirs = inspect.signature(adabound.AdaBound.__init__).parameters
    assert list(ours)[: len(theirs)] == list(theirs)


# ----- base_lr: where the package loses it ------------------------------------------------


def test_a_group_added_later_is_stepped_with_its_own_base_lr():
    """The package never steps a group added after construction; optlab steps it."""
    params = make_params(torch.float64, 2)
    theirs = adabound.AdaBound(params[:3], lr=1e-2)
    theirs.add_param_group({"params": params[3:], "lr": 3e-2, "gamma": 0.1})
    ours_params = [p.detach().clone() for p in params]
    ours = AdaBound(ours_params[:3], lr=1e-2)
    ours.add_param_group({"params": ours_params[3:], "lr": 3e-2, "gamma": 0.1})
    assert [g["base_lr"] for g in ours.param_groups] == [1e-2, 3e-2]
    published_params = [p.detach().clone() for p in params]
    published = PublishedAdaBound(published_params, [{"lr": 1e-2}, {"lr": 3e-2, "gamma": 0.1}])
    generator = torch.Generator().manual_seed(6)
    for step in range(10):
        grads = gradients(params, step, generator)
        for tensors in (params, ours_params, published_params):
            set_grads(tensors, grads)
        package_step(theirs, [False, False])
        ours.step()
        published.step()
    assert all(
        torch.equal(p, q)
        for p, q in zip(params[3:], make_params(torch.float64, 2)[3:], strict=True)
    )
    for mine, reference in zip(ours_params, published_params, strict=True):
        assert_rel_close(mine, reference, 1e-10, "param")


def through_file(state_dict: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_checkpoint_round_trip_continues_bitwise(implementation):
    """Saved at step 7 after the lr was halved (the second group without state yet), reloaded into
    an optimizer built with another lr: base_lr comes back with the checkpoint, the run bitwise."""
    defaults = {"lr": 1e-2, "weight_decay": 0.01, **implementation}
    options = [{"amsbound": True, "gamma": 0.1}, {"betas": (0.8, 0.99), "maximize": True}]
    generator = torch.Generator().manual_seed(2)
    all_grads = [gradients(make_params(torch.float64, 2), step, generator) for step in range(20)]
    for grads in all_grads[:8]:
        grads[len(SHAPES) :] = [None] * len(SHAPES)
    straight_params, first_params = make_params(torch.float64, 2), make_params(torch.float64, 2)
    straight = AdaBound(groups_of(straight_params, options), **defaults)
    first = AdaBound(groups_of(first_params, options), **defaults)
    for step, grads in enumerate(all_grads):
        for optimizer in (straight, first) if step == 3 else ():
            for group in optimizer.param_groups:
                group["lr"] *= 0.5
        set_grads(straight_params, grads)
        straight.step()
        if step < 7:
            set_grads(first_params, grads)
            first.step()
    saved = through_file(first.state_dict())
    assert [group["base_lr"] for group in saved["param_groups"]] == [1e-2, 1e-2]
    resumed = AdaBound(groups_of(first_params, options), **{**defaults, "lr": 0.5})
    resumed.load_state_dict(saved)
    for grads in all_grads[7:]:
        set_grads(first_params, grads)
        resumed.step()
    for mine, theirs in zip(first_params, straight_params, strict=True):
        assert torch.equal(mine, theirs)
        assert straight.state[theirs].keys() == resumed.state[mine].keys()
        for key, value in straight.state[theirs].items():
            assert torch.equal(resumed.state[mine][key], value), key


def test_a_package_checkpoint_loads_and_continues_as_the_package():
    """Its Python-int steps and groups without maximize / base_lr load; base_lr is the resuming
    optimizer's lr, as in the package."""
    params = make_params(torch.float64, 2)
    options = [{"amsbound": True, "gamma": 0.1}, {"weight_decay": 0.1}]
    theirs = adabound.AdaBound(groups_of(params, options), lr=1e-2)
    generator = torch.Generator().manual_seed(3)
    for step in range(6):
        set_grads(params, gradients(params, step, generator))
        package_step(theirs, [False, False])
    ours_params = [p.detach().clone() for p in params]
    ours = AdaBound(groups_of(ours_params, [{}, {}]), lr=1e-2)
    ours.load_state_dict(copy.deepcopy(theirs.state_dict()))
    assert [g["amsbound"] for g in ours.param_groups] == [True, False]
    for step in range(6, 20):
        grads = gradients(params, step, generator)
        set_grads(params, grads)
        set_grads(ours_params, grads)
        package_step(theirs, [False, False])
        ours.step()
    for mine, reference in zip(ours_params, params, strict=True):
        assert_rel_close(mine, reference.detach(), 1e-10, "param")


# ----- refusals, low precision ------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(lr=-1e-3), "lr must be a finite number >= 0, got -0.001"),
        (dict(betas=(1.0, 0.999)), "betas[0] must be in [0, 1), got 1.0"),
        (dict(betas=(0.9, 1.0)), "betas[1] must be in [0, 1), got 1.0"),
        (dict(final_lr=-0.1), "final_lr must be a finite number >= 0, got -0.1"),
        (dict(gamma=1.0), "gamma must be in [0, 1), got 1.0"),
        (dict(gamma=-1e-3), "gamma must be in [0, 1), got -0.001"),
        (dict(eps=-1e-8), "eps must be a finite number >= 0, got -1e-08"),
        (dict(weight_decay=float("inf")), "weight_decay must be a finite number >= 0, got inf"),
        (dict(amsbound="yes"), "amsbound must be True or False, got 'yes'"),
        (dict(weight_decouple=1), "weight_decouple must be True or False, got 1"),
        (dict(fixed_decay=None), "fixed_decay must be True or False, got None"),
    ],
)
def test_bad_hyperparameters_are_refused_by_name_and_change_nothing(options, message):
    with pytest.raises(ValueError) as raised:
        AdaBound([torch.zeros(2, requires_grad=True)], **options)
    assert str(raised.value) == message
    param = torch.zeros(2, requires_grad=True)
    optimizer = AdaBound([param], lr=0.1)
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


def test_a_negative_base_lr_is_refused():
    with pytest.raises(ValueError, match=r"param group 0: base_lr must be a finite number >= 0"):
        AdaBound([{"params": [torch.zeros(2)], "base_lr": -1.0}])


def test_low_precision_parameters_keep_float32_state():
    param = torch.randn(5, dtype=torch.float64).to(torch.bfloat16).requires_grad_()
    reference = param.detach().float().clone()
    optimizer = AdaBound([param], lr=1e-2, amsbound=True)
    reference_optimizer = AdaBound([reference], lr=1e-2, amsbound=True)
    for step in range(10):
        grad = torch.randn(5, generator=torch.Generator().manual_seed(step))
        param.grad, reference.grad = grad.to(torch.bfloat16), grad.to(torch.bfloat16).float()
        optimizer.step()
        reference_optimizer.step()
        with torch.no_grad():
            reference.copy_(reference.to(torch.bfloat16).float())
    assert optimizer.state[param]["max_exp_avg_sq"].dtype == torch.float32
    assert torch.equal(param.float(), reference)
