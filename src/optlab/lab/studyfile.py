"""One definition of a study's fields, two spellings: command-line flags and TOML files.

:data:`optlab.lab.fields.FIELDS` is the table every spelling reads: ``optlab compare`` builds its
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
    # family_hparams.gan = { betas = [0.5, 0.999] }   # on tasks of that family only
    preset = "adabelief-paper"                 # a preset's arms (before the arms above)
    [hparams]                                  # fixed for every arm
    weight_decay = 0.0
    [task_options.digits-mlp]
    hidden = [128]
    [task_hparams.gan-ring]                    # fixed on one task, for arms that have it
    betas = [0.5, 0.999]

A study file may also say where it runs (:data:`~optlab.lab.fields.EXECUTION_FIELDS`;
not part of the study, see :func:`execution_settings`)::

    executor = "ray"
    ray_address = "auto"
    gpus_per_run = 0.5

A bad file gives one line: the file, the key and its line, the value and what
is allowed (:class:`StudyFileError`).
"""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from optlab.lab.fields import BY_KEY, EXECUTION_BY_KEY, EXECUTION_FIELDS, FIELDS
from optlab.lab.spec import (
    CORE_OPTIMIZERS,
    DEFAULT_LR_RANGE,
    Dim,
    StudySpec,
    arms_from_optimizers,
)

