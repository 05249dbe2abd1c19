"""The registry and ``create_optimizer``: names, aliases, defaults, param groups, errors."""

from __future__ import annotations

import inspect

import pytest
import torch

import optlab
from _registry_grid import builtin_params

EXPECTED_NAMES = [
    "sgd",
    "momentum",
    "nag",
    "adagrad",
    "adadelta",
    "rmsprop",
    "adam",
    "adamw",
    "amsgrad",
    "yogi",
    "eadam",
    "adabelief",
    "radam",
    "nadam",
    "adabound",
    "amsbound",
    "msvag",
    "fromage",
    "lars",
    "lamb",
    "lion",
    "adamw-schedulefree",
    "belief-eps",
    "g2-outside",
    "g2-inside",
    "g2-accum",
    "belief-outside",
    "belief-inside",
    "belief-accum",
]

#: registry name -> (optlab class name, the torch.optim class whose defaults it keeps, overrides)
CLASSIC = {
    "sgd": ("SGD", torch.optim.SGD, {}),
    "momentum": ("SGD", torch.optim.SGD, {"momentum": 0.9}),
    "nag": ("SGD", torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    "adagrad": ("Adagrad", torch.optim.Adagrad, {}),
    "adadelta": ("Adadelta", torch.optim.Adadelta, {}),
    "rmsprop": ("RMSprop", torch.optim.RMSprop, {}),
    "adam": ("Adam", torch.optim.Adam, {}),
    "adamw": ("AdamW", torch.optim.AdamW, {}),
    "amsgrad": ("Adam", torch.optim.Adam, {"amsgrad": True}),
}


AVAILABLE = builtin_params(EXPECTED_NAMES)


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)
        self.norm = torch.nn.LayerNorm(3)
        self.temperature = torch.nn.Parameter(torch.tensor(1.0))
        self.head = torch.nn.Linear(3, 2, bias=False)
        self.frozen = torch.nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def test_list_optimizers_names_every_optimizer_and_alias_in_catalogue_order():
    assert optlab.list_optimizers() == EXPECTED_NAMES
    assert optlab.optim.list_optimizers() == EXPECTED_NAMES


@pytest.mark.parametrize("name", list(CLASSIC))
def test_classic_entries_use_their_class_and_torch_defaults_plus_overrides(name):
    class_name, torch_cls, overrides = CLASSIC[name]
    spec = optlab.get_spec(name)
    assert spec.cls is getattr(optlab, class_name)
    assert dict(spec.overrides) == overrides
    torch_defaults = {
        key: parameter.default
        for key, parameter in inspect.signature(torch_cls.__init__).parameters.items()
        if parameter.default is not inspect.Parameter.empty
        and key not in ("capturable", "differentiable")
    }
    # optlab adds fused=None (reserved) where torch.optim has no fused path, and
    # state_dtype=None (full precision) to every optimizer with moments to compact.
    torch_defaults.setdefault("fused", None)
    if spec.cls.moment_kinds:
        torch_defaults["state_dtype"] = None
    assert spec.defaults() == {**torch_defaults, **overrides}
    assert spec.paper and spec.defaults_source and spec.description


@pytest.mark.parametrize("name", AVAILABLE)
def test_create_optimizer_builds_the_registered_class_with_its_overrides(name):
    spec = optlab.get_spec(name)
    params = [torch.zeros(3, requires_grad=True)]
    optimizer = optlab.create_optimizer(params, name)
    assert type(optimizer) is spec.cls
    # Every hyper-parameter kept per group takes the entry's default (some
    # classes also take construction-only switches, which are not group options).
    kept = {key: value for key, value in spec.defaults().items() if key in optimizer.defaults}
    assert {"lr", *spec.overrides} <= kept.keys()
    for key, value in kept.items():
        assert optimizer.defaults[key] == value, key
    assert optlab.optimizer_class(name) is spec.cls


