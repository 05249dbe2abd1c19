"""Bad input is refused with a message that says what was wrong, the value and what is allowed.

Every invalid hyper-parameter raises ``ValueError`` naming the parameter, the
value given and the valid range, in the constructor and in
``add_param_group`` (which then adds nothing). Sparse gradients, a parameter
in two groups and checkpoints that do not fit raise clear errors, and a
rejected ``load_state_dict`` leaves the optimizer exactly as it was.
"""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch

import optlab
from _registry_grid import builtin_params

NONNEG = ">= 0"
UNIT_OPEN = "[0, 1)"
UNIT_CLOSED = "[0, 1]"
BOOL = "True or False"

#: (class name, hyper-parameters, parameter named in the message, value shown, allowed range)
INVALID = [
    # learning rate: every optimizer
    *[
        (name, {"lr": value}, "lr", shown, NONNEG)
        for name in ("SGD", "Adagrad", "Adadelta", "RMSprop", "Adam", "AdamW")
        for value, shown in ((-0.1, "-0.1"), (math.inf, "inf"), (math.nan, "nan"))
    ],
    ("SGD", {"lr": torch.tensor([0.1, 0.2])}, "lr", "shape (2,)", "1-element tensor"),
    ("SGD", {"lr": "0.1"}, "lr", "'0.1'", "must be a number"),
    # SGD
    ("SGD", {"momentum": -0.9}, "momentum", "-0.9", NONNEG),
    ("SGD", {"momentum": 0.9, "dampening": -0.1}, "dampening", "-0.1", UNIT_CLOSED),
    ("SGD", {"momentum": 0.9, "dampening": 1.5}, "dampening", "1.5", UNIT_CLOSED),
    ("SGD", {"weight_decay": -1e-4}, "weight_decay", "-0.0001", NONNEG),
    ("SGD", {"nesterov": True}, "nesterov", "momentum=0.0", "momentum > 0"),
    (
        "SGD",
        {"nesterov": True, "momentum": 0.9, "dampening": 0.1},
        "nesterov",
        "dampening=0.1",
        "dampening == 0",
    ),
    ("SGD", {"nesterov": 1, "momentum": 0.9}, "nesterov", "1", BOOL),
    # Adagrad
    ("Adagrad", {"lr_decay": -0.01}, "lr_decay", "-0.01", NONNEG),
    ("Adagrad", {"weight_decay": -0.01}, "weight_decay", "-0.01", NONNEG),
    (
        "Adagrad",
        {"initial_accumulator_value": -0.1},
        "initial_accumulator_value",
        "-0.1",
        NONNEG,
    ),
    ("Adagrad", {"eps": -1e-10}, "eps", "-1e-10", NONNEG),
    # Adadelta
    ("Adadelta", {"rho": -0.1}, "rho", "-0.1", UNIT_CLOSED),
    ("Adadelta", {"rho": 1.1}, "rho", "1.1", UNIT_CLOSED),
    ("Adadelta", {"eps": -1e-6}, "eps", "-1e-06", NONNEG),
    ("Adadelta", {"weight_decay": -1.0}, "weight_decay", "-1.0", NONNEG),
    # RMSprop
    ("RMSprop", {"alpha": -0.5}, "alpha", "-0.5", UNIT_CLOSED),
    ("RMSprop", {"alpha": 1.5}, "alpha", "1.5", UNIT_CLOSED),
    ("RMSprop", {"eps": -1e-8}, "eps", "-1e-08", NONNEG),
    ("RMSprop", {"weight_decay": -0.1}, "weight_decay", "-0.1", NONNEG),
    ("RMSprop", {"momentum": -0.1}, "momentum", "-0.1", NONNEG),
    ("RMSprop", {"centered": 0}, "centered", "0", BOOL),
    # Adam / AdamW
    *[
        case
        for name in ("Adam", "AdamW")
        for case in (
            (name, {"eps": -1e-8}, "eps", "-1e-08", NONNEG),
            (name, {"weight_decay": -0.1}, "weight_decay", "-0.1", NONNEG),
            (name, {"betas": (1.0, 0.999)}, "betas[0]", "1.0", UNIT_OPEN),
            (name, {"betas": (0.9, 1.0)}, "betas[1]", "1.0", UNIT_OPEN),
            (name, {"betas": (-0.1, 0.999)}, "betas[0]", "-0.1", UNIT_OPEN),
            (name, {"betas": (0.9,)}, "betas", "(0.9,)", "pair"),
            (name, {"betas": 0.9}, "betas", "0.9", "pair"),
            (name, {"betas": (0.9, 0.99, 0.999)}, "betas", "(0.9, 0.99, 0.999)", "pair"),
            (name, {"amsgrad": "yes"}, "amsgrad", "'yes'", BOOL),
        )
    ],
    # Flags every optimizer has
    *[
        case
        for name in ("SGD", "Adagrad", "Adadelta", "RMSprop", "Adam", "AdamW")
        for case in (
            (name, {"maximize": 1}, "maximize", "1", BOOL),
            (name, {"foreach": "yes"}, "foreach", "'yes'", "None, True or False"),
            (name, {"foreach": True, "fused": True}, "foreach and fused", "", "pick one"),
        )
    ],
]


