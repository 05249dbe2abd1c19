"""The factorial analysis on synthetic records whose answer is known: a planted main effect
of one factor is found and the other's is not; with nothing planted the verdict says so."""

from __future__ import annotations

import numpy as np
import pytest

from optlab.lab.factorial import (
    EPS_LEVELS,
    MOMENT_LEVELS,
    analyze_task,
    format_factorial,
    verdicts,
)

CELLS = {f"{m}-{e}": (m, e) for m in MOMENT_LEVELS for e in EPS_LEVELS}


def synthetic(effect_of_eps: dict[str, float], effect_of_moment: dict[str, float], seeds=8,
              noise=0.002, seed_spread=0.02, rng_seed=1):  # fmt: skip
    """Per arm label, seed -> accuracy: a seed effect shared by every cell (the pairing),
    planted cell effects, and small independent noise."""
    rng = np.random.default_rng(rng_seed)
    seed_effect = rng.normal(0, seed_spread, seeds)
    data = {}
    for label, (moment, eps) in CELLS.items():
        base = 0.9 + effect_of_eps.get(eps, 0.0) + effect_of_moment.get(moment, 0.0)
        data[label] = {k: float(base + seed_effect[k] + rng.normal(0, noise)) for k in range(seeds)}
    return data


def test_a_planted_eps_effect_is_found_and_no_belief_effect_is_claimed():
    data = synthetic({"accumulated": 0.02}, {})
    result = analyze_task("t", "accuracy", True, data, CELLS)
    acc_vs_out = result.eps[("accumulated", "outside")]
    assert acc_vs_out.distinguishable
    assert acc_vs_out.interval.mean == pytest.approx(0.02, abs=0.003)
    assert not result.moment[("belief", "g2")].distinguishable
    assert result.gain.distinguishable and result.gain_eps.distinguishable
    assert not result.gain_belief.distinguishable
    text = " ".join(verdicts(result))
    assert "accounts for" in text and "belief term for" in text
    assert "the belief term for" in text and "not distinguishable from zero" in text


def test_a_planted_belief_effect_is_found_where_eps_does_nothing():
    data = synthetic({}, {"belief": 0.015})
    result = analyze_task("t", "accuracy", True, data, CELLS)
    assert result.moment[("belief", "g2")].distinguishable
    assert not any(part.distinguishable for part in result.eps.values())
    assert result.gain_belief.distinguishable and not result.gain_eps.distinguishable


def test_without_a_planted_effect_the_verdict_is_no_distinguishable_effect():
    data = synthetic({}, {})
    result = analyze_task("t", "accuracy", True, data, CELLS)
    assert not result.gain.distinguishable
    parts = [*result.moment.values(), *result.eps.values(), *result.interaction.values()]
    assert not any(part.distinguishable for part in parts)
    text = " ".join(verdicts(result))
    assert "not told apart" in text and "no interaction" in text
    assert ", distinguishable from zero" not in text and "(distinguishable from zero" not in text


def test_lower_is_better_metrics_are_oriented_so_plus_is_an_improvement():
    # bits per character: the accumulated cells are 0.05 lower, i.e. better.
    data = {
        label: {k: -value + 3.0 for k, value in seeds.items()}
        for label, seeds in synthetic({"accumulated": 0.05}, {}).items()
    }
    result = analyze_task("t", "bpc", False, data, CELLS)
    assert result.eps[("accumulated", "outside")].interval.mean == pytest.approx(0.05, abs=0.005)
    assert "lower is better" in verdicts(result)[0]


def test_an_incomplete_factorial_says_which_cells_are_missing():
    data = synthetic({}, {})
    cells = {label: cell for label, cell in CELLS.items() if cell[0] == "g2"}
    result = analyze_task("t", "accuracy", True, data, cells)
    assert result.moment == {} and result.gain is None
    assert "missing cells: (belief, outside)" in verdicts(result)[0]
    assert "### t" in format_factorial([result])


def test_the_verdicts_are_calibrated_over_many_synthetic_studies():
    # With nothing planted, "distinguishable" should be said about 5 % of the time per
    # contrast (95 % intervals); a planted 0.004 belief effect is found nearly always.
    studies = 200
    false = sum(
        analyze_task("t", "accuracy", True, synthetic({}, {}, rng_seed=k), CELLS)
        .moment[("belief", "g2")]
        .distinguishable
        for k in range(studies)
    )
    found = sum(
        analyze_task("t", "accuracy", True, synthetic({}, {"belief": 0.004}, rng_seed=k), CELLS)
        .moment[("belief", "g2")]
        .distinguishable
        for k in range(studies)
    )
    assert 0.015 <= false / studies <= 0.09
    assert found / studies >= 0.95


def test_one_seed_is_not_read_as_no_effect():
    data = {label: {0: seeds[0]} for label, seeds in synthetic({"accumulated": 0.05}, {}).items()}
    (sentence,) = verdicts(analyze_task("t", "accuracy", True, data, CELLS))
    assert "rest on 1 paired seed: nothing can be judged yet" in sentence
