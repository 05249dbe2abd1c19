"""GAN tasks: the metrics against closed forms and the target distribution itself, two
optimizers stepped and recorded, learning, determinism, --nproc refused, studies
(resume, --jobs 2 = --jobs 1) on gan-ring."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist

from optlab.lab import gan
from optlab.lab.runs import RunSpec
from optlab.lab.store import Store
from optlab.lab.study import StudySpec, run_study
from optlab.lab.train import TrainingRun, train


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "wall_time"} for row in history]


# ------------------------------------------------------------------ metrics


def test_frechet_distance_of_a_sample_to_itself_is_zero():
    features = np.random.RandomState(0).normal(size=(500, 8))
    assert gan.frechet_distance(features, features) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_matches_the_closed_form_for_gaussians():
    # N(0, diag(a^2)) vs N(m, diag(b^2)): |m|^2 + sum (a - b)^2 (Dowson & Landau 1982).
    rng = np.random.RandomState(1)
    a, b, m = np.array([1.0, 2.0, 0.5]), np.array([1.5, 1.0, 0.5]), np.array([1.0, -2.0, 0.0])
    x = rng.normal(size=(200_000, 3)) * a
    y = m + rng.normal(size=(200_000, 3)) * b
    expected = (m**2).sum() + ((a - b) ** 2).sum()  # 5 + 1.25
    assert gan.frechet_distance(x, y) == pytest.approx(expected, rel=0.01)
    # A pure shift of the same sample adds exactly |shift|^2.
    shifted = x + np.array([0.0, 3.0, 4.0])
    assert gan.frechet_distance(x, shifted) == pytest.approx(25.0, rel=1e-6)


def test_target_samples_cover_all_eight_modes_and_a_half_ring_four():
    target = gan.sample_ring(2500, np.random.RandomState(5))
    quality = gan.ring_quality(target)
    assert quality["modes"] == 8
    assert quality["high_quality"] == pytest.approx(1 - np.exp(-4.5), abs=0.01)  # 2-D 3 sigma
    centres = gan.ring_centers()
    half = target[
        np.isin(np.linalg.norm(target[:, None] - centres[None], axis=2).argmin(1), [0, 1, 2, 3])
    ]
    assert gan.ring_quality(half[:2500])["modes"] == 4
    assert gan.ring_quality(np.zeros((2500, 2)))["modes"] == 0


def test_sliced_wasserstein_is_small_between_target_samples_and_sees_a_collapse():
    rng = np.random.RandomState(6)
    a, b = gan.sample_ring(2500, rng), gan.sample_ring(2500, rng)
    collapsed = np.tile(gan.ring_centers()[:1], (2500, 1))
    assert gan.sliced_wasserstein(a, b) < 0.05
    assert gan.sliced_wasserstein(a, collapsed) > 1.0
    shift = np.array([0.3, 0.0])
    # Shifting by (0.3, 0): every projection moves by 0.3 |cos t|; mean over t is 0.3 * 2 / pi.
    assert gan.sliced_wasserstein(a, a + shift) == pytest.approx(0.6 / np.pi, rel=0.02)


# ------------------------------------------------------------------ training


def test_gan_run_steps_both_optimizers_and_records_both():
    run = TrainingRun(RunSpec("gan-ring", "adam", hparams={"lr": 1e-3}, epochs=1))
    result = run.run(progress=False)
    assert set(run.optimizers) == {"discriminator", "generator"}
    for optimizer in run.optimizers.values():
        steps = {int(state["step"]) for state in optimizer.state.values()}
        assert steps == {run.total_steps}
    roles = result.info["optimizers"]
    assert roles["generator"]["hparams"]["lr"] == roles["discriminator"]["hparams"]["lr"] == 1e-3
    assert (
        roles["generator"]["parameters"] + roles["discriminator"]["parameters"]
        == (result.info["parameters"])
    )
    row = result.final
    assert {"modes", "high_quality", "valid_modes", "valid_high_quality"} <= set(row)


def test_short_gan_ring_run_learns_and_repeats_exactly():
    spec = RunSpec("gan-ring", "adam", epochs=40)
    first = train(spec, progress=False, threads=1)
    assert first.status == "ok" and first.metric == "swd" and not first.higher_is_better
    assert first.final["metric"] < 0.5 * first.history[0]["metric"]
    assert first.final["high_quality"] > 0.0
    assert without_timing(train(spec, progress=False, threads=1).history) == without_timing(
        first.history
    )


def test_digits_classifier_is_cached_outside_the_repo_and_reloads_the_same(tmp_path, monkeypatch):
    monkeypatch.setenv(gan.CACHE_ENV, str(tmp_path))
    gan.digits_classifier.cache_clear()
    try:
        first = gan.digits_classifier()
        (cached,) = tmp_path.glob("digits-classifier-*.pt")
        gan.digits_classifier.cache_clear()
        again = gan.digits_classifier()
        for p, q in zip(first.state_dict().values(), again.state_dict().values(), strict=True):
            assert torch.equal(p, q)
        assert cached.exists()
    finally:
        gan.digits_classifier.cache_clear()


def test_short_gan_digits_run_is_deterministic_and_fid_separates_real_from_untrained():
    spec = RunSpec("gan-digits", "adam", hparams={"lr": 2e-4, "betas": (0.5, 0.999)}, epochs=3)
    first = train(spec, progress=False, threads=1)
    assert first.metric == "fid"
    # Real training images against real test images are far closer than an untrained generator.
    assert first.info["fid_train_images_vs_test"] < 0.02 * first.history[0]["metric"]
    assert first.info["fid_classifier_test_accuracy"] > 0.95
    assert without_timing(train(spec, progress=False, threads=1).history) == without_timing(
        first.history
    )


def test_nproc_on_a_gan_task_is_refused_with_a_clear_message():
    from optlab.lab.distributed import train_distributed

    store = dist.TCPStore("127.0.0.1", 0, world_size=1, is_master=True, wait_for_workers=False)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        with pytest.raises(ValueError, match="runs in one process; drop --nproc"):
            train_distributed(RunSpec("gan-ring", "adam", epochs=1))
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------ studies

STUDY = StudySpec("gan-ring", ("adam", "rmsprop"), seeds=(0, 1), epochs=2)


def stored(root) -> dict[str, list[dict]]:
    return {r.spec.key(): without_timing(r.history) for r in Store.open_existing(root).results()}


def test_gan_ring_study_resumes_and_jobs_2_equals_jobs_1(tmp_path):
    run_study(STUDY, tmp_path / "one", jobs=1)
    reference = stored(tmp_path / "one")
    assert len(reference) == 4

    calls = []

    def crashing(spec: RunSpec):
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        calls.append(spec)
        return train(spec, progress=False, threads=1)

    with pytest.raises(RuntimeError, match="simulated crash"):
        run_study(STUDY, tmp_path / "resumed", trainer=crashing)
    run_study(STUDY, tmp_path / "resumed", jobs=1)
    assert stored(tmp_path / "resumed") == reference

    run_study(STUDY, tmp_path / "two", jobs=2)
    assert stored(tmp_path / "two") == reference
