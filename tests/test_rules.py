"""The elementwise rules (what the fused kernels are generated from) equal the reference forms.

Optimizers that must follow a reference's order of operations keep
hand-written per-tensor and multi-tensor forms; those are proven equal to the
reference packages in each optimizer's oracle test. Here every registered
optimizer's rule, run eagerly in float64 (the derived form an optimizer
without hand-written forms uses), is checked against its hand-written forms
over many steps and every option the registry's entries set, so the rule
cannot drift from the maths the oracles check. The cross-cutting prologue
(maximize, L2, decoupled decay) is checked against the torch.optim order
written out here.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from optlab.optim import get_spec, list_optimizers
from optlab.optim._base import OptlabOptimizer
from optlab.optim._rules import HostScalars, prologue, select

NAMES = list_optimizers(builtin_only=True)


def _optlab_class(name: str) -> type[OptlabOptimizer]:
    cls = get_spec(name).cls
    assert issubclass(cls, OptlabOptimizer), f"{name}: {cls} is not an optlab optimizer"
    return cls


@pytest.mark.parametrize("name", NAMES)
def test_every_optimizer_states_its_rule(name):
    cls = _optlab_class(name)
    assert callable(cls.rule), f"{name}: {cls.__name__} has no elementwise rule"
    assert set(cls.forms) <= {"loop", "foreach"}, f"{name}: unknown forms {set(cls.forms)}"


def _derived(cls: type[OptlabOptimizer]) -> type[OptlabOptimizer]:
    """``cls`` without its hand-written forms: its rule runs eagerly for loop and foreach."""
    return type(f"Derived{cls.__name__}", (cls,), {"forms": {}, "__doc__": None})


def _run(cls, options, grads_per_step, *, foreach):
    torch.manual_seed(0)
    shapes = [(3,), (5, 7), (2, 3, 4)]
    params = [torch.randn(shape, dtype=torch.float64, requires_grad=True) for shape in shapes]
    optimizer = cls(
        [{"params": params[:2]}, {"params": params[2:], "lr": 0.5 * _lr(cls, options)}],
        foreach=foreach,
        **options,
    )
    for step, grads in enumerate(grads_per_step):
        for index, (param, grad) in enumerate(zip(params, grads, strict=True)):
            missing = (step + index) % 5 == 4  # a grad missing now and then
            param.grad = None if missing else grad.clone()
        optimizer.step()
    return params, optimizer


def _lr(cls, options) -> float:
    """The first group's learning rate: the given one, else the class default."""
    return options.get("lr", inspect.signature(cls.__init__).parameters["lr"].default)


def _options(name: str) -> list[dict]:
    """The entry's overrides, and with weight decay and maximize switched on."""
    spec = get_spec(name)
    base = dict(spec.overrides)
    defaults = spec.defaults()
    variants = [base]
    if "weight_decay" in defaults:
        variants.append({**base, "weight_decay": 0.1, "maximize": True})
    return variants


#: (registry name, form) for every hand-written form: the rule is checked against each.
HAND_WRITTEN = [
    (name, form)
    for name in NAMES
    for form in ("loop", "foreach")
    if form in get_spec(name).cls.forms
]


@pytest.mark.parametrize(("name", "form"), HAND_WRITTEN)
def test_the_rule_equals_the_hand_written_forms_in_float64(name, form):
    cls = _optlab_class(name)
    foreach = form == "foreach"
    generator = torch.Generator().manual_seed(1)
    shapes = [(3,), (5, 7), (2, 3, 4)]
    grads_per_step = [
        [torch.randn(shape, dtype=torch.float64, generator=generator) for shape in shapes]
        for _ in range(60)
    ]
    for options in _options(name):
        reference, reference_opt = _run(cls, options, grads_per_step, foreach=foreach)
        derived, derived_opt = _run(_derived(cls), options, grads_per_step, foreach=foreach)
        for index, (a, b) in enumerate(zip(derived, reference, strict=True)):
            scale = b.detach().abs().max().item() + 1e-300
            error = (a.detach() - b.detach()).abs().max().item() / scale
            assert error <= 1e-10, f"{name} {options}: param {index} off by {error:.2e} relative"
        for a, b in zip(derived, reference, strict=True):
            for key, value in reference_opt.state[b].items():
                other = derived_opt.state[a][key]
                assert torch.allclose(other, value, rtol=1e-10, atol=1e-300), (name, options, key)


def _torch_order(param, grad, *, maximize, l2, decay):
    """torch.optim's order, written out: negate, add L2, scale the parameter."""
    grad = -grad if maximize else grad
    if l2 != 0:
        grad = grad + l2 * param
    return param * decay, grad


@pytest.mark.parametrize("tensor_scalars", [True, False], ids=["kernel", "eager"])
@pytest.mark.parametrize(
    ("maximize", "l2", "decay"),
    [(False, 0.0, 1.0), (True, 0.0, 1.0), (True, 0.1, 1.0), (False, 0.0, 0.99)],
)
def test_prologue_applies_maximize_and_weight_decay_in_torch_order(
    tensor_scalars, maximize, l2, decay
):
    param = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    grad = torch.tensor([0.5, 0.25, -4.0], dtype=torch.float64)
    values = (-1.0 if maximize else 1.0, l2, decay, 7.0, 8.0)
    scalars = torch.tensor(values, dtype=torch.float64) if tensor_scalars else HostScalars(values)
    decayed, new_grad, rest = prologue(param, grad, scalars)
    expected_param, expected_grad = _torch_order(param, grad, maximize=maximize, l2=l2, decay=decay)
    assert torch.equal(decayed, expected_param)
    assert torch.equal(new_grad, expected_grad)
    assert [float(value) for value in rest] == [7.0, 8.0]
    assert torch.equal(param, torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64))  # not written


def test_prologue_keeps_an_infinite_parameter_finite_gradient_without_l2():
    param = torch.tensor([math.inf, 1.0])
    grad = torch.tensor([1.0, 2.0])
    _, new_grad, _ = prologue(param, grad, torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64))
    assert torch.equal(new_grad, grad)  # not inf * 0 = nan


def test_select_takes_python_and_tensor_conditions():
    a, b = torch.ones(2), torch.zeros(2)
    assert select(True, a, b) is a and select(False, a, b) is b
    assert torch.equal(select(torch.tensor(0.0) > 0, a, b), b)


@pytest.mark.parametrize("name", NAMES)
def test_docstrings_have_their_common_arguments_expanded(name):
    doc = _optlab_class(name).__doc__ or ""
    assert "{common}" not in doc and "{torch_off}" not in doc
    assert "maximize:" in doc and "foreach:" in doc and "fused:" in doc, name


def test_the_reference_ordered_optimizers_keep_their_hand_written_forms():
    # torch.optim's classics and the official AdaBelief must follow their reference's
    # operation order (some tests compare bitwise), so their forms must not vanish.
    for name in ("sgd", "adagrad", "adadelta", "rmsprop", "adam", "yogi", "adabelief"):
        assert (name, "loop") in HAND_WRITTEN and (name, "foreach") in HAND_WRITTEN, name
