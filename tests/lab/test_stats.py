"""Tests of optlab.lab.stats against hand computations, simulations and the edge cases of a study."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from optlab.lab.stats import (
    Interval,
    compare_with_best,
    contrast,
    cost_from_metric,
    holm,
    holm_adjusted,
    main_effects,
    mean_ci,
    mean_ranks,
    paired_comparison,
    performance_profile,
    performance_ratios,
    profile_area,
    winners,
)

# Student t quantiles t_{0.975, df} from a printed table (not from scipy)
T975 = {2: 4.302652729911275, 4: 2.7764451051977987}


def two_sided_p_df2(t: float) -> float:
    """Closed form of the t distribution with 2 degrees of freedom: P(|T| > t) = 1 - t/sqrt(2+t²)."""
    return 1.0 - t / math.sqrt(2.0 + t * t)


# ---------------------------------------------------------------- mean_ci


def test_mean_ci_matches_the_t_formula_by_hand():
    # values 1, 2, 3: mean 2, sd 1, se 1/sqrt(3); half-width t_{.975,2} / sqrt(3)
    interval = mean_ci([1.0, 2.0, 3.0])
    half = T975[2] / math.sqrt(3.0)
    assert interval == Interval(2.0, pytest.approx(2.0 - half), pytest.approx(2.0 + half), 3, 0.95)


def test_mean_ci_drops_diverged_values_instead_of_counting_them_as_zero():
    interval = mean_ci([1.0, float("nan"), 2.0, float("inf"), 3.0])
    assert interval.n == 3
    assert interval.mean == 2.0
    assert interval.low == pytest.approx(2.0 - T975[2] / math.sqrt(3.0))


def test_mean_ci_edge_cases_one_value_none_and_constant():
    one = mean_ci([0.5])
    assert (one.mean, one.n) == (0.5, 1) and math.isnan(one.low) and math.isnan(one.high)
    assert not one.contains(0.5)
    empty = mean_ci([float("nan")])
    assert empty.n == 0 and math.isnan(empty.mean) and math.isnan(empty.low)
    assert mean_ci([]).n == 0
    constant = mean_ci([0.1, 0.1, 0.1])
    assert constant.low == constant.high == constant.mean == pytest.approx(0.1)


def test_mean_ci_refuses_a_confidence_outside_0_1():
    with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\), got 95"):
        mean_ci([1.0, 2.0], confidence=95)


@pytest.mark.parametrize("n_seeds", [3, 5])
def test_mean_ci_covers_the_true_mean_95_percent_of_the_time(n_seeds):
    rng = np.random.default_rng(20240601 + n_seeds)
    studies, true_mean = 4000, 0.97
    samples = rng.normal(true_mean, 0.01, size=(studies, n_seeds))
    covered = sum(mean_ci(sample).contains(true_mean) for sample in samples)
    # binomial sd of the rate at 4000 studies is 0.0034: [0.93, 0.97] is +-6 sd
    assert 0.93 <= covered / studies <= 0.97


def test_paired_interval_covers_the_true_difference_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    studies, n_seeds, true_difference = 3000, 5, -0.004
    covered = 0
    for _ in range(studies):
        # seed k shares its weights and data order in both arms: a large common seed effect
        seed_effect = rng.normal(0.0, 0.05, n_seeds)
        a = 0.9 + true_difference + seed_effect + rng.normal(0.0, 0.002, n_seeds)
        b = 0.9 + seed_effect + rng.normal(0.0, 0.002, n_seeds)
        result = paired_comparison(dict(enumerate(a)), dict(enumerate(b)))
        covered += result.difference.contains(true_difference)
    assert 0.93 <= covered / studies <= 0.97


# ---------------------------------------------------------------- paired_comparison


def test_paired_comparison_matches_the_hand_computed_t_test():
    # d = a - b = [1, 2, 3] (seed 3 missing in b, seed 4 diverged in a): mean 2, sd 1, n 3
    # t = 2 / (1/sqrt 3) = 3.4641; df 2: p = 1 - t/sqrt(2 + t^2) = 1 - 3.4641/sqrt(14) = 0.07418
    a = {0: 11.0, 1: 12.0, 2: 13.0, 3: 9.0, 4: float("nan")}
    b = {0: 10.0, 1: 10.0, 2: 10.0, 4: 1.0}
    result = paired_comparison(a, b)
    assert result.n == 3 and result.difference.n == 3
    assert result.difference.mean == 2.0
    assert result.p_value == pytest.approx(0.074180, abs=1e-6)
    assert result.p_value == pytest.approx(two_sided_p_df2(2 * math.sqrt(3)))
    half = T975[2] / math.sqrt(3.0)
    assert (result.difference.low, result.difference.high) == pytest.approx((2 - half, 2 + half))


def test_paired_comparison_constant_differences():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = paired_comparison({0: 0.3, 1: 0.7}, {0: 0.3, 1: 0.7})
        shifted = paired_comparison({0: 2.0, 1: 3.0, 2: 4.0}, {0: 1.0, 1: 2.0, 2: 3.0})
        single = paired_comparison({0: 2.0}, {0: 1.0, 1: 2.0})
    assert same.p_value == 1.0 and same.difference.low == same.difference.high == 0.0
    assert shifted.p_value == 0.0 and shifted.difference.mean == 1.0
    assert single.n == 1 and math.isnan(single.p_value) and math.isnan(single.difference.low)


# ---------------------------------------------------------------- Holm


def test_holm_matches_the_hand_computed_example():
    # m = 4, alpha 0.05, sorted: 0.005 (#3) <= 0.05/4 = 0.0125 reject; 0.01 (#0) <= 0.05/3 =
    # 0.0167 reject; 0.03 (#2) > 0.05/2 = 0.025 stop: #2 and #1 are kept, although
    # 0.04 (#1) <= 0.05/1 would pass on its own.
    p = [0.01, 0.04, 0.03, 0.005]
    assert holm(p, alpha=0.05) == [True, False, False, True]
    # adjusted: 4*0.005 = 0.02; max(0.02, 3*0.01) = 0.03; max(0.03, 2*0.03) = 0.06;
    # max(0.06, 1*0.04) = 0.06; in input order:
    assert holm_adjusted(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # at alpha 0.1: 0.005 <= 0.025, 0.01 <= 0.0333, 0.03 <= 0.05, 0.04 <= 0.1: all rejected
    assert holm(p, alpha=0.1) == [True, True, True, True]


def test_holm_counts_nan_p_values_in_m_and_never_rejects_them():
    # m = 2 with the nan: 0.03 > 0.05/2 is kept (with m = 1 it would be rejected)
    assert holm([0.03, float("nan")]) == [False, False]
    adjusted = holm_adjusted([0.03, float("nan")])
    assert adjusted[0] == pytest.approx(0.06) and math.isnan(adjusted[1])
    # adjusted p-values are capped at 1
    assert holm_adjusted([0.6, 0.7]) == pytest.approx([1.0, 1.0])
    assert holm([]) == [] and holm_adjusted([]) == []


# ---------------------------------------------------------------- compare_with_best


def test_identical_arms_are_indistinguishable_without_warning_or_error():
    seeds = {0: 0.91, 1: 0.93, 2: 0.92}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        verdicts = compare_with_best({"adam": dict(seeds), "adam-copy": dict(seeds)}, True)
    assert verdicts["adam"].is_best and verdicts["adam"].difference is None  # tie: first wins
    copy = verdicts["adam-copy"]
    assert copy.indistinguishable and not copy.is_best and copy.reason == ""
    assert (copy.n, copy.p_value, copy.adjusted_p) == (3, 1.0, 1.0)
    assert copy.difference.mean == copy.difference.low == copy.difference.high == 0.0


def five_seed_study() -> dict[str, dict[int, float]]:
    # seed k shifts every arm alike (shared weights and data order); sgd is 0.07 worse, adam
    # 0.0004 worse on average with per-seed noise of ~0.004: within the seed noise
    seed_effect = [0.010, -0.005, 0.000, 0.008, -0.012]
    sgd_noise = [0.001, -0.001, 0.002, 0.000, -0.002]
    adam_noise = [-0.003, 0.004, -0.002, 0.003, -0.004]
    return {
        "sgd": {k: 0.90 + e + sgd_noise[k] for k, e in enumerate(seed_effect)},
        "adabelief": {k: 0.97 + e for k, e in enumerate(seed_effect)},
        "adam": {k: 0.97 + e + adam_noise[k] for k, e in enumerate(seed_effect)},
    }


def test_a_clearly_worse_arm_is_distinguishable_and_a_close_one_is_not():
    study = five_seed_study()
    verdicts = compare_with_best(study, higher_is_better=True)
    assert list(verdicts) == ["sgd", "adabelief", "adam"]  # input order
    assert verdicts["adabelief"].is_best and verdicts["adabelief"].n == 5
    sgd, adam = verdicts["sgd"], verdicts["adam"]
    assert not sgd.indistinguishable and sgd.n == 5 and sgd.p_value < 1e-4
    assert sgd.difference.high < 0 and sgd.difference.mean == pytest.approx(-0.07, abs=0.005)
    assert adam.indistinguishable and adam.difference.contains(0.0)
    # Holm over m = 2 tests: the smaller p doubled, the larger kept (or the running max)
    assert sgd.adjusted_p == pytest.approx(2 * sgd.p_value)
    assert adam.adjusted_p == pytest.approx(max(2 * sgd.p_value, adam.p_value))


def test_holm_keeps_arms_that_a_raw_test_would_separate_from_the_best():
    # arm - best: x d = -[2, 3, 4] (mean/sd 3, t = 3 sqrt 3: p = 1 - t/sqrt(2+t^2) = 0.0351),
    # y d = -[1.8, 3, 4.2] (mean/sd 2.5, t = 2.5 sqrt 3: p = 0.0495): both raw p < 0.05, but
    # Holm over m = 2 needs 0.0351 <= 0.025 first, so neither is rejected
    best = {0: 10.0, 1: 10.0, 2: 10.0}
    x = {0: 8.0, 1: 7.0, 2: 6.0}
    y = {0: 8.2, 1: 7.0, 2: 5.8}
    verdicts = compare_with_best({"best": best, "x": x, "y": y}, higher_is_better=True)
    p_x, p_y = two_sided_p_df2(3 * math.sqrt(3)), two_sided_p_df2(2.5 * math.sqrt(3))
    assert (verdicts["x"].p_value, verdicts["y"].p_value) == pytest.approx((p_x, p_y))
    assert p_x < p_y < 0.05
    assert verdicts["x"].indistinguishable and verdicts["y"].indistinguishable
    assert verdicts["x"].adjusted_p == verdicts["y"].adjusted_p == pytest.approx(2 * p_x)
    # alone (m = 1) x is told apart
    assert not compare_with_best({"best": best, "x": x}, True)["x"].indistinguishable


def test_lower_is_better_picks_the_smallest_mean_as_best():
    study = {arm: {s: 1 - v for s, v in seeds.items()} for arm, seeds in five_seed_study().items()}
    verdicts = compare_with_best(study, higher_is_better=False)
    assert verdicts["adabelief"].is_best
    assert not verdicts["sgd"].indistinguishable and verdicts["sgd"].difference.low > 0


def test_a_diverged_seed_reduces_n_and_is_not_counted_as_zero():
    study = five_seed_study()
    study["sgd"][2] = float("nan")
    study["adabelief"][4] = float("inf")
    verdicts = compare_with_best(study, higher_is_better=True)
    assert verdicts["adabelief"].n == 4
    assert verdicts["sgd"].n == 3  # seeds 0, 1, 3: finite in both
    assert verdicts["sgd"].difference.mean == pytest.approx(-0.07, abs=0.005)


def test_one_seed_gives_no_interval_and_says_so():
    study = {"adam": {0: 0.95}, "sgd": {0: 0.90, 1: 0.91}}
    verdicts = compare_with_best(study, higher_is_better=True)
    sgd = verdicts["sgd"]
    assert sgd.indistinguishable and sgd.n == 1 and "1 seed" in sgd.reason
    assert sgd.difference.mean == pytest.approx(-0.05)
    assert math.isnan(sgd.difference.low) and math.isnan(sgd.p_value) and math.isnan(sgd.adjusted_p)


def test_an_arm_with_no_finished_seeds_is_neither_best_nor_indistinguishable():
    study = five_seed_study()
    study["lion"] = {k: float("nan") for k in range(5)}
    study["empty"] = {}
    verdicts = compare_with_best(study, higher_is_better=True)
    for label in ("lion", "empty"):
        verdict = verdicts[label]
        assert not verdict.is_best and not verdict.indistinguishable
        assert verdict.n == 0 and verdict.reason == "no finished seeds"
        assert math.isnan(verdict.p_value) and math.isnan(verdict.adjusted_p)
    # the failed arms count in m = 4: sgd's adjusted p is 4 times its p
    assert verdicts["sgd"].adjusted_p == pytest.approx(4 * verdicts["sgd"].p_value)
    nothing = compare_with_best({"a": {0: float("nan")}, "b": {}}, higher_is_better=True)
    assert not any(v.is_best or v.indistinguishable for v in nothing.values())


# ---------------------------------------------------------------- performance profiles


def test_cost_from_metric_transformation():
    assert cost_from_metric(0.97, True) == pytest.approx(0.03)
    assert cost_from_metric(1.0, True) == 1e-12  # a perfect accuracy: floored, finite ratios
    assert cost_from_metric(0.25, False) == 0.25
    assert cost_from_metric(0.0, False, floor=1e-9) == 1e-9
    assert cost_from_metric(float("nan"), True) == math.inf
    assert cost_from_metric(float("inf"), False) == math.inf
    with pytest.raises(ValueError, match=r"must be in \[0, 1\].*got 97"):
        cost_from_metric(97.0, True)
    with pytest.raises(ValueError, match=r">= 0.*got -1.0"):
        cost_from_metric(-1.0, False)


# costs[task][arm], lower better; C failed on t2
COSTS = {
    "t1": {"A": 0.25, "B": 0.5, "C": 1.0},
    "t2": {"A": 0.75, "B": 0.25, "C": float("nan")},
    "t3": {"A": 0.125, "B": 0.125, "C": 1.25},
}
# by hand: t1 min 0.25 -> 1, 2, 4; t2 min 0.25 -> 3, 1, inf; t3 min 0.125 -> 1, 1, 10
RATIOS = {
    "t1": {"A": 1.0, "B": 2.0, "C": 4.0},
    "t2": {"A": 3.0, "B": 1.0, "C": math.inf},
    "t3": {"A": 1.0, "B": 1.0, "C": 10.0},
}


def test_performance_ratios_match_the_hand_computed_table():
    assert performance_ratios(COSTS) == RATIOS
    everyone_failed = performance_ratios({"t": {"A": math.inf, "B": float("nan")}})
    assert everyone_failed == {"t": {"A": math.inf, "B": math.inf}}
    with pytest.raises(ValueError, match="cost of 'A' on 't' must be > 0, got 0.0"):
        performance_ratios({"t": {"A": 0.0, "B": 1.0}})


def test_performance_profile_matches_the_hand_computed_table():
    # A's ratios 1, 3, 1: r <= 1 on t1, t3 (2/3); r <= 3 on all three
    # B's ratios 2, 1, 1: r <= 1 on t2, t3 (2/3); r <= 2 on all three
    # C's ratios 4, inf, 10: none <= 3; t1 at 4 (1/3); t1, t3 at 10 (2/3); never t2
    taus = [1.0, 2.0, 3.0, 4.0, 10.0]
    profile = performance_profile(RATIOS, taus)
    assert profile == {
        "A": pytest.approx([2 / 3, 2 / 3, 1.0, 1.0, 1.0]),
        "B": pytest.approx([2 / 3, 1.0, 1.0, 1.0, 1.0]),
        "C": pytest.approx([0.0, 0.0, 0.0, 1 / 3, 2 / 3]),
    }


def test_profile_area_matches_the_hand_computed_integral():
    # r_max 4, divide by 3: A: rho = 2/3 on [1, 3), 1 on [3, 4] -> (2*2/3 + 1) / 3 = 7/9
    # B: 2/3 on [1, 2), 1 on [2, 4] -> (2/3 + 2) / 3 = 8/9; C: 0 on [1, 4) (1/3 at 4 only) -> 0
    assert profile_area(RATIOS) == pytest.approx({"A": 7 / 9, "B": 8 / 9, "C": 0.0})
    # r_max 10: A (9 + 7 + 9)/27 = 25/27; B (8 + 9 + 9)/27 = 26/27; C (6 + 0 + 0)/27 = 6/27
    assert profile_area(RATIOS, r_max=10.0) == pytest.approx(
        {"A": 25 / 27, "B": 26 / 27, "C": 6 / 27}
    )
    with pytest.raises(ValueError, match="r_max must be > 1, got 1.0"):
        profile_area(RATIOS, r_max=1.0)


def test_an_arm_missing_from_a_task_counts_as_failed_there():
    ratios = {"t1": {"A": 1.0, "B": 2.0}, "t2": {"A": 1.0}}
    assert performance_profile(ratios, [2.0]) == {"A": [1.0], "B": [0.5]}
    assert profile_area(ratios) == pytest.approx({"A": 1.0, "B": (2 / 3 + 0) / 2})


# ---------------------------------------------------------------- ranks and winners

SCORES = {
    "digits": {"A": 0.9, "B": 0.9, "C": 0.8},  # accuracy: A and B tie
    "quadratic": {"A": 0.5, "B": 0.2, "C": float("nan")},  # loss: C diverged
    "lstm": {"A": 0.1, "B": math.inf, "C": float("nan")},  # loss: B and C failed
}
HIGHER = {"digits": True, "quadratic": False, "lstm": False}


def test_mean_ranks_average_ties_and_put_failed_arms_last():
    summary = mean_ranks(SCORES, HIGHER)
    # by hand: digits A 1.5, B 1.5, C 3; quadratic A 2, B 1, C 3; lstm A 1, B 2.5, C 2.5
    assert summary["A"].ranks == {"digits": 1.5, "quadratic": 2.0, "lstm": 1.0}
    assert summary["B"].ranks == {"digits": 1.5, "quadratic": 1.0, "lstm": 2.5}
    assert summary["C"].ranks == {"digits": 3.0, "quadratic": 3.0, "lstm": 2.5}
    # A: mean 1.5, deviations 0, .5, -.5 -> var .5/2 -> sd .5
    # B: mean 5/3, squares (1/36 + 16/36 + 25/36) / 2 = 21/36; C: mean 17/6, (6/36)/2 = 1/12
    assert (summary["A"].mean, summary["A"].std) == pytest.approx((1.5, 0.5))
    assert (summary["B"].mean, summary["B"].std) == pytest.approx((5 / 3, math.sqrt(21 / 36)))
    assert (summary["C"].mean, summary["C"].std) == pytest.approx((17 / 6, math.sqrt(1 / 12)))
    one_task = mean_ranks({"digits": SCORES["digits"]}, HIGHER)
    assert one_task["C"].mean == 3.0 and math.isnan(one_task["C"].std)
    with pytest.raises(KeyError, match="no entry for task 'lstm'"):
        mean_ranks(SCORES, {"digits": True, "quadratic": False})


def test_winners_lists_every_tied_arm_and_nobody_when_all_failed():
    scores = dict(SCORES, gan={"A": float("nan"), "B": math.inf})
    assert winners(scores, dict(HIGHER, gan=False)) == {
        "digits": ["A", "B"],
        "quadratic": ["B"],
        "lstm": ["A"],
        "gan": [],
    }


# ---------------------------------------------------------------- contrasts, factorial

HAND_CELLS = {
    ("g2", "outside"): {0: 1.0, 1: 2.0, 2: 3.0},
    ("g2", "inside"): {0: 2.0, 1: 3.0, 2: 5.0},
    ("belief", "outside"): {0: 4.0, 1: 4.0, 2: 7.0},
    ("belief", "inside"): {0: 6.0, 1: 7.0, 2: 9.0},
}


def test_main_effects_and_interaction_match_the_hand_computation():
    effects = main_effects(HAND_CELLS)
    assert effects["levels"] == {"A": ["g2", "belief"], "B": ["outside", "inside"]}
    # A, belief - g2, per seed mean over B: ((4-1)+(6-2))/2 = 3.5, ((4-2)+(7-3))/2 = 3,
    # ((7-3)+(9-5))/2 = 4 -> mean 3.5
    assert list(effects["A"]) == [("belief", "g2")]
    assert effects["A"][("belief", "g2")].difference.mean == pytest.approx(3.5)
    # B, inside - outside: ((2-1)+(6-4))/2 = 1.5, ((3-2)+(7-4))/2 = 2, ((5-3)+(9-7))/2 = 2
    assert effects["B"][("inside", "outside")].difference.mean == pytest.approx(11 / 6)
    # interaction (6-2)-(4-1) = 1, (7-3)-(4-2) = 2, (9-5)-(7-3) = 0: mean 1, sd 1, t = sqrt 3
    interaction = effects["interaction"][(("belief", "g2"), ("inside", "outside"))]
    assert interaction.n == 3
    assert interaction.p_value == pytest.approx(two_sided_p_df2(math.sqrt(3.0)))  # 0.2254
    half = T975[2] / math.sqrt(3.0)
    assert (interaction.difference.low, interaction.difference.high) == pytest.approx(
        (1 - half, 1 + half)
    )


def test_contrast_uses_only_seeds_finite_in_every_weighted_cell():
    cells = {"a": {0: 1.0, 1: 2.0, 2: float("nan"), 3: 4.0}, "b": {0: 0.0, 1: 0.0, 2: 0.0}}
    cells["unused"] = {}
    result = contrast(cells, {"a": 1.0, "b": -1.0, "unused": 0.0})
    assert result.n == 2 and result.difference.mean == 1.5
    with pytest.raises(ValueError, match="unknown cells \\['c'\\]"):
        contrast(cells, {"a": 1.0, "c": -1.0})
    with pytest.raises(ValueError, match="main_effects needs every"):
        main_effects({("g2", "outside"): {}, ("belief", "inside"): {}})


def planted_factorial(rng: np.random.Generator, n_seeds: int = 5) -> dict:
    """2 x 3 cells: belief adds 0.02 everywhere; eps placement and the interaction add nothing."""
    seed_effect = rng.normal(0.0, 0.03, n_seeds)  # shared by every cell: paired seeds
    return {
        (a, b): dict(
            enumerate(
                0.9 + (0.02 if a == "belief" else 0.0) + seed_effect + rng.normal(0, 0.002, n_seeds)
            )
        )
        for a in ("g2", "belief")
        for b in ("outside", "inside", "accumulated")
    }


def test_a_planted_main_effect_is_found_and_the_absent_one_is_not():
    effects = main_effects(planted_factorial(np.random.default_rng(16)))
    belief = effects["A"][("belief", "g2")]
    # se of the A contrast ~ 0.002 * sqrt(2/3) / sqrt(5) = 0.0007, half-width ~0.002 << 0.02
    assert belief.difference.low > 0 and belief.p_value < 1e-4
    assert belief.difference.contains(0.02)
    assert list(effects["B"]) == [
        ("inside", "outside"),
        ("accumulated", "outside"),
        ("accumulated", "inside"),
    ]
    for comparison in [*effects["B"].values(), *effects["interaction"].values()]:
        assert comparison.n == 5 and comparison.difference.contains(0.0)


def test_planted_effects_are_found_reliably_over_many_synthetic_studies():
    rng = np.random.default_rng(1616)
    studies, found, null_covered, null_total = 300, 0, 0, 0
    for _ in range(studies):
        effects = main_effects(planted_factorial(rng))
        found += effects["A"][("belief", "g2")].difference.low > 0
        for comparison in effects["B"].values():
            null_total += 1
            null_covered += comparison.difference.contains(0.0)
    assert found == studies
    # 900 null intervals at 95 %: sd of the rate 0.007, so 0.92 is > 4 sd below
    assert 0.92 <= null_covered / null_total <= 0.98
