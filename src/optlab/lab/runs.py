"""A run is data in, numbers out: :class:`RunSpec` in, :class:`RunResult` out.

These two records are the contract between the lab's parts: a study expands
into RunSpecs, the trainer turns one RunSpec into one RunResult, the store
appends RunResults, and tables, plots and reports read them back. Both are
plain data that round-trip through JSON (``to_dict`` / ``from_dict``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

__all__ = ["RunResult", "RunSpec"]


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    # Lists become tuples so that a spec read back from JSON equals the original.
    items = sorted((mapping or {}).items())
    return MappingProxyType({k: tuple(v) if isinstance(v, list) else v for k, v in items})


def _plain(value: Any) -> Any:
    """JSON-ready copy: mappings to dicts, tuples to lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines one training run.

    Attributes:
        task: task registry name, e.g. ``"digits-mlp"``.
        optimizer: optimizer registry name, e.g. ``"adabelief"``.
        hparams: hyper-parameters given explicitly (the rest take the
            optimizer's registry defaults).
        seed: seeds model initialisation and data order.
        epochs: number of epochs; ``None`` means the task's default.
        schedule: learning-rate schedule by name: ``constant``, ``step``,
            ``cosine`` or ``warmup-cosine``; ``None`` means the task's default
            (constant for most, warmup-cosine for the Transformer).
        batch_size: ``None`` means the task's default.
        data_dir: directory of file-backed tasks' data (MNIST, CIFAR-10).
        task_options: extra task settings (kept for forward compatibility).
    """

    task: str
    optimizer: str
    hparams: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    epochs: int | None = None
    schedule: str | None = None
    batch_size: int | None = None
    data_dir: str | None = None
    task_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hparams", _frozen(self.hparams))
        object.__setattr__(self, "task_options", _frozen(self.task_options))

    def to_dict(self) -> dict[str, Any]:
        # asdict() would deepcopy the read-only mappings, which cannot be copied.
        return _plain({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSpec:
        return cls(**dict(data))

    def key(self) -> str:
        """Stable identifier: the same spec always gives the same key (store look-ups)."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass
class RunResult:
    """What one run produced.

    Attributes:
        spec: the run's specification.
        history: one row per evaluation, each with at least ``epoch`` (float,
            fractional allowed), ``step``, ``examples``, ``lr``, ``train_loss``,
            ``valid_loss``, ``valid_metric`` (the task's metric on its
            validation data: what tuning selects on), ``test_loss``,
            ``metric`` (the task's test metric: what tables report) and
            ``wall_time`` (seconds since the start of training, evaluation
            excluded). Tasks without held-out data (``info["validation"] ==
            "train"``) validate on the training objective over the whole
            training set; see :mod:`optlab.lab.tasks`.
        metric: name of the task's metric (``"accuracy"``, ``"gap"``, ``"loss"``),
            the same for ``valid_metric`` and ``metric``.
        higher_is_better: whether a larger ``metric`` (and ``valid_metric``) is better.
        status: ``"ok"``, or ``"diverged"`` when a loss became NaN/inf.
        seconds_per_epoch: mean training time per epoch (evaluation excluded).
        info: what the run used and where it ran: ``hparams`` (every
            hyper-parameter of the first param group, defaults included: the
            values the run really used), ``epochs``, ``batch_size``,
            ``validation`` (``"held-out"`` or ``"train"``), example counts,
            versions, machine.
    """

    spec: RunSpec
    history: list[dict[str, float]]
    metric: str
    higher_is_better: bool
    status: str = "ok"
    seconds_per_epoch: float = float("nan")
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_dict(),
            "history": [dict(row) for row in self.history],
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "status": self.status,
            "seconds_per_epoch": self.seconds_per_epoch,
            "info": _plain(self.info),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunResult:
        data = dict(data)
        data["spec"] = RunSpec.from_dict(data["spec"])
        return cls(**data)
