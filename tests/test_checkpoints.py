"""Checkpoints: save, load into a fresh optimizer, continue, bitwise equal to never stopping.

For every optimizer in the registry (names whose module another engineer has
not written yet are skipped, saying so), and in both directions between
torch.optim and optlab for the classic optimizers: a checkpoint written by
one loads into the other and the run continues bit for bit as if it had
never been interrupted.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch

import optlab
from _registry_grid import builtin_params

TOTAL_STEPS = 10
#: The parameter with index LATE gets no gradient before step LATE_FROM, so a
#: checkpoint can be written while it has no state yet.
LATE, LATE_FROM = 3, 6

#: Options that make each optimizer keep all of its state.
RICH_OPTIONS = {
    "sgd": {"weight_decay": 1e-3},
    "adagrad": {"lr_decay": 0.01, "initial_accumulator_value": 0.1},
    "rmsprop": {"momentum": 0.5, "centered": True},
    "adam": {"weight_decay": 1e-3},
    "belief-eps": {"amsgrad": True, "weight_decay": 1e-3},
    "belief-accum": {"amsgrad": True, "weight_decay": 1e-3, "decoupled_weight_decay": True},
}


def make_params() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    shapes = [(6, 5), (6,), (), (3, 6), (3,)]
    return [
        torch.randn(shape, generator=gen, dtype=torch.float64).requires_grad_() for shape in shapes
    ]


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(8)
    return (
        torch.randn(16, 5, generator=gen, dtype=torch.float64),
        torch.randn(16, 3, generator=gen, dtype=torch.float64),
    )


def compute_grads(params: list[torch.Tensor], step: int) -> None:
    w1, b1, scale, w2, b2 = params
    x, y = inputs()
    for p in params:
        p.grad = None
    hidden = torch.tanh(x @ w1.T + b1) * scale
    loss = ((hidden @ w2.T + b2 - y) ** 2).mean() + 0.01 * step * w1.sum()
    loss.backward()
    if step < LATE_FROM:
        params[LATE].grad = None


def train(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], steps: range) -> None:
    for step in steps:
        compute_grads(params, step)
        optimizer.step()


def through_file(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def assert_bitwise_equal(a_opt, a_params, b_opt, b_params) -> None:
    for index, (a, b) in enumerate(zip(a_params, b_params, strict=True)):
        assert torch.equal(a, b), f"param {index} differs"
    a_state = {k: v for k, v in a_opt.state_dict()["state"].items() if v}
    b_state = {k: v for k, v in b_opt.state_dict()["state"].items() if v}
    assert a_state.keys() == b_state.keys()
    for index in b_state:
        assert a_state[index].keys() == b_state[index].keys(), f"state keys of param {index}"
        for key, value in b_state[index].items():
            assert torch.equal(a_state[index][key], value), f"state {key!r} of param {index}"


REGISTRY_NAMES = builtin_params()


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
@pytest.mark.parametrize("save_at", [0, 4])
@pytest.mark.parametrize("route", ["direct", "torch.save"])
@pytest.mark.parametrize("name", REGISTRY_NAMES)
def test_resumed_run_is_bitwise_equal_to_an_uninterrupted_one(name, route, save_at, foreach):
    options = {"foreach": foreach, **RICH_OPTIONS.get(name, {})}

    uninterrupted_params = make_params()
    uninterrupted = optlab.create_optimizer(uninterrupted_params, name, **options)
    train(uninterrupted, uninterrupted_params, range(TOTAL_STEPS))

    first_params = make_params()
    first = optlab.create_optimizer(first_params, name, **options)
    train(first, first_params, range(save_at))
    checkpoint = {"params": [p.detach().clone() for p in first_params], "optim": first.state_dict()}
    if route == "torch.save":
        checkpoint = through_file(checkpoint)
    del first

    resumed_params = make_params()
    with torch.no_grad():
        for param, saved in zip(resumed_params, checkpoint["params"], strict=True):
            param.copy_(saved)
    # Built with another lr: the checkpoint's hyper-parameters must win.
    resumed = optlab.create_optimizer(resumed_params, name, **{**options, "lr": 0.123})
    resumed.load_state_dict(checkpoint["optim"])
    assert resumed.param_groups[0]["lr"] == uninterrupted.param_groups[0]["lr"]
    train(resumed, resumed_params, range(save_at, TOTAL_STEPS))

    assert_bitwise_equal(resumed, resumed_params, uninterrupted, uninterrupted_params)


# ----- torch.optim <-> optlab -------------------------------------------------

#: (class name in both torch.optim and optlab, options that create all of its state)
PAIRS = [
    pytest.param("SGD", {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3}, id="SGD"),
    pytest.param("Adam", {"lr": 0.01, "amsgrad": True}, id="Adam"),
    pytest.param("AdamW", {"lr": 0.01}, id="AdamW"),
    pytest.param("Adagrad", {"lr": 0.1, "lr_decay": 0.01}, id="Adagrad"),
    pytest.param("Adadelta", {}, id="Adadelta"),
    pytest.param("RMSprop", {"momentum": 0.5, "centered": True}, id="RMSprop"),
]


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
@pytest.mark.parametrize("direction", ["torch->optlab", "optlab->torch"])
@pytest.mark.parametrize(("name", "options"), PAIRS)
def test_checkpoints_move_between_torch_and_optlab(name, options, direction, foreach):
    def make_torch(params: list[torch.Tensor]) -> torch.optim.Optimizer:
        return getattr(torch.optim, name)(params, foreach=foreach, **options)

    def make_optlab(params: list[torch.Tensor]) -> torch.optim.Optimizer:
        return getattr(optlab, name)(params, foreach=foreach, **options)

    writer_factory, reader_factory = (
        (make_torch, make_optlab) if direction == "torch->optlab" else (make_optlab, make_torch)
    )
    # The oracle: the reader's own class, never interrupted.
    reference_params = make_params()
    reference = reader_factory(reference_params)
    train(reference, reference_params, range(TOTAL_STEPS))

    writer_params = make_params()
    writer = writer_factory(writer_params)
    train(writer, writer_params, range(4))
    state_dict = through_file(writer.state_dict())

    reader_params = [p.detach().clone().requires_grad_() for p in writer_params]
    reader = reader_factory(reader_params)
    reader.load_state_dict(state_dict)
    train(reader, reader_params, range(4, TOTAL_STEPS))

    assert_bitwise_equal(reader, reader_params, reference, reference_params)


def test_loading_a_python_number_step_from_an_old_checkpoint():
    params = make_params()
    optimizer = optlab.Adam(params, lr=0.01, foreach=False)
    train(optimizer, params, range(3))
    old_style = copy.deepcopy(optimizer.state_dict())
    for state in old_style["state"].values():
        state["step"] = int(state["step"].item())  # torch < 1.12 wrote Python numbers
    resumed_params = [p.detach().clone().requires_grad_() for p in params]
    resumed = optlab.Adam(resumed_params, lr=0.01, foreach=False)
    resumed.load_state_dict(old_style)
    assert all(torch.is_tensor(s["step"]) for s in resumed.state.values())
    train(resumed, resumed_params, range(3, 6))
    train(optimizer, params, range(3, 6))
    assert_bitwise_equal(resumed, resumed_params, optimizer, params)


def test_torch_2_0_sgd_checkpoint_with_momentum_buffer_none_continues_like_torch():
    """torch <= 2.0 saved ``momentum_buffer: None`` before a parameter's first step."""
    torch.manual_seed(0)
    ours_params = [torch.nn.Parameter(torch.randn(3, 2, dtype=torch.float64))]
    torch_params = [torch.nn.Parameter(ours_params[0].detach().clone())]
    checkpoint = torch.optim.SGD(torch_params, lr=0.1, momentum=0.9).state_dict()
    checkpoint["state"] = {0: {"momentum_buffer": None}}
    ours = optlab.SGD(ours_params, lr=0.1, momentum=0.9)
    ours.load_state_dict(copy.deepcopy(checkpoint))
    reference = torch.optim.SGD(torch_params, lr=0.1, momentum=0.9)
    reference.load_state_dict(copy.deepcopy(checkpoint))
    for _ in range(5):
        gradient = torch.randn(3, 2, dtype=torch.float64)
        ours_params[0].grad, torch_params[0].grad = gradient.clone(), gradient.clone()
        ours.step()
        reference.step()
    assert torch.equal(ours_params[0], torch_params[0])


