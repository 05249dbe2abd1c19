"""The lab evaluates a Schedule-Free run at x, the point it is meant to be evaluated at.

Schedule-Free AdamW trains with the parameters at ``y`` and is evaluated at
the average ``x`` (its ``eval()`` switches them, ``train()`` back). The
training loop calls both around every evaluation
(:func:`optlab.lab.train.evaluation_point`). The oracle: the metrics the
task's own evaluation gives at ``x`` and at ``y`` after the run; the rows
the loop reports are those at ``x``, and a loop that forgot the switch
(the context replaced by a no-op) reports different ones, those at ``y``.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import optlab
from optlab.lab import train as train_module
from optlab.lab.runs import RunSpec
from optlab.lab.tasks import evaluate_metrics
from optlab.lab.train import TrainingRun, evaluation_point
from optlab.optim.schedule_free import AdamWScheduleFree

NAME = "adamw-schedulefree"
METRICS = ("valid_loss", "valid_metric", "test_loss", "metric")


@pytest.fixture
def schedule_free():
    """The registry name, registered here until the catalogue has it."""
    if NAME in optlab.list_optimizers():
        yield NAME
        return
    optlab.register_optimizer(NAME, AdamWScheduleFree)
    try:
        yield NAME
    finally:
        optlab.unregister_optimizer(NAME)


def spec(name: str) -> RunSpec:
    # diabetes-linreg: evaluated every 200 examples (4 rows in an epoch), well under a second.
    return RunSpec("diabetes-linreg", name, {"lr": 0.02}, seed=3, epochs=1)


def forget_the_switch(monkeypatch) -> None:
    monkeypatch.setattr(
        train_module, "evaluation_point", lambda optimizers: contextlib.nullcontext()
    )


def test_reported_metrics_are_those_at_x_and_forgetting_the_switch_reports_those_at_y(
    schedule_free, monkeypatch
):
    run = TrainingRun(spec(schedule_free))
    result = run.run(progress=False)
    assert run.optimizer.param_groups[0]["train_mode"]  # back to y for training
    at_y = evaluate_metrics(run.problem, run.module)
    run.optimizer.eval()
    at_x = evaluate_metrics(run.problem, run.module)
    last = result.history[-1]
    for key in METRICS:
        assert last[key] == pytest.approx(at_x[key], rel=1e-5), key

    forget_the_switch(monkeypatch)
    forgetful = TrainingRun(spec(schedule_free)).run(progress=False).history[-1]
    for key in METRICS:
        assert forgetful[key] == pytest.approx(at_y[key], rel=1e-5), key
        # Not rounding: x and y give metrics 1% or more apart on this run.
        assert abs(forgetful[key] - last[key]) > 1e-2 * abs(last[key]), key


def test_every_evaluation_of_the_run_happens_in_eval_mode(schedule_free, monkeypatch):
    modes: list[bool] = []
    evaluate = TrainingRun.evaluate

    def watched(self):
        modes.append(self.optimizer.param_groups[0]["train_mode"])
        return evaluate(self)

    monkeypatch.setattr(TrainingRun, "evaluate", watched)
    steps = []
    original_step = AdamWScheduleFree.step

    def step(self, closure=None):
        steps.append(self.param_groups[0]["train_mode"])
        return original_step(self, closure)

    monkeypatch.setattr(AdamWScheduleFree, "step", step)
    result = TrainingRun(spec(schedule_free)).run(progress=False)
    assert len(modes) == len(result.history) == 4
    assert not any(modes)  # every evaluation at x ...
    assert steps and all(steps)  # ... every step at y


def test_optimizers_without_eval_and_train_report_the_same_run(monkeypatch):
    adam = TrainingRun(spec("adam")).run(progress=False).history
    forget_the_switch(monkeypatch)
    without = TrainingRun(spec("adam")).run(progress=False).history
    strip = [{k: v for k, v in row.items() if k != "wall_time"} for row in adam]
    assert strip == [{k: v for k, v in row.items() if k != "wall_time"} for row in without]


def test_the_switch_covers_every_optimizer_and_switches_back_when_evaluation_raises():
    """A GAN's generator and discriminator each get an optimizer: both are switched."""
    networks = [torch.nn.Linear(3, 2), torch.nn.Linear(2, 1)]
    optimizers = [AdamWScheduleFree(net.parameters(), lr=0.1) for net in networks]
    plain = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)
    for net, optimizer in zip(networks, optimizers, strict=True):
        for _ in range(3):
            optimizer.zero_grad()
            net(torch.ones(1, net.in_features)).sum().backward()
            optimizer.step()
    y = [[p.detach().clone() for p in net.parameters()] for net in networks]
    with pytest.raises(ZeroDivisionError), evaluation_point([*optimizers, plain]):
        assert not any(o.param_groups[0]["train_mode"] for o in optimizers)
        for net, values in zip(networks, y, strict=True):
            assert not torch.allclose(net.weight, values[0])  # the parameters are at x
        1 / 0  # noqa: B018
    assert all(o.param_groups[0]["train_mode"] for o in optimizers)
    for net, values in zip(networks, y, strict=True):
        for param, value in zip(net.parameters(), values, strict=True):
            torch.testing.assert_close(param.detach(), value, rtol=1e-6, atol=1e-7)
