"""optlab.lab.precision: compact-state arms against their full-precision baselines.

The numbers are checked against scipy.stats computed here from the raw seeds (intervals,
paired and one-sided t tests, TOST as two shifted paired tests), Holm against a hand
computation, the edge cases of a study (identical arms, diverged seeds, one seed, no
margin), and the report's section on a fake study.
"""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import scipy.stats

from optlab.lab.arms import Arm
from optlab.lab.precision import (
    RELATIVE_MARGIN,
    Comparison,
    EquivalenceTest,
    Pair,
    analyze,
    baseline_pairs,
    equivalence_test,
    judge,
    margin_of,
    verdict,
)
from optlab.lab.runs import RunResult, RunSpec
from optlab.lab.stats import Interval
from optlab.lab.summary import SummaryRow


def seeds(values) -> dict[int, float]:
    return {k: float(v) for k, v in enumerate(values)}


def scipy_tost(a, b, margin) -> float:
    """TOST as two one-sided paired t tests of the shifted samples (scipy.stats.ttest_rel)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    lower = scipy.stats.ttest_rel(a + margin, b, alternative="greater").pvalue  # H0 d <= -m
    upper = scipy.stats.ttest_rel(a - margin, b, alternative="less").pvalue  # H0 d >= +m
    return float(max(lower, upper))


# ------------------------------------------------------------------- the tests


@pytest.mark.parametrize("seed", range(6))
def test_interval_difference_test_and_tost_match_scipy(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 9))
    b = rng.normal(0.9, 0.01, n)
    a = b + rng.normal(rng.normal(0, 0.004), 0.004, n)
    margin = float(rng.uniform(0.002, 0.02))
    test = equivalence_test(seeds(a), seeds(b), margin)
    d = a - b
    low, high = scipy.stats.t.interval(0.95, n - 1, loc=d.mean(), scale=scipy.stats.sem(d))
    assert test.n == n and test.margin == margin
    assert test.difference.mean == pytest.approx(d.mean(), rel=1e-12)
    assert (test.difference.low, test.difference.high) == pytest.approx((low, high), rel=1e-10)
    assert test.p_value == pytest.approx(scipy.stats.ttest_rel(a, b).pvalue, rel=1e-10)
    assert test.tost_p == pytest.approx(scipy_tost(a, b, margin), rel=1e-10)


@pytest.mark.parametrize("seed", range(20))
def test_tost_passes_exactly_when_the_90_percent_interval_lies_inside_the_margin(seed):
    # the textbook equivalence of TOST at alpha with the (1 - 2 alpha) interval
    rng = np.random.default_rng(100 + seed)
    b = rng.normal(2.3, 0.02, 5)
    a = b + rng.normal(rng.normal(0, 0.01), 0.01, 5)
    margin = 0.023
    d = a - b
    low, high = scipy.stats.t.interval(0.90, 4, loc=d.mean(), scale=scipy.stats.sem(d))
    test = equivalence_test(seeds(a), seeds(b), margin)
    assert (test.tost_p <= 0.05) == (-margin < low and high < margin)


def test_seeds_diverged_in_either_arm_are_left_out_and_counted():
    full = {0: 0.95, 1: 0.96, 2: math.nan, 3: 0.94, 4: 0.97}
    compact = {0: 0.951, 1: 0.958, 2: 0.95, 3: math.inf, 4: 0.969}
    test = equivalence_test(compact, full, 0.01)
    kept = [0, 1, 4]
    a, b = [compact[s] for s in kept], [full[s] for s in kept]
    assert test.n == 3
    assert test.p_value == pytest.approx(scipy.stats.ttest_rel(a, b).pvalue, rel=1e-10)
    assert test.tost_p == pytest.approx(scipy_tost(a, b, 0.01), rel=1e-10)


def test_identical_arms_are_indistinguishable_not_an_error():
    values = seeds([0.97, 0.95, 0.96, 0.98, 0.96])
    test = equivalence_test(values, dict(values), 0.0096)
    assert test.difference == Interval(0.0, 0.0, 0.0, 5, 0.95)
    assert test.p_value == 1.0 and test.tost_p == 0.0
    assert verdict(test, 1.0, 0.0, higher_is_better=True) == ("indistinguishable", True)


def test_a_constant_difference_is_exact_inside_or_outside_the_margin():
    base = seeds([1.0, 2.0, 3.0])
    inside = equivalence_test(seeds([1.005, 2.005, 3.005]), base, 0.01)
    outside = equivalence_test(seeds([1.02, 2.02, 3.02]), base, 0.01)
    assert inside.p_value == 0.0 and inside.tost_p == 0.0
    assert outside.p_value == 0.0 and outside.tost_p == 1.0
    # lower is better (a loss): +0.005 on every seed is a real, small deterioration
    assert verdict(inside, 0.0, 0.0, higher_is_better=False) == ("worse", True)
    assert verdict(outside, 0.0, 1.0, higher_is_better=False) == ("worse", False)
    assert verdict(outside, 0.0, 1.0, higher_is_better=True) == ("better", False)


def test_one_seed_or_no_margin_gives_no_test_and_no_verdict():
    one = equivalence_test({0: 0.9}, {0: 0.91, 1: 0.9}, 0.01)
    assert one.n == 1 and math.isnan(one.p_value) and math.isnan(one.tost_p)
    assert verdict(one, math.nan, math.nan, True) == ("inconclusive", False)
    rng = np.random.default_rng(3)
    b = rng.normal(0, 1, 5)
    no_margin = equivalence_test(seeds(b + 1e-3), seeds(b), margin_of(0.0))
    assert math.isnan(no_margin.margin) and math.isnan(no_margin.tost_p)
    assert not math.isnan(no_margin.p_value)


def test_the_margin_is_the_stated_share_of_the_baselines_magnitude():
    assert RELATIVE_MARGIN == 0.01
    assert margin_of(0.97) == pytest.approx(0.0097)
    assert margin_of(-2.0) == pytest.approx(0.02)
    assert math.isnan(margin_of(math.nan)) and math.isnan(margin_of(0.0))


def test_indistinguishable_needs_the_95_interval_to_hold_zero():
    # the equivalence test passes but the 95 % interval excludes 0 while Holm does not reject
    interval = Interval(0.002, 0.001, 0.003, 5, 0.95)
    test = EquivalenceTest(5, interval, 0.01, 0.01, 1e-4)
    assert verdict(test, 0.06, 1e-3, higher_is_better=True) == ("inconclusive", True)
    assert verdict(test, 0.04, 1e-3, higher_is_better=True) == ("better", True)
    wide = EquivalenceTest(5, Interval(0.0, -0.02, 0.02, 5, 0.95), 1.0, 0.01, 0.4)
    assert verdict(wide, 1.0, 0.4, higher_is_better=True) == ("inconclusive", False)


# ------------------------------------------------------------------------ Holm


def _comparison(p: float, tost: float, mean: float = 0.0) -> Comparison:
    interval = Interval(mean, mean - 1.0, mean + 1.0, 5, 0.95)
    test = EquivalenceTest(5, interval, p, 1.0, tost)
    return Comparison("t", "loss", False, Pair("a-int8", "a", "adam", "int8"), test, 1.0, 1.0)


def test_judge_applies_holm_to_each_family_of_tests():
    # p = 0.01, 0.04, 0.03 (m = 3): sorted 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 -> 0.06
    comparisons = [_comparison(0.01, 0.5, 0.3), _comparison(0.04, 0.012), _comparison(0.03, 0.02)]
    judge(comparisons)
    assert [c.adjusted_p for c in comparisons] == pytest.approx([0.03, 0.06, 0.06])
    # TOST p = 0.5, 0.012, 0.02: sorted 0.012 * 3 = 0.036, 0.02 * 2 = 0.04, 0.5
    assert [c.adjusted_tost_p for c in comparisons] == pytest.approx([0.5, 0.036, 0.04])
    assert [c.verdict for c in comparisons] == ["worse", "indistinguishable", "indistinguishable"]
    judge(comparisons, study=True)
    assert comparisons[0].study_verdict == "worse"


# ----------------------------------------------------------------- the pairing


def test_each_compact_arm_is_paired_with_the_arm_that_differs_only_in_state_dtype():
    arms = [
        Arm.parse("adam"),
        Arm.parse("adam-bf16=adam:state_dtype=bfloat16"),
        Arm.parse("adam-int8=adam:state_dtype=int8"),
        Arm.parse("adam-e6-int8=adam:eps=1e-6,state_dtype=int8"),  # no full arm with eps 1e-6
        Arm.parse("lion=lion:lr~1e-4..1e-2:log:3"),
        Arm.parse("lion-int8=lion:state_dtype=int8,lr~1e-4..1e-2:log:3"),
        Arm.parse("lion-int8-wide=lion:state_dtype=int8,lr~1e-5..1e-2:log:4"),  # other space
    ]
    assert baseline_pairs(arms) == [
        Pair("adam-bf16", "adam", "adam", "bfloat16"),
        Pair("adam-int8", "adam", "adam", "int8"),
        Pair("lion-int8", "lion", "lion", "int8"),
    ]


def _row(task, arm, optimizer, values, *, lr, higher=True, metric="accuracy", diverged=0):
    row = SummaryRow(task, optimizer, {"lr": lr}, {}, metric, higher, None, arm=arm)
    row.final_by_seed = {s: v for s, v in seeds(values).items() if math.isfinite(v)}
    row.seeds, row.diverged = len(values), diverged
    return row


def test_analyze_judges_per_task_and_over_the_study():
    arms = [Arm.parse("adam"), Arm.parse("adam-int8=adam:state_dtype=int8")]
    base = [0.96, 0.97, 0.95, 0.96, 0.98]
    rows = {
        "same": [
            _row("same", "adam", "adam", base, lr=1e-2),
            _row("same", "adam-int8", "adam", base, lr=1e-2),
        ],
        "loss": [
            _row("loss", "adam", "adam", [2.0, 2.1, 2.2, 2.0, 2.1], lr=1e-3, higher=False,
                 metric="bpc"),
            _row("loss", "adam-int8", "adam", [2.5, 2.61, 2.69, 2.5, 2.6], lr=1e-2,
                 higher=False, metric="bpc"),
        ],
    }  # fmt: skip
    results = analyze(arms, rows)
    same, loss = results
    assert same.verdict == "indistinguishable" and same.same_hparams
    assert same.test.margin == pytest.approx(0.01 * np.mean(base))
    assert loss.verdict == "worse" and not loss.within_margin and not loss.same_hparams
    assert "different hyper-parameters" in "; ".join(loss.notes)
    d = np.array([2.5, 2.61, 2.69, 2.5, 2.6]) - np.array([2.0, 2.1, 2.2, 2.0, 2.1])
    assert loss.test.p_value == pytest.approx(scipy.stats.ttest_1samp(d, 0.0).pvalue, rel=1e-10)
    assert loss.relative == pytest.approx(d.mean() / 2.08)
    assert loss.study_adjusted_p == pytest.approx(min(1.0, 2 * loss.test.p_value))


# ------------------------------------------------------------------ the report


def _fake_trainer(spec: RunSpec) -> RunResult:
    """Accuracy set by lr and seed; int8 state loses 0.05 on every seed, bf16 nothing."""
    lr = spec.hparams["lr"]
    level = 0.9 - 0.05 * (math.log10(lr) + 2) ** 2 + 0.01 * spec.seed
    level -= 0.05 if spec.hparams.get("state_dtype") == "int8" else 0.0
    history = [
        {"epoch": float(i), "step": i, "examples": i, "lr": lr, "train_loss": 1.0,
         "valid_loss": 1.0, "valid_metric": level * i / 2, "test_loss": 1.0,
         "metric": level * i / 2, "wall_time": 0.1 * i}
        for i in range(3)
    ]  # fmt: skip
    return RunResult(spec, history, "accuracy", True, "ok", 0.2, {})


def test_the_report_has_the_compact_state_section_and_its_csv(tmp_path):
    from optlab.lab.report import write_report
    from optlab.lab.study import StudySpec, run_study

    study = StudySpec(
        tasks=("digits-mlp",),
        arms=("adam", "adam-bf16=adam:state_dtype=bfloat16", "adam-int8=adam:state_dtype=int8"),
        seeds=(0, 1, 2),
        epochs=2,
        tune=("lr=1e-3,1e-2",),
    )
    run_study(study, tmp_path, trainer=_fake_trainer)
    report = write_report(tmp_path)
    markdown = report.report_path.read_text(encoding="utf-8")
    assert "## Compact state against full precision" in markdown
    assert "| adam-bf16 | indistinguishable |" in markdown
    assert "| adam-int8 | worse |" in markdown  # -0.05 on every seed: exact, p = 0
    assert "compact state" in report.tables
    with open(tmp_path / "state-dtype.csv", newline="", encoding="utf-8") as handle:
        rows = {row["compact_arm"]: row for row in csv.DictReader(handle)}
    assert rows["adam-int8"]["verdict"] == "worse"
    assert float(rows["adam-int8"]["diff_mean"]) == pytest.approx(-0.05)
    assert rows["adam-bf16"]["baseline_arm"] == "adam" and rows["adam-bf16"]["same_hparams"]


def test_a_study_without_compact_arms_has_no_such_section(tmp_path):
    from optlab.lab.report import write_report
    from optlab.lab.study import StudySpec, run_study

    study = StudySpec(tasks=("digits-mlp",), arms=("adam", "sgd"), seeds=(0, 1), epochs=2,
                      tune=("lr=1e-2",))  # fmt: skip
    run_study(study, tmp_path, trainer=_fake_trainer)
    write_report(tmp_path)
    assert "Compact state" not in (tmp_path / "report.md").read_text(encoding="utf-8")
    assert not (tmp_path / "state-dtype.csv").exists()


def test_the_shipped_state_dtype_studies_pair_every_compact_arm_with_the_same_grid():
    from optlab.cli_ablate import list_studies, study_path
    from optlab.lab.checks import validate_study
    from optlab.lab.studyfile import load_toml

    assert "state-dtype" in list_studies()
    for quick in (False, True):
        study = validate_study(load_toml(study_path("state-dtype", quick)))
        pairs = baseline_pairs(study.arms)
        assert len(study.arms) == 9 and len(pairs) == 6
        assert {(p.optimizer, p.state_dtype) for p in pairs} == {
            (o, f) for o in ("adam", "adabelief", "lion") for f in ("bfloat16", "int8")
        }
        for pair in pairs:
            compact, full = study.arm(pair.compact), study.arm(pair.baseline)
            assert study.space(compact) == study.space(full)  # the same lr grid, the same budget
        assert len({study.budget(arm) for arm in study.arms}) == 1
    assert len(load_toml(study_path("state-dtype")).seeds) == 5