@pytest.mark.parametrize(
    ("name", "switch", "extra_state"),
    [
        ("Adam", {"amsgrad": True}, {"max_exp_avg_sq"}),
        ("RMSprop", {"momentum": 0.5, "centered": True}, {"momentum_buffer", "grad_avg"}),
    ],
)
def test_option_switched_on_mid_run_starts_its_state_at_zero_like_a_primed_torch_optimizer(
    name, switch, extra_state
):
    torch.manual_seed(0)
    ours_params = [torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64))]
    torch_params = [torch.nn.Parameter(ours_params[0].detach().clone())]
    ours = getattr(optlab, name)(ours_params, lr=0.01)
    for _ in range(3):
        ours_params[0].grad = torch.randn(4, 3, dtype=torch.float64)
        ours.step()
    ours.param_groups[0].update(switch)
    # Oracle: torch.optim with the option on from the start of this segment,
    # its new state primed at zero and the rest copied from ours.
    checkpoint = copy.deepcopy(ours.state_dict())
    checkpoint["param_groups"][0].update(switch)
    for key in extra_state:
        checkpoint["state"][0][key] = torch.zeros(4, 3, dtype=torch.float64)
    torch_params[0].data.copy_(ours_params[0].detach())
    reference = getattr(torch.optim, name)(torch_params, lr=0.01, **switch)
    reference.load_state_dict(checkpoint)
    for _ in range(5):
        gradient = torch.randn(4, 3, dtype=torch.float64)
        ours_params[0].grad, torch_params[0].grad = gradient.clone(), gradient.clone()
        ours.step()
        reference.step()
    assert extra_state <= set(ours.state[ours_params[0]])
    torch.testing.assert_close(ours_params[0], torch_params[0], rtol=1e-12, atol=0)
    for key in extra_state:
        torch.testing.assert_close(
            ours.state[ours_params[0]][key],
            reference.state[torch_params[0]][key],
            rtol=1e-12,
            atol=0,
        )
