"""Schedule-Free AdamW against the official ``schedulefree`` 1.4.1 and against the paper's form.

Oracle: ``schedulefree.AdamWScheduleFree`` (both its loop and its foreach
path). Every flag combination (weight decay, warmup, ``r``, ``weight_lr_power``,
maximize: 32) runs at once, one param group each with its own lr, betas and
eps, for 120 steps, with odd shapes and a parameter whose gradient is missing
every third step, switching to eval mode and back every 30 steps, on each
implementation (loop, foreach, fused): float64 within 1e-10 of the oracle
(parameters at ``y`` and at ``x``, state and the groups' counters), float32
within 1e-5. A second oracle writes the method as the paper does, with
``x``, ``y`` and ``z`` kept explicitly (Defazio et al., "The Road Less
Scheduled", NeurIPS 2024, Algorithm 1 with the package's Adam normalisation
and weights), so the y-only update and ``eval()``'s recovery of ``x`` are
checked too.

The fused kernels run here on one thread: on a busy 2-core machine an
OpenMP kernel waits ~30 ms a call for its threads, and these tests make a few
thousand calls on tiny tensors.
"""

from __future__ import annotations

import copy
import io
import itertools

import pytest
import schedulefree
import torch

from optlab.optim import _fused
from optlab.optim.schedule_free import AdamWScheduleFree

STEPS = 120
EVAL_EVERY = 30
SHAPES = [(3,), (5, 7), (2, 3, 4)]
MISSING = 2  # this parameter of every group has no gradient on every third step
RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}
COUNTERS = ("k", "train_mode", "weight_sum", "lr_max", "scheduled_lr")

_SETTINGS = itertools.cycle(
    [
        (5e-3, (0.9, 0.999), 1e-8),
        (1e-2, (0.95, 0.99), 1e-6),
        (2e-2, (0.5, 0.9), 1e-8),
        (3e-3, (0.98, 0.9999), 1e-3),
    ]
)
#: One param group per combination of the options that change the update.
COMBOS = [
    {
        "weight_decay": weight_decay,
        "warmup_steps": warmup_steps,
        "r": r,
        "weight_lr_power": power,
        "maximize": maximize,
        **dict(zip(("lr", "betas", "eps"), next(_SETTINGS), strict=True)),
    }
    for weight_decay, warmup_steps, r, power, maximize in itertools.product(
        [0.0, 0.05], [0, 10], [0.0, 1.0], [2.0, 0.0], [False, True]
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
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_params(dtype: torch.dtype, seed: int = 0, combos=COMBOS) -> list[list[torch.Tensor]]:
    """One list of parameters (the odd shapes) per group."""
    generator = torch.Generator().manual_seed(seed)
    return [
        [torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype) for shape in SHAPES]
        for _ in combos
    ]


def gradients(points, step: int) -> list[list[torch.Tensor | None]]:
    """A noisy quadratic's gradients at ``points``; ``None`` for MISSING every third step."""
    generator = torch.Generator().manual_seed(1000 + step)
    grads = []
    for row_points in points:
        row = []
        for index, point in enumerate(row_points):
            noise = torch.randn(point.shape, generator=generator, dtype=torch.float64)
            grad = (2 * (point.double() - 0.5) + noise).to(point.dtype)
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


def optlab_groups(groups, combos=COMBOS):
    return [{"params": params, **combo} for params, combo in zip(groups, combos, strict=True)]


def package_groups(groups, combos=COMBOS):
    return [
        {"params": params, **{k: v for k, v in combo.items() if k != "maximize"}}
        for params, combo in zip(groups, combos, strict=True)
    ]


def assert_rel_close(actual, expected, rtol, what) -> None:
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale, msg=what)


def assert_params_close(ours, theirs, rtol, what) -> None:
    for mine_list, theirs_list in zip(ours, theirs, strict=True):
        for index, (mine, other) in enumerate(zip(mine_list, theirs_list, strict=True)):
            assert_rel_close(mine, other, rtol, f"{what}, param {index}")


