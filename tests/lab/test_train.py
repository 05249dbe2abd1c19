"""The one training loop and the learning-rate schedules.

Oracles: a plain PyTorch training loop with torch.optim.Adam written here,
torch.optim.lr_scheduler, and the schedule formulas written out here.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.nn import functional as F

from optlab.lab.runs import RunResult, RunSpec
from optlab.lab.schedules import list_schedules, make_schedule
from optlab.lab.tasks import get_task
from optlab.lab.train import THREADS_ENV, ProgressUpdate, TrainingRun, train

ROW_KEYS = {
    "epoch", "step", "examples", "lr", "train_loss", "valid_loss", "valid_metric", "test_loss",
    "metric", "wall_time",
}  # fmt: skip


def without_times(result: RunResult) -> tuple[list[dict], dict]:
    history = [{k: v for k, v in row.items() if k != "wall_time"} for row in result.history]
    info = {k: v for k, v in result.info.items() if not k.endswith("_seconds")}
    return history, info


# ------------------------------------------------------------------ the loop against an oracle


def test_history_equals_a_plain_pytorch_loop_with_torch_adam():
    seed, epochs, lr, batch = 4, 2, 3e-3, 32
    result = train(
        RunSpec("digits-mlp", "adam", {"lr": lr}, seed=seed, epochs=epochs), progress=False
    )

    problem = get_task("digits-mlp").build(seed)
    model = problem.model
    inputs, targets = problem.train.inputs, problem.train.targets
    test_inputs, test_targets = problem.test.inputs, problem.test.targets
    valid_inputs, valid_targets = problem.valid.inputs, problem.valid.targets
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)

    def evaluation(inputs, targets):
        outputs = model(inputs)
        return (
            F.cross_entropy(outputs, targets).item(),
            (outputs.argmax(1) == targets).sum().item() / len(targets),
        )

    with torch.no_grad():
        rows = [
            (
                F.cross_entropy(model(inputs), targets).item(),
                *evaluation(valid_inputs, valid_targets),
                *evaluation(test_inputs, test_targets),
            )
        ]
    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=generator)
        total = 0.0
        for start in range(0, len(inputs), batch):
            index = order[start : start + batch]
            loss = F.cross_entropy(model(inputs[index]), targets[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(index)
        with torch.no_grad():
            rows.append(
                (
                    total / len(inputs),
                    *evaluation(valid_inputs, valid_targets),
                    *evaluation(test_inputs, test_targets),
                )
            )

    assert len(result.history) == len(rows) == epochs + 1
    for row, expected in zip(result.history, rows, strict=True):
        train_loss, valid_loss, valid_accuracy, test_loss, accuracy = expected
        assert row["train_loss"] == pytest.approx(train_loss, rel=1e-5)
        assert row["valid_loss"] == pytest.approx(valid_loss, rel=1e-5)
        assert row["valid_metric"] == pytest.approx(valid_accuracy, abs=1e-9)
        assert row["test_loss"] == pytest.approx(test_loss, rel=1e-5)
        assert row["metric"] == pytest.approx(accuracy, abs=1e-9)


def test_history_rows_timings_and_info_are_as_documented():
    result = train(RunSpec("digits-mlp", "adam", epochs=3), progress=False)
    steps_per_epoch = math.ceil(1077 / 32)  # the training split without its validation part
    assert result.status == "ok"
    assert result.metric == "accuracy" and result.higher_is_better is True
    assert all(set(row) == ROW_KEYS for row in result.history)
    assert [row["epoch"] for row in result.history] == [0.0, 1.0, 2.0, 3.0]
    assert [row["step"] for row in result.history] == [k * steps_per_epoch for k in range(4)]
    assert [row["examples"] for row in result.history] == [k * 1077 for k in range(4)]
    assert all(row["lr"] == 1e-3 for row in result.history)
    times = [row["wall_time"] for row in result.history]
    assert times[0] == 0.0 and all(b > a for a, b in zip(times, times[1:], strict=False))
    assert result.seconds_per_epoch == pytest.approx(times[-1] / 3)
    info = result.info
    assert info["torch"] == torch.__version__
    assert info["threads"] == 1 and info["device"] == "cpu"
    assert info["machine"] and info["platform"] and info["cpu_count"] >= 1
    assert info["epochs"] == 3 and info["batch_size"] == 32
    assert info["steps"] == info["total_steps"] == 3 * steps_per_epoch
    assert info["hparams"]["lr"] == 1e-3 and info["hparams"]["betas"] == [0.9, 0.999]
    assert info["task_options"] == {"hidden": [64]}
    # The result is plain data: JSON and back.
    again = RunResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again.history == result.history and again.spec == result.spec


# ------------------------------------------------------------------ determinism


def test_same_spec_gives_identical_numbers_whatever_the_global_seed():
    spec = RunSpec("digits-cnn", "adabelief", {"lr": 2e-3}, seed=11, epochs=2, batch_size=64)
    threads_before = torch.get_num_threads()
    torch.manual_seed(0)
    first = train(spec, progress=False)
    torch.manual_seed(99)  # the caller's global seed must not matter
    second = train(spec, progress=False)
    assert without_times(first) == without_times(second)
    assert torch.get_num_threads() == threads_before
    other_seed = train(
        RunSpec("digits-cnn", "adabelief", {"lr": 2e-3}, seed=12, epochs=2, batch_size=64),
        progress=False,
    )
    assert without_times(other_seed)[0] != without_times(first)[0]


def test_training_does_not_consume_the_global_random_state():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    train(RunSpec("diabetes-linreg", "sgd", epochs=1), progress=False)
    assert torch.equal(torch.rand(3), expected)


# ------------------------------------------------------------------ schedules


def expected_factor(name: str, step: int, total: int) -> float:
    if name == "constant":
        return 1.0
    if name == "step":
        return 0.1 ** ((step >= round(0.5 * total)) + (step >= round(0.75 * total)))
    if name == "cosine":
        return 0.5 * (1 + math.cos(math.pi * step / total))
    warmup = max(1, round(0.05 * total))
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


@pytest.mark.parametrize("total", [1, 7, 40, 1000])
@pytest.mark.parametrize("name", ["constant", "step", "cosine", "warmup-cosine"])
def test_schedules_follow_their_formulas(name, total):
    schedule = make_schedule(name, total)
    for step in range(total):
        assert schedule(step) == pytest.approx(expected_factor(name, step, total), abs=1e-12)


def test_step_and_cosine_schedules_agree_with_torch_lr_schedulers():
    total = 40
    parameter = torch.nn.Parameter(torch.zeros(1))
    for name, make in [
        ("cosine", lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)),
        ("step", lambda opt: torch.optim.lr_scheduler.MultiStepLR(opt, [20, 30], gamma=0.1)),
    ]:
        optimizer = torch.optim.SGD([parameter], lr=0.5)
        scheduler = make(optimizer)
        ours = make_schedule(name, total)
        for step in range(total):
            assert 0.5 * ours(step) == pytest.approx(optimizer.param_groups[0]["lr"], abs=1e-12)
            optimizer.step()
            scheduler.step()


def test_warmup_cosine_rises_linearly_then_decays_to_zero():
    schedule = make_schedule("warmup-cosine", 200)  # 10 warm-up steps
    assert [schedule(k) for k in range(10)] == pytest.approx([(k + 1) / 10 for k in range(10)])
    assert schedule(10) == 1.0
    values = [schedule(k) for k in range(10, 200)]
    assert all(b < a for a, b in zip(values, values[1:], strict=False))
    assert values[-1] < 1e-3


def test_unknown_schedule_lists_the_valid_names():
    assert list_schedules() == ["constant", "step", "cosine", "warmup-cosine"]
    with pytest.raises(
        ValueError,
        match="unknown learning-rate schedule 'linear'; valid names: "
        "constant, step, cosine, warmup-cosine",
    ):
        make_schedule("linear", 10)
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'linear'"):
        train(RunSpec("digits-mlp", "adam", schedule="linear"), progress=False)
    with pytest.raises(ValueError, match="total_steps must be an integer >= 1, got 0"):
        make_schedule("cosine", 0)


@pytest.mark.parametrize("name", ["step", "warmup-cosine"])
def test_trainer_sets_every_groups_lr_from_the_schedule_before_each_step(name):
    spec = RunSpec("digits-mlp", "adamw", {"lr": 0.01}, epochs=2, batch_size=128, schedule=name)
    run = TrainingRun(spec)
    total = run.total_steps
    assert total == 2 * math.ceil(1077 / 128) and len(run.optimizer.param_groups) == 2
    seen = []
    for epoch in range(run.epochs):
        for inputs, targets in run.batches(epoch):
            run.step(inputs, targets)
            seen.append([group["lr"] for group in run.optimizer.param_groups])
    for step, lrs in enumerate(seen):
        assert lrs == pytest.approx([0.01 * expected_factor(name, step, total)] * 2, abs=1e-15)
    # The recorded history shows the lr of each row's latest step.
    result = train(spec, progress=False)
    for row in result.history[1:]:
        assert row["lr"] == pytest.approx(0.01 * expected_factor(name, row["step"] - 1, total))


# ------------------------------------------------------------------ divergence


def test_divergence_stops_the_run_and_keeps_the_history():
    # SGD with lr 1 on a quadratic whose largest curvature is ~53 grows by ~52x per step.
    spec = RunSpec("quadratic-deep", "sgd", {"lr": 1.0}, epochs=50)
    result = train(spec, progress=False)
    assert result.status == "diverged"
    last = result.history[-1]
    assert not (math.isfinite(last["train_loss"]) and math.isfinite(last["test_loss"]))
    assert last["step"] < 50 * 7
    assert result.info["steps"] == last["step"]
    assert all(math.isfinite(row["test_loss"]) for row in result.history[:-1])
    assert len(result.history) >= 2
    assert math.isfinite(result.seconds_per_epoch)


def test_a_stable_run_is_not_flagged_as_diverged():
    result = train(RunSpec("quadratic-deep", "sgd", {"lr": 0.01}, epochs=3), progress=False)
    assert result.status == "ok" and len(result.history) == 4


# ------------------------------------------------------------------ progress


def test_progress_callback_gets_every_row_and_marks_the_last():
    updates: list[ProgressUpdate] = []
    result = train(RunSpec("digits-mlp", "adam", epochs=2), progress=updates.append)
    assert [u.row for u in updates] == result.history
    assert [u.done for u in updates] == [False, False, True]
    assert [u.step for u in updates] == [row["step"] for row in result.history]
    assert all(u.total_steps == 2 * 34 and u.spec == result.spec for u in updates)


def test_progress_is_silent_off_a_terminal_and_a_bar_when_asked(capsys):
    spec = RunSpec("diabetes-linreg", "adam", epochs=1)
    train(spec)  # stderr is captured, so not a terminal
    train(spec, progress=False)
    assert capsys.readouterr() == ("", "")
    train(spec, progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "diabetes-linreg adam seed 0" in err


# ------------------------------------------------------------------ threads and validation


def test_threads_come_from_the_argument_then_the_environment_then_the_task(monkeypatch):
    spec = RunSpec("diabetes-linreg", "adam", epochs=1)
    before = torch.get_num_threads()
    monkeypatch.setenv(THREADS_ENV, "2")
    assert train(spec, progress=False).info["threads"] == 2
    assert train(spec, progress=False, threads=1).info["threads"] == 1
    monkeypatch.delenv(THREADS_ENV)
    assert train(spec, progress=False).info["threads"] == get_task(spec.task).threads == 1
    assert torch.get_num_threads() == before
    monkeypatch.setenv(THREADS_ENV, "two")
    with pytest.raises(ValueError, match=f"{THREADS_ENV} must be a positive integer, got 'two'"):
        train(spec, progress=False)
    with pytest.raises(ValueError, match="threads must be a positive integer, got 0"):
        train(spec, progress=False, threads=0)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (RunSpec("digits-mlp", "adam", epochs=0), "epochs must be an integer >= 1, got 0"),
        (RunSpec("digits-mlp", "adam", batch_size=-4), "batch_size must be an integer >= 1"),
        (RunSpec("digits-mlp", "adamx"), "unknown optimizer 'adamx'; valid names"),
        (RunSpec("digits-mlp", "adam", {"lr": -1.0}), "lr must be"),
        (RunSpec("digits-mlp", "adam", {"rho": 0.9}), "does not take 'rho'"),
        (RunSpec("mnist", "adam"), "unknown task 'mnist'"),
        (RunSpec("quadratic-deep", "adam", batch_size=2000), "larger than the 1000 training"),
    ],
)
def test_bad_specs_are_rejected_with_a_clear_message(spec, message):
    with pytest.raises(ValueError, match=message):
        train(spec, progress=False)


# ------------------------------------------------------------------ the distributed hook


def test_a_sharding_subclass_changes_what_the_model_sees_not_the_counts():
    class HalfBatches(TrainingRun):
        def shard_batch(self, inputs, targets):
            return inputs[::2], targets[::2]

    seen = []
    run = HalfBatches(RunSpec("digits-mlp", "sgd", epochs=1, batch_size=100))

    def record_training_batches(module, args, output):
        if module.training:
            seen.append(len(args[0]))

    run.model.register_forward_hook(record_training_batches)
    result = run.run(progress=False)
    assert seen == [50] * 10 + [39]  # 1077 = 10 x 100 + 77
    assert result.history[-1]["examples"] == 1077
