"""GAN tasks: two networks, two optimizers, one training step, and their metrics.

A GAN run builds one optimizer for the discriminator and one for the
generator from the same optimizer name and hyper-parameters (as in the
AdaBelief paper's GAN experiments), both on the run's schedule. Each
training step (:func:`gan_step`, the non-saturating GAN of Goodfellow et al.
2014) draws noise from the run's seeded generator, takes one discriminator
step on ``BCE(D(real), 1) + BCE(D(G(z)), 0)``, then one generator step on
``BCE(D(G(z)), 1)`` against the updated discriminator; the reported training
loss is the discriminator's. ``valid_loss`` / ``test_loss`` are that
discriminator loss on the held-out real samples and as many generated ones.

Generated samples for evaluation come from fixed noise (the same for every
seed and every evaluation: :data:`EVAL_NOISE_SEEDS`), so curves move only
because the generator does.

``gan-ring``: the mixture of 8 Gaussians on a circle of radius 2 with
standard deviation 0.02 (Metz et al., "Unrolled generative adversarial
networks", ICLR 2017). Train, validation and test sets are fixed samples
(8192, 2500, 2500). Metrics on 2500 generated points: ``swd`` (the primary
metric, lower is better), the sliced 1-Wasserstein distance to the part's
target sample over :data:`SWD_DIRECTIONS` evenly spaced directions;
``high_quality``, the fraction of points within 3 standard deviations of a
mode; ``modes``, the modes with at least :data:`MODE_MIN_SAMPLES` high-quality
points (of 8; the rule of VEEGAN and PacGAN).

``gan-digits``: a small DCGAN on scikit-learn's 8x8 digits (the digits tasks'
fixed 1077 / 270 / 450 split), scored by ``fid`` (lower is better), the
Fréchet distance between Gaussians fitted to features of 1000 generated
images and of the part's real images. The features are the 64-unit hidden
layer of a fixed digits classifier trained once from a fixed seed on the
training split and cached on disk (:func:`digits_classifier`): the
small-scale analogue of FID, which uses Inception-v3's features, so its
numbers are comparable only with themselves.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .data import ArrayData
from .models import GAN, MLP, DigitsDiscriminator, DigitsGenerator
from .tasks import Problem, _digits_split, _unwrap

__all__ = [
    "CACHE_ENV",
    "EVAL_NOISE_SEEDS",
    "MODE_MIN_SAMPLES",
    "RING_MODES",
    "RING_RADIUS",
    "RING_STD",
    "SWD_DIRECTIONS",
    "build_digits",
    "build_ring",
    "cache_dir",
    "digits_classifier",
    "frechet_distance",
    "gan_step",
    "ring_centers",
    "ring_quality",
    "sample_ring",
    "sliced_wasserstein",
]

logger = logging.getLogger(__name__)

RING_MODES = 8
RING_RADIUS = 2.0
RING_STD = 0.02
#: Fixed sizes of the ring's train, validation and test samples and their numpy seeds.
RING_SIZES = {"train": (8192, 0), "valid": (2500, 1), "test": (2500, 2)}
#: A mode counts as covered with at least this many high-quality samples (of 2500).
MODE_MIN_SAMPLES = 20
#: Directions of the sliced Wasserstein distance (evenly spaced over a half circle).
SWD_DIRECTIONS = 64
#: Seeds of the fixed evaluation noise of each part.
EVAL_NOISE_SEEDS = {"train": 100, "valid": 101, "test": 102}
#: Generated images per gan-digits evaluation.
DIGITS_GENERATED = 1000
#: Environment variable naming the directory of optlab's cached files.
CACHE_ENV = "OPTLAB_CACHE_DIR"


# --------------------------------------------------------------------------
# The training step (shared by both GAN tasks)
# --------------------------------------------------------------------------


def _discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(
        real_logits, torch.ones_like(real_logits)
    ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))


def gan_step(
    model: nn.Module,
    optimizers: Mapping[str, torch.optim.Optimizer],
    real: Tensor,
    targets: Tensor | None,
    generator: torch.Generator,
) -> Tensor:
    """One discriminator step, then one generator step; returns the discriminator's loss.

    Neither network steps when the discriminator's loss is not finite.
    """
    gan = _unwrap(model)
    noise = torch.randn(len(real), gan.noise_dim, generator=generator).to(real.device)
    d_optimizer, g_optimizer = optimizers["discriminator"], optimizers["generator"]
    d_optimizer.zero_grad(set_to_none=True)
    fake = gan.generator(noise)
    d_loss = _discriminator_loss(gan.discriminator(real), gan.discriminator(fake.detach()))
    if not torch.isfinite(d_loss):
        return d_loss.detach()
    d_loss.backward()
    d_optimizer.step()
    g_optimizer.zero_grad(set_to_none=True)
    fake_logits = gan.discriminator(fake)
    g_loss = F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    g_loss.backward()
    g_optimizer.step()
    return d_loss.detach()


def _eval_noise(part: str, count: int, dim: int) -> Tensor:
    return torch.randn(count, dim, generator=torch.Generator().manual_seed(EVAL_NOISE_SEEDS[part]))


def _no_batch_loss(outputs: Tensor, targets: Tensor | None) -> Tensor:
    raise NotImplementedError("GAN problems train with their own step (Problem.train_step)")


def _gan_problem(
    model: GAN, parts: dict[str, ArrayData], metric: str, measure: Any, info: Any
) -> Problem:
    return Problem(
        model,
        parts["train"],
        parts["test"],
        _no_batch_loss,
        metric,
        valid=parts["valid"],
        optimized={"discriminator": model.discriminator, "generator": model.generator},
        train_step=gan_step,
        measure=measure,
        info=info,
    )


# --------------------------------------------------------------------------
# gan-ring
# --------------------------------------------------------------------------


def ring_centers() -> np.ndarray:
    """The 8 mode centres, ``(8, 2)``, on the circle of radius :data:`RING_RADIUS`."""
    angles = 2.0 * np.pi * np.arange(RING_MODES) / RING_MODES
    return RING_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def sample_ring(count: int, rng: np.random.RandomState) -> np.ndarray:
    """``count`` points of the ring mixture (equal weights), float32."""
    modes = rng.randint(RING_MODES, size=count)
    points = ring_centers()[modes] + RING_STD * rng.normal(size=(count, 2))
    return points.astype(np.float32)


def ring_quality(samples: np.ndarray | Tensor) -> dict[str, float]:
    """``modes`` covered (of 8) and the ``high_quality`` fraction of ``samples``."""
    points = np.asarray(samples, dtype=np.float64)
    distances = np.linalg.norm(points[:, None, :] - ring_centers()[None], axis=2)
    nearest = distances.argmin(axis=1)
    good = distances.min(axis=1) <= 3.0 * RING_STD
    counts = np.bincount(nearest[good], minlength=RING_MODES)
    return {
        "modes": float((counts >= MODE_MIN_SAMPLES).sum()),
        "high_quality": float(good.mean()),
    }


def sliced_wasserstein(a: np.ndarray | Tensor, b: np.ndarray | Tensor) -> float:
    """Sliced 1-Wasserstein distance of two equally sized 2-D samples.

    The mean over :data:`SWD_DIRECTIONS` directions ``(cos t, sin t)``,
    ``t = pi k / SWD_DIRECTIONS``, of the 1-D Wasserstein distance of the
    projections (mean absolute difference of the sorted values).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"samples must have the same shape, got {a.shape} and {b.shape}")
    angles = np.pi * np.arange(SWD_DIRECTIONS) / SWD_DIRECTIONS
    directions = np.stack([np.cos(angles), np.sin(angles)])
    return float(np.abs(np.sort(a @ directions, axis=0) - np.sort(b @ directions, axis=0)).mean())


