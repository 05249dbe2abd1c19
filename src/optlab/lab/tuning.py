"""Tuning each arm on each task: a Cartesian grid, or Optuna's TPE with a fixed budget.

Both follow the DeepOBS protocol: one run per point, with the study's first
seed; :mod:`optlab.lab.selection` picks the best final validation metric.

- ``tuner="grid"``: every point of the Cartesian product of the arm's
  dimensions (:meth:`~optlab.lab.spec.StudySpec.grid_points`).
- ``tuner="optuna"``: ``trials`` points per task and arm, proposed by TPE
  over the dimensions' ranges (log or linear), its studies kept in
  ``optuna.sqlite3`` in the results directory. Every arm gets the same number
  of trials. Trial ``n`` is asked with a sampler seeded by ``n``, so the
  proposals depend only on the trials before it: a resumed study proposes
  exactly what an uninterrupted one would, and the random start-up trials
  try the same points for every arm with the same space. A trial asked but
  never told (the process was killed) is trained again, or told from its
  stored record. Trials are asked and told here, in the driver, whichever
  executor trains them, so ``--executor ray`` selects what ``--jobs`` does. A
  trial whose run failed for good (its worker died on every try) is left
  asked: the study stops after the round, and running it again retrains it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

from optlab.lab.execution import (
    BaseRunner,
    Progress,
    RunsFailed,
    clear_failure,
    execute,
    failure_recorder,
)
from optlab.lab.runs import RunResult, RunSpec
from optlab.lab.selection import lookup, selection_metric, usable
from optlab.lab.spec import Arm, StudySpec
from optlab.lab.store import Store

__all__ = ["OPTUNA_FILE", "tune_grid", "tune_optuna", "tuning_results"]

OPTUNA_FILE = "optuna.sqlite3"


def tuning_results(
    study: StudySpec, store: Store, task: str, arm: Arm
) -> tuple[list[RunResult], int]:
    """The stored tuning runs of ``arm`` on ``task`` and how many are still missing."""
    if not study.tuned(arm):
        return [], 0
    if study.tuner == "optuna":
        return _optuna_results(study, store, task, arm)
    return lookup(store, study.grid_specs(task, arm))


def tune_grid(
    study: StudySpec, store: Store, runner: BaseRunner, progress: Progress | None
) -> None:
    """Train every grid point of every tuned arm on every task (all in one parallel batch)."""
    specs = [
        spec
        for task in study.tasks
        for arm in study.arms
        if study.tuned(arm)
        for spec in study.grid_specs(task, arm)
    ]
    execute(runner, store, "tune", specs, progress)


# -------------------------------------------------------------------------- optuna


def _optuna_name(study: StudySpec, task: str, arm: Arm) -> str:
    # Everything that shapes the objective, but not the number of trials: asking
    # for more trials later continues the same Optuna study.
    basis = study.run_spec(task, arm, study.fixed(arm, task), study.seeds[0]).to_dict()
    basis["space"] = [dim.text() for dim in study.space(arm)]
    digest = hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:12]
    return f"{task}/{arm.optimizer}/{digest}"


def _storage(store: Store) -> str:
    return f"sqlite:///{(store.root / OPTUNA_FILE).resolve()}"


def _distributions(study: StudySpec, arm: Arm) -> dict[str, Any]:
    import optuna

    return {
        dim.name: optuna.distributions.FloatDistribution(*dim.bounds, log=dim.log)
        for dim in study.space(arm)
    }


def _trials(study: StudySpec, store: Store, task: str, arm: Arm) -> list[Any]:
    """The Optuna study's trials in trial order, ``[]`` when it does not exist yet."""
    if not (store.root / OPTUNA_FILE).exists():
        return []
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        optuna_study = optuna.load_study(
            study_name=_optuna_name(study, task, arm), storage=_storage(store)
        )
    except KeyError:
        return []
    return sorted(optuna_study.get_trials(deepcopy=False), key=lambda trial: trial.number)


def _trial_spec(study: StudySpec, task: str, arm: Arm, params: Mapping[str, float]) -> RunSpec:
    return study.run_spec(task, arm, {**study.fixed(arm, task), **params}, study.seeds[0])


