"""The pieces a study is made of: arms and search dimensions, and their text spellings.

An **arm** (:class:`Arm`) is one contestant: a label, a registry optimizer and
that arm's own hyper-parameters (``adabelief-e8=adabelief:eps=1e-8``),
optionally with hyper-parameters of its own to tune
(``adam:eps~1e-10..1e-6:log``) and per task *family* (:data:`FAMILIES`; a
task's ``family``) hyper-parameters that apply only on tasks of that family
(``adam:gan.betas=(0.5,0.999),image.weight_decay=5e-4``; what the presets of
:mod:`optlab.lab.presets` are made of). A **search dimension** (:class:`Dim`) is one
tuned hyper-parameter: a log or linear range with a number of grid points, or
an explicit list of values (``lr=1e-5..1:log``, ``eps=1e-8,1e-6``). Each has a
canonical text (``text()``) that its ``parse`` reads back: the spelling of
``--arm`` and ``--tune`` on the command line and in study files.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

__all__ = ["DEFAULT_LR_RANGE", "FAMILIES", "SCALES", "Arm", "Dim", "parse_literal"]

#: The learning-rate range ``--tune lr`` searches: 1e-4 ... 10, log scale.
DEFAULT_LR_RANGE: tuple[float, float] = (1e-4, 10.0)

SCALES = ("log", "linear")

#: Task families (``Task.family``): the rows of a recipe table such as the AdaBelief
#: repository's (image classification, LSTM language models, Transformers, GANs) and
#: ``other`` (regressions, the quadratic).
FAMILIES: tuple[str, ...] = ("image", "lstm", "transformer", "gan", "other")
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
    """A hyper-parameter value: a number, True/False, None, a tuple such as (0.9,0.99), or a
    word (``eps_mode=inside``, also quoted: ``eps_mode='inside'``)."""
    raw = raw.strip()
    if raw.lower() in _WORDS:
        return _WORDS[raw.lower()]
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*", raw):
        return raw
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        raise ValueError(
            f"value of {name} must be a Python literal (a number, True/False, a word or a "
            f"tuple such as (0.9,0.99)), got {raw!r}"
        ) from None
    if isinstance(value, list):
        value = tuple(value)
    if not isinstance(value, (int, float, bool, str, tuple)) and value is not None:
        raise ValueError(
            f"value of {name} must be a number, True/False, None, a word or a tuple, got {raw!r}"
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
    the study's), its own search dimensions ``tune`` (replacing the study's of the same
    name) and ``family_hparams``: per task family (:data:`FAMILIES`), hyper-parameters
    fixed on that family's tasks only, under the arm's own ``hparams`` and over the
    study's and the task's recipe; a dimension tuned for the arm replaces the family's
    value (see :meth:`optlab.lab.spec.StudySpec.fixed`)."""

    label: str
    optimizer: str
    hparams: Mapping[str, Any] = field(default_factory=dict)
    tune: tuple[Dim, ...] = ()
    family_hparams: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hparams", _frozen(self.hparams))
        object.__setattr__(self, "tune", tuple(self.tune))
        unknown = sorted(set(self.family_hparams) - set(FAMILIES))
        if unknown:
            raise ValueError(
                f"arm {self.label or self.optimizer}: unknown task family "
                f"{', '.join(map(repr, unknown))}; valid families: {', '.join(FAMILIES)}"
            )
        families = {k: _frozen(v) for k, v in sorted(self.family_hparams.items()) if v}
        object.__setattr__(self, "family_hparams", MappingProxyType(families))

    @classmethod
    def parse(cls, text: str) -> Arm:
        """``[LABEL=]OPTIMIZER[:NAME=VALUE,FAMILY.NAME=VALUE,NAME~RANGE,...]``.

        ``NAME=VALUE`` fixes a hyper-parameter (a Python literal); ``FAMILY.NAME=VALUE``
        fixes it on tasks of that family only (``gan.betas=(0.5,0.999)``);
        ``NAME~RANGE`` tunes it for this arm (``eps~1e-10..1e-6:log``,
        ``eps~1e-8,1e-6``). Without a label the arm is labelled with its own text.
        """
        head, _, tail = text.strip().partition(":")
        label, sep, optimizer = head.partition("=")
        if not sep:
            label, optimizer = "", head
        label, optimizer = label.strip(), optimizer.strip()
        if not optimizer:
            raise ValueError(f"arm expects [LABEL=]OPTIMIZER[:NAME=VALUE,...], got {text!r}")
        hparams: dict[str, Any] = {}
        families: dict[str, dict[str, Any]] = {}
        dims: list[Dim] = []
        for item in _split_top(tail):
            if "~" in item.split("=", 1)[0]:
                name, _, raw = item.partition("~")
                dims.append(Dim.parse(f"{name.strip()}={raw.strip()}"))
                continue
            name, sep, raw = item.partition("=")
            family, dot, name = name.strip().rpartition(".")
            if not sep or not name.isidentifier() or not raw.strip() or (dot and not family):
                raise ValueError(
                    f"arm {text!r}: expected NAME=VALUE, FAMILY.NAME=VALUE or NAME~RANGE, "
                    f"got {item!r}"
                )
            if dot and family not in FAMILIES:
                raise ValueError(
                    f"arm {text!r}: unknown task family {family!r} in {item!r}; valid "
                    f"families: {', '.join(FAMILIES)}"
                )
            target = families.setdefault(family, {}) if dot else hparams
            if name in target:
                raise ValueError(f"arm {text!r}: {family + dot}{name} given twice")
            target[name] = parse_literal(name, raw)
        arm = cls(label, optimizer.lower(), hparams, tuple(dims), families)
        return replace(arm, label=label or arm.text(with_label=False))

    def text(self, *, with_label: bool = True) -> str:
        """The canonical ``--arm`` spelling."""
        items = [f"{name}={_literal(value)}" for name, value in self.hparams.items()]
        items += [
            f"{family}.{name}={_literal(value)}"
            for family, values in self.family_hparams.items()
            for name, value in values.items()
        ]
        items += [dim.text().replace("=", "~", 1) for dim in self.tune]
        body = self.optimizer + (":" + ",".join(items) if items else "")
        if with_label and self.label != self.text(with_label=False):
            return f"{self.label}={body}"
        return body

    def on_family(self, family: str | None) -> Mapping[str, Any]:
        """The hyper-parameters this arm fixes on tasks of ``family`` (none for ``None``)."""
        return self.family_hparams.get(family, MappingProxyType({})) if family else {}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; ``family_hparams`` only when the arm has some (older records stay
        as they were)."""
        data = {
            "label": self.label,
            "optimizer": self.optimizer,
            "hparams": _listed(self.hparams),
            "tune": [dim.text() for dim in self.tune],
        }
        if self.family_hparams:
            data["family_hparams"] = {
                family: _listed(values) for family, values in self.family_hparams.items()
            }
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Arm:
        return cls(
            data["label"],
            data["optimizer"],
            dict(data.get("hparams") or {}),
            tuple(Dim.parse(text) for text in data.get("tune") or ()),
            {family: dict(values) for family, values in (data.get("family_hparams") or {}).items()},
        )


def _listed(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in mapping.items()}


def _literal(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(_literal(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return repr(value)
