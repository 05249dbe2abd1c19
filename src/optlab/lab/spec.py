"""What a study is: tasks x arms x seeds, with a search space per arm.

An **arm** is one contestant: a label, a registry optimizer and that arm's
own hyper-parameters (``adabelief-e8=adabelief:eps=1e-8``), optionally with
hyper-parameters of its own to tune (``adam:eps~1e-10..1e-6:log``). A
**search dimension** (:class:`Dim`) is one tuned hyper-parameter: a log or
linear range with a number of grid points, or an explicit list of values. A
:class:`StudySpec` runs every arm on every task with every seed, tuning the
study's dimensions (and each arm's own, which replace the study's of the same
name) per task and arm first.

The run an arm trains is a :class:`~optlab.lab.runs.RunSpec`: its key holds
the optimizer and every explicit hyper-parameter, never the label, so two arms
with the same settings are the same runs (and equal records).

:func:`validate_study` checks everything that can be checked before training
and raises ``ValueError`` with one line (what, the value, what is allowed).
"""

from __future__ import annotations

import ast
import functools
import itertools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from optlab.lab.runs import RunSpec

__all__ = [
    "CORE_OPTIMIZERS",
    "DEFAULT_LR_GRID",
    "SUITES",
    "TUNERS",
    "Arm",
    "Dim",
    "StudySpec",
    "default_study",
    "parse_literal",
    "validate_study",
]

#: The twelve optimizers of the default study, in catalogue order.
CORE_OPTIMIZERS: tuple[str, ...] = (
    "sgd",
    "momentum",
    "nag",
    "adagrad",
    "adadelta",
    "rmsprop",
    "adam",
    "adamw",
    "amsgrad",
    "yogi",
    "eadam",
    "adabelief",
)

#: The learning-rate range ``--tune lr`` searches: 1e-4 ... 10, log scale.
DEFAULT_LR_RANGE: tuple[float, float] = (1e-4, 10.0)

#: Learning rates tried by a bare ``--tune lr`` grid: 1e-4 ... 10 in half-decade steps
#: (11 points). One absolute grid for every optimizer, as in DeepOBS, so that no method
#: is favoured by where its grid is centred.
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
SCALES = ("log", "linear")
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_RANGE = re.compile(rf"^({_NUMBER})\.\.({_NUMBER})(?::([a-z]+))?(?::(\d+))?$")


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    items = sorted((mapping or {}).items())
    return MappingProxyType({k: tuple(v) if isinstance(v, list) else v for k, v in items})


def _sig(value: float) -> float:
    """Six significant digits: grid points print as typed (0.000316228, not 0.00031622776...)."""
    return float(f"{value:.6g}")


_WORDS = {"true": True, "false": False, "none": None}


def parse_literal(name: str, raw: str) -> Any:
    """A hyper-parameter value: a number, True/False, None or a tuple such as (0.9,0.99)."""
    raw = raw.strip()
    if raw.lower() in _WORDS:
        return _WORDS[raw.lower()]
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        raise ValueError(
            f"value of {name} must be a Python literal (a number, True/False or a tuple such "
            f"as (0.9,0.99)), got {raw!r}"
        ) from None
    if isinstance(value, list):
        value = tuple(value)
    if not isinstance(value, (int, float, bool, tuple)) and value is not None:
        raise ValueError(
            f"value of {name} must be a number, True/False, None or a tuple, got {raw!r}"
        )
    return value


def _split_top(text: str) -> list[str]:
    """Split on commas outside parentheses: ``eps=1e-8,betas=(0.9,0.99)`` -> two items."""
    parts, depth, current = [], 0, []
    for char in text:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [part.strip() for part in parts if part.strip()]


# ------------------------------------------------------------------ search dimensions


