"""What a study is: tasks x arms x seeds, with a search space per arm.

A :class:`StudySpec` runs every arm (:class:`~optlab.lab.arms.Arm`) on every
task with every seed, tuning the study's search dimensions
(:class:`~optlab.lab.arms.Dim`; each arm's own replace the study's of the same
name) per task and arm first.

The run an arm trains is a :class:`~optlab.lab.runs.RunSpec`: its key holds
the optimizer and every explicit hyper-parameter, never the label, so two arms
with the same settings are the same runs (and equal records).

:func:`optlab.lab.checks.validate_study` checks everything that can be checked
before training.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from optlab.lab.arms import DEFAULT_LR_RANGE, Arm, Dim, _frozen, parse_literal
from optlab.lab.runs import RunSpec
from optlab.optim.registry import list_optimizers

__all__ = [
    "CORE_OPTIMIZERS",
    "DEFAULT_LR_GRID",
    "DEFAULT_LR_RANGE",
    "SUITES",
    "TUNERS",
    "Arm",
    "Dim",
    "StudySpec",
    "arms_from_optimizers",
    "default_study",
    "parse_literal",
]

#: The twelve optimizers of the default study: optlab's own registry entries tagged
#: ``core``, in catalogue order. Optimizers registered with ``tags=("core",)`` are listed
#: by ``list_optimizers("core")`` but do not join the default study.
CORE_OPTIMIZERS: tuple[str, ...] = tuple(list_optimizers("core", builtin_only=True))

#: Learning rates of a half-decade grid over 1e-4 ... 10 (11 points): one absolute grid
#: for every optimizer, as in DeepOBS, so that no method is favoured by where its grid
#: is centred.
DEFAULT_LR_GRID: tuple[float, ...] = tuple(float(f"{10 ** (k / 2):.6g}") for k in range(-8, 3))

#: Named task suites (``--suite``); tasks not in the catalogue are left out of a suite.
SUITES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "small": ("digits-mlp", "cancer-logreg", "quadratic-deep"),
        "builtin": (
            "digits-mlp",
            "digits-cnn",
            "diabetes-linreg",
            "cancer-logreg",
            "quadratic-deep",
        ),
        "domains": (
            "digits-cnn",
            "quadratic-deep",
            "text-lstm",
            "text-transformer",
            "gan-ring",
            "gan-digits",
        ),
    }
)

TUNERS = ("grid", "optuna")


# ---------------------------------------------------------------------------- study


@dataclass(frozen=True)
class StudySpec:
    """One study: every arm on every task with every seed, tuned per task and arm.

    Attributes:
        tasks: task registry names.
        arms: the contestants (labels unique).
        hparams: hyper-parameters fixed for every arm (an arm's own win).
        seeds: the seeds of the final runs; tuning uses the first.
        epochs: epochs per run; ``None`` means each task's default.
        schedule: learning-rate schedule name; ``None`` means each task's default
            (named explicitly in every run, so a run's key says which it used).
        batch_size: ``None`` means each task's default.
        data_dir: data of file-backed tasks.
        task_options: per task name, options that override the task's defaults.
        task_hparams: per task name, hyper-parameters fixed for every arm on that task
            whose optimizer takes them (a task's recipe, e.g. GAN betas (0.5, 0.999));
            an arm's own values win.
        tune: search dimensions tuned for every arm (an arm's own ``tune`` replaces
            the dimension of the same name).
        tuner: ``"grid"`` (every point of the Cartesian grid) or ``"optuna"`` (TPE).
        trials: Optuna trials per task and arm (the same budget for every arm).
    """

    tasks: tuple[str, ...]
    arms: tuple[Arm, ...]
    hparams: Mapping[str, Any] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int | None = None
    schedule: str | None = None
    batch_size: int | None = None
    data_dir: str | None = None
    task_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    task_hparams: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    tune: tuple[Dim, ...] = ()
    tuner: str = "grid"
    trials: int = 20

    def __post_init__(self) -> None:
        # Strings are the command-line spellings: "digits-mlp" for ("digits-mlp",), an arm
        # as --arm reads it ("adam", "adam-e16=adam:eps=1e-16"), a dimension as --tune
        # reads it ("lr", "eps=1e-16..1e-6:log").
        tasks = (self.tasks,) if isinstance(self.tasks, str) else tuple(self.tasks)
        arms = tuple(Arm.parse(a) if isinstance(a, str) else a for a in self.arms)
        tune = (self.tune,) if isinstance(self.tune, str) else tuple(self.tune)
        object.__setattr__(self, "tasks", tasks)
        object.__setattr__(self, "arms", arms)
        object.__setattr__(self, "seeds", tuple(self.seeds))
        object.__setattr__(
            self, "tune", tuple(Dim.parse(d) if isinstance(d, str) else d for d in tune)
        )
        object.__setattr__(self, "hparams", _frozen(self.hparams))
        for name in ("task_options", "task_hparams"):
            per_task = getattr(self, name)
            frozen = MappingProxyType({k: _frozen(v) for k, v in sorted(per_task.items())})
            object.__setattr__(self, name, frozen)

    # ------------------------------------------------------------------ per arm

    def arm(self, label: str) -> Arm:
        for arm in self.arms:
            if arm.label == label:
                return arm
        raise KeyError(label)

    def space(self, arm: Arm) -> tuple[Dim, ...]:
        """The dimensions tuned for ``arm``: the study's that its optimizer takes (``--tune
        eps=...`` leaves SGD alone), the arm's own replacing them by name."""
        own = {dim.name: dim for dim in arm.tune}
        takes = _hparam_names(arm.optimizer)
        dims = [own.pop(dim.name, dim) for dim in self.tune if takes is None or dim.name in takes]
        return tuple(dims + list(own.values()))

    def tuned(self, arm: Arm) -> bool:
        return bool(self.space(arm))

    def fixed(self, arm: Arm, task: str | None = None) -> dict[str, Any]:
        """The arm's fixed hyper-parameters: the study's, then ``task``'s recipe (those
        the arm's optimizer takes), then the arm's values for the task's family
        (``Arm.family_hparams``), the arm's own on top.

        A family value of a hyper-parameter tuned for the arm (:meth:`space`) is left
        out: the tuned value replaces it (a preset's recommended lr is where tuning is
        switched off, ``--tune none``). Run keys hold the result, so an arm's runs on
        two families with different values are different runs.
        """
        recipe = dict(self.task_hparams.get(task, {})) if task is not None else {}
        takes = _hparam_names(arm.optimizer)
        if takes is not None:
            recipe = {name: value for name, value in recipe.items() if name in takes}
        family = arm.on_family(self.family_of(task)) if arm.family_hparams else {}
        if family:
            tuned = {dim.name for dim in self.space(arm)}
            family = {name: value for name, value in family.items() if name not in tuned}
        return {**self.hparams, **recipe, **family, **arm.hparams}

    @staticmethod
    def family_of(task: str | None) -> str | None:
        """``task``'s family (``Task.family``); ``None`` for none or a task this optlab
        does not know (records read back)."""
        if task is None:
            return None
        from optlab.lab.tasks import get_task

        try:
            return get_task(task).family
        except ValueError:
            return None

    def budget(self, arm: Arm) -> int:
        """Tuning runs per task: the grid's size, or the Optuna trials (0 when untuned)."""
        space = self.space(arm)
        if not space:
            return 0
        if self.tuner == "optuna":
            return self.trials
        return math.prod(len(dim.grid()) for dim in space)

    def schedule_of(self, task: str) -> str:
        """The schedule runs of ``task`` use: the study's, else the task's default."""
        if self.schedule is not None:
            return self.schedule
        from optlab.lab.tasks import get_task

        try:
            return get_task(task).schedule
        except ValueError:  # a task this optlab does not know (records read back)
            return "constant"

    def run_spec(self, task: str, arm: Arm, hparams: Mapping[str, Any], seed: int) -> RunSpec:
        return RunSpec(
            task=task,
            optimizer=arm.optimizer,
            hparams=hparams,
            seed=seed,
            epochs=self.epochs,
            schedule=self.schedule_of(task),
            batch_size=self.batch_size,
            data_dir=self.data_dir,
            task_options=self.task_options.get(task, {}),
        )

    def final_specs(self, task: str, arm: Arm, hparams: Mapping[str, Any]) -> list[RunSpec]:
        return [self.run_spec(task, arm, hparams, seed) for seed in self.seeds]

    def grid_points(self, arm: Arm) -> list[dict[str, float]]:
        """The Cartesian grid of ``arm``'s space, in lexicographic order of the dimensions."""
        space = self.space(arm)
        names = [dim.name for dim in space]
        return [
            dict(zip(names, values, strict=True))
            for values in itertools.product(*(dim.grid() for dim in space))
        ]

    def grid_specs(self, task: str, arm: Arm) -> list[RunSpec]:
        """The tuning grid of ``arm`` on ``task`` (first seed), smallest values first."""
        fixed = self.fixed(arm, task)
        return [
            self.run_spec(task, arm, {**fixed, **point}, self.seeds[0])
            for point in self.grid_points(arm)
        ]

    # ----------------------------------------------------------------- records

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; :meth:`from_dict` reads it back equal."""
        return {
            "tasks": list(self.tasks),
            "arms": [arm.to_dict() for arm in self.arms],
            "hparams": {k: list(v) if isinstance(v, tuple) else v for k, v in self.hparams.items()},
            "seeds": list(self.seeds),
            "epochs": self.epochs,
            "schedule": self.schedule,
            "batch_size": self.batch_size,
            "data_dir": self.data_dir,
            "task_options": {
                task: {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
                for task, options in self.task_options.items()
            },
            **(
                {
                    "task_hparams": {
                        task: {k: list(v) if isinstance(v, tuple) else v for k, v in hp.items()}
                        for task, hp in self.task_hparams.items()
                    }
                }
                if self.task_hparams
                else {}
            ),
            "tune": [dim.text() for dim in self.tune],
            "tuner": self.tuner,
            "trials": self.trials,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StudySpec:
        data = dict(data)
        if "task" in data and "optimizers" in data:  # a study.json of optlab before arms
            data = _from_single_task_format(data)

        def tuples(mapping: Mapping[str, Any] | None) -> dict[str, Any]:
            return {k: tuple(v) if isinstance(v, list) else v for k, v in (mapping or {}).items()}

        return cls(
            tasks=tuple(data["tasks"]),
            arms=tuple(Arm.from_dict(arm) for arm in data["arms"]),
            hparams=tuples(data.get("hparams")),
            seeds=tuple(data.get("seeds", (0, 1, 2))),
            epochs=data.get("epochs"),
            schedule=data.get("schedule"),
            batch_size=data.get("batch_size"),
            data_dir=data.get("data_dir"),
            task_options={t: tuples(o) for t, o in (data.get("task_options") or {}).items()},
            task_hparams={t: tuples(h) for t, h in (data.get("task_hparams") or {}).items()},
            tune=tuple(Dim.parse(text) for text in data.get("tune") or ()),
            tuner=data.get("tuner", "grid"),
            trials=data.get("trials", 20),
        )


@functools.cache
def _hparam_names(optimizer: str) -> frozenset[str] | None:
    """The hyper-parameters ``optimizer`` takes; ``None`` for a name the registry lacks
    (validation reports it)."""
    from optlab.optim.registry import get_spec

    try:
        return frozenset(get_spec(optimizer).hparam_names())
    except ValueError:
        return None


def _from_single_task_format(data: dict[str, Any]) -> dict[str, Any]:
    """The study.json that optlab wrote before arms and suites (one task, names, lr only)."""
    tune = []
    if data.get("tune") == "lr":
        grid = data.get("lr_grid") or DEFAULT_LR_GRID
        tune = [Dim("lr", values=tuple(grid)).text()]
    return {
        **{k: v for k, v in data.items() if k not in ("task", "optimizers", "lr_grid", "tune")},
        "tasks": [data["task"]],
        "arms": [{"label": name, "optimizer": name} for name in data["optimizers"]],
        "tune": tune,
    }


def arms_from_optimizers(names: list[str] | tuple[str, ...]) -> tuple[Arm, ...]:
    """``--optimizers a,b``: one arm per optimizer, labelled with its name, its defaults."""
    return tuple(Arm(name.strip().lower(), name.strip().lower()) for name in names)


def default_study() -> StudySpec:
    """The built-in study of ``optlab compare`` without arguments and ``make demo``: the
    core optimizers on digits-mlp, lr tuned per arm on a decade grid (1e-4 ... 10),
    three seeds. Tuned, because untuned defaults compare learning rates, not methods."""
    return StudySpec(
        tasks=("digits-mlp",),
        arms=arms_from_optimizers(CORE_OPTIMIZERS),
        seeds=(0, 1, 2),
        tune=(Dim("lr", *DEFAULT_LR_RANGE, points=6),),
    )
