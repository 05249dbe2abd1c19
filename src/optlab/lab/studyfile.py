"""One definition of a study's fields, two spellings: command-line flags and TOML files.

:data:`FIELDS` is the table every spelling reads: ``optlab compare`` builds its
flags from it (:func:`add_study_arguments`, :func:`study_from_args`), ``optlab
run study.toml`` reads a file through it (:func:`load_toml`), and the
reproduce command and the ``study.toml`` kept in a results directory are
written from it (:func:`compare_command`, :func:`dump_toml`). Shorthands
(``--optimizers a,b``, ``--suite small``, ``--lr 0.1``, ``--lr-grid ...``) are
rows of the same table that fill a field.

The defaults of fields not given are the default study's (digits-mlp, the
twelve core optimizers, three seeds) and, unless some arm or the study fixes a
learning rate, ``tune = ["lr=0.0001..10.0:log:6"]``: a comparison at default
learning rates compares the defaults, not the methods. ``--tune none`` (in a
file, ``tune = []``) switches tuning off.

A study file (all keys optional; unknown keys are refused)::

    tasks = ["digits-mlp", "cancer-logreg"]   # or: suite = "small"
    seeds = 5                                  # 0..4, or a list [0, 3, 7]
    epochs = 10
    schedule = "constant"
    tune = ["lr=1e-4..10:log:6", "eps=1e-16..1e-6:log:6"]
    tuner = "optuna"
    trials = 12
    arms = ["adam", "adabelief-e8=adabelief:eps=1e-8"]    # the --arm spelling, or tables:
    # [[arms]]
    # label = "eadam-wide"
    # optimizer = "eadam"
    # hparams = { weight_decay = 5e-4 }
    # tune = ["eps=1e-16..1e-4:log"]
    [hparams]                                  # fixed for every arm
    weight_decay = 0.0
    [task_options.digits-mlp]
    hidden = [128]

A bad file gives one line: the file, the key and its line, the value and what
is allowed (:class:`StudyFileError`).
"""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from optlab.lab.spec import (
    CORE_OPTIMIZERS,
    DEFAULT_LR_RANGE,
    SUITES,
    TUNERS,
    Arm,
    Dim,
    StudySpec,
    arms_from_optimizers,
    parse_literal,
)

__all__ = [
    "DEFAULT_TUNE",
    "FIELDS",
    "STUDY_TOML",
    "StudyFileError",
    "add_study_arguments",
    "compare_command",
    "dump_toml",
    "load_toml",
    "study_from_args",
    "study_from_values",
]

STUDY_TOML = "study.toml"

#: What is tuned when nothing says otherwise (and no learning rate is fixed): the
#: learning rate per arm on a decade grid, 1e-4 ... 10 (6 points).
DEFAULT_TUNE: tuple[Dim, ...] = (Dim("lr", *DEFAULT_LR_RANGE, points=6),)


class StudyFileError(ValueError):
    """A study file that cannot be read; the message is one line."""


# ------------------------------------------------------------------ value parsers


def _positive_int(value: Any) -> int:
    given = value
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise ValueError(f"must be an integer >= 1, got {given!r}") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"must be an integer >= 1, got {given!r}")
    return value