@dataclass(frozen=True)
class Dim:
    """One tuned hyper-parameter.

    Either a range (``low``, ``high``, ``scale`` "log" or "linear", ``points`` on a
    grid: by default every half decade on a log scale, 5 on a linear one) or an
    explicit list of ``values``. Optuna samples the range (for a list: between its
    smallest and largest value, log scale).
    """

    name: str
    low: float | None = None
    high: float | None = None
    scale: str = "log"
    points: int | None = None
    values: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", tuple(float(v) for v in self.values))

    @classmethod
    def parse(cls, text: str) -> Dim:
        """``NAME=LOW..HIGH[:log|:linear][:POINTS]``, ``NAME=V1,V2,...`` or ``lr`` alone
        (1e-4..10, log, half decades)."""
        name, sep, raw = text.partition("=")
        name, raw = name.strip(), raw.strip()
        if not name.isidentifier():
            raise ValueError(
                f"tune expects NAME=LOW..HIGH[:log|:linear][:POINTS] or NAME=V1,V2,... "
                f"(e.g. lr=1e-5..1:log), got {text!r}"
            )
        if not sep:
            if name != "lr":
                raise ValueError(
                    f"tune {name} needs a range, e.g. {name}=1e-8..1e-4:log (only lr has a "
                    "default range)"
                )
            return cls("lr", *DEFAULT_LR_RANGE)
        match = _RANGE.match(raw.replace(" ", ""))
        if match:
            low, high, scale, points = match.groups()
            return cls(
                name,
                float(low),
                float(high),
                scale or "log",
                int(points) if points is not None else None,
            )
        try:
            values = [float(part) for part in raw.split(",") if part.strip()]
        except ValueError:
            values = []
        if not values:
            raise ValueError(
                f"tune {name}: expected LOW..HIGH[:log|:linear][:POINTS] or V1,V2,..., got {raw!r}"
            )
        return cls(name, values=tuple(values))

    def check(self) -> None:
        """``ValueError`` for an empty range, a non-positive log range, too few points."""
        if self.values:
            if not all(math.isfinite(v) for v in self.values):
                raise ValueError(f"tune {self.name}: values must be finite, got {self.text()}")
            if len(set(self.values)) != len(self.values):
                raise ValueError(f"tune {self.name}: values must not repeat, got {self.text()}")
            return
        if self.low is None or self.high is None:
            raise ValueError(f"tune {self.name}: give a range low..high or a list of values")
        if self.scale not in SCALES:
            raise ValueError(
                f"tune {self.name}: scale must be one of {', '.join(SCALES)}, got {self.scale!r}"
            )
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ValueError(
                f"tune {self.name}: the range must have low < high, got {self.low!r}..{self.high!r}"
            )
        if self.scale == "log" and self.low <= 0:
            raise ValueError(
                f"tune {self.name}: a log range must be positive, got {self.low!r}..{self.high!r}"
                " (use :linear for ranges that include 0)"
            )
        if self.points is not None and self.points < 2:
            raise ValueError(f"tune {self.name}: a range needs >= 2 points, got {self.points}")

    @property
    def bounds(self) -> tuple[float, float]:
        if self.values:
            return min(self.values), max(self.values)
        return float(self.low), float(self.high)  # type: ignore[arg-type]

    @property
    def log(self) -> bool:
        return self.scale == "log" if not self.values else min(self.values) > 0

    def grid(self) -> tuple[float, ...]:
        """The grid points, smallest first."""
        if self.values:
            return tuple(sorted(self.values))
        low, high = self.bounds
        if self.scale == "log":
            points = self.points or max(2, round(2 * math.log10(high / low)) + 1)
            step = math.log10(high / low) / (points - 1)
            return tuple(_sig(10 ** (math.log10(low) + k * step)) for k in range(points))
        points = self.points or 5
        return tuple(_sig(low + k * (high - low) / (points - 1)) for k in range(points))

    def text(self) -> str:
        """The canonical spelling, which :meth:`parse` reads back."""
        if self.values:
            return f"{self.name}=" + ",".join(repr(v) for v in self.values)
        text = f"{self.name}={self.low!r}..{self.high!r}:{self.scale}"
        return text + (f":{self.points}" if self.points is not None else "")


# ------------------------------------------------------------------------------ arms