def through_file(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# --------------------------------------------------------------------------
# The oracles.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("flags", IMPLEMENTATIONS)
def test_every_combination_matches_the_schedulefree_package(flags, dtype):
    our_groups, reference_groups = make_params(dtype), make_params(dtype)
    ours = AdamWScheduleFree(optlab_groups(our_groups), **flags)
    reference = schedulefree.AdamWScheduleFree(
        package_groups(reference_groups), foreach=flags.get("foreach", True)
    )
    ours.train()  # a no-op: optlab starts in train mode, the package in eval mode
    reference.train()
    maximized = {index for index, combo in enumerate(COMBOS) if combo["maximize"]}
    rtol = RTOL[dtype]
    for step in range(STEPS):
        grads = gradients(our_groups, step)
        set_grads(our_groups, grads)
        set_grads(reference_groups, grads, negate=maximized)  # the package has no maximize
        ours.step()
        reference.step()
        if step % EVAL_EVERY == EVAL_EVERY - 1:
            ours.eval()
            reference.eval()
            assert_params_close(our_groups, reference_groups, rtol, f"x after step {step}")
            ours.train()
            reference.train()
    assert_params_close(our_groups, reference_groups, rtol, "y")
    for mine_list, theirs_list in zip(our_groups, reference_groups, strict=True):
        for mine, theirs in zip(mine_list, theirs_list, strict=True):
            assert set(ours.state[mine]) == set(reference.state[theirs]) == {"z", "exp_avg_sq"}
            for key in ("z", "exp_avg_sq"):
                assert_rel_close(ours.state[mine][key], reference.state[theirs][key], rtol, key)
    for mine, theirs in zip(ours.param_groups, reference.param_groups, strict=True):
        assert {key: mine[key] for key in COUNTERS} == pytest.approx(
            {key: theirs[key] for key in COUNTERS}, rel=1e-14
        )
    assert (our_groups[0][1] - make_params(dtype)[0][1]).abs().max() > 0.1  # it moved


class PublishedScheduleFree:
    """Schedule-Free AdamW with x, y and z kept explicitly, per tensor in float64.

    z_{t+1} = z_t - lr_t * u_t,  x_{t+1} = (1 - c_{t+1}) x_t + c_{t+1} z_{t+1},
    y_t = (1 - beta1) z_t + beta1 x_t, u_t = g(y_t) / (sqrt(v_t / bc2) + eps) + wd * y_t,
    c_{t+1} = w_t / (w_1 + ... + w_t), w_t = t^r * max(lr_1..lr_t)^weight_lr_power.
    """

    def __init__(self, groups, combos):
        self.combos = combos
        self.x = [[p.clone() for p in params] for params in groups]
        self.z = [[p.clone() for p in params] for params in groups]
        self.v = [[torch.zeros_like(p) for p in params] for params in groups]
        self.t, self.weights, self.lrs = 0, [[] for _ in groups], [[] for _ in groups]

    def y(self) -> list[list[torch.Tensor]]:
        return [
            [
                (1 - combo["betas"][0]) * z + combo["betas"][0] * x
                for x, z in zip(xs, zs, strict=True)
            ]
            for xs, zs, combo in zip(self.x, self.z, self.combos, strict=True)
        ]

    def step(self, step: int) -> None:
        ys = self.y()
        grads = gradients(ys, step)
        self.t += 1
        t = self.t
        for index, combo in enumerate(self.combos):
            beta1, beta2 = combo["betas"]
            warmup = combo["warmup_steps"]
            lr = combo["lr"] * (t / warmup if t <= warmup else 1.0)
            self.lrs[index].append(lr)
            self.weights[index].append(
                t ** combo["r"] * max(self.lrs[index]) ** combo["weight_lr_power"]
            )
            c = self.weights[index][-1] / sum(self.weights[index])
            for j, g in enumerate(grads[index]):
                if g is None:
                    continue
                g = -g if combo["maximize"] else g
                v = self.v[index][j] = beta2 * self.v[index][j] + (1 - beta2) * g * g
                u = (
                    g / ((v / (1 - beta2**t)).sqrt() + combo["eps"])
                    + combo["weight_decay"] * ys[index][j]
                )
                self.z[index][j] = self.z[index][j] - lr * u
                self.x[index][j] = (1 - c) * self.x[index][j] + c * self.z[index][j]


def test_every_combination_matches_the_paper_with_x_y_and_z_kept_explicitly():
    """``missing`` grads: the paper's x and z of that tensor stay (the package's y and z do)."""
    our_groups = make_params(torch.float64)
    ours = AdamWScheduleFree(optlab_groups(our_groups), foreach=False)
    published = PublishedScheduleFree(make_params(torch.float64), COMBOS)
    for step in range(STEPS):
        set_grads(our_groups, gradients(our_groups, step))
        ours.step()
        published.step(step)
    assert_params_close(our_groups, published.y(), 1e-10, "y")
    for params, zs in zip(our_groups, published.z, strict=True):
        for param, z in zip(params, zs, strict=True):
            assert_rel_close(ours.state[param]["z"], z, 1e-10, "z")
    ours.eval()
    assert_params_close(our_groups, published.x, 1e-10, "x")


# --------------------------------------------------------------------------
# Train and eval mode.
# --------------------------------------------------------------------------


def small(dtype=torch.float64, **options):
    params = make_params(dtype)[0]
    return params, AdamWScheduleFree(params, lr=1e-2, **options)


def train_steps(params, optimizer, steps) -> None:
    for step in steps:
        set_grads([params], gradients([params], step))
        optimizer.step()


def test_a_step_in_eval_mode_is_refused_and_changes_nothing():
    params, optimizer = small()
    train_steps(params, optimizer, range(5))
    optimizer.eval()
    before = copy.deepcopy(optimizer.state_dict())
    values = [p.clone() for p in params]
    set_grads([params], gradients([params], 5))
    calls = []
    with pytest.raises(RuntimeError, match=r"step\(\) in eval mode \(param group 0\).*train\(\)"):
        optimizer.step(lambda: calls.append(1))
    assert not calls  # the closure was not evaluated either
    assert all(torch.equal(p, v) for p, v in zip(params, values, strict=True))
    after = optimizer.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for index, state in before["state"].items():
        for key, value in state.items():
            assert torch.equal(after["state"][index][key], value)
    optimizer.train()
    train_steps(params, optimizer, range(5, 6))  # and steps again once in train mode
    assert optimizer.param_groups[0]["k"] == 6


def test_eval_and_train_are_idempotent_and_inverse_up_to_rounding():
    params, optimizer = small()
    train_steps(params, optimizer, range(10))
    y = [p.clone() for p in params]
    optimizer.eval()
    x = [p.clone() for p in params]
    assert not torch.allclose(x[1], y[1])
    optimizer.eval()  # already in eval mode: nothing happens
    assert all(torch.equal(p, v) for p, v in zip(params, x, strict=True))
    optimizer.train()
    optimizer.train()
    for param, value in zip(params, y, strict=True):
        torch.testing.assert_close(param, value, rtol=1e-14, atol=1e-14)


def test_a_fresh_optimizer_steps_without_train_and_eval_before_any_step_moves_nothing():
    params, optimizer = small()
    start = [p.clone() for p in params]
    optimizer.eval()  # no z yet: only the mode changes
    assert all(torch.equal(p, v) for p, v in zip(params, start, strict=True))
    assert optimizer.param_groups[0]["train_mode"] is False
    optimizer.train()
    train_steps(params, optimizer, range(3))
    assert optimizer.param_groups[0]["k"] == 3


def test_a_group_added_in_eval_mode_starts_in_eval_mode():
    params, optimizer = small()
    train_steps(params, optimizer, range(3))
    optimizer.eval()
    optimizer.add_param_group({"params": [torch.zeros(2, dtype=torch.float64)]})
    assert [g["train_mode"] for g in optimizer.param_groups] == [False, False]
    optimizer.train()
    assert [g["train_mode"] for g in optimizer.param_groups] == [True, True]
    optimizer.add_param_group({"params": [torch.zeros(2, dtype=torch.float64)]})
    assert optimizer.param_groups[-1]["train_mode"] is True
    assert optimizer.param_groups[-1]["k"] == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_computes_in_float32_and_keeps_float32_state(dtype):
    """Oracle: the same optimizer on float32 copies, rounded to ``dtype`` after each change."""
    generator = torch.Generator().manual_seed(7)
    low = torch.randn(4, 3, generator=generator).to(dtype)
    high = low.float()
    low_opt = AdamWScheduleFree([low], lr=1e-2, weight_decay=0.1, warmup_steps=5)
    high_opt = AdamWScheduleFree([high], lr=1e-2, weight_decay=0.1, warmup_steps=5)
    for step in range(30):
        grad = (2 * (low.float() - 1) + torch.randn(4, 3, generator=generator)).to(dtype)
        low.grad, high.grad = grad, grad.float()
        low_opt.step()
        high_opt.step()
        with torch.no_grad():
            high.copy_(high.to(dtype).float())
        if step % 10 == 9:
            for optimizer in (low_opt, high_opt):
                optimizer.eval()
            with torch.no_grad():
                high.copy_(high.to(dtype).float())
            assert torch.equal(low.float(), high)
            for optimizer in (low_opt, high_opt):
                optimizer.train()
            with torch.no_grad():
                high.copy_(high.to(dtype).float())
    for key in ("z", "exp_avg_sq"):
        assert low_opt.state[low][key].dtype == torch.float32
        assert torch.equal(low_opt.state[low][key], high_opt.state[high][key])
    assert torch.equal(low.float(), high)


def test_grad_scaler_skips_a_step_with_inf_grads_without_counting_it():
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = AdamWScheduleFree([param], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    scaler.scale((param * torch.tensor([1.0, float("inf"), 0.0])).sum()).backward()
    scaler.step(optimizer)
    scaler.update()
    assert optimizer.param_groups[0]["k"] == 0 and torch.equal(param.detach(), torch.ones(3))
    optimizer.zero_grad()
    scaler.scale((param * 4.0).sum()).backward()
    scaler.step(optimizer)
    assert optimizer.param_groups[0]["k"] == 1 and not torch.equal(param.detach(), torch.ones(3))


def _failing_compile(self, num_scalars):
    raise _fused.FusedCompileError("simulated: the C++ compiler crashed")


@needs_fused
def test_a_failed_fused_compile_changes_neither_parameters_nor_counters(monkeypatch):
    monkeypatch.setattr(_fused, "_kernels", {})
    monkeypatch.setattr(_fused._Kernel, "load", lambda self, num_scalars: False)
    monkeypatch.setattr(_fused._Kernel, "compile", _failing_compile)
    params, optimizer = small(fused=True)
    before = copy.deepcopy(optimizer.state_dict())
    values = [p.clone() for p in params]
    set_grads([params], gradients([params], 0))
    with pytest.raises(RuntimeError, match="simulated"):
        optimizer.step()
    assert all(torch.equal(p, v) for p, v in zip(params, values, strict=True))
    assert optimizer.state_dict()["param_groups"] == before["param_groups"]


# --------------------------------------------------------------------------
# Checkpoints.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("saved_in", ["train", "eval"])
@pytest.mark.parametrize("flags", IMPLEMENTATIONS)
def test_checkpoint_round_trip_is_bitwise(flags, saved_in):
    """Saved in eval mode (the package's advice), the parameters saved are x; both
    runs switch to eval and back at the save point."""
    combos = COMBOS[::5]

    def run(optimizer, groups, steps):
        for step in steps:
            set_grads(groups, gradients(groups, step))
            optimizer.step()

    straight_groups, first_groups = make_params(torch.float64, combos=combos), None
    straight = AdamWScheduleFree(optlab_groups(straight_groups, combos), **flags)
    run(straight, straight_groups, range(16))
    if saved_in == "eval":
        straight.eval()
        straight.train()
    run(straight, straight_groups, range(16, 40))

    first_groups = make_params(torch.float64, combos=combos)
    first = AdamWScheduleFree(optlab_groups(first_groups, combos), **flags)
    run(first, first_groups, range(16))
    if saved_in == "eval":
        first.eval()
    checkpoint = through_file({"params": first_groups, "optimizer": first.state_dict()})
    resumed_groups = checkpoint["params"]
    resumed = AdamWScheduleFree([{"params": p, "lr": 0.5} for p in resumed_groups], **flags)
    resumed.load_state_dict(checkpoint["optimizer"])
    resumed.train()
    run(resumed, resumed_groups, range(16, 40))
    for mine_list, theirs_list in zip(resumed_groups, straight_groups, strict=True):
        for mine, theirs in zip(mine_list, theirs_list, strict=True):
            assert torch.equal(mine, theirs)
            for key, value in straight.state[theirs].items():
                assert torch.equal(resumed.state[mine][key], value), key
    assert resumed.state_dict()["param_groups"] == straight.state_dict()["param_groups"]


@pytest.mark.parametrize("direction", ["package->optlab", "optlab->package"])
def test_checkpoints_move_between_the_package_and_optlab(direction):
    combos = [{k: v for k, v in c.items() if k != "maximize"} for c in COMBOS[::7]]

    def make(cls, groups):
        return cls(optlab_groups(groups, combos))

    writer_cls, reader_cls = (
        (schedulefree.AdamWScheduleFree, AdamWScheduleFree)
        if direction == "package->optlab"
        else (AdamWScheduleFree, schedulefree.AdamWScheduleFree)
    )
    reference_groups = make_params(torch.float64, combos=combos)
    writer_groups = [[p.clone() for p in params] for params in reference_groups]
    reference, writer = make(reader_cls, reference_groups), make(writer_cls, writer_groups)
    reference.train()
    writer.train()
    for step in range(10):
        grads = gradients(reference_groups, step)
        set_grads(reference_groups, grads)
        set_grads(writer_groups, grads)
        reference.step()
        writer.step()
    writer.eval()  # the package's advice: save in eval mode
    reference.eval()
    saved = through_file({"params": writer_groups, "optimizer": writer.state_dict()})
    reader_groups = saved["params"]
    reader = make(reader_cls, reader_groups)
    reader.load_state_dict(saved["optimizer"])
    assert set(reader.state_dict()["param_groups"][0]) >= set(
        writer.state_dict()["param_groups"][0]
    ) - {"maximize", "fused"}
    reader.train()
    reference.train()
    for step in range(10, 30):
        grads = gradients(reference_groups, step)
        set_grads(reference_groups, grads)
        set_grads(reader_groups, grads)
        reference.step()
        reader.step()
    assert_params_close(reader_groups, reference_groups, 1e-12, "y")
    for group_params, reference_params in zip(reader_groups, reference_groups, strict=True):
        for mine, theirs in zip(group_params, reference_params, strict=True):
            for key in ("z", "exp_avg_sq"):
                assert_rel_close(reader.state[mine][key], reference.state[theirs][key], 1e-12, key)


# --------------------------------------------------------------------------
# Validation.
# --------------------------------------------------------------------------

INVALID = [
    ({"lr": -1e-3}, "lr must be a finite number >= 0, got -0.001"),
    ({"betas": (0.0, 0.999)}, "betas[0] must be in (0, 1), got 0.0"),
    ({"betas": (1.0, 0.999)}, "betas[0] must be in [0, 1), got 1.0"),
    ({"betas": (0.9, 1.0)}, "betas[1] must be in [0, 1), got 1.0"),
    ({"betas": (0.9,)}, "betas must be a pair (beta1, beta2), got (0.9,)"),
    ({"eps": -1e-8}, "eps must be a finite number >= 0, got -1e-08"),
    ({"weight_decay": -0.1}, "weight_decay must be a finite number >= 0, got -0.1"),
    ({"warmup_steps": -1}, "warmup_steps must be a finite number >= 0, got -1"),
    ({"r": float("nan")}, "r must be in (-inf, inf), got nan"),
    ({"weight_lr_power": -2.0}, "weight_lr_power must be a finite number >= 0, got -2.0"),
    ({"maximize": "no"}, "maximize must be True or False, got 'no'"),
]


@pytest.mark.parametrize(("options", "message"), INVALID, ids=[str(o) for o, _ in INVALID])
def test_bad_hyperparameters_raise_named_errors_and_change_nothing(options, message):
    with pytest.raises(ValueError) as error:
        AdamWScheduleFree([torch.zeros(2, requires_grad=True)], **options)
    assert message in str(error.value)

    params = make_params(torch.float64)[0]
    optimizer = AdamWScheduleFree(params[:2], lr=1e-2)
    train_steps(params[:2], optimizer, range(2))
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
    for key, value in before["state"][0].items():
        assert torch.equal(after["state"][0][key], value)


@pytest.mark.parametrize(
    ("counters", "message"),
    [
        ({"k": -1}, "k (the group's step count) must be an integer >= 0, got -1"),
        ({"k": 2.5}, "must be an integer >= 0, got 2.5"),
        ({"train_mode": "yes"}, "train_mode must be True or False, got 'yes'"),
        ({"weight_sum": -1.0}, "weight_sum must be a finite number >= 0, got -1.0"),
    ],
)
def test_a_checkpoint_with_bad_counters_is_refused(counters, message):
    params, optimizer = small()
    train_steps(params, optimizer, range(2))
    bad = copy.deepcopy(optimizer.state_dict())
    bad["param_groups"][0].update(counters)
    before = copy.deepcopy(optimizer.state_dict())
    with pytest.raises(ValueError, match="checkpoint param group 0") as error:
        optimizer.load_state_dict(bad)
    assert message in str(error.value)
    assert optimizer.state_dict()["param_groups"] == before["param_groups"]
