"""Studies: tasks x arms x seeds, tuned the DeepOBS way, resumable.

A :class:`~optlab.lab.spec.StudySpec` names the tasks, the arms (optimizer +
hyper-parameters, each with a label), the seeds and what to tune.
:func:`run_study` expands it into :class:`~optlab.lab.runs.RunSpec` s, trains
those the store does not hold yet and writes each result as soon as it
finishes; running the same study again resumes where it stopped.
:func:`~optlab.lab.selection.resolve_study` reads the same plan back from the
store without training (what ``optlab report`` uses).

The parts, one module each: :mod:`~optlab.lab.arms` and :mod:`~optlab.lab.spec` (what a study is),
:mod:`~optlab.lab.checks` (its checks), :mod:`~optlab.lab.studyfile` (the fields table: command line, TOML
study files, the reproduce command), :mod:`~optlab.lab.execution` (workers;
:mod:`~optlab.lab.ray_executor` for a Ray cluster),
:mod:`~optlab.lab.tuning` (grid, Optuna), :mod:`~optlab.lab.selection`
(choosing, outcomes), :mod:`~optlab.lab.stats` (intervals, tests, profiles)
and :mod:`~optlab.lab.environment` (versions, machine).
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any

from optlab.lab.checks import validate_study
from optlab.lab.environment import environment
from optlab.lab.execution import BaseRunner, Progress, Runner, RunsFailed, Trainer, execute
from optlab.lab.selection import (
    ArmOutcome,
    StudyOutcome,
    TaskOutcome,
    resolve_study,
    select_best,
)
from optlab.lab.spec import (
    CORE_OPTIMIZERS,
    DEFAULT_LR_GRID,
    Arm,
    Dim,
    StudySpec,
    arms_from_optimizers,
    default_study,
)
from optlab.lab.store import Store, StoreError
from optlab.lab.tuning import tune_grid, tune_optuna

__all__ = [
    "CORE_OPTIMIZERS",
    "DEFAULT_LR_GRID",
    "RunsFailed",
    "Arm",
    "ArmOutcome",
    "Dim",
    "StudyOutcome",
    "StudySpec",
    "TaskOutcome",
    "arms_from_optimizers",
    "default_study",
    "environment",
    "load_study",
    "resolve_study",
    "run_study",
    "select_best",
    "validate_study",
]


def run_study(
    study: StudySpec,
    root: str | os.PathLike[str],
    *,
    jobs: int = 1,
    trainer: Trainer | None = None,
    progress: Progress | None = None,
    command: str | None = None,
    study_file: str | None = None,
    runner: BaseRunner | None = None,
) -> StudyOutcome:
    """Run ``study`` into the results directory ``root``, resuming what is there.

    Args:
        study: the study (checked with :func:`validate_study` first).
        root: results directory; created when new or empty (see :mod:`optlab.lab.store`).
        jobs: worker processes; 1 trains in this process. Workers are spawned, so a
            script calling this with ``jobs > 1`` needs the usual
            ``if __name__ == "__main__":`` guard.
        trainer: ``RunSpec -> RunResult``; :func:`optlab.lab.train.train` by default.
            With ``jobs > 1`` it must be importable by name (a module-level function).
        progress: see :data:`~optlab.lab.execution.Progress`.
        command: the command line to record in the report.
        study_file: the TOML text of the study, kept as ``study.toml`` in ``root``
            (by default written from ``study``).
        runner: the executor, e.g. ``RayRunner(address)`` from
            :mod:`optlab.lab.ray_executor` (then ``jobs`` and ``trainer`` are the
            runner's business); by default the local ``Runner(jobs, trainer)``. The
            executor is not part of the study: a study started with one resumes
            with another, to the same results.

    Raises:
        RunsFailed: some runs failed on every try (their workers died); each is
            recorded in ``root/failed/``, every finished run is stored, and
            running the study again retries them.

    Returns:
        What the store holds of the study afterwards (see :func:`resolve_study`).
    """
    from optlab.lab.studyfile import STUDY_TOML, dump_toml

    study = validate_study(study)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
    store = Store.open(root)
    with store.lock():
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        earlier = store.read_study() or {}
        data: dict[str, Any] = {
            "study": study.to_dict(),
            "command": command,
            "environment": environment(),
            "started": now,
        }
        if earlier.get("study") == data["study"] and earlier.get("started"):
            data["started"] = earlier["started"]  # resuming: the study began back then
            data["resumed"] = now
        with runner if runner is not None else Runner(jobs, trainer) as runner:
            data["execution"] = runner.describe()
            if data["execution"].get("executor") == "local":
                data["jobs"] = data["execution"]["jobs"]
            store.write_study(data)
            store.write_text(STUDY_TOML, study_file if study_file is not None else dump_toml(study))
            if study.tuner == "optuna":
                tune_optuna(study, store, runner, progress)
            else:
                tune_grid(study, store, runner, progress)
            finals = [
                spec
                for outcome in resolve_study(study, store).arm_outcomes()
                if outcome.hparams is not None
                for spec in study.final_specs(outcome.task, outcome.arm, outcome.hparams)
            ]
            execute(runner, store, "final", finals, progress)
        data = store.read_study() or {}
        data["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        store.write_study(data)
    return resolve_study(study, store)


def load_study(store: Store) -> tuple[StudySpec | None, dict[str, Any]]:
    """The study recorded in ``store`` (``None`` when there is none) and its study.json data."""
    data = store.read_study()
    if not data or "study" not in data:
        return None, data or {}
    try:
        return StudySpec.from_dict(data["study"]), data
    except (TypeError, ValueError, AttributeError, KeyError) as error:
        raise StoreError(
            f"{str(store.root / 'study.json')!r} holds no valid study ({error}); "
            f"{store.study_file_remedy()}"
        ) from None