@dataclass(frozen=True)
class Arm:
    """One contestant: ``label``, registry ``optimizer``, its fixed ``hparams`` (on top of
    the study's) and its own search dimensions ``tune`` (replacing the study's of the
    same name)."""

    label: str
    optimizer: str
    hparams: Mapping[str, Any] = field(default_factory=dict)
    tune: tuple[Dim, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "hparams", _frozen(self.hparams))
        object.__setattr__(self, "tune", tuple(self.tune))

    @classmethod
    def parse(cls, text: str) -> Arm:
        """``[LABEL=]OPTIMIZER[:NAME=VALUE,NAME~RANGE,...]``.

        ``NAME=VALUE`` fixes a hyper-parameter (a Python literal); ``NAME~RANGE`` tunes
        it for this arm (``eps~1e-10..1e-6:log``, ``eps~1e-8,1e-6``). Without a label
        the arm is labelled with its own text.
        """
        head, _, tail = text.strip().partition(":")
        label, sep, optimizer = head.partition("=")
        if not sep:
            label, optimizer = "", head
        label, optimizer = label.strip(), optimizer.strip()
        if not optimizer:
            raise ValueError(f"arm expects [LABEL=]OPTIMIZER[:NAME=VALUE,...], got {text!r}")
        hparams: dict[str, Any] = {}
        dims: list[Dim] = []
        for item in _split_top(tail):
            if "~" in item.split("=", 1)[0]:
                name, _, raw = item.partition("~")
                dims.append(Dim.parse(f"{name.strip()}={raw.strip()}"))
                continue
            name, sep, raw = item.partition("=")
            name = name.strip()
            if not sep or not name.isidentifier() or not raw.strip():
                raise ValueError(f"arm {text!r}: expected NAME=VALUE or NAME~RANGE, got {item!r}")
            if name in hparams:
                raise ValueError(f"arm {text!r}: {name} given twice")
            hparams[name] = parse_literal(name, raw)
        arm = cls(label, optimizer.lower(), hparams, tuple(dims))
        return replace(arm, label=label or arm.text(with_label=False))

    def text(self, *, with_label: bool = True) -> str:
        """The canonical ``--arm`` spelling."""
        items = [f"{name}={_literal(value)}" for name, value in self.hparams.items()]
        items += [dim.text().replace("=", "~", 1) for dim in self.tune]
        body = self.optimizer + (":" + ",".join(items) if items else "")
        if with_label and self.label != self.text(with_label=False):
            return f"{self.label}={body}"
        return body

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "optimizer": self.optimizer,
            "hparams": {k: list(v) if isinstance(v, tuple) else v for k, v in self.hparams.items()},
            "tune": [dim.text() for dim in self.tune],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Arm:
        return cls(
            data["label"],
            data["optimizer"],
            dict(data.get("hparams") or {}),
            tuple(Dim.parse(text) for text in data.get("tune") or ()),
        )


def _literal(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(_literal(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return repr(value)


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
        schedule: learning-rate schedule name.
        batch_size: ``None`` means each task's default.
        data_dir: data of file-backed tasks.
        task_options: per task name, options that override the task's defaults.
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
    schedule: str = "constant"
    batch_size: int | None = None
    data_dir: str | None = None
    task_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
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
        object.__setattr__(
            self,
            "task_options",
            MappingProxyType({k: _frozen(v) for k, v in sorted(self.task_options.items())}),
        )

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

    def fixed(self, arm: Arm) -> dict[str, Any]:
        """The arm's fixed hyper-parameters: the study's, the arm's on top."""
        return {**self.hparams, **arm.hparams}

    def budget(self, arm: Arm) -> int:
        """Tuning runs per task: the grid's size, or the Optuna trials (0 when untuned)."""
        space = self.space(arm)
        if not space:
            return 0
        if self.tuner == "optuna":
            return self.trials
        return math.prod(len(dim.grid()) for dim in space)

    def run_spec(self, task: str, arm: Arm, hparams: Mapping[str, Any], seed: int) -> RunSpec:
        return RunSpec(
            task=task,
            optimizer=arm.optimizer,
            hparams=hparams,
            seed=seed,
            epochs=self.epochs,
            schedule=self.schedule,
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
        fixed = self.fixed(arm)
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
            schedule=data.get("schedule", "constant"),
            batch_size=data.get("batch_size"),
            data_dir=data.get("data_dir"),
            task_options={t: tuples(o) for t, o in (data.get("task_options") or {}).items()},
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


# ------------------------------------------------------------------------- checking


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
    if study.schedule not in list_schedules():
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
    arms = []
    for arm in study.arms:
        spec = get_spec(arm.optimizer)  # ValueError listing the valid names
        arm = replace(arm, optimizer=spec.name)
        own = [dim.name for dim in arm.tune]
        if len(set(own)) != len(own):
            raise ValueError(f"arm {arm.label}: tunes a hyper-parameter twice")
        space = study.space(arm)
        fixed = study.fixed(arm)
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
        arms.append(arm)
    study = replace(study, arms=tuple(arms))
    for task in study.tasks:
        _check_run_size(study, task)
    return study


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
    problem = task.build(study.seeds[0], study.data_dir, study.task_options.get(task_name))
    size = len(problem.train)
    batch_size = task.batch_size if study.batch_size is None else study.batch_size
    if problem.drop_last and batch_size > size:
        raise ValueError(
            f"batch_size must be at most {size} (the training examples of task {task_name}, "
            f"which drops incomplete batches), got {batch_size}"
        )
