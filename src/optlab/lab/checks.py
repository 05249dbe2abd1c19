"""Checking a study before anything trains: one ``ValueError`` line (what, the value,
what is allowed) for every mistake that can be found without training.

Beyond the fields' own ranges, every arm's optimizer is built and stepped once
at the corners of its search space (so an option only checked when stepping
fails here, not in the middle of a study), and every task is built once with
the study's options and batch size (a file-backed task's missing files fail
here too).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from optlab.lab.execution import one_thread
from optlab.lab.spec import TUNERS, StudySpec, _hparam_names

__all__ = ["validate_study"]


def _is_int(value: Any, minimum: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= minimum


def validate_study(study: StudySpec) -> StudySpec:
    """Check everything that can be checked before training; return the study with
    canonical (lower-case registry) optimizer names.

    Raises:
        ValueError: one line saying what is wrong, the value, and what is allowed.
    """
    from optlab.lab import tasks as task_catalogue
    from optlab.lab.schedules import list_schedules
    from optlab.optim.registry import get_spec

    if not study.tasks:
        raise ValueError("tasks must name at least one task (see optlab tasks)")
    for task in study.tasks:
        task_catalogue.get_task(task)  # raises ValueError naming the valid tasks
    repeated = sorted({t for t in study.tasks if study.tasks.count(t) > 1})
    if repeated:
        raise ValueError(f"tasks must not repeat, got {', '.join(repeated)} twice")
    unknown_options = sorted(set(study.task_options) - set(study.tasks))
    if unknown_options:
        raise ValueError(
            f"task_options names {', '.join(unknown_options)}, which is not a task of this "
            f"study ({', '.join(study.tasks)})"
        )
    for task, options in study.task_options.items():
        task_catalogue.get_task(task).resolve_options(options)
    if not study.arms:
        raise ValueError("arms must hold at least one arm (--arm or --optimizers)")
    labels = [arm.label for arm in study.arms]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise ValueError(
            f"arm labels must be unique, got {', '.join(map(repr, twice))} twice; name arms "
            "with LABEL=OPTIMIZER:..."
        )
    for label in labels:
        if not label or any(char in label for char in "/\\\n\t") or len(label) > 80:
            raise ValueError(
                f"arm label must be 1-80 characters without slashes or control characters, "
                f"got {label!r}"
            )
    if not study.seeds:
        raise ValueError("seeds must hold at least one seed")
    for seed in study.seeds:
        if not _is_int(seed, 0):
            raise ValueError(f"seeds must be integers >= 0, got {seed!r}")
    if len(set(study.seeds)) != len(study.seeds):
        raise ValueError(f"seeds must not repeat, got {list(study.seeds)}")
    for name, value in (("epochs", study.epochs), ("batch_size", study.batch_size)):
        if value is not None and not _is_int(value, 1):
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if study.schedule is not None and study.schedule not in list_schedules():
        raise ValueError(
            f"unknown schedule {study.schedule!r}; valid schedules: {', '.join(list_schedules())}"
        )
    if study.tuner not in TUNERS:
        raise ValueError(f"tuner must be one of {', '.join(TUNERS)}, got {study.tuner!r}")
    if not _is_int(study.trials, 1):
        raise ValueError(f"trials must be an integer >= 1, got {study.trials!r}")
    names = [dim.name for dim in study.tune]
    if len(set(names)) != len(names):
        raise ValueError(f"tune names a hyper-parameter twice: {', '.join(names)}")
    for arm in study.arms:
        get_spec(arm.optimizer)  # an unknown optimizer: ValueError listing the valid names
    for dim in study.tune:
        if not any(dim.name in (_hparam_names(arm.optimizer) or ()) for arm in study.arms):
            raise ValueError(
                f"tune {dim.name}: no arm's optimizer has a hyper-parameter {dim.name!r} "
                f"({', '.join(sorted({arm.optimizer for arm in study.arms}))})"
            )
    for task, recipe in study.task_hparams.items():
        if task not in study.tasks:
            raise ValueError(
                f"task_hparams names {task}, which is not a task of this study "
                f"({', '.join(study.tasks)})"
            )
        for name in recipe:
            if not any(name in (_hparam_names(arm.optimizer) or ()) for arm in study.arms):
                raise ValueError(
                    f"task_hparams {task}.{name}: no arm's optimizer has a hyper-parameter {name!r}"
                )
    arms = []
    for arm in study.arms:
        spec = get_spec(arm.optimizer)  # ValueError listing the valid names
        arm = replace(arm, optimizer=spec.name)
        own = [dim.name for dim in arm.tune]
        if len(set(own)) != len(own):
            raise ValueError(f"arm {arm.label}: tunes a hyper-parameter twice")
        space = study.space(arm)
        settings = []
        for task in study.tasks:
            if study.fixed(arm, task) not in settings:
                settings.append(study.fixed(arm, task))
        for fixed in settings:
            _check_arm(study, arm, spec, space, fixed)
        arms.append(arm)
    study = replace(study, arms=tuple(arms))
    for task in study.tasks:
        _check_run_size(study, task)
    return study


def _check_arm(study: StudySpec, arm: Any, spec: Any, space: Any, fixed: dict[str, Any]) -> None:
    """One arm with one task's fixed hyper-parameters: names, ranges, and a probe step at
    the corners of its search space."""
    valid = spec.hparam_names()
    for name in [*fixed, *(dim.name for dim in space)]:
        if name not in valid:
            raise ValueError(
                f"arm {arm.label}: optimizer {spec.name!r} has no hyper-parameter "
                f"{name!r}; valid: {', '.join(valid)}"
            )
    for dim in space:
        dim.check()
        if dim.name in fixed:
            raise ValueError(
                f"arm {arm.label}: {dim.name} is both fixed ({dim.name}="
                f"{fixed[dim.name]!r}) and tuned; give one of them"
            )
        if study.tuner == "optuna" and dim.values and len(dim.values) < 2:
            raise ValueError(
                f"arm {arm.label}: the optuna tuner needs a range for {dim.name} (two "
                f"different values), got {dim.text()}"
            )
    corners = (
        [{}]
        if not space
        else [
            {dim.name: dim.bounds[0] for dim in space},
            {dim.name: dim.bounds[1] for dim in space},
        ]
    )
    for corner in corners:
        _probe_optimizer(arm.label, spec.name, {**fixed, **corner})


def _probe_optimizer(label: str, name: str, hparams: Mapping[str, Any]) -> None:
    """Build the optimizer and take one step on a tiny tensor: options that are only
    checked when stepping (e.g. an implementation this machine lacks) fail here, not
    in the middle of a study."""
    import torch

    from optlab.optim.registry import create_optimizer

    probe = torch.zeros(2, requires_grad=True)
    try:
        optimizer = create_optimizer([probe], name, **hparams)
        probe.grad = torch.ones(2)
        optimizer.step()
    except (ValueError, TypeError, RuntimeError) as error:
        message = " ".join(str(error).split()) or type(error).__name__
        prefix = name if label == name else f"arm {label} ({name})"
        raise ValueError(f"{prefix}: {message}") from None


def _check_run_size(study: StudySpec, task_name: str) -> None:
    """Epochs, batch size and options against the task's training data (built once).

    A file-backed task whose files are missing raises
    :class:`~optlab.lab.data.DatasetNotFoundError` here, before anything is written.
    """
    from optlab.lab import tasks

    task = tasks.get_task(task_name)
    if task.needs_data_dir and not study.data_dir:
        raise ValueError(
            f"task {task_name} reads its data from files: give data_dir (--data-dir on "
            "the command line); see optlab tasks"
        )
    # One thread, as every run trains: what a task computes and caches while it is built
    # (cancer-logreg's optimum by Newton's method) must not depend on who built it first.
    with one_thread():
        problem = task.build(study.seeds[0], study.data_dir, study.task_options.get(task_name))
    size = len(problem.train)
    batch_size = task.batch_size if study.batch_size is None else study.batch_size
    if problem.drop_last and batch_size > size:
        raise ValueError(
            f"batch_size must be at most {size} (the training examples of task {task_name}, "
            f"which drops incomplete batches), got {batch_size}"
        )