def _case_id(case) -> str:
    name, hparams, *_ = case
    return f"{name}-" + "-".join(f"{k}={v!r}" for k, v in hparams.items())


def _assert_message(message: str, parameter: str, shown: str, allowed: str) -> None:
    assert parameter in message, f"{message!r} does not name {parameter!r}"
    assert shown in message, f"{message!r} does not show the value {shown!r}"
    assert allowed in message, f"{message!r} does not say what is allowed ({allowed!r})"


@pytest.mark.parametrize("case", INVALID, ids=[_case_id(c) for c in INVALID])
def test_invalid_hyperparameter_is_refused_in_the_constructor(case):
    name, hparams, parameter, shown, allowed = case
    with pytest.raises(ValueError) as error:
        getattr(optlab, name)([torch.zeros(2, requires_grad=True)], **hparams)
    _assert_message(str(error.value), parameter, shown, allowed)


@pytest.mark.parametrize("case", INVALID, ids=[_case_id(c) for c in INVALID])
def test_invalid_hyperparameter_is_refused_in_add_param_group(case):
    name, hparams, parameter, shown, allowed = case
    optimizer = getattr(optlab, name)([torch.zeros(2, requires_grad=True)])
    new_param = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError) as error:
        optimizer.add_param_group({"params": [new_param], **hparams})
    message = str(error.value)
    _assert_message(message, parameter, shown, allowed)
    assert "param group 1" in message, f"{message!r} does not say which group"
    assert len(optimizer.param_groups) == 1, "the rejected group was added"


@pytest.mark.parametrize(
    ("name", "hparams"),
    [
        ("SGD", {"momentum": 0.9, "nesterov": True}),
        ("SGD", {"momentum": 1.5, "dampening": 1.0}),
        ("Adagrad", {"initial_accumulator_value": 0.0, "lr_decay": 0.0}),
        ("Adadelta", {"rho": 1.0}),
        ("Adadelta", {"rho": 0.0}),
        ("RMSprop", {"alpha": 0.0, "centered": True, "momentum": 0.0}),
        ("Adam", {"betas": (0.0, 0.0), "eps": 0.0, "lr": torch.tensor(0.01)}),
        ("AdamW", {"betas": [0.5, 0.5], "weight_decay": 0.0}),
    ],
)
def test_valid_edge_values_are_accepted(name, hparams):
    getattr(optlab, name)([torch.zeros(2, requires_grad=True)], **hparams)


# ----- structural errors, for every optimizer in the registry ------------------


REGISTRY = builtin_params()


@pytest.mark.parametrize("name", REGISTRY)
def test_sparse_gradients_raise_a_clear_error(name):
    embedding = torch.nn.Embedding(10, 3, sparse=True)
    optimizer = optlab.create_optimizer(embedding.parameters(), name)
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match=r"does not support sparse gradients.*sparse=False"):
        optimizer.step()


@pytest.mark.parametrize("name", REGISTRY)
def test_a_parameter_in_two_groups_raises(name):
    shared = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="more than one parameter group"):
        optlab.create_optimizer([{"params": [shared]}, {"params": [shared]}], name)
    optimizer = optlab.create_optimizer([shared], name)
    with pytest.raises(ValueError, match="more than one parameter group"):
        optimizer.add_param_group({"params": [shared]})
    assert len(optimizer.param_groups) == 1


# ----- load_state_dict: refused checkpoints change nothing --------------------


def _params(shapes=((4, 3), (3,), (2, 2))) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    return [torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_() for s in shapes]


def _groups(params):
    return [{"params": params[:2]}, {"params": params[2:], "lr": 0.02}]


def _train(optimizer, params, steps):
    for step in steps:
        for index, p in enumerate(params):
            gen = torch.Generator().manual_seed(1000 * step + index)
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype) + 0.1 * p.detach()
        optimizer.step()


def _snapshot(optimizer) -> dict:
    return copy.deepcopy(optimizer.state_dict())