__all__ = [
    "DEFAULT_TUNE",
    "FIELDS",
    "STUDY_TOML",
    "StudyFileError",
    "add_execution_arguments",
    "add_study_arguments",
    "compare_command",
    "dump_toml",
    "execution_from_args",
    "execution_settings",
    "load_study_file",
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


# ------------------------------------------------------------------ building a study


def study_from_values(given: Mapping[str, Any]) -> StudySpec:
    """A study from field values (already parsed, keyed by field name); the rest default.

    Two spellings of one field (``--arm`` with ``--optimizers``: both kept, the
    shorthand's first; ``--set`` with ``--lr``: merged, a conflict is an error;
    ``--tune`` with ``--lr-grid``: the grid is the lr dimension, replacing a bare
    ``--tune lr``, a conflict with another lr range is an error; ``--task`` with
    ``--suite``: an error) are combined here, so every spelling obeys the same rules.
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
        elif target == "tune":
            bare_lr = Dim.parse("lr")
            lr = [dim for dim in values[target] if dim.name == "lr"]
            if lr and lr[0] != bare_lr:
                raise ValueError(
                    f"--tune {lr[0].text()} and --lr-grid both give the lr range; give one"
                )
            values[target] = tuple(d for d in values[target] if d.name != "lr") + tuple(value)
        elif target == "hparams":
            for name, item in value.items():
                if name in values[target] and values[target][name] != item:
                    raise ValueError(f"{name} given twice ({values[target][name]!r} and {item!r})")
            values[target] = {**values[target], **value}
        else:
            names = [f.flag for f in FIELDS if f.field == target and f.name in given]
            raise ValueError(f"{' and '.join(names)} exclude each other; give one of them")
    tasks = values.get("tasks", ("digits-mlp",))
    per_task = {}
    for name in ("task_options", "task_hparams"):
        table = dict(values.get(name, {}))
        if "" in table:
            if len(tasks) != 1:
                raise ValueError(
                    f"{name}: a setting without a task name needs exactly one task; write "
                    "TASK.NAME=VALUE"
                )
            untargeted = table.pop("")
            table[tasks[0]] = {**untargeted, **table.get(tasks[0], {})}
        per_task[name] = table
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
        schedule=values.get("schedule"),
        batch_size=values.get("batch_size"),
        data_dir=values.get("data_dir"),
        task_options=per_task["task_options"],
        task_hparams=per_task["task_hparams"],
        tune=tune,
        tuner=values.get("tuner", "grid"),
        trials=values.get("trials", 20),
    )


# -------------------------------------------------------------------- command line


def _add_flags(group: Any, fields: Any, prefix: str) -> None:
    for spelling in fields:
        options: dict[str, Any] = {"metavar": spelling.metavar}
        if spelling.choices is not None:
            options = {"choices": list(spelling.choices())}
        group.add_argument(
            spelling.flag,
            dest=f"{prefix}_{spelling.name}",
            action="append" if spelling.repeat else "store",
            help=spelling.help,
            **options,
        )


def _parsed_flags(args: argparse.Namespace, fields: Any, prefix: str) -> dict[str, Any]:
    """The values of the flags given, parsed; ``ValueError`` naming the flag."""
    given = {}
    for spelling in fields:
        raw = getattr(args, f"{prefix}_{spelling.name}", None)
        if raw is None:
            continue
        try:
            given[spelling.name] = spelling.parse(raw)
        except ValueError as error:
            raise ValueError(f"{spelling.flag}: {error}") from None
    return given


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that define a study (every row of :data:`FIELDS`)."""
    group = parser.add_argument_group("study (the same fields as a study file; see optlab run)")
    _add_flags(group, FIELDS, "study")


def add_execution_arguments(group: Any) -> None:
    """The flags of :data:`~optlab.lab.fields.EXECUTION_FIELDS` (into an argument group)."""
    _add_flags(group, EXECUTION_FIELDS, "exec")


def execution_settings(given: Mapping[str, Any]) -> dict[str, Any]:
    """Every execution setting, defaults filled in: ``executor`` (``"local"``),
    ``ray_address`` (``None``: a local Ray instance), ``gpus_per_run`` (0.0).

    ``ValueError`` (one line naming the flag) when a Ray setting is given without
    ``executor = "ray"``.
    """
    settings = {"executor": "local", "ray_address": None, "gpus_per_run": 0.0, **given}
    if settings["executor"] != "ray":
        for name in ("ray_address", "gpus_per_run"):
            if given.get(name):
                flag = EXECUTION_BY_KEY[name].flag
                raise ValueError(f'{flag} goes with --executor ray (executor = "ray")')
    return settings


def execution_from_args(
    args: argparse.Namespace, from_file: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The execution settings: the flags over the study file's keys over the defaults."""
    return execution_settings(
        {**(from_file or {}), **_parsed_flags(args, EXECUTION_FIELDS, "exec")}
    )


def study_from_args(args: argparse.Namespace) -> StudySpec:
    """The study the flags describe; ``ValueError`` (one line naming the flag) when wrong."""
    return study_from_values(_parsed_flags(args, FIELDS, "study"))


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
        if spelling.name == "arms":
            preset, value = _preset_prefix(value)
            parts += ["--preset", preset] if preset else []
            if not value:
                continue
        if spelling.name == "arms" and all(
            arm.label == arm.optimizer
            and not arm.hparams
            and not arm.tune
            and not arm.family_hparams
            for arm in value
        ):
            parts += ["--optimizers", ",".join(arm.optimizer for arm in value)]
            continue
        argv = spelling.to_cli(value)
        if argv is None:
            return None
        parts += argv
    parts += ["--out", str(out)]
    return " ".join(shlex.quote(part) for part in parts)


def _preset_prefix(arms: tuple[Any, ...]) -> tuple[str | None, tuple[Any, ...]]:
    """A preset whose arms ``arms`` begins with (``--preset`` puts them first), and the
    arms after them; ``(None, arms)`` when none."""
    from optlab.lab.presets import PRESETS

    for name, preset in PRESETS.items():
        if tuple(arms[: len(preset.arms)]) == preset.arms:
            return name, tuple(arms[len(preset.arms) :])
    return None, tuple(arms)


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
    return load_study_file(path)[0]


def load_study_file(path: str | Path) -> tuple[StudySpec, dict[str, Any]]:
    """The study a TOML file describes and the execution keys it gives (parsed, not
    defaulted: see :func:`execution_settings`); errors as :func:`load_toml`."""
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
    given: dict[str, Any] = {}
    execution: dict[str, Any] = {}
    for key, value in data.items():
        spelling = BY_KEY.get(key) or EXECUTION_BY_KEY.get(key)
        where = f"{path}" + (f" line {_line_of(text, key)}" if _line_of(text, key) else "")
        if spelling is None:
            keys = ", ".join([*BY_KEY, *EXECUTION_BY_KEY])
            raise StudyFileError(f"{where}: unknown key {key!r}; valid keys: {keys}")
        try:
            parsed = spelling.parse(value)
        except ValueError as error:
            raise StudyFileError(f"{where}: {key}: {error}") from None
        (execution if key in EXECUTION_BY_KEY else given)[key] = parsed
    try:
        return study_from_values(given), execution
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
