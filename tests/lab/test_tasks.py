"""The lab's tasks: catalogue, data definitions, and that each trains with Adam.

Oracles: scikit-learn (data, splits, the logistic-regression optimum), numpy
least squares (the diabetes optimum), DeepOBS's published quadratic_deep
definition (known values computed with DeepOBS's own code), and the
equations written out here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from optlab.lab.runs import RunSpec
from optlab.lab.tasks import get_task, list_tasks
from optlab.lab.train import train

BUILT_IN = ["digits-mlp", "digits-cnn", "diabetes-linreg", "cancer-logreg", "quadratic-deep"]
BUILT_IN += ["text-lstm", "text-transformer", "gan-ring", "gan-digits"]
FILE_BACKED = ["mnist-cnn", "cifar10-resnet"]


def run(task: str, epochs: int, **hparams: float):
    return train(RunSpec(task, "adam", hparams, epochs=epochs), progress=False)


# ------------------------------------------------------------------ catalogue


def test_catalogue_lists_every_task_with_consistent_metadata():
    assert list_tasks() == BUILT_IN + FILE_BACKED
    expected_metric = {
        "digits-mlp": "accuracy",
        "digits-cnn": "accuracy",
        "diabetes-linreg": "loss",
        "cancer-logreg": "gap",
        "quadratic-deep": "loss",
        "mnist-cnn": "accuracy",
        "cifar10-resnet": "accuracy",
        "text-lstm": "bpc",
        "text-transformer": "bpc",
        "gan-ring": "swd",
        "gan-digits": "fid",
    }
    for name in list_tasks():
        task = get_task(name)
        assert task.name == name
        assert task.description and "\n" not in task.description
        assert task.metric == expected_metric[name]
        assert task.higher_is_better is (task.metric == "accuracy")
        assert task.needs_data_dir is (name in FILE_BACKED)
        assert task.epochs >= 1 and task.batch_size >= 1
        assert math.isfinite(task.target)
        if task.higher_is_better:
            assert 0 < task.target <= 1


def test_unknown_task_is_rejected_with_the_valid_names():
    with pytest.raises(ValueError, match=r"unknown task 'digits'; valid names: digits-mlp, "):
        get_task("digits")


def test_unknown_task_option_is_rejected_with_the_valid_options():
    with pytest.raises(ValueError, match=r"task 'digits-mlp' has no option 'width'.*hidden"):
        get_task("digits-mlp").build(0, options={"width": 3})
    with pytest.raises(ValueError, match=r"no option 'l3'.*valid options: l2"):
        train(RunSpec("cancer-logreg", "adam", task_options={"l3": 1.0}, epochs=1))


def test_build_is_a_function_of_the_seed_and_leaves_the_global_rng_alone():
    task = get_task("digits-mlp")
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = task.build(seed=7).model.state_dict()
    again = task.build(seed=7).model.state_dict()
    other = task.build(seed=8).model.state_dict()
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not torch.equal(first["1.weight"], other["1.weight"])


# ------------------------------------------------------------------ digits


def test_digits_split_is_fixed_stratified_and_covers_the_data_once():
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    problem_a = get_task("digits-mlp").build(seed=0)
    problem_b = get_task("digits-cnn").build(seed=5)
    assert torch.equal(problem_a.test.targets, problem_b.test.targets)
    assert torch.equal(problem_a.valid.targets, problem_b.valid.targets)  # seed-independent
    assert torch.equal(problem_a.train.inputs, problem_b.train.inputs)
    sizes = len(problem_a.train), len(problem_a.valid), len(problem_a.test)
    assert sizes == (1077, 270, 450) and sum(sizes) == len(labels) == 1797
    # Stratified: the test set holds a quarter of each class and validation a fifth of the
    # rest, to rounding.
    for digit in range(10):
        count = int((labels == digit).sum())
        in_test = int((problem_a.test.targets == digit).sum())
        in_valid = int((problem_a.valid.targets == digit).sum())
        assert abs(in_test - 0.25 * count) <= 1
        assert abs(in_valid - 0.2 * (count - in_test)) <= 1
    # The inputs are the images scaled to [0, 1]; train + valid + test is the whole data,
    # each image exactly once.
    parts = [problem_a.train, problem_a.valid, problem_a.test]
    rows = torch.cat([part.inputs for part in parts]).numpy() * 16.0
    targets = torch.cat([part.targets for part in parts]).numpy()
    all_rows = np.concatenate([rows, targets[:, None]], 1)
    expected = np.concatenate([images, labels[:, None]], 1)
    assert sorted(map(tuple, np.round(all_rows, 4))) == sorted(map(tuple, expected))
    # The CNN sees 1x8x8 images.
    inputs, _ = problem_b.train.batch(slice(0, 3))
    assert inputs.shape == (3, 1, 8, 8)


def test_digits_history_records_validation_accuracy_on_the_held_out_images():
    result = run("digits-mlp", epochs=4)
    assert result.info["validation"] == "held-out"
    assert result.info["train_examples"] == 1077 and result.info["valid_examples"] == 270
    # Oracle: the trained model is not at hand, so check the untrained one (seed 0).
    problem = get_task("digits-mlp").build(seed=0)
    with torch.no_grad():
        outputs = problem.model(problem.valid.inputs)
        loss = torch.nn.functional.cross_entropy(outputs, problem.valid.targets).item()
        accuracy = int((outputs.argmax(1) == problem.valid.targets).sum()) / 270
    first = result.history[0]
    assert first["valid_loss"] == pytest.approx(loss, rel=1e-6)
    assert first["valid_metric"] == pytest.approx(accuracy, abs=1e-9)
    assert first["valid_metric"] != first["metric"]  # a different set of images
    assert result.history[-1]["valid_metric"] > 0.85


def test_tasks_without_held_out_data_validate_on_the_whole_training_objective():
    for name in ("diabetes-linreg", "cancer-logreg", "quadratic-deep"):
        task = get_task(name)
        assert task.validation == "train", name
        problem = task.build(seed=0)
        assert problem.valid is None
    # quadratic-deep: valid_loss is the mean loss over all 1000 training points, written
    # out with numpy; the test loss is over the separate 1000 test points.
    problem = get_task("quadratic-deep").build(seed=0)
    hessian = problem.model.hessian.double().numpy()
    theta = np.ones(100)
    train_x = problem.train.inputs.double().numpy()
    test_x = problem.test.inputs.double().numpy()

    def mean_loss(points):
        centred = theta - points
        return float(np.mean(0.5 * np.einsum("ni,ij,nj->n", centred, hessian, centred)))

    result = train(RunSpec("quadratic-deep", "sgd", {"lr": 1e-3}, epochs=1), progress=False)
    first = result.history[0]
    assert first["valid_loss"] == pytest.approx(mean_loss(train_x), rel=1e-5)
    assert first["valid_metric"] == first["valid_loss"]
    assert first["test_loss"] == pytest.approx(mean_loss(test_x), rel=1e-5)
    assert result.info["validation"] == "train" and result.info["valid_examples"] == 1000
    # cancer-logreg: validation is the gap of the training objective (here also the test).
    result = run("cancer-logreg", epochs=1, lr=1e-2)
    for row in result.history:
        assert row["valid_metric"] == row["metric"] and row["valid_loss"] == row["test_loss"]


@pytest.mark.parametrize("task", ["digits-mlp", "digits-cnn"])
def test_digits_tasks_reach_90_percent_test_accuracy_with_adam(task):
    result = run(task, epochs=7)
    assert result.status == "ok"
    assert result.history[0]["metric"] < 0.3  # untrained: chance level
    assert result.history[-1]["metric"] > 0.9


# ------------------------------------------------------------------ diabetes (d2l harness)


def _standardised_diabetes():
    from sklearn.datasets import load_diabetes

    features, target = load_diabetes(return_X_y=True)
    features = (features - features.mean(0)) / features.std(0)
    return features, (target - target.mean()) / target.std()


def test_diabetes_loss_is_half_the_mean_squared_error_on_the_full_data():
    features, target = _standardised_diabetes()
    problem = get_task("diabetes-linreg").build(seed=3)
    weight = problem.model.weight.detach().double().numpy().ravel()
    bias = float(problem.model.bias.detach())
    assert bias == 0.0 and 0.005 < weight.std() < 0.02  # d2l's N(0, 0.01^2) init
    expected = 0.5 * np.mean((features @ weight + bias - target) ** 2)
    result = train(RunSpec("diabetes-linreg", "adam", seed=3, epochs=1), progress=False)
    assert result.history[0]["test_loss"] == pytest.approx(expected, rel=1e-5)


def test_diabetes_evaluates_every_200_examples_and_approaches_least_squares():
    features, target = _standardised_diabetes()
    design = np.hstack([features, np.ones((len(features), 1))])
    solution = np.linalg.lstsq(design, target, rcond=None)[0]
    optimum = 0.5 * np.mean((design @ solution - target) ** 2)

    result = run("diabetes-linreg", epochs=5, lr=1e-2)
    history = result.history
    examples = [row["examples"] for row in history]
    total = 5 * 442
    assert examples[0] == 0 and examples[-1] == total
    # One row at the first step reaching each multiple of 200 (batches of 10), plus the last.
    assert len(history) == 1 + total // 200 + 1
    for k, count in enumerate(examples[1:-1], start=1):
        assert 200 * k <= count < 200 * k + 10
    assert history[0]["test_loss"] > 0.45
    assert history[-1]["test_loss"] < 1.02 * optimum


# ------------------------------------------------------------------ cancer (convex gap)


def test_cancer_optimum_matches_scikit_learn():
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression

    features, target = load_breast_cancer(return_X_y=True)
    features = (features - features.mean(0)) / features.std(0)
    l2 = 1e-2
    # sklearn minimises C * sum(log-loss) + 0.5 |w|^2; ours is mean(log-loss) + 0.5 l2 |w|^2.
    model = LogisticRegression(C=1.0 / (l2 * len(target)), tol=1e-12, max_iter=10_000)
    model.fit(features, target)
    p = model.predict_proba(features)[:, 1]
    log_loss = -np.mean(target * np.log(p) + (1 - target) * np.log(1 - p))
    sklearn_value = log_loss + 0.5 * l2 * np.sum(model.coef_**2)
    problem = get_task("cancer-logreg").build(seed=0)
    assert problem.optimum == pytest.approx(sklearn_value, abs=1e-9)
    assert problem.optimum <= sklearn_value + 1e-12  # Newton is at least as good


def test_cancer_gap_shrinks_by_orders_of_magnitude_and_never_goes_negative():
    result = run("cancer-logreg", epochs=20, lr=1e-2)
    gaps = [row["metric"] for row in result.history]
    assert gaps[0] > 0.3
    assert gaps[-1] < 1e-3 * gaps[0]
    assert min(gaps) >= 0.0
    # The gap is the full objective minus the optimum.
    optimum = get_task("cancer-logreg").build(0).optimum
    for row in result.history:
        assert row["metric"] == pytest.approx(row["test_loss"] - optimum, abs=1e-15)


# ------------------------------------------------------------------ DeepOBS noisy quadratic


def test_quadratic_matches_the_deepobs_definition():
    problem = get_task("quadratic-deep").build(seed=0)
    hessian = problem.model.hessian.double().numpy()
    # Eigenvalues: the first 100 draws of RandomState(42): 90 from U(0, 1), 10 from U(30, 60).
    rng = np.random.RandomState(42)
    eigenvalues = np.concatenate([rng.uniform(0, 1, 90), rng.uniform(30, 60, 10)])
    np.testing.assert_allclose(np.linalg.eigvalsh(hessian), np.sort(eigenvalues), atol=2e-5)
    np.testing.assert_allclose(hessian, hessian.T, atol=1e-6)
    # Known entries of DeepOBS's quadratic_deep._make_hessian() (float32), which also fix
    # the rotation: DeepOBS draws it with the same generator after the eigenvalues.
    assert hessian[0, 0] == pytest.approx(6.2214293, abs=1e-6)
    assert hessian[3, 7] == pytest.approx(0.39749822, abs=1e-6)
    assert hessian[99, 99] == pytest.approx(6.3056636, abs=1e-6)
    assert np.trace(hessian) == pytest.approx(477.61234, abs=1e-3)
    # Data: N(0, 0.6^2), 1000 x 100, train from seed 42 and test from seed 43.
    train_x = np.random.RandomState(42).normal(0.0, 0.6, (1000, 100)).astype(np.float32)
    test_x = np.random.RandomState(43).normal(0.0, 0.6, (1000, 100)).astype(np.float32)
    assert np.array_equal(problem.train.inputs.numpy(), train_x)
    assert np.array_equal(problem.test.inputs.numpy(), test_x)
    # theta starts at ones; the loss is 0.5 (theta - x)^T Q (theta - x) averaged over the batch.
    theta = problem.model.theta.detach().double().numpy()
    assert np.array_equal(theta, np.ones(100))
    batch = train_x[:128].astype(np.float64)
    expected = np.mean([0.5 * (theta - x) @ hessian @ (theta - x) for x in batch])
    inputs, targets = problem.train.batch(slice(0, 128))
    loss = problem.loss(problem.model(inputs), targets)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    # DeepOBS drops the incomplete last batch: 7 steps of 128 per epoch.
    result = train(RunSpec("quadratic-deep", "sgd", epochs=2), progress=False)
    assert [row["step"] for row in result.history] == [0, 7, 14]
    assert [row["examples"] for row in result.history] == [0, 896, 1792]


def test_quadratic_test_loss_falls_well_below_its_start_with_adam():
    result = run("quadratic-deep", epochs=30, lr=1e-2)
    start, end = result.history[0]["test_loss"], result.history[-1]["test_loss"]
    # From theta = 1 (about 354) towards the noise floor at theta = 0 (about 87).
    assert start > 340
    assert end < 100


# ------------------------------------------------------------------ file-backed tasks


@pytest.mark.parametrize("task", FILE_BACKED)
def test_file_backed_tasks_without_a_data_dir_say_what_to_do(task):
    with pytest.raises(FileNotFoundError, match="no data directory was given.*--data-dir"):
        train(RunSpec(task, "adam", epochs=1), progress=False)


def test_the_logistic_optimum_does_not_depend_on_the_thread_count():
    # The gap of every cancer-logreg run is measured against this cached value, so it must
    # be the same whichever process (and thread count) computed it first.
    from optlab.lab import tasks

    before = torch.get_num_threads()
    try:
        values = []
        for threads in (1, 2):
            tasks._logistic_solution.cache_clear()
            torch.set_num_threads(threads)
            values.append(tasks._logistic_solution(1e-2))
    finally:
        torch.set_num_threads(before)
        tasks._logistic_solution.cache_clear()
    assert values[0] == values[1]
