"""Summary statistics against hand computations, report files, and redrawing from records alone."""

from __future__ import annotations

import csv
import math
import statistics

import pandas as pd
import pytest
from PIL import Image

from optlab.cli import main
from optlab.lab.report import summarize_runs, write_report
from optlab.lab.runs import RunResult, RunSpec
from optlab.lab.store import Store
from optlab.lab.study import StudySpec, run_study

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_with(
    metrics, *, seed=0, lr=1e-3, status="ok", higher=True, seconds=0.25, valid=None, info=None
):
    """A fake run with test metrics ``metrics`` (validation: ``valid``, by default 0.9 x)."""
    spec = RunSpec("digits-mlp", "adam", {"lr": lr}, seed=seed, epochs=len(metrics) - 1)
    valid = [0.9 * value for value in metrics] if valid is None else valid
    history = [
        {
            "epoch": float(i),
            "step": 10 * i,
            "examples": 100 * i,
            "lr": lr,
            "train_loss": 1.0 / (i + 1),
            "valid_loss": 1.1 / (i + 1),
            "valid_metric": valid[i],
            "test_loss": 1.2 / (i + 1),
            "metric": value,
            "wall_time": seconds * i,
        }
        for i, value in enumerate(metrics)
    ]
    return RunResult(spec, history, "accuracy", higher, status, seconds, dict(info or {}))


def fake_trainer(spec: RunSpec) -> RunResult:
    """Accuracy rising to a level set by the optimizer, lr and seed; lr >= 1 diverges."""
    lr = spec.hparams.get("lr", 1e-3)
    level = {"adam": 0.9, "sgd": 0.6}.get(spec.optimizer, 0.7)
    level -= 0.05 * (math.log10(lr) + 2) ** 2
    epochs = spec.epochs or 3
    values = [level * (1 - 0.5**i) + 0.01 * spec.seed for i in range(epochs + 1)]
    result = run_with(values, seed=spec.seed, lr=lr, status="diverged" if lr >= 1 else "ok")
    return RunResult(spec, result.history, "accuracy", True, result.status, 0.25, {})


# --------------------------------------------------------------- statistics


def test_summary_statistics_match_a_hand_computation():
    runs = [
        run_with([0.1, 0.5, 0.96, 0.94], seed=0, seconds=0.2),
        run_with([0.1, 0.7, 0.90, 0.97], seed=1, seconds=0.4),
        run_with([0.1, 0.2, 0.30, 0.40], seed=2, seconds=0.3),
        run_with([0.1, 0.99, math.nan, math.nan], seed=3, status="diverged"),
    ]
    row = summarize_runs(
        "digits-mlp", "adam", {"lr": 1e-3}, runs, target=0.95, metric="accuracy",
        higher_is_better=True,
    )  # fmt: skip
    assert (row.seeds, row.diverged) == (4, 1)
    assert row.final_mean == pytest.approx(statistics.mean([0.94, 0.97, 0.40]))
    assert row.final_std == pytest.approx(statistics.stdev([0.94, 0.97, 0.40]))
    assert row.best_mean == pytest.approx(statistics.mean([0.96, 0.97, 0.40]))
    # seed 0 reaches 0.95 at epoch 2, seed 1 at epoch 3, seed 2 never.
    assert row.reached == 2
    assert row.epochs_to_target_mean == pytest.approx(2.5)
    assert row.seconds_to_target_mean == pytest.approx((0.2 * 2 + 0.4 * 3) / 2)
    assert row.hparams["lr"] == 1e-3 and row.hparams["betas"] == (0.9, 0.999)  # defaults named
    assert "foreach" not in row.hparams
    assert row.final_valid_mean == pytest.approx(0.9 * statistics.mean([0.94, 0.97, 0.40]))


def test_summary_names_the_hyper_parameters_a_run_recorded_not_todays_defaults():
    # The record says eps was 1e-6 and maximize True (defaults: 1e-8, False).
    recorded = {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-6, "weight_decay": 0.0,
                "amsgrad": False, "maximize": True, "foreach": None, "fused": None}  # fmt: skip
    runs = [run_with([0.1, 0.9], seed=s, info={"hparams": recorded}) for s in range(2)]
    row = summarize_runs(
        "digits-mlp", "adam", {"lr": 1e-3, "maximize": True}, runs, target=0.95,
        metric="accuracy", higher_is_better=True,
    )  # fmt: skip
    assert row.hparams["eps"] == 1e-6 and row.hparams["betas"] == (0.9, 0.999)
    assert row.hparams["maximize"] is True
    assert "foreach" not in row.hparams and "fused" not in row.hparams  # implementation, implicit