def _assert_same_snapshot(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for index, state in b["state"].items():
        assert a["state"][index].keys() == state.keys()
        for key, value in state.items():
            assert torch.equal(a["state"][index][key], value), f"state {key!r} of {index}"


def _checkpoint_of(factory, params, steps=3):
    optimizer = factory(params)
    _train(optimizer, params, range(steps))
    return copy.deepcopy(optimizer.state_dict())


def _with_group_option(checkpoint: dict, **option) -> dict:
    return {**checkpoint, "param_groups": [{**g, **option} for g in checkpoint["param_groups"]]}


def _without_state_key(checkpoint: dict, key: str) -> dict:
    state = {
        index: {k: v for k, v in entry.items() if k != key}
        for index, entry in checkpoint["state"].items()
    }
    return {**checkpoint, "state": state}


#: (optlab class name, options, wrong checkpoint, message)
WRONG_CHECKPOINTS = [
    pytest.param(
        "RMSprop",
        {"momentum": 0.5},
        lambda: _checkpoint_of(lambda p: torch.optim.Adam(_groups(p)), _params()),
        "another optimizer",
        id="Adam-state-into-RMSprop",
    ),
    pytest.param(
        "Adam",
        {},
        lambda: _checkpoint_of(lambda p: optlab.Adagrad(_groups(p)), _params()),
        "another optimizer",
        id="Adagrad-state-into-Adam",
    ),
    pytest.param(
        "Adadelta",
        {},
        lambda: _checkpoint_of(lambda p: optlab.RMSprop(_groups(p)), _params()),
        "another optimizer",
        id="RMSprop-state-into-Adadelta",
    ),
    pytest.param(
        "Adam",
        {},
        lambda: _without_state_key(
            _checkpoint_of(lambda p: optlab.Adam(_groups(p)), _params()), "exp_avg_sq"
        ),
        "lacks ['exp_avg_sq']",
        id="state-missing-a-key",
    ),
    pytest.param(
        "SGD",
        {"momentum": 0.9},
        lambda: _checkpoint_of(lambda p: torch.optim.RMSprop(_groups(p)), _params()),
        "another optimizer",
        id="RMSprop-state-into-SGD",
    ),
    # Same state keys as Adam: only the groups' options tell the optimizers apart.
    pytest.param(
        "Yogi",
        {},
        lambda: _checkpoint_of(lambda p: torch.optim.Adam(_groups(p)), _params()),
        "options Yogi does not take",
        id="Adam-state-with-equal-keys-into-Yogi",
    ),
    pytest.param(
        "EAdam",
        {},
        lambda: _checkpoint_of(lambda p: torch.optim.Adam(_groups(p)), _params()),
        "options EAdam does not take",
        id="Adam-state-with-equal-keys-into-EAdam",
    ),
    pytest.param(
        "Adam",
        {"amsgrad": True},
        lambda: _checkpoint_of(lambda p: optlab.Adam([{"params": p}]), _params()),
        "1 param groups",
        id="different-number-of-groups",
    ),
    pytest.param(
        "Adagrad",
        {},
        lambda: _checkpoint_of(
            lambda p: optlab.Adagrad([{"params": p[:1]}, {"params": p[1:]}]), _params()
        ),
        "has 1 parameters",
        id="different-group-size",
    ),
    pytest.param(
        "RMSprop",
        {"centered": True},
        lambda: _checkpoint_of(
            lambda p: optlab.RMSprop(_groups(p), centered=True), _params(((4, 3), (3,), (2, 5)))
        ),
        "shape (2, 5)",
        id="mismatched-shapes",
    ),
    pytest.param(
        "SGD",
        {"momentum": 0.9},
        lambda: _with_group_option(
            _checkpoint_of(lambda p: optlab.SGD(_groups(p), momentum=0.9), _params()), lr=-1.0
        ),
        "lr must be",
        id="invalid-hyperparameter-in-checkpoint",
    ),
    pytest.param(
        "AdamW",
        {},
        lambda: {"state": {}},
        "'state' and 'param_groups'",
        id="not-a-state-dict",
    ),
]


@pytest.mark.parametrize(("name", "options", "make_checkpoint", "message"), WRONG_CHECKPOINTS)
def test_refused_checkpoint_raises_and_leaves_the_optimizer_as_it_was(
    name, options, make_checkpoint, message
):
    params, twin_params = _params(), _params()
    optimizer = getattr(optlab, name)(_groups(params), **options)
    twin = getattr(optlab, name)(_groups(twin_params), **options)
    _train(optimizer, params, range(4))
    _train(twin, twin_params, range(4))
    before = _snapshot(optimizer)

    with pytest.raises(ValueError, match=re.escape(message)):
        optimizer.load_state_dict(make_checkpoint())

    _assert_same_snapshot(_snapshot(optimizer), before)
    # ... and it still steps exactly as one that never saw the bad checkpoint.
    _train(optimizer, params, range(4, 8))
    _train(twin, twin_params, range(4, 8))
    _assert_same_snapshot(_snapshot(optimizer), _snapshot(twin))
    for a, b in zip(params, twin_params, strict=True):
        assert torch.equal(a, b)