def _names(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        names = [name.strip() for name in value.split(",") if name.strip()]
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        names = [v.strip() for v in value]
    else:
        names = []
    if not names:
        raise ValueError(f"must be a comma-separated list (or array) of names, got {value!r}")
    return tuple(names)


def _seeds(value: Any) -> tuple[int, ...]:
    if isinstance(value, (list, tuple)):
        if not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ValueError(
                f"must be a count N (seeds 0..N-1) or a list of integers, got {value!r}"
            )
        return tuple(value)
    return tuple(range(_positive_int(value)))


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a string, got {value!r}")
    return value


def _choice(choices: Callable[[], Sequence[str]]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in choices():
            raise ValueError(f"must be one of {', '.join(choices())}, got {value!r}")
        return value

    return parse


def _schedules() -> list[str]:
    from optlab.lab.schedules import list_schedules

    return list_schedules()


def _assignment(text: str) -> tuple[str, Any]:
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or not name or not raw.strip():
        raise ValueError(f"expects name=value (e.g. eps=1e-8), got {text!r}")
    if not all(part.isidentifier() for part in name.split(".", 1)):
        raise ValueError(f"expects name=value (e.g. eps=1e-8), got {text!r}")
    return name, parse_literal(name, raw)


def _hparams(value: Any) -> dict[str, Any]:
    """``--set`` items (``name=value``) or a TOML table."""
    if isinstance(value, Mapping):
        return {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
    result: dict[str, Any] = {}
    for item in value:
        name, parsed = _assignment(item) if isinstance(item, str) else item
        if not name.isidentifier():
            raise ValueError(f"expects name=value (e.g. eps=1e-8), got {item!r}")
        if name in result and result[name] != parsed:
            raise ValueError(f"{name} given twice ({result[name]!r} and {parsed!r})")
        result[name] = parsed
    return result


def _arms(value: Any) -> tuple[Arm, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"must be a list of arms, got {value!r}")
    arms = []
    for item in value:
        if isinstance(item, Arm):
            arms.append(item)
        elif isinstance(item, str):
            arms.append(Arm.parse(item))
        elif isinstance(item, Mapping):
            unknown = sorted(set(item) - {"label", "optimizer", "hparams", "tune"})
            if unknown or "optimizer" not in item:
                raise ValueError(
                    "an arm table takes optimizer (required), label, hparams, tune; got "
                    + ", ".join(map(repr, unknown or ["no optimizer"]))
                )
            arm = Arm(
                str(item.get("label", "")),
                _text(item["optimizer"]).lower(),
                _hparams(item.get("hparams") or {}),
                tuple(Dim.parse(text) for text in item.get("tune") or ()),
            )
            arms.append(replace(arm, label=arm.label or arm.text(with_label=False)))
        else:
            raise ValueError(f"an arm is a string or a table, got {item!r}")
    return tuple(arms)


def _tune(value: Any) -> tuple[Dim, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"must be a list of NAME=LOW..HIGH[:log|:linear][:N], got {value!r}")
    if list(value) in (["none"], ["off"]):
        return ()
    return tuple(item if isinstance(item, Dim) else Dim.parse(_text(item)) for item in value)


def _task_options(value: Any) -> dict[str, dict[str, Any]]:
    """``--task-option [TASK.]NAME=VALUE`` items, or a TOML table of tables."""
    if isinstance(value, Mapping):
        if not all(isinstance(v, Mapping) for v in value.values()):
            raise ValueError("must be a table per task, e.g. [task_options.text-lstm]")
        return {task: _hparams(options) for task, options in value.items()}
    result: dict[str, dict[str, Any]] = {}
    for item in value:
        name, parsed = _assignment(item)
        task, _, option = name.rpartition(".")
        result.setdefault(task, {})[option] = parsed
    return result


def _suite(value: Any) -> tuple[str, ...]:
    from optlab.lab.tasks import list_tasks

    if value not in SUITES:
        raise ValueError(f"unknown suite {value!r}; valid suites: {', '.join(SUITES)}")
    known = set(list_tasks())
    return tuple(task for task in SUITES[value] if task in known)


def _lr(value: Any) -> dict[str, Any]:
    try:
        return {"lr": float(value)}
    except (TypeError, ValueError):
        raise ValueError(f"must be a number, got {value!r}") from None


def _lr_grid(value: Any) -> tuple[Dim, ...]:
    try:
        values = [float(v) for v in (value.split(",") if isinstance(value, str) else value)]
    except (TypeError, ValueError):
        raise ValueError(
            f"must be comma-separated numbers like 1e-4,1e-3,1e-2, got {value!r}"
        ) from None
    if not values:
        raise ValueError(f"must hold at least one number, got {value!r}")
    return (Dim("lr", values=tuple(values)),)


# ----------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Field:
    """One field of a study, or a shorthand that fills one (``target``).

    ``parse`` turns a TOML value (or, with ``repeat``, the list of a flag's
    texts) into the field's value; ``to_cli`` / ``to_toml`` spell a value back.
    """

    name: str
    flag: str
    help: str
    parse: Callable[[Any], Any]
    metavar: str | None = None
    repeat: bool = False
    target: str | None = None
    toml: bool = True
    to_cli: Callable[[Any], list[str]] | None = None
    to_toml: Callable[[Any], Any] | None = None
    choices: Callable[[], Sequence[str]] | None = None

    @property
    def field(self) -> str:
        return self.target or self.name


def _literal(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(_literal(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return repr(value)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


FIELDS: tuple[Field, ...] = (
    Field(
        "tasks",
        "--task",
        "tasks to train, comma-separated (default digits-mlp; see optlab tasks)",
        _names,
        "A,B,...",
        to_cli=lambda v: ["--task", ",".join(v)],
        to_toml=list,
    ),
    Field(
        "suite",
        "--suite",
        f"a named set of tasks: {', '.join(SUITES)}",
        _suite,
        "NAME",
        target="tasks",
    ),
    Field(
        "arms",
        "--arm",
        "an arm: [LABEL=]OPTIMIZER[:NAME=VALUE,NAME~LOW..HIGH[:log],...] (repeatable), e.g. "
        "--arm adabelief --arm 'adabelief-e8=adabelief:eps=1e-8'",
        _arms,
        "SPEC",
        repeat=True,
        to_cli=lambda v: [part for arm in v for part in ("--arm", arm.text())],
        to_toml=lambda v: [arm.to_dict() | {"hparams": _plain(arm.hparams)} for arm in v],
    ),
    Field(
        "optimizers",
        "--optimizers",
        "shorthand: one arm per optimizer with its defaults (default: the twelve core ones)",
        lambda v: arms_from_optimizers(_names(v)),
        "A,B,...",
        target="arms",
    ),
    Field(
        "hparams",
        "--set",
        "fix a hyper-parameter for every arm, e.g. --set eps=1e-8 --set 'betas=(0.9,0.99)' "
        "(repeatable; quote values with parentheses)",
        _hparams,
        "NAME=VALUE",
        repeat=True,
        to_cli=lambda v: [
            p
            for k, x in v.items()
            for p in (("--lr", _literal(x)) if k == "lr" else ("--set", f"{k}={_literal(x)}"))
        ],
        to_toml=_plain,
    ),
    Field("lr", "--lr", "learning rate for every arm", _lr, "LR", target="hparams", toml=False),
    Field(
        "seeds",
        "--seeds",
        "seeds per arm and task, 0..N-1 (default 3)",
        _seeds,
        "N",
        to_cli=lambda v: ["--seeds", str(len(v))] if v == tuple(range(len(v))) else None,
        to_toml=list,
    ),
    Field(
        "epochs",
        "--epochs",
        "epochs per run (default: each task's)",
        _positive_int,
        "N",
        to_cli=lambda v: ["--epochs", str(v)],
        to_toml=int,
    ),
    Field(
        "batch_size",
        "--batch-size",
        "batch size (default: each task's)",
        _positive_int,
        "B",
        to_cli=lambda v: ["--batch-size", str(v)],
        to_toml=int,
    ),
    Field(
        "schedule",
        "--schedule",
        "learning-rate schedule (default constant)",
        _choice(_schedules),
        "NAME",
        to_cli=lambda v: ["--schedule", v],
        to_toml=str,
        choices=_schedules,
    ),
    Field(
        "data_dir",
        "--data-dir",
        "data of file-backed tasks (MNIST, CIFAR)",
        lambda v: str(Path(_text(v)).expanduser().resolve()),
        "D",
        to_cli=lambda v: ["--data-dir", v],
        to_toml=str,
    ),
    Field(
        "task_options",
        "--task-option",
        "a task's option, [TASK.]NAME=VALUE (repeatable; TASK may be left out with one task)",
        _task_options,
        "OPT",
        repeat=True,
        to_cli=lambda v: [
            p
            for t, o in v.items()
            for k, x in o.items()
            for p in ("--task-option", f"{t}.{k}={_literal(x)}")
        ],
        to_toml=_plain,
    ),
    Field(
        "tune",
        "--tune",
        "tune a hyper-parameter per arm and task: NAME=LOW..HIGH[:log|:linear][:POINTS] or "
        "NAME=V1,V2,... (repeatable; 'lr' alone is 1e-4..10 log; 'none' tunes nothing). "
        "Default: lr=1e-4..10:log:6 unless a learning rate is fixed",
        _tune,
        "SPEC",
        repeat=True,
        to_cli=lambda v: [p for d in v for p in ("--tune", d.text())] or ["--tune", "none"],
        to_toml=lambda v: [d.text() for d in v],
    ),
    Field(
        "lr_grid",
        "--lr-grid",
        "shorthand: --tune lr=X,Y,... (an explicit learning-rate grid)",
        _lr_grid,
        "X,Y,...",
        target="tune",
        toml=False,
    ),
    Field(
        "tuner",
        "--tuner",
        "grid (every point of the Cartesian grid) or optuna (TPE, "
        "--trials per arm and task); default grid",
        _choice(lambda: TUNERS),
        "NAME",
        to_cli=lambda v: ["--tuner", v],
        to_toml=str,
        choices=lambda: TUNERS,
    ),
    Field(
        "trials",
        "--trials",
        "Optuna trials per arm and task, the same for every arm (default 20)",
        _positive_int,
        "N",
        to_cli=lambda v: ["--trials", str(v)],
        to_toml=int,
    ),
)

_BY_FLAG = {f.flag: f for f in FIELDS}
_BY_KEY = {f.name: f for f in FIELDS if f.toml}


# ------------------------------------------------------------------ building a study


def study_from_values(given: Mapping[str, Any]) -> StudySpec:
    """A study from field values (already parsed, keyed by field name); the rest default.

    Two spellings of one field (``--arm`` with ``--optimizers``: both kept, the
    shorthand's first; ``--set`` with ``--lr``: merged, a conflict is an error;
    ``--task`` with ``--suite``: an error) are combined here, so every spelling
    obeys the same rules.
    """
    values: dict[str, Any] = {}
    for spelling in FIELDS:
        if spelling.name not in given:
            continue
        value, target = given[spelling.name], spelling.field
        if target not in values:
            values[target] = value
        elif target == "arms":
            values[target] = tuple(value) + tuple(values[target])
        elif target == "hparams":
            for name, item in value.items():
                if name in values[target] and values[target][name] != item:
                    raise ValueError(f"{name} given twice ({values[target][name]!r} and {item!r})")
            values[target] = {**values[target], **value}
        else:
            names = [f.flag for f in FIELDS if f.field == target and f.name in given]
            raise ValueError(f"{' and '.join(names)} exclude each other; give one of them")
    tasks = values.get("tasks", ("digits-mlp",))
    task_options = values.get("task_options", {})
    if "" in task_options:
        if len(tasks) != 1:
            raise ValueError(
                "a task option without a task name needs exactly one task; write TASK.NAME=VALUE"
            )
        task_options = dict(task_options)
        untargeted = task_options.pop("")
        task_options[tasks[0]] = {**untargeted, **task_options.get(tasks[0], {})}
    arms = values.get("arms", arms_from_optimizers(CORE_OPTIMIZERS))
    hparams = values.get("hparams", {})
    if "tune" in values:
        tune = values["tune"]
    else:
        lr_fixed = "lr" in hparams or any("lr" in arm.hparams for arm in arms)
        tune = () if lr_fixed else DEFAULT_TUNE
    return StudySpec(
        tasks=tasks,
        arms=arms,
        hparams=hparams,
        seeds=values.get("seeds", (0, 1, 2)),
        epochs=values.get("epochs"),
        schedule=values.get("schedule", "constant"),
        batch_size=values.get("batch_size"),
        data_dir=values.get("data_dir"),
        task_options=task_options,
        tune=tune,
        tuner=values.get("tuner", "grid"),
        trials=values.get("trials", 20),
    )


# -------------------------------------------------------------------- command line


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that define a study (every row of :data:`FIELDS`)."""
    group = parser.add_argument_group("study (the same fields as a study file; see optlab run)")
    for spelling in FIELDS:
        options: dict[str, Any] = {"metavar": spelling.metavar}
        if spelling.choices is not None:
            options = {"choices": list(spelling.choices())}
        group.add_argument(
            spelling.flag,
            dest=f"study_{spelling.name}",
            action="append" if spelling.repeat else "store",
            help=spelling.help,
            **options,
        )


def study_from_args(args: argparse.Namespace) -> StudySpec:
    """The study the flags describe; ``ValueError`` (one line naming the flag) when wrong."""
    given = {}
    for spelling in FIELDS:
        raw = getattr(args, f"study_{spelling.name}", None)
        if raw is None:
            continue
        try:
            given[spelling.name] = spelling.parse(raw)
        except ValueError as error:
            raise ValueError(f"{spelling.flag}: {error}") from None
    return study_from_values(given)


def compare_command(study: StudySpec, out: str | Path) -> str | None:
    """The ``optlab compare`` command line that reproduces (and resumes) ``study`` in
    ``out``; ``None`` when the study has no command-line spelling (seeds other than
    0..N-1: use its study file)."""
    parts = ["optlab", "compare"]
    default = StudySpec(tasks=(), arms=())
    for spelling in FIELDS:
        if spelling.to_cli is None:
            continue
        value = getattr(study, spelling.name)
        if spelling.name not in ("tasks", "arms", "tune") and value == getattr(
            default, spelling.name
        ):
            continue
        if spelling.name == "arms" and all(
            arm.label == arm.optimizer and not arm.hparams and not arm.tune for arm in value
        ):
            parts += ["--optimizers", ",".join(arm.optimizer for arm in value)]
            continue
        argv = spelling.to_cli(value)
        if argv is None:
            return None
        parts += argv
    parts += ["--out", str(out)]
    return " ".join(shlex.quote(part) for part in parts)


# ---------------------------------------------------------------------- TOML files


def _line_of(text: str, key: str) -> int | None:
    pattern = re.compile(rf"^\s*(\[+\s*)?[\"']?{re.escape(key)}[\"']?\s*(=|\]|\.)", re.MULTILINE)
    match = pattern.search(text)
    return text.count("\n", 0, match.start()) + 1 if match else None


def load_toml(path: str | Path) -> StudySpec:
    """The study a TOML file describes (not yet validated against the catalogue).

    Raises:
        StudyFileError: one line naming the file, the key and its line, the value and
            what is allowed; unknown keys are refused.
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise StudyFileError(f"cannot read study file {str(path)!r}: {error}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise StudyFileError(f"{path}: not valid TOML: {error}") from None
    given = {}
    for key, value in data.items():
        spelling = _BY_KEY.get(key)
        where = f"{path}" + (f" line {_line_of(text, key)}" if _line_of(text, key) else "")
        if spelling is None:
            raise StudyFileError(f"{where}: unknown key {key!r}; valid keys: {', '.join(_BY_KEY)}")
        try:
            given[key] = spelling.parse(value)
        except ValueError as error:
            raise StudyFileError(f"{where}: {key}: {error}") from None
    try:
        return study_from_values(given)
    except ValueError as error:
        raise StudyFileError(f"{path}: {error}") from None


def dump_toml(study: StudySpec) -> str:
    """The study as a TOML file that :func:`load_toml` reads back equal."""
    import tomli_w

    default = StudySpec(tasks=(), arms=())
    data: dict[str, Any] = {}
    tables: dict[str, Any] = {}
    for spelling in FIELDS:
        if spelling.to_toml is None:
            continue
        value = getattr(study, spelling.name)
        if value is None or (
            spelling.name not in ("tasks", "arms", "tune", "seeds")
            and value == getattr(default, spelling.name)
        ):
            continue
        converted = spelling.to_toml(value)
        if spelling.name == "arms":
            for arm in converted:
                if not arm["tune"]:
                    del arm["tune"]
                if not arm["hparams"]:
                    del arm["hparams"]
        (tables if isinstance(converted, dict) else data)[spelling.name] = converted
    header = (
        "# optlab study file: run it with  optlab run FILE --out DIR\n"
        "# (the fields and their meaning: optlab run --help, optlab.lab.studyfile)\n"
    )
    return header + tomli_w.dumps({**data, **tables})