def test_maximize_and_explicit_implementation_flags_reach_the_table_and_the_csv(tmp_path):
    study = StudySpec(
        "digits-mlp", ("adam",), hparams={"maximize": True, "foreach": False}, seeds=(0,), epochs=2
    )
    run_study(study, tmp_path, trainer=fake_trainer)
    report = write_report(tmp_path)
    assert "maximize=True" in report.text() and "foreach=False" in report.text()
    (row,) = csv.DictReader(open(tmp_path / "summary.csv"))
    assert row["hp_maximize"] == "True" and row["hp_foreach"] == "False"
    assert "hp_fused" not in row  # not given: an implementation choice, not shown


def test_curve_bands_are_the_sample_std_of_the_tables():
    from optlab.lab.plots import curve_band

    runs = [run_with([0.1, 0.5, v]) for v in (0.9, 0.7, 0.8)] + [run_with([0.2, 0.6])]
    epochs, mean, std = curve_band(runs, "metric")
    assert list(epochs) == [0.0, 1.0, 2.0]
    assert mean[2] == pytest.approx(0.8) and std[2] == pytest.approx(
        statistics.stdev([0.9, 0.7, 0.8])
    )
    assert std[0] == pytest.approx(statistics.stdev([0.1, 0.1, 0.1, 0.2]))
    _, _, single = curve_band(runs[:1], "metric")
    assert all(math.isnan(value) for value in single)  # one seed: no spread to show


def test_lr_sensitivity_plot_shows_the_validation_metric_tuning_selected_on(tmp_path, monkeypatch):
    from optlab.lab import plots

    drawn = {}

    def capture(figure, path):
        axis = figure.axes[0]
        drawn["ylabel"] = axis.get_ylabel()
        line = next(line for line in axis.get_lines() if line.get_label() == "adam")
        drawn["y"] = list(line.get_ydata())
        return path

    monkeypatch.setattr(plots, "_save", capture)
    runs = [
        run_with([0.1, 0.8], lr=1e-3, valid=[0.1, 0.6]),
        run_with([0.1, 0.7], lr=1e-2, valid=[0.1, 0.9]),
    ]
    plots.plot_lr_sensitivity(
        [("adam", runs, 1e-2)], tmp_path / "x.png", title="t",
        label="final validation accuracy", higher_is_better=True,
    )  # fmt: skip
    assert drawn["y"] == [0.6, 0.9] and drawn["ylabel"] == "final validation accuracy"


def test_lower_is_better_targets_count_values_at_or_below_the_target():
    runs = [run_with([5.0, 1.0, 0.2], higher=False), run_with([5.0, 0.5, 0.1], higher=False)]
    row = summarize_runs("x", "adam", {}, runs, target=0.5, metric="loss", higher_is_better=False)
    assert row.best_mean == pytest.approx(0.15)
    assert row.epochs_to_target_mean == pytest.approx(1.5)  # epoch 2 and epoch 1


# ------------------------------------------------------------------ report


@pytest.fixture
def tuned_dir(tmp_path):
    study = StudySpec(
        "digits-mlp",
        ("adam", "sgd"),
        seeds=(0, 1, 2),
        epochs=3,
        tune="lr=1e-3,1e-2,1e-1,3.0",
    )
    run_study(study, tmp_path / "out", trainer=fake_trainer, command="optlab compare --fake")
    return tmp_path / "out"