def test_aliases_set_their_defaults_and_explicit_hyperparameters_win():
    params = [torch.zeros(3, requires_grad=True)]
    nag = optlab.create_optimizer(params, "NAG")  # names are case-insensitive
    assert isinstance(nag, optlab.SGD)
    assert (nag.defaults["momentum"], nag.defaults["nesterov"]) == (0.9, True)
    momentum = optlab.create_optimizer(params, "momentum", momentum=0.5, lr=0.1)
    assert (momentum.defaults["momentum"], momentum.defaults["nesterov"]) == (0.5, False)
    assert momentum.defaults["lr"] == 0.1
    amsgrad = optlab.create_optimizer(params, "amsgrad", betas=(0.8, 0.9))
    assert type(amsgrad) is optlab.Adam
    assert amsgrad.defaults["amsgrad"] is True
    assert amsgrad.defaults["betas"] == (0.8, 0.9)
    assert optlab.create_optimizer(params, "amsgrad", amsgrad=False).defaults["amsgrad"] is False


def test_given_a_module_biases_norm_weights_and_scalars_get_no_weight_decay():
    net = Net()
    optimizer = optlab.create_optimizer(net, "adamw", weight_decay=0.1)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(net.linear.weight), id(net.head.weight)}
    assert {id(p) for p in no_decay["params"]} == {
        id(net.linear.bias),
        id(net.norm.weight),
        id(net.norm.bias),
        id(net.temperature),
    }
    # Frozen parameters are left out.
    frozen = {id(p) for p in net.frozen.parameters()}
    assert not frozen & {id(p) for g in optimizer.param_groups for p in g["params"]}


def test_no_decay_group_really_does_not_decay():
    net = Net()
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    optimizer = optlab.create_optimizer(net, "adamw", lr=0.1, weight_decay=0.5)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    after = dict(net.named_parameters())
    assert torch.allclose(after["linear.weight"], before["linear.weight"] * (1 - 0.1 * 0.5))
    assert torch.equal(after["linear.bias"], before["linear.bias"])
    assert torch.equal(after["norm.weight"], before["norm.weight"])
    assert torch.equal(after["temperature"], before["temperature"])


def test_the_class_default_weight_decay_goes_to_the_decay_group():
    optimizer = optlab.create_optimizer(Net(), "adamw")
    assert [g["weight_decay"] for g in optimizer.param_groups] == [1e-2, 0.0]


def test_decay_1d_params_puts_every_trainable_parameter_in_one_decayed_group():
    net = Net()
    optimizer = optlab.create_optimizer(net, "sgd", weight_decay=0.1, decay_1d_params=True)
    assert len(optimizer.param_groups) == 1
    (group,) = optimizer.param_groups
    assert group["weight_decay"] == 0.1
    trainable = [p for p in net.parameters() if p.requires_grad]
    assert {id(p) for p in group["params"]} == {id(p) for p in trainable}


def test_plain_parameters_and_groups_are_passed_through_unchanged():
    a, b = torch.zeros(2, 2, requires_grad=True), torch.zeros(2, requires_grad=True)
    optimizer = optlab.create_optimizer([a, b], "adam", weight_decay=0.1)
    assert len(optimizer.param_groups) == 1 and optimizer.param_groups[0]["weight_decay"] == 0.1
    groups = [{"params": [a]}, {"params": [b], "lr": 0.5}]
    optimizer = optlab.create_optimizer(groups, "rmsprop", lr=0.01)
    assert [g["lr"] for g in optimizer.param_groups] == [0.01, 0.5]


def test_unknown_name_raises_listing_the_valid_names():
    with pytest.raises(ValueError) as error:
        optlab.create_optimizer([torch.zeros(1, requires_grad=True)], "adamx")
    message = str(error.value)
    assert "'adamx'" in message
    for name in EXPECTED_NAMES:
        assert name in message


def test_unknown_hyperparameter_raises_listing_the_valid_ones():
    with pytest.raises(ValueError) as error:
        optlab.create_optimizer([torch.zeros(1, requires_grad=True)], "nag", betas=(0.9, 0.99))
    message = str(error.value)
    assert "'betas'" in message and "'nag'" in message
    for hparam in ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize"):
        assert hparam in message


def test_classes_are_reachable_from_the_package():
    for class_name in ("SGD", "Adagrad", "Adadelta", "RMSprop", "Adam", "AdamW"):
        cls = getattr(optlab, class_name)
        assert issubclass(cls, torch.optim.Optimizer)
        assert cls is getattr(optlab.optim, class_name)
    with pytest.raises(AttributeError):
        optlab.NotAnOptimizer  # noqa: B018