def _optuna_results(
    study: StudySpec, store: Store, task: str, arm: Arm
) -> tuple[list[RunResult], int]:
    names = {dim.name for dim in study.space(arm)}
    trials = [t for t in _trials(study, store, task, arm) if names <= set(t.params)]
    specs = [_trial_spec(study, task, arm, t.params) for t in trials[: study.trials]]
    found, missing = lookup(store, specs)
    return found, missing + max(0, study.trials - len(trials))


def tune_optuna(
    study: StudySpec, store: Store, runner: BaseRunner, progress: Progress | None
) -> None:
    """TPE rounds: one trial for every tuned (task, arm) per round, the round's runs in
    parallel, until every one has ``trials`` finished trials."""
    import optuna

    from optlab.lab.tasks import get_task

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    studies: dict[tuple[str, str], tuple[Arm, Any, bool]] = {}
    for task in study.tasks:
        higher = bool(get_task(task).higher_is_better)
        for arm in study.arms:
            if not study.tuned(arm):
                continue
            optuna_study = optuna.create_study(
                study_name=_optuna_name(study, task, arm),
                storage=_storage(store),
                direction="maximize" if higher else "minimize",
                load_if_exists=True,
            )
            studies[(task, arm.label)] = (arm, optuna_study, higher)
    total = len(studies) * study.trials
    while True:
        asked = _ask_round(study, studies)
        if not asked:
            return
        if progress:
            progress("tune", _finished(study, studies), total, None)
        todo = []
        for spec, _ in asked.values():
            stored = store.get(spec)
            if stored is None:
                todo.append(spec)
            else:
                _tell(asked, stored)

        def on_result(result: RunResult, asked: Mapping[str, Any] = asked) -> None:
            store.put(result)
            clear_failure(store, result.spec)
            _tell(asked, result)
            if progress:
                progress("tune", _finished(study, studies), total, result)

        failed, on_failure = failure_recorder(store)
        runner.run(todo, on_result, on_failure)
        if failed:
            raise RunsFailed(failed)


def _finished(study: StudySpec, studies: Mapping[Any, tuple[Arm, Any, bool]]) -> int:
    return sum(
        min(study.trials, sum(t.state.is_finished() for t in s.get_trials(deepcopy=False)))
        for _, s, _ in studies.values()
    )


def _ask_round(
    study: StudySpec, studies: Mapping[tuple[str, str], tuple[Arm, Any, bool]]
) -> dict[str, tuple[RunSpec, list[tuple[Any, int, bool]]]]:
    """The next trial of every (task, arm) that needs one:
    ``{spec key: (spec, [(optuna study, trial number, higher is better)])}``."""
    import optuna
    from optuna.trial import TrialState

    asked: dict[str, tuple[RunSpec, list[tuple[Any, int, bool]]]] = {}
    for (task, _), (arm, optuna_study, higher) in studies.items():
        trials = sorted(optuna_study.get_trials(deepcopy=False), key=lambda t: t.number)
        stale = [t for t in trials if t.state == TrialState.RUNNING]
        if stale:
            number, params = stale[0].number, stale[0].params
        elif len(trials) < study.trials:
            optuna_study.sampler = optuna.samplers.TPESampler(
                seed=len(trials), n_startup_trials=max(3, min(10, study.trials // 3))
            )
            trial = optuna_study.ask(_distributions(study, arm))
            number, params = trial.number, trial.params
        else:
            continue
        spec = _trial_spec(study, task, arm, params)
        asked.setdefault(spec.key(), (spec, []))[1].append((optuna_study, number, higher))
    return asked


def _tell(
    asked: Mapping[str, tuple[RunSpec, list[tuple[Any, int, bool]]]], result: RunResult
) -> None:
    """Tell Optuna the run's final validation metric (the worst value when it diverged)."""
    for optuna_study, number, higher in asked.get(result.spec.key(), (None, []))[1]:
        worst = -math.inf if higher else math.inf
        value = selection_metric(result) if usable(result) else worst
        optuna_study.tell(number, value, skip_if_finished=True)