def _valid_png(path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


def test_report_writes_table_csv_plots_and_markdown(tuned_dir):
    report = write_report(tuned_dir)
    table = report.text()
    assert table.index("adam") < table.index("sgd")  # best final accuracy first
    rows = list(csv.DictReader(open(tuned_dir / "summary.csv")))
    assert [row["optimizer"] for row in rows] == ["adam", "sgd"]
    for row in rows:
        assert float(row["hp_lr"]) == 1e-2  # the tuned lr, chosen by the peaked fake
        assert row["seeds"] == "3" and row["diverged"] == "0"
    assert rows[0]["hp_betas"] == "(0.9,0.999)" and rows[1]["hp_momentum"] == "0.0"
    finals = [fake_trainer(RunSpec("digits-mlp", "adam", {"lr": 1e-2}, seed=s, epochs=3))
              for s in range(3)]  # fmt: skip
    expected = [run.final["metric"] for run in finals]
    assert float(rows[0]["final_mean"]) == pytest.approx(statistics.mean(expected))
    assert float(rows[0]["final_std"]) == pytest.approx(statistics.stdev(expected))
    mean, std = statistics.mean(expected), statistics.stdev(expected)
    assert f"{mean:.4f} ± {std:.4f}" in table
    for name in ("digits-mlp-curves.png", "digits-mlp-lr-sensitivity.png"):
        width, height = _valid_png(tuned_dir / "plots" / name)
        assert width > 400 and height > 300
    markdown = (tuned_dir / "report.md").read_text()
    assert "optlab compare --fake" in markdown
    assert "plots/digits-mlp-curves.png" in markdown and "lr-sensitivity" in markdown
    assert "torch" in markdown and "python" in markdown  # versions and machine
    assert "Diverged runs" in markdown and "lr=3" in markdown
    assert "by the final validation accuracy" in markdown
    assert "chosen on held-out validation data, never on the test data" in markdown
    assert float(rows[0]["final_valid_mean"]) == pytest.approx(
        statistics.mean(run.final["valid_metric"] for run in finals)
    )
    assert rows[0]["validation"] == "held-out"
    assert pd.read_csv(tuned_dir / "summary.csv").shape[0] == 2


def test_optlab_report_redraws_everything_from_the_records_alone(tuned_dir, capsys):
    write_report(tuned_dir)
    summary = (tuned_dir / "summary.csv").read_bytes()
    markdown = (tuned_dir / "report.md").read_text()
    for path in [tuned_dir / "summary.csv", tuned_dir / "report.md"]:
        path.unlink()
    for path in (tuned_dir / "plots").iterdir():
        path.unlink()
    (tuned_dir / "plots").rmdir()

    assert main(["report", str(tuned_dir)]) == 0
    out = capsys.readouterr().out
    assert "adam" in out and "report.md" in out
    assert (tuned_dir / "summary.csv").read_bytes() == summary

    def without_time(text: str) -> list[str]:
        return [line for line in text.splitlines() if "report generated" not in line]

    assert without_time((tuned_dir / "report.md").read_text()) == without_time(markdown)
    for name in ("digits-mlp-curves.png", "digits-mlp-lr-sensitivity.png"):
        _valid_png(tuned_dir / "plots" / name)


def test_report_of_records_without_a_study_file_groups_runs_by_setting(tmp_path):
    store = Store.open(tmp_path)
    for seed in range(2):
        store.put(run_with([0.1, 0.8, 0.9 + 0.02 * seed], seed=seed))
        store.put(run_with([0.1, 0.5, 0.6], seed=seed, lr=1e-2))
    report = write_report(tmp_path)
    assert len(report.rows) == 2
    best = report.rows[0]
    assert best.explicit == {"lr": 1e-3} and best.final_mean == pytest.approx(0.91)
    _valid_png(tmp_path / "plots" / "digits-mlp-curves.png")


def test_report_of_an_unfinished_study_says_what_is_missing(tmp_path):
    study = StudySpec("digits-mlp", ("adam",), seeds=(0, 1, 2), epochs=3)

    def crash_after_first(spec):
        if spec.seed > 0:
            raise RuntimeError("stop")
        return fake_trainer(spec)

    with pytest.raises(RuntimeError):
        run_study(study, tmp_path, trainer=crash_after_first)
    report = write_report(tmp_path)
    assert not report.complete
    assert report.rows[0].missing == 2 and report.rows[0].seeds == 1
    assert "2 missing" in report.text()
    assert "not complete" in (tmp_path / "report.md").read_text()


def test_report_covers_the_latest_study_and_counts_older_records(tmp_path):
    run_study(StudySpec("digits-mlp", ("adam", "sgd"), seeds=(0,), epochs=2), tmp_path,
              trainer=fake_trainer)  # fmt: skip
    run_study(StudySpec("digits-mlp", ("adam",), seeds=(0,), epochs=2), tmp_path,
              trainer=fake_trainer)  # fmt: skip
    report = write_report(tmp_path)
    assert [row.optimizer for row in report.rows] == ["adam"]
    markdown = (tmp_path / "report.md").read_text()
    assert "the 2 run records (one JSON file per run), 1 of them part of this study" in markdown
