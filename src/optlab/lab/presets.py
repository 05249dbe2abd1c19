"""Named sets of arms: ``optlab compare --preset NAME`` (``preset = "NAME"`` in a study file).

A :class:`Preset` is a tuple of :class:`~optlab.lab.arms.Arm` whose
hyper-parameters are given per task family (``Arm.family_hparams``; a task's
``family``: image, lstm, transformer, gan, other), with the source of every
family's values (``Preset.sources``), so a report can say where a number came
from. On a task of a family a preset has no values for, an arm runs at its
registry defaults.

``adabelief-paper`` is the comparison of the AdaBelief paper (Zhuang et al.,
NeurIPS 2020): SGD with momentum, Adam, AdamW, Yogi, AdaBound, RAdam, MSVAG,
Fromage and AdaBelief, with the hyper-parameters of the authors' repository
(github.com/juntang-zhuang/Adabelief-Optimizer at 2855178: the README's table
"Hyper-parameters in PyTorch" for AdaBelief, the experiment scripts of
``PyTorch_Experiments`` for the others, as the scripts apply them).

The paper tunes the learning rate per optimizer: with a preset, ``--tune`` (by
default lr over 1e-4 ... 10) replaces the families' learning rates; ``--tune
none`` runs the recommended values as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from optlab.lab.arms import FAMILIES, Arm

__all__ = ["PRESETS", "Preset", "get_preset", "list_presets", "preset_arms"]


@dataclass(frozen=True)
class Preset:
    """A named set of arms with per-family hyper-parameters.

    Attributes:
        name: what ``--preset`` takes.
        description: one line for ``optlab presets``.
        arms: the arms, in report order.
        sources: per task family, where its values come from (families without an
            entry: the optimizers' registry defaults).
    """

    name: str
    description: str
    arms: tuple[Arm, ...]
    sources: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.sources) - set(FAMILIES))
        if unknown:
            raise ValueError(f"preset {self.name}: unknown families {', '.join(unknown)}")
        object.__setattr__(self, "arms", tuple(self.arms))
        object.__setattr__(self, "sources", MappingProxyType(dict(self.sources)))


_REPO = "juntang-zhuang/Adabelief-Optimizer@2855178"
_ADAM = (0.9, 0.999)
_GAN = (0.5, 0.999)

# label: (registry optimizer, {family: hyper-parameters}); see the sources below.
_ADABELIEF_PAPER: dict[str, tuple[str, dict[str, dict[str, Any]]]] = {
    "sgd": (
        "momentum",
        {
            "image": {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
            "lstm": {"lr": 30.0, "momentum": 0.0, "weight_decay": 1.2e-6},
            "transformer": {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
            "gan": {"lr": 2e-4, "momentum": 0.0, "weight_decay": 0.0},
        },
    ),
    "adam": (
        "adam",
        {
            "image": {"lr": 1e-3, "betas": _ADAM, "eps": 1e-8, "weight_decay": 5e-4},
            "lstm": {"lr": 1e-3, "betas": _ADAM, "eps": 1e-8, "weight_decay": 1.2e-6},
            "transformer": {"lr": 5e-4, "betas": _ADAM, "eps": 1e-8, "weight_decay": 1e-4},
            "gan": {"lr": 2e-4, "betas": _GAN, "eps": 1e-8, "weight_decay": 0.0},
        },
    ),
    "adamw": (
        "adamw",
        {
            "image": {"lr": 1e-3, "betas": _ADAM, "eps": 1e-8, "weight_decay": 1e-2},
            "lstm": {"lr": 1e-3, "betas": _ADAM, "eps": 1e-8, "weight_decay": 1.2e-6},
            "transformer": {"lr": 5e-4, "betas": _ADAM, "eps": 1e-8, "weight_decay": 1e-4},
            "gan": {"lr": 2e-4, "betas": _GAN, "eps": 1e-8, "weight_decay": 1e-2},
        },
    ),
    "yogi": (
        "yogi",
        {
            "image": {"lr": 1e-3, "betas": _ADAM, "eps": 1e-3, "weight_decay": 5e-4},
            "lstm": {"lr": 1e-2, "betas": _ADAM, "eps": 1e-3, "weight_decay": 1.2e-6},
            "transformer": {"lr": 5e-4, "betas": _ADAM, "eps": 1e-3, "weight_decay": 1e-4},
            "gan": {"lr": 2e-4, "betas": _GAN, "eps": 1e-8, "weight_decay": 0.0},
        },
    ),
    "adabound": (
        "adabound",
        {
            "image": {
                "lr": 1e-3,
                "betas": _ADAM,
                "final_lr": 0.1,
                "gamma": 1e-3,
                "weight_decay": 5e-4,
            },
            "lstm": {"lr": 1e-2, "final_lr": 30.0, "gamma": 1e-3, "weight_decay": 1.2e-6},
            "transformer": {
                "lr": 5e-4,
                "betas": _ADAM,
                "final_lr": 0.1,
                "gamma": 1e-3,
                "weight_decay": 1e-4,
            },
            "gan": {"lr": 2e-4, "betas": _GAN, "eps": 1e-8, "final_lr": 1e-2, "weight_decay": 0.0},
        },
    ),
    "radam": (
        "radam",
        {
            "image": {
                "lr": 1e-3,
                "betas": _ADAM,
                "eps": 1e-8,
                "weight_decay": 5e-4,
                "decoupled_weight_decay": True,
            },
            "lstm": {"lr": 1e-3, "weight_decay": 1.2e-6, "decoupled_weight_decay": True},
            "transformer": {
                "lr": 5e-4,
                "betas": _ADAM,
                "eps": 1e-8,
                "weight_decay": 1e-4,
                "decoupled_weight_decay": True,
            },
            "gan": {"lr": 2e-4, "betas": _GAN, "eps": 1e-8, "weight_decay": 0.0},
        },
    ),
    "msvag": (
        "msvag",
        {
            "image": {"lr": 0.1, "beta": 0.9, "weight_decay": 5e-4},
            "lstm": {"lr": 30.0, "beta": 0.9, "weight_decay": 1.2e-6},
            "transformer": {"lr": 0.1, "beta": 0.9, "weight_decay": 1e-4},
            "gan": {"lr": 2e-4, "beta": 0.5, "weight_decay": 0.0},
        },
    ),
    "fromage": (
        "fromage",
        {
            "image": {"lr": 1e-2},
            "lstm": {"lr": 1e-2},
            "transformer": {"lr": 1e-2},
            "gan": {"lr": 2e-4},
        },
    ),
    "adabelief": (
        "adabelief",
        {
            "image": {
                "lr": 1e-3,
                "betas": _ADAM,
                "eps": 1e-8,
                "weight_decay": 5e-4,
                "weight_decouple": False,
                "rectify": False,
            },
            "lstm": {
                "lr": 1e-3,
                "betas": _ADAM,
                "eps": 1e-16,
                "weight_decay": 1.2e-6,
                "weight_decouple": False,
                "rectify": False,
            },
            "transformer": {
                "lr": 5e-4,
                "betas": _ADAM,
                "eps": 1e-16,
                "weight_decay": 1e-4,
                "weight_decouple": True,
                "rectify": True,
            },
            "gan": {
                "lr": 2e-4,
                "betas": _GAN,
                "eps": 1e-12,
                "weight_decay": 0.0,
                "rectify": False,
            },
        },
    ),
}

_ADABELIEF_SOURCES = {
    "image": (
        f"{_REPO}: AdaBelief from the README table, row Cifar (lr 1e-3, eps 1e-8, weight "
        "decay 5e-4, weight_decouple and rectify False); the others from "
        "PyTorch_Experiments/classification_cifar10 (main.py create_optimizer and the curve "
        "files' names): SGD lr 0.1 momentum 0.9, Adam/RAdam/Yogi lr 1e-3, Yogi eps 1e-3 (its "
        "class default), AdaBound lr 1e-3 final_lr 0.1 gamma 1e-3, MSVAG lr 0.1, Fromage lr "
        "1e-2 (no weight decay), weight decay 5e-4 (L2; RAdam's decoupled, as the "
        "repository's RAdam.py applies it), AdamW 1e-2 decoupled"
    ),
    "lstm": (
        f"{_REPO}: README row LSTM-1layer for AdaBelief (lr 1e-3, eps 1e-16, weight decay "
        "1.2e-6; text-lstm has one layer by default: the 2-3 layer row has lr 1e-2, eps "
        "1e-12), the others from PyTorch_Experiments/LSTM/run_all_layer1.py as main.py "
        "applies it (Adam/AdamW/RAdam get no eps there: their default 1e-8): SGD without "
        "momentum lr 30, Adam/AdamW/RAdam lr 1e-3, Yogi/AdaBound lr 1e-2, AdaBound final_lr "
        "30, MSVAG lr 30, weight decay 1.2e-6; Fromage has no LSTM run there: lr 1e-2 as on "
        "CIFAR"
    ),
    "transformer": (
        f"{_REPO}: AdaBelief from the README table, row Transformer (lr 5e-4, eps 1e-16, "
        "weight decay 1e-4, weight_decouple and rectify True); the repository has no "
        "Transformer experiment for the others: the adaptive methods take that row's lr and "
        "weight decay with their CIFAR settings, SGD, MSVAG and Fromage their CIFAR lr "
        "(an assumption of optlab's, not the repository's)"
    ),
    "gan": (
        f"{_REPO}: AdaBelief from the README table, row GAN (small) (lr 2e-4, betas (0.5, "
        "0.999), eps 1e-12, no weight decay, rectify False); the others from "
        "PyTorch_Experiments/wgan/main.py's defaults as it applies them: lr 2e-4 for every "
        "optimizer, betas (0.5, 0.999) (MSVAG's beta 0.5), eps 1e-8, SGD without momentum, "
        "AdaBound final_lr 1e-2, no weight decay but AdamW's class default 1e-2"
    ),
    "other": "no recommendation in the repository: every arm at its registry defaults",
}

PRESETS: Mapping[str, Preset] = MappingProxyType(
    {
        "adabelief-paper": Preset(
            "adabelief-paper",
            "the AdaBelief paper's nine optimizers with its repository's hyper-parameters "
            "per task family",
            tuple(
                Arm(label, optimizer, family_hparams=families)
                for label, (optimizer, families) in _ADABELIEF_PAPER.items()
            ),
            _ADABELIEF_SOURCES,
        ),
    }
)


def list_presets() -> list[str]:
    return list(PRESETS)


def get_preset(name: str) -> Preset:
    """The preset called ``name``; ``ValueError`` listing the valid names."""
    try:
        return PRESETS[name.strip().lower()]
    except (KeyError, AttributeError):
        raise ValueError(
            f"unknown preset {name!r}; valid presets: {', '.join(list_presets())}"
        ) from None


def preset_arms(name: str) -> tuple[Arm, ...]:
    """The arms of preset ``name`` (``--preset``)."""
    return get_preset(name).arms
