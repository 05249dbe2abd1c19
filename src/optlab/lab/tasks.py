"""The lab's tasks: a model and its data, built from a seed, and how to evaluate it.

A :class:`Task` is a catalogue entry (name, defaults, metric, target); its
:meth:`Task.build` makes a :class:`Problem` for one seed: the model, the
train and test data in memory, the batch loss and the evaluation. The one
trainer (:mod:`optlab.lab.train`) runs every task the same way.

Built-in tasks need no download (the data ships with scikit-learn or is
generated); ``mnist-cnn`` and ``cifar10-resnet`` read the standard files
from a directory the user names (:mod:`optlab.lab.data`).

The seed decides the model's initial weights and the order of the
training data; every split and every generated data set is fixed, so
seeds differ only where a run of the same experiment would.

Evaluation: ``test_loss`` is the mean loss over the whole test set (for
tasks without a separate test set, the whole training set: the objective
being minimised) and ``metric`` is the task's test metric: ``accuracy``
(higher is better), ``loss`` (the test loss) or ``gap`` (objective minus
its minimum, for the convex task). ``valid_loss`` and ``valid_metric`` are
the same measures on the validation data, which tuning selects on, so that
the test numbers of a tuned study stay unbiased:

- ``validation="held-out"`` (digits, MNIST, CIFAR-10): a fixed part of the
  training data, the same for every seed, never trained on. Digits: a
  stratified 20 % of the training split (270 of 1347 images); MNIST: the last
  sixth of the training file (10 000 of 60 000); CIFAR-10: the last tenth of
  the training batches (5 000 of 50 000, the second half of ``data_batch_5``).
- ``validation="train"`` (diabetes-linreg, cancer-logreg, quadratic-deep):
  no held-out part; the validation numbers are the training objective on the
  whole training set. Holding data out would change what these tasks are
  (d2l's harness reports the full-data loss, the convex task measures the gap
  to the optimum of its training objective, and the noisy quadratic's
  training points are DeepOBS's fixed set), so tuning selects on the training
  objective there, and the report says so.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .arms import FAMILIES
from .data import ArrayData, DatasetFormatError, load_cifar10, load_mnist
from .models import MLP, CifarResNet, DigitsCNN, MnistNet, NoisyQuadratic

__all__ = [
    "METRICS",
    "VALIDATIONS",
    "Problem",
    "Task",
    "evaluate",
    "evaluate_metrics",
    "get_task",
    "list_tasks",
    "measure_part",
]

#: Test metrics and whether larger is better: ``bpc`` bits per token of a
#: language model (per character at character level), ``swd`` a sliced
#: Wasserstein distance of generated to target samples, ``fid`` a Fréchet
#: distance in a fixed classifier's feature space (see :mod:`optlab.lab.gan`).
METRICS: Mapping[str, bool] = MappingProxyType(
    {"accuracy": True, "loss": False, "gap": False, "bpc": False, "swd": False, "fid": False}
)

#: A task-defined training step (GANs): ``train_step(model, optimizers, inputs,
#: targets, generator) -> loss`` zeroes, computes, steps every optimizer in
#: ``optimizers`` (by role) itself and returns the detached batch loss it reports.
TrainStep = Callable[
    [nn.Module, Mapping[str, torch.optim.Optimizer], Tensor, "Tensor | None", torch.Generator],
    Tensor,
]

#: What a task's ``valid_loss`` / ``valid_metric`` measure (see the module docstring).
VALIDATIONS: Mapping[str, str] = MappingProxyType(
    {
        "held-out": "a held-out validation part of the training data",
        "train": "the training objective on the whole training set (no held-out data)",
    }
)


@dataclass
class Problem:
    """One task built for one seed: everything the trainer needs.

    Attributes:
        model: the model to train, on the CPU.
        train: training data (without the validation part).
        test: evaluation data (may be the training data itself).
        loss: ``loss(outputs, targets)``: mean loss of a batch.
        metric: ``"accuracy"``, ``"loss"`` or ``"gap"``.
        penalty: a term of the objective that depends on the parameters only
            (added to every batch loss and to the evaluated loss), or ``None``.
        augment: training-only random transform of a batch of model inputs,
            ``augment(inputs, generator)``, or ``None``.
        drop_last: drop the last incomplete training batch of every epoch.
        optimum: minimum of the objective (``metric == "gap"`` only).
        eval_batch_size: batch size for evaluation passes.
        valid: held-out validation data, or ``None`` when the task validates on
            its training objective (the whole training set).

    Hooks for tasks that are not "one model, one batch loss" (``None``: the
    default behaviour):

        forward: ``forward(model, inputs) -> outputs`` in training, instead of
            ``model(inputs)`` (a language model carries its recurrent state
            from one window to the next here).
        batch_order: ``batch_order(size, batch_size, generator)`` yields one
            epoch's index tensors instead of a random permutation (consecutive
            windows of parallel text streams for truncated BPTT).
        clip_grad_norm: clip the gradients' total 2-norm to this before each
            optimizer step.
        optimized: the networks that get an optimizer each, by role (GANs:
            ``{"discriminator": ..., "generator": ...}``); every one is built
            from the run's optimizer name and hyper-parameters.
        train_step: a task-defined training step (see :data:`TrainStep`);
            needs ``optimized``.
        measure: ``measure(model, part) -> {"loss": ..., "metric": ..., ...}`` for
            ``part`` in ``"train"``, ``"valid"``, ``"test"``, instead of
            :func:`evaluate` (called in eval mode without gradients); further
            keys are diagnostics that go into the history rows.
        info: facts about the built problem for ``RunResult.info`` (e.g. the
            vocabulary size), or ``None``.
    """

    model: nn.Module
    train: ArrayData
    test: ArrayData
    loss: Callable[[Tensor, Tensor | None], Tensor]
    metric: str
    penalty: Callable[[nn.Module], Tensor] | None = None
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None
    drop_last: bool = False
    optimum: float | None = None
    eval_batch_size: int = 1000
    valid: ArrayData | None = None
    forward: Callable[[nn.Module, Tensor], Tensor] | None = None
    batch_order: Callable[[int, int, torch.Generator], Iterator[Tensor]] | None = None
    clip_grad_norm: float | None = None
    optimized: Mapping[str, nn.Module] | None = None
    train_step: TrainStep | None = None
    measure: Callable[[nn.Module, str], dict[str, float]] | None = None
    info: Mapping[str, Any] | None = None

    def objective(self, model: nn.Module, outputs: Tensor, targets: Tensor | None) -> Tensor:
        """Mean batch loss plus the parameter penalty: what the optimizer minimises."""
        value = self.loss(outputs, targets)
        if self.penalty is not None:
            value = value + self.penalty(model)
        return value


@torch.no_grad()
def evaluate(problem: Problem, model: nn.Module, data: ArrayData) -> dict[str, float]:
    """Mean loss over ``data`` (penalty included) and, when classifying, accuracy.

    Runs in eval mode (restoring the model's mode afterwards), in batches of
    ``problem.eval_batch_size``. Returns ``{"loss": ..., "accuracy": ...}``
    (accuracy only for the ``accuracy`` metric).
    """
    was_training = model.training
    model.eval()
    try:
        total_loss = 0.0
        correct = 0
        for start in range(0, len(data), problem.eval_batch_size):
            inputs, targets = data.batch(slice(start, start + problem.eval_batch_size))
            outputs = model(inputs)
            total_loss += float(problem.loss(outputs, targets)) * len(inputs)
            if problem.metric == "accuracy":
                correct += int((outputs.argmax(dim=1) == targets).sum())
        result = {"loss": total_loss / len(data)}
        if problem.penalty is not None:
            result["loss"] += float(problem.penalty(model))
        if problem.metric == "accuracy":
            result["accuracy"] = correct / len(data)
        return result
    finally:
        model.train(was_training)


def _metric(problem: Problem, result: Mapping[str, float]) -> float:
    if problem.metric == "accuracy":
        return result["accuracy"]
    if problem.metric == "gap":
        assert problem.optimum is not None
        return result["loss"] - problem.optimum
    return result["loss"]


@torch.no_grad()
def measure_part(problem: Problem, model: nn.Module, part: str) -> dict[str, float]:
    """``problem.measure(model, part)`` in eval mode (the model's mode restored afterwards)."""
    assert problem.measure is not None
    was_training = model.training
    model.eval()
    try:
        return problem.measure(model, part)
    finally:
        model.train(was_training)


def evaluate_metrics(problem: Problem, model: nn.Module) -> dict[str, float]:
    """``valid_loss``, ``valid_metric``, ``test_loss`` and ``metric`` of ``model``.

    The validation numbers come from ``problem.valid``, or from the whole
    training set when the task has no held-out part; a data set that serves
    twice (the convex task tests on its training data) is evaluated once.
    A task that measures itself (``problem.measure``) adds its diagnostics:
    the test part's under their own names, the validation part's with a
    ``valid_`` prefix.
    """
    if problem.measure is not None:
        valid = measure_part(problem, model, "valid")
        test = measure_part(problem, model, "test")
        extras = {key: value for key, value in test.items() if key not in ("loss", "metric")}
        extras.update(
            {f"valid_{key}": value for key, value in valid.items() if key not in ("loss", "metric")}
        )
        return {
            "valid_loss": valid["loss"],
            "valid_metric": valid["metric"],
            "test_loss": test["loss"],
            "metric": test["metric"],
            **extras,
        }
    valid_data = problem.train if problem.valid is None else problem.valid
    test = evaluate(problem, model, problem.test)
    valid = test if valid_data is problem.test else evaluate(problem, model, valid_data)
    return {
        "valid_loss": valid["loss"],
        "valid_metric": _metric(problem, valid),
        "test_loss": test["loss"],
        "metric": _metric(problem, test),
    }


Builder = Callable[[int, "str | None", Mapping[str, Any]], Problem]


@dataclass(frozen=True)
class Task:
    """One catalogue entry.

    Attributes:
        name: registry name, e.g. ``"digits-mlp"``.
        description: one line for tables and ``optlab tasks``.
        epochs: default number of epochs.
        batch_size: default batch size.
        metric: the test metric, ``"accuracy"``, ``"loss"`` or ``"gap"``.
        target: the metric value that counts as reached ("epochs to target").
        needs_data_dir: whether the task reads files from ``data_dir``.
        eval_every: evaluate every this many training examples; ``None``
            evaluates once per epoch. Both also evaluate before the first
            step and after the last.
        options: task settings and their defaults (model size, data
            options); ``RunSpec.task_options`` overrides them by name.
        threads: torch threads a run uses unless told otherwise (``threads=``
            or ``OPTLAB_NUM_THREADS``); ``None`` keeps torch's setting. The
            small built-in tasks use 1: their batches are too small for
            intra-op parallelism to pay, and on a busy machine extra threads
            make them many times slower. A fixed count also makes results
            independent of the machine's core count.
        validation: ``"held-out"`` (tuning selects on a held-out part of the
            training data) or ``"train"`` (on the training objective); see
            :data:`VALIDATIONS`.
        builder: ``builder(seed, data_dir, options) -> Problem``.
        schedule: the learning-rate schedule a run of this task uses when its
            spec names none (``RunSpec.schedule`` left at ``None``; see
            :func:`optlab.lab.train.resolve_schedule`).
        distributed: whether ``--nproc`` / torchrun may train it (tasks with
            their own training step, the GANs, run in one process).
        default_seconds: measured wall time of one default run (task defaults,
            Adam at its default learning rate, seed 0, one torch thread,
            evaluations included) on the project's 2-core development machine
            while other work shared it, ``None`` when not measured: a guide
            to a study's cost, not a promise (the machine is shared and noisy).
        family: the task's family (:data:`optlab.lab.arms.FAMILIES`: ``image``,
            ``lstm``, ``transformer``, ``gan``, ``other``), the row of a recipe table
            an arm's ``family_hparams`` (a preset's) apply on.
    """

    name: str
    description: str
    epochs: int
    batch_size: int
    metric: str
    target: float
    builder: Builder = field(repr=False)
    needs_data_dir: bool = False
    eval_every: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    threads: int | None = 1
    validation: str = "held-out"
    schedule: str = "constant"
    distributed: bool = True
    default_seconds: float | None = None
    family: str = "other"

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if self.validation not in VALIDATIONS:
            raise ValueError(
                f"validation must be one of {', '.join(VALIDATIONS)}, got {self.validation!r}"
            )

    @property
    def higher_is_better(self) -> bool:
        return METRICS[self.metric]

    def resolve_options(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The task's options with ``overrides`` applied; ``ValueError`` on an unknown name."""
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - set(self.options))
        if unknown:
            valid = ", ".join(self.options) or "none"
            raise ValueError(
                f"task {self.name!r} has no option {', '.join(map(repr, unknown))}; "
                f"valid options: {valid}"
            )
        return {**self.options, **overrides}

    def build(
        self,
        seed: int = 0,
        data_dir: str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> Problem:
        """The model and data for ``seed``; leaves the global random state as it was."""
        resolved = self.resolve_options(options)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            problem = self.builder(seed, data_dir, resolved)
        if problem.metric != self.metric:
            raise AssertionError(f"task {self.name} built a problem measuring {problem.metric}")
        if (problem.valid is None) != (self.validation == "train"):
            raise AssertionError(f"task {self.name} built a problem without its validation data")
        return problem


# --------------------------------------------------------------------------
# scikit-learn data sets (cached: loading them takes longer than a digits epoch)
# --------------------------------------------------------------------------


#: Fraction of the digits training split held out for validation (stratified).
DIGITS_VALID_FRACTION = 0.2


@functools.lru_cache(maxsize=1)
def _digits_split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train", "valid", "test"}``: (images, labels), 1077 / 270 / 450, all stratified.

    Fixed for every seed: a run's seed changes the model and the data order only.
    The test split is the 25 % it always was; validation is 20 % of the rest.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    images, labels = load_digits(return_X_y=True)
    images = (images / 16.0).astype(np.float32)
    labels = labels.astype(np.int64)
    rest_x, test_x, rest_y, test_y = train_test_split(
        images, labels, test_size=0.25, stratify=labels, random_state=0
    )
    train_x, valid_x, train_y, valid_y = train_test_split(
        rest_x, rest_y, test_size=DIGITS_VALID_FRACTION, stratify=rest_y, random_state=0
    )
    return {"train": (train_x, train_y), "valid": (valid_x, valid_y), "test": (test_x, test_y)}


def _standardise(values: np.ndarray) -> np.ndarray:
    return (values - values.mean(axis=0)) / values.std(axis=0)


@functools.lru_cache(maxsize=1)
def _diabetes() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_diabetes

    features, target = load_diabetes(return_X_y=True)
    return _standardise(features).astype(np.float32), _standardise(target).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer

    features, target = load_breast_cancer(return_X_y=True)
    return _standardise(features), target.astype(np.float64)


def _cross_entropy(outputs: Tensor, targets: Tensor | None) -> Tensor:
    return F.cross_entropy(outputs, targets)


def _digits_data() -> dict[str, ArrayData]:
    to_images = functools.partial(torch.reshape, shape=(-1, 1, 8, 8))
    return {
        part: ArrayData(torch.tensor(x), torch.tensor(y), to_images)
        for part, (x, y) in _digits_split().items()
    }


def _build_digits_mlp(seed: int, data_dir: str | None, options: Mapping[str, Any]) -> Problem:
    data = _digits_data()
    model = MLP(64, tuple(options["hidden"]), 10)
    return Problem(
        model, data["train"], data["test"], _cross_entropy, "accuracy", valid=data["valid"]
    )


def _build_digits_cnn(seed: int, data_dir: str | None, options: Mapping[str, Any]) -> Problem:
    data = _digits_data()
    model = DigitsCNN(tuple(options["channels"]))  # type: ignore[arg-type]
    return Problem(
        model, data["train"], data["test"], _cross_entropy, "accuracy", valid=data["valid"]
    )


# --------------------------------------------------------------------------
# d2l's optimisation-chapter harness, on the diabetes data
# --------------------------------------------------------------------------


def _half_squared_error(outputs: Tensor, targets: Tensor | None) -> Tensor:
    return 0.5 * (outputs.reshape(-1) - targets).pow(2).mean()


def _build_diabetes(seed: int, data_dir: str | None, options: Mapping[str, Any]) -> Problem:
    """d2l's optimisation-chapter harness (``train_ch11``), on the diabetes data.

    d2l runs it on the NASA airfoil data (1500 examples); here it runs on
    scikit-learn's diabetes data (442 examples, 10 features), which ships
    with scikit-learn. As in d2l: features and target standardised, a
    linear model with weights ~ N(0, 0.01^2) and zero bias, batches of 10
    (shuffled, the last one smaller), loss ``(y_hat - y)^2 / 2`` averaged over
    the batch, the loss on the full data recorded every 200 examples, and
    training time per epoch excluding those evaluations. There is no test
    split: ``test_loss`` and ``metric`` are the full-data loss, as in d2l.
    Nor is there a validation split (``validation="train"``): tuning selects
    on the same full-data training loss.
    """
    features, target = _diabetes()
    data = ArrayData(torch.tensor(features), torch.tensor(target))
    model = nn.Linear(features.shape[1], 1)
    # d2l's init: weights ~ N(0, 0.01^2), bias 0.
    with torch.no_grad():
        model.weight.normal_(0.0, 0.01)
        model.bias.zero_()
    return Problem(model, data, data, _half_squared_error, "loss")


# --------------------------------------------------------------------------
# L2-regularised logistic regression on the breast-cancer data (convex)
# --------------------------------------------------------------------------


def _logistic_optimum(l2: float) -> float:
    """Minimum of the regularised logistic objective, by Newton's method in float64."""
    return _logistic_solution(l2)[0]


@functools.lru_cache(maxsize=8)
def _logistic_solution(l2: float) -> tuple[float, tuple[float, ...]]:
    # On one thread whoever asks first: a reduction split over more threads rounds
    # differently, and the cached optimum enters every run's gap (measured: 16th digit).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _newton_solution(l2)
    finally:
        torch.set_num_threads(before)


def _newton_solution(l2: float) -> tuple[float, tuple[float, ...]]:
    features, target = _breast_cancer()
    x = torch.tensor(np.hstack([features, np.ones((len(features), 1))]))
    y = torch.tensor(target)
    n, d = x.shape
    ridge = torch.full((d,), l2, dtype=torch.float64)
    ridge[-1] = 0.0  # the bias is not penalised

    def objective(w: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(x @ w, y) + 0.5 * (ridge * w * w).sum()

    w = torch.zeros(d, dtype=torch.float64)
    value = objective(w)
    for _ in range(100):
        p = torch.sigmoid(x @ w)
        gradient = x.T @ (p - y) / n + ridge * w
        if float(gradient.norm()) < 1e-13:
            break
        hessian = (x.T * (p * (1 - p))) @ x / n + torch.diag(ridge)
        direction = torch.linalg.solve(hessian, gradient)
        step = 1.0
        while True:  # backtracking (Armijo); Newton steps are accepted near the optimum
            candidate = w - step * direction
            new_value = objective(candidate)
            if new_value <= value - 1e-4 * step * float(gradient @ direction) or step < 1e-10:
                break
            step *= 0.5
        w, value = candidate, new_value
    else:  # pragma: no cover - Newton converges in ~10 steps here
        raise RuntimeError("Newton's method did not converge on the logistic objective")
    return float(value), tuple(w.tolist())


class _LogisticRegression(nn.Linear):
    def __init__(self, features: int) -> None:
        super().__init__(features, 1, dtype=torch.float64)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x).reshape(-1)


def _build_cancer(seed: int, data_dir: str | None, options: Mapping[str, Any]) -> Problem:
    """Convex: L2-regularised logistic regression on all 569 breast-cancer examples.

    Objective: ``mean(log-loss) + l2/2 * |w|^2`` (bias not penalised;
    ``l2 = 1e-2`` by default). The penalty is part of the task, not weight
    decay, so every optimizer minimises the same function; without it the
    standardised data are linearly separable and the loss has no minimiser.
    The model and data are float64 so the gap can be followed far down;
    ``metric`` is the full objective minus its minimum, computed once per
    process by Newton's method to a gradient norm below 1e-13. There is no
    test split: the objective is what is measured. Nor is there a validation
    split (``validation="train"``): the task is how fast an optimizer closes
    the gap on this objective, so tuning selects on that same gap.
    """
    l2 = float(options["l2"])
    features, target = _breast_cancer()
    data = ArrayData(torch.tensor(features), torch.tensor(target))
    model = _LogisticRegression(features.shape[1])
    with torch.no_grad():
        model.weight.normal_(0.0, 0.01)
        model.bias.zero_()

    def penalty(module: nn.Module) -> Tensor:
        weight = _unwrap(module).weight
        return 0.5 * l2 * weight.pow(2).sum()

    return Problem(
        model,
        data,
        data,
        F.binary_cross_entropy_with_logits,
        "gap",
        penalty=penalty,
        optimum=_logistic_optimum(l2),
    )


def _unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel-style wrapper (``.module``)."""
    return getattr(module, "module", module)


# --------------------------------------------------------------------------
# DeepOBS's noisy quadratic (quadratic_deep)
# --------------------------------------------------------------------------


def _haar_rotation(dim: int, rng: np.random.RandomState) -> np.ndarray:
    """A rotation drawn from the Haar measure by the subgroup algorithm.

    Diaconis & Shahshahani, "The subgroup algorithm for generating uniform
    random variables", Prob. Eng. Inf. Sci. 1 (1987). Consumes ``rng`` in the
    same order as DeepOBS's ``random_rotation`` (one uniform angle, then one
    normal vector of length d + 1 for d = 2 ... dim - 1) and, like it, returns
    the negated matrix.
    """
    angle = 2.0 * np.pi * rng.uniform()
    rotation = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
    for d in range(2, dim):
        v = rng.normal(size=(d + 1, 1))
        v /= np.sqrt(v.T @ v)
        e = np.zeros((d + 1, 1))
        e[0, 0] = 1.0
        # Householder reflection taking e to v, applied to diag(1, rotation).
        x = (e - v) / np.sqrt((e - v).T @ (e - v))
        embedded = np.zeros((d + 1, d + 1))
        embedded[0, 0] = 1.0
        embedded[1:, 1:] = rotation
        rotation = embedded - 2.0 * x @ (x.T @ embedded)
    return -rotation


@functools.lru_cache(maxsize=1)
def _quadratic_problem_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.RandomState(42)
    eigenvalues = np.concatenate([rng.uniform(0.0, 1.0, 90), rng.uniform(30.0, 60.0, 10)])
    rotation = _haar_rotation(100, rng)
    hessian = rotation.T @ np.diag(eigenvalues) @ rotation
    train = np.random.RandomState(42).normal(0.0, 0.6, (1000, 100))
    test = np.random.RandomState(43).normal(0.0, 0.6, (1000, 100))
    return hessian.astype(np.float32), train.astype(np.float32), test.astype(np.float32)


def _mean_output(outputs: Tensor, targets: Tensor | None) -> Tensor:
    return outputs.mean()


def _build_quadratic(seed: int, data_dir: str | None, options: Mapping[str, Any]) -> Problem:
    """DeepOBS's ``quadratic_deep`` (Schneider, Balles & Hennig, ICLR 2019).

    As DeepOBS defines it (checked against its PyTorch code): 100-D ``theta``
    starting at ones; loss ``0.5 (theta - x)^T Q (theta - x)`` averaged over
    the batch; ``Q = R^T D R`` in float32 with ``D`` holding 90 eigenvalues
    from U(0, 1) then 10 from U(30, 60) and ``R`` a Haar-random rotation
    (subgroup algorithm), all drawn in that order from
    ``numpy.random.RandomState(42)``; the data are 1000 fixed points
    x ~ N(0, 0.6^2 I) from ``RandomState(42)`` for training and 1000 from
    ``RandomState(43)`` for testing (drawn once, reshuffled every epoch, not
    fresh noise every step); batches of 128 with the incomplete last batch
    dropped, so an epoch is 7 steps over 896 points.

    One deliberate difference: DeepOBS's test loader also drops the last
    incomplete batch and so evaluates 896 of the 1000 test points; here
    ``test_loss`` is the mean over all 1000. The run's seed only changes the
    data order (``theta`` always starts at ones).

    No validation split (``validation="train"``): the 1000 training points are
    DeepOBS's fixed set, so tuning selects on the training objective, the mean
    loss over all of them, and the test loss stays untouched by the choice.
    """
    hessian, train, test = _quadratic_problem_data()
    model = NoisyQuadratic(torch.tensor(hessian))
    return Problem(
        model,
        ArrayData(torch.tensor(train)),
        ArrayData(torch.tensor(test)),
        _mean_output,
        "loss",
        drop_last=True,
    )


# --------------------------------------------------------------------------
# File-backed: MNIST and CIFAR-10
# --------------------------------------------------------------------------

_MNIST_MEAN, _MNIST_STD = 0.1307, 0.3081


def _mnist_pixels(images: Tensor) -> Tensor:
    return (images.unsqueeze(1).float() / 255.0 - _MNIST_MEAN) / _MNIST_STD


#: The last ``1 / MNIST_VALID_PARTS`` of MNIST's training file is held out (10 000 of 60 000).
MNIST_VALID_PARTS = 6
#: The last ``1 / CIFAR_VALID_PARTS`` of CIFAR-10's training batches is held out (5 000 of 50 000).
CIFAR_VALID_PARTS = 10


def _hold_out_last(
    inputs: np.ndarray, targets: np.ndarray, parts: int, dataset: str, transform: Any
) -> tuple[ArrayData, ArrayData]:
    """Training and validation data: the last ``len // parts`` examples (at least one) validate."""
    count = len(inputs)
    if count < 2:
        raise DatasetFormatError(
            f"{dataset} training data hold {count} example(s); at least 2 are needed "
            "(one to train on, one held out for validation)"
        )
    split = count - max(1, count // parts)
    train = ArrayData(torch.tensor(inputs[:split]), torch.tensor(targets[:split]), transform)
    valid = ArrayData(torch.tensor(inputs[split:]), torch.tensor(targets[split:]), transform)
    return train, valid


def _build_mnist(seed: int, data_dir: str | None, options: Mapping[str, Any]) -> Problem:
    """The classic ``Net`` on MNIST; the last sixth of the training file validates."""
    train_x, train_y, test_x, test_y = load_mnist(data_dir)
    train, valid = _hold_out_last(train_x, train_y, MNIST_VALID_PARTS, "MNIST", _mnist_pixels)
    return Problem(
        MnistNet(),
        train,
        ArrayData(torch.tensor(test_x), torch.tensor(test_y), _mnist_pixels),
        _cross_entropy,
        "accuracy",
        valid=valid,
    )


_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2470, 0.2435, 0.2616)


def _cifar_pixels(images: Tensor) -> Tensor:
    mean = torch.tensor(_CIFAR_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(_CIFAR_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def _crop_and_flip(images: Tensor, generator: torch.Generator) -> Tensor:
    """The standard CIFAR augmentation: 4-pixel zero padding, random 32x32 crop, random flip.

    Random numbers come from ``generator`` (on the CPU), so the augmentation
    is part of the seeded data order.
    """
    n, _, height, width = images.shape
    padded = F.pad(images, (4, 4, 4, 4))
    offsets = torch.randint(0, 9, (n, 2), generator=generator).to(images.device)
    flips = (torch.rand(n, generator=generator) < 0.5).to(images.device)
    rows = offsets[:, 0, None] + torch.arange(height, device=images.device)
    cols = offsets[:, 1, None] + torch.arange(width, device=images.device)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channel = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def _build_cifar(seed: int, data_dir: str | None, options: Mapping[str, Any]) -> Problem:
    """A small ResNet on CIFAR-10; the last tenth of the training batches validates."""
    train_x, train_y, test_x, test_y = load_cifar10(data_dir)
    train, valid = _hold_out_last(train_x, train_y, CIFAR_VALID_PARTS, "CIFAR-10", _cifar_pixels)
    return Problem(
        CifarResNet(depth=int(options["depth"])),
        train,
        ArrayData(torch.tensor(test_x), torch.tensor(test_y), _cifar_pixels),
        _cross_entropy,
        "accuracy",
        augment=_crop_and_flip if options["augment"] else None,
        eval_batch_size=500,
        valid=valid,
    )


# --------------------------------------------------------------------------
# Language models and GANs (their code lives in text.py and gan.py)
# --------------------------------------------------------------------------


def _build_text_lstm(seed: int, data_dir: str | None, options: Mapping[str, Any]) -> Problem:
    from .text import build_lstm

    return build_lstm(seed, data_dir, options)


def _build_text_transformer(seed: int, data_dir: str | None, options: Mapping[str, Any]) -> Problem:
    from .text import build_transformer

    return build_transformer(seed, data_dir, options)


def _build_gan_ring(seed: int, data_dir: str | None, options: Mapping[str, Any]) -> Problem:
    from .gan import build_ring

    return build_ring(seed, data_dir, options)


def _build_gan_digits(seed: int, data_dir: str | None, options: Mapping[str, Any]) -> Problem:
    from .gan import build_digits

    return build_digits(seed, data_dir, options)


# --------------------------------------------------------------------------
# The catalogue
# --------------------------------------------------------------------------

_TASKS: tuple[Task, ...] = (
    Task(
        "digits-mlp",
        "MLP 64-64-10 on scikit-learn's 8x8 digits (1077 train / 270 valid / 450 test)",
        epochs=20,
        batch_size=32,
        metric="accuracy",
        target=0.95,
        builder=_build_digits_mlp,
        options={"hidden": (64,)},
        family="image",
    ),
    Task(
        "digits-cnn",
        "2-conv CNN on scikit-learn's 8x8 digits (1077 train / 270 valid / 450 test)",
        epochs=20,
        batch_size=32,
        metric="accuracy",
        target=0.95,
        builder=_build_digits_cnn,
        options={"channels": (16, 32)},
        family="image",
    ),
    Task(
        "diabetes-linreg",
        "d2l harness: linear regression on standardised diabetes data, loss every 200 examples",
        epochs=20,
        batch_size=10,
        metric="loss",
        target=0.25,
        builder=_build_diabetes,
        eval_every=200,
        validation="train",
    ),
    Task(
        "cancer-logreg",
        "L2-regularised logistic regression on breast-cancer data; gap to the optimum",
        epochs=100,
        batch_size=32,
        metric="gap",
        target=1e-3,
        builder=_build_cancer,
        options={"l2": 1e-2},
        validation="train",
    ),
    Task(
        "quadratic-deep",
        "DeepOBS noisy quadratic: 100-D, deep-learning-like Hessian spectrum",
        epochs=100,
        batch_size=128,
        metric="loss",
        target=90.0,
        builder=_build_quadratic,
        validation="train",
    ),
    Task(
        "text-lstm",
        "char LSTM LM on Python's pydoc_data text (or --data-dir files); bits per char",
        epochs=4,
        batch_size=32,
        metric="bpc",
        target=3.0,
        builder=_build_text_lstm,
        default_seconds=12.6,
        options={
            "layers": 1,
            "hidden": 128,
            "embedding": 32,
            "bptt": 64,
            "clip": 0.25,
            "level": "char",
            "train_tokens": None,
        },
        family="lstm",
    ),
    Task(
        "text-transformer",
        "pre-LN decoder-only Transformer on the same text; warmup-cosine; bits per char",
        epochs=4,
        batch_size=32,
        metric="bpc",
        target=3.0,
        builder=_build_text_transformer,
        default_seconds=22.1,
        options={
            "layers": 2,
            "width": 64,
            "heads": 4,
            "context": 64,
            "clip": 1.0,
            "level": "char",
            "train_tokens": None,
        },
        schedule="warmup-cosine",
        family="transformer",
    ),
    Task(
        "gan-ring",
        "GAN, MLP G and D, on 8 Gaussians on a ring; sliced Wasserstein (+ modes, quality)",
        epochs=200,
        batch_size=256,
        metric="swd",
        target=0.1,
        builder=_build_gan_ring,
        default_seconds=22.7,
        options={"noise_dim": 16, "hidden": (128, 128)},
        distributed=False,
        family="gan",
    ),
    Task(
        "gan-digits",
        "DCGAN on scikit-learn's 8x8 digits; Fréchet distance in a digits classifier's features",
        epochs=60,
        batch_size=64,
        metric="fid",
        target=10.0,
        builder=_build_gan_digits,
        default_seconds=22.0,
        options={"noise_dim": 32, "channels": 32},
        distributed=False,
        family="gan",
    ),
    Task(
        "mnist-cnn",
        "classic 2-conv/2-fc Net on MNIST (IDX files from data_dir)",
        epochs=10,
        batch_size=64,
        metric="accuracy",
        target=0.98,
        builder=_build_mnist,
        needs_data_dir=True,
        threads=None,
        family="image",
    ),
    Task(
        "cifar10-resnet",
        "ResNet-8 on CIFAR-10 with crop+flip (python batches from data_dir)",
        epochs=20,
        batch_size=128,
        metric="accuracy",
        target=0.8,
        builder=_build_cifar,
        needs_data_dir=True,
        options={"depth": 8, "augment": True},
        threads=None,
        family="image",
    ),
)

_BY_NAME: dict[str, Task] = {task.name: task for task in _TASKS}


def list_tasks() -> list[str]:
    """Task names, built-in first, file-backed last."""
    return [task.name for task in _TASKS]


def get_task(name: str) -> Task:
    """The task called ``name``; ``ValueError`` listing the valid names."""
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown task {name!r}; valid names: {', '.join(list_tasks())}") from None
