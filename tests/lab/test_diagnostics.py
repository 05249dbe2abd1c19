"""Step-size diagnostics against an independent computation from torch.optim.Adam's state,
and the eps-dominance share on gradients far below and far above eps."""

from __future__ import annotations

import math

import pytest
import torch

import optlab
from optlab.lab.diagnostics import step_size_row
from optlab.lab.runs import RunSpec
from optlab.lab.train import train


def _stepped(optimizer_class, steps=25, scale=1.0, **options):
    torch.manual_seed(0)
    params = [torch.randn(40, 30, dtype=torch.float64, requires_grad=True),
              torch.randn(30, dtype=torch.float64, requires_grad=True)]  # fmt: skip
    optimizer = optimizer_class(params, **options)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = scale * torch.randn(p.shape, generator=generator, dtype=p.dtype)
        optimizer.step()
    return optimizer


def test_the_adam_cells_step_sizes_are_those_of_torch_adams_state():
    ours = _stepped(optlab.BeliefEps, lr=1e-3, eps=1e-8)  # the g2-outside cell
    torch_adam = _stepped(torch.optim.Adam, lr=1e-3, eps=1e-8)
    expected = []
    for p in torch_adam.param_groups[0]["params"]:
        state = torch_adam.state[p]
        t = float(state["step"])
        denom = (state["exp_avg_sq"] / (1 - 0.999**t)).sqrt() + 1e-8
        expected.append((1e-3 / (1 - 0.9**t) / denom).flatten())
    expected = torch.cat(expected)
    sizes, dominated = ours.effective_step_sizes()
    torch.testing.assert_close(sizes, expected, rtol=1e-12, atol=0)
    assert not dominated.any()
    row = step_size_row({"model": ours})
    assert row["step_q50"] == pytest.approx(float(expected.median()), rel=1e-3)
    assert row["step_spread"] == pytest.approx(
        math.log10(float(torch.quantile(expected, 0.95) / torch.quantile(expected, 0.05)))
    )


@pytest.mark.parametrize("eps_mode", ["outside", "inside", "accumulated"])
def test_eps_dominates_where_the_gradients_are_far_below_it_and_nowhere_far_above(eps_mode):
    for scale, share in ((1e-9, 1.0), (1.0, 0.0)):
        optimizer = _stepped(optlab.BeliefEps, scale=scale, eps=1e-4, eps_mode=eps_mode)
        _, dominated = optimizer.effective_step_sizes()
        assert float(dominated.double().mean()) == share, (eps_mode, scale)


def test_a_run_of_a_cell_records_the_diagnostics_and_other_optimizers_do_not():
    cell = train(RunSpec("cancer-logreg", "belief-accum", {"lr": 0.01}, epochs=2), threads=1)
    assert all("step_q50" in row and "eps_dominant" in row for row in cell.history[1:])
    adam = train(RunSpec("cancer-logreg", "adam", {"lr": 0.01}, epochs=2), threads=1)
    assert not any("step_q50" in row for row in adam.history)


def test_a_run_with_several_optimizers_gets_one_step_size_figure_per_network(tmp_path):
    from optlab.lab.report import write_report
    from optlab.lab.runs import RunResult
    from optlab.lab.store import Store

    store = Store.open(tmp_path)
    for seed in range(2):
        spec = RunSpec("gan-ring", "g2-outside", {"lr": 1e-3}, seed=seed, epochs=2)
        history = [
            {"epoch": float(e), "step": e, "examples": e, "lr": 1e-3, "train_loss": 1.0,
             "valid_loss": 1.0, "valid_metric": 0.5, "test_loss": 1.0, "metric": 0.5,
             "wall_time": e, **{f"{role}.{key}": 1e-3 * (k + 1) for role in ("generator",
             "discriminator") for k, key in enumerate(("step_q05", "step_q50", "step_q95"))},
             "generator.step_spread": 1.0, "generator.eps_dominant": 0.0}
            for e in range(3)
        ]  # fmt: skip
        store.put(RunResult(spec, history, "swd", False, "ok", 1.0, {}))
    write_report(tmp_path)
    names = sorted(p.name for p in (tmp_path / "plots").glob("*step-sizes*"))
    assert names == ["gan-ring-step-sizes-discriminator.png", "gan-ring-step-sizes-generator.png"]