@functools.lru_cache(maxsize=1)
def _ring_parts() -> dict[str, np.ndarray]:
    return {
        part: sample_ring(count, np.random.RandomState(seed))
        for part, (count, seed) in RING_SIZES.items()
    }


def build_ring(seed: int, data_dir: str | None, options: Mapping[str, Any]) -> Problem:
    """The ``gan-ring`` problem: MLP generator and discriminator on the 8-Gaussian ring."""
    noise_dim = int(options["noise_dim"])
    hidden = tuple(options["hidden"])
    model = GAN(
        MLP(noise_dim, hidden, 2), nn.Sequential(MLP(2, hidden, 1), nn.Flatten(0)), noise_dim
    )
    parts = {part: ArrayData(torch.tensor(points)) for part, points in _ring_parts().items()}

    def measure(module: nn.Module, part: str) -> dict[str, float]:
        gan = _unwrap(module)
        real = parts[part].inputs
        device = real.device
        fake = gan.generator(_eval_noise(part, len(real), noise_dim).to(device))
        loss = _discriminator_loss(gan.discriminator(real), gan.discriminator(fake))
        fake_points = fake.cpu().numpy()
        if not np.isfinite(fake_points).all():  # a diverged generator
            return {"loss": float(loss), "metric": math.nan, "modes": 0.0, "high_quality": 0.0}
        return {
            "loss": float(loss),
            "metric": sliced_wasserstein(fake_points, real.cpu().numpy()),
            **ring_quality(fake_points),
        }

    return _gan_problem(model, parts, "swd", measure, None)


# --------------------------------------------------------------------------
# gan-digits: the Fréchet distance in a fixed classifier's features
# --------------------------------------------------------------------------


