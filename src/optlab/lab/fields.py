"""The fields of a study: one row per field (or shorthand), read by every spelling.

Each :class:`Field` names the study attribute it fills, its command-line flag,
its help, how to parse a value (a TOML value, or the list of a repeated flag's
texts) and how to spell a value back as flags (``to_cli``) and as TOML
(``to_toml``). :mod:`optlab.lab.studyfile` builds the ``optlab compare``
flags, reads study files and writes the reproduce command from this table
alone, so the spellings cannot drift apart. Shorthands (``--optimizers``,
``--preset``, ``--suite``, ``--lr``, ``--lr-grid``) are rows whose ``target`` is the field
they fill.

:data:`EXECUTION_FIELDS` are the settings of *where* a study runs
(``executor``, ``ray_address``, ``gpus_per_run``): flags of ``optlab
compare`` / ``run`` / ``ablate`` and keys of a study file, but not part of the
study: they do not enter its identity (the default results directory, the
run keys, the Optuna studies) and change no result, so a study begun on this
machine resumes on a Ray cluster and the other way round. A flag overrides the
file's key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from optlab.lab.arms import _literal
from optlab.lab.presets import list_presets, preset_arms
from optlab.lab.runs import _plain
from optlab.lab.spec import (
    SUITES,
    TUNERS,
    Arm,
    Dim,
    arms_from_optimizers,
    parse_literal,
)

__all__ = ["BY_KEY", "EXECUTION_BY_KEY", "EXECUTION_FIELDS", "EXECUTORS", "FIELDS", "Field"]


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


def _non_negative(value: Any) -> float:
    given = value
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"must be a number >= 0, got {given!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"must be a number >= 0, got {given!r}")
    return float(value)


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


def _assignment(text: str, *, dotted: bool = False) -> tuple[str, Any]:
    """``name=value``; with ``dotted``, ``name`` may be ``TASK.NAME`` (task names hold
    hyphens)."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    option = name.rpartition(".")[2] if dotted else name
    if not sep or not option.isidentifier() or not raw.strip():
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
            keys = {"label", "optimizer", "hparams", "tune", "family_hparams"}
            unknown = sorted(set(item) - keys)
            if unknown or "optimizer" not in item:
                raise ValueError(
                    "an arm table takes optimizer (required), label, hparams, tune, "
                    "family_hparams; got " + ", ".join(map(repr, unknown or ["no optimizer"]))
                )
            families = item.get("family_hparams") or {}
            if not isinstance(families, Mapping) or not all(
                isinstance(v, Mapping) for v in families.values()
            ):
                raise ValueError(
                    "an arm's family_hparams is a table per task family, e.g. "
                    "family_hparams.gan = { betas = [0.5, 0.999] }"
                )
            arm = Arm(
                str(item.get("label", "")),
                _text(item["optimizer"]).lower(),
                _hparams(item.get("hparams") or {}),
                tuple(Dim.parse(text) for text in item.get("tune") or ()),
                {family: _hparams(values) for family, values in families.items()},
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
        name, parsed = _assignment(item, dotted=True)
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


def _per_task_flags(flag: str) -> Callable[[Mapping[str, Mapping[str, Any]]], list[str]]:
    """``--task-option`` / ``--task-set`` items spelling back a per-task table."""

    def spell(table: Mapping[str, Mapping[str, Any]]) -> list[str]:
        return [
            part
            for task, settings in table.items()
            for name, value in settings.items()
            for part in (flag, f"{task}.{name}={_literal(value)}")
        ]

    return spell


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
        to_toml=lambda v: [_plain(arm.to_dict()) for arm in v],
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
        "preset",
        "--preset",
        "shorthand: the arms of a named preset, with hyper-parameters per task family "
        f"(see optlab presets): {', '.join(list_presets())}",
        lambda v: preset_arms(_text(v)),
        "NAME",
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
        "learning-rate schedule (default: each task's, constant but for the Transformer's "
        "warmup-cosine)",
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
        to_cli=_per_task_flags("--task-option"),
        to_toml=_plain,
    ),
    Field(
        "task_hparams",
        "--task-set",
        "fix a hyper-parameter on one task for every arm whose optimizer has it, "
        "TASK.NAME=VALUE (repeatable), e.g. a GAN recipe: --task-set "
        "'gan-ring.betas=(0.5,0.999)'; an arm's own value wins",
        _task_options,
        "SET",
        repeat=True,
        to_cli=_per_task_flags("--task-set"),
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

BY_KEY = {f.name: f for f in FIELDS if f.toml}

# ------------------------------------------------------------ where a study runs

#: ``local``: this machine (``--jobs`` workers); ``ray``: a Ray cluster.
EXECUTORS = ("local", "ray")

EXECUTION_FIELDS: tuple[Field, ...] = (
    Field(
        "executor",
        "--executor",
        "where runs train: local (this machine, --jobs workers) or ray (one Ray task per "
        "run on a Ray cluster, see --ray-address; pip install 'optlab[ray]'); default local. "
        "Results do not depend on it",
        _choice(lambda: EXECUTORS),
        "NAME",
        to_toml=str,
        choices=lambda: EXECUTORS,
    ),
    Field(
        "ray_address",
        "--ray-address",
        "with --executor ray: auto (RAY_ADDRESS, or the cluster this machine joined with ray "
        "start), HOST:PORT (the head, from a node of the cluster) or ray://HOST:10001 (Ray "
        "Client, from anywhere); default: start a local Ray instance",
        _text,
        "ADDRESS",
        to_toml=str,
    ),
    Field(
        "gpus_per_run",
        "--gpus-per-run",
        "with --executor ray: GPUs each run asks for (a fraction shares a GPU) and trains on; "
        "default 0 (CPU)",
        _non_negative,
        "G",
        to_toml=float,
    ),
)

EXECUTION_BY_KEY = {f.name: f for f in EXECUTION_FIELDS}