def frechet_distance(features_a: np.ndarray | Tensor, features_b: np.ndarray | Tensor) -> float:
    """Fréchet distance of Gaussians fitted to two samples (rows are examples).

    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^(1/2) S_b S_a^(1/2))^(1/2))``
    (Dowson & Landau 1982; Heusel et al. 2017's FID), with sample means and
    covariances (ddof 1), in float64, through symmetric eigendecompositions
    (negative eigenvalues of the PSD products, rounding, count as 0).
    """
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
    middle = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_root = np.sqrt(np.clip(middle, 0.0, None)).sum()
    distance = ((mean_a - mean_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root
    return float(max(distance, 0.0))


class _DigitsClassifier(nn.Module):
    """MLP 64-128-64-10 on digits pixels in [0, 1]; ``features`` is the 64-unit layer."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU()
        )
        self.head = nn.Linear(64, 10)

    def features(self, images: Tensor) -> Tensor:
        return self.body(images)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.body(images))


#: What determines the classifier; its hash names the cache file.
_CLASSIFIER_RECIPE = "digits MLP 64-128-64-10, torch.optim.Adam lr 1e-3, 40 epochs of 32, seed 0"


def cache_dir() -> Path:
    """Where optlab caches files: ``$OPTLAB_CACHE_DIR``, else ``$XDG_CACHE_HOME/optlab``,
    else ``~/.cache/optlab`` (never inside the repository)."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "optlab"


def _train_classifier() -> _DigitsClassifier:
    """Train the classifier from seed 0 on one thread (the same weights on every machine
    with the same torch build); the caller's random state is left as it was."""
    train_x, train_y = _digits_split()["train"]
    inputs, labels = torch.tensor(train_x), torch.tensor(train_y)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            classifier = _DigitsClassifier()
            optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-3)
            order = torch.Generator().manual_seed(0)
            for _ in range(40):
                for index in torch.randperm(len(inputs), generator=order).split(32):
                    optimizer.zero_grad()
                    F.cross_entropy(classifier(inputs[index]), labels[index]).backward()
                    optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return classifier.eval().requires_grad_(False)


@functools.lru_cache(maxsize=1)
def digits_classifier() -> nn.Module:
    """The fixed feature classifier of ``gan-digits``: loaded from the cache, else trained
    (about a second) and written there atomically (parallel workers may race)."""
    digest = hashlib.sha256(f"{_CLASSIFIER_RECIPE}|torch {torch.__version__}".encode())
    path = cache_dir() / f"digits-classifier-{digest.hexdigest()[:16]}.pt"
    classifier = _DigitsClassifier()
    try:
        classifier.load_state_dict(torch.load(path, weights_only=True))
        return classifier.eval().requires_grad_(False)
    except FileNotFoundError:
        pass
    except Exception as error:  # a damaged cache file is rebuilt
        logger.warning("rebuilding the digits classifier cache %s: %s", path, error)
    classifier = _train_classifier()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as file:
            torch.save(classifier.state_dict(), file)
        os.replace(file.name, path)
    except OSError as error:  # a read-only home still trains (the classifier is deterministic)
        logger.warning("could not cache the digits classifier in %s: %s", path, error)
    return classifier


def _to_pixels(images: Tensor) -> Tensor:
    """Generator images in [-1, 1] to the digits tasks' pixels in [0, 1], ``(n, 64)``."""
    return ((images.reshape(len(images), 64) + 1.0) / 2.0).clamp(0.0, 1.0)


@functools.lru_cache(maxsize=1)
def _digits_features() -> dict[str, np.ndarray]:
    classifier = digits_classifier()
    with torch.no_grad():
        return {
            part: classifier.features(torch.tensor(x)).double().numpy()
            for part, (x, _) in _digits_split().items()
        }


def _digits_facts() -> dict[str, Any]:
    classifier = digits_classifier()
    test_x, test_y = _digits_split()["test"]
    with torch.no_grad():
        predicted = classifier(torch.tensor(test_x)).argmax(dim=1).numpy()
    features = _digits_features()
    return {
        "fid_classifier_test_accuracy": float((predicted == test_y).mean()),
        "fid_train_images_vs_test": frechet_distance(features["train"], features["test"]),
        "fid_train_images_vs_valid": frechet_distance(features["train"], features["valid"]),
    }


def build_digits(seed: int, data_dir: str | None, options: Mapping[str, Any]) -> Problem:
    """The ``gan-digits`` problem: a small DCGAN on the 8x8 digits, scored by a Fréchet distance."""
    noise_dim = int(options["noise_dim"])
    channels = int(options["channels"])
    model = GAN(DigitsGenerator(noise_dim, channels), DigitsDiscriminator(channels), noise_dim)
    parts = {
        part: ArrayData(torch.tensor(x * 2.0 - 1.0).view(-1, 1, 8, 8))
        for part, (x, _) in _digits_split().items()
    }
    classifier = digits_classifier()
    real_features = _digits_features()

    def measure(module: nn.Module, part: str) -> dict[str, float]:
        gan = _unwrap(module)
        real = parts[part].inputs
        count = max(len(real), DIGITS_GENERATED)
        fake = gan.generator(_eval_noise(part, count, noise_dim).to(real.device))
        loss = _discriminator_loss(gan.discriminator(real), gan.discriminator(fake))
        features = classifier.features(_to_pixels(fake.cpu())).double().numpy()
        if not np.isfinite(features).all():  # a diverged generator
            return {"loss": float(loss), "metric": math.nan}
        return {"loss": float(loss), "metric": frechet_distance(features, real_features[part])}

    return _gan_problem(model, parts, "fid", measure, _digits_facts())
