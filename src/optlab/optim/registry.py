"""The catalogue: every optlab optimizer described once.

Each :class:`OptimizerSpec` names an optimizer, the class that implements it,
the defaults it overrides (for aliases such as ``nag`` = SGD with Nesterov
momentum 0.9), where its defaults come from and the paper it comes from.
:func:`create_optimizer`, :func:`list_optimizers`, the ``optlab`` command
line and the lab all read this table; adding an optimizer is one module plus
one entry here.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

__all__ = [
    "OptimizerSpec",
    "create_optimizer",
    "get_spec",
    "list_optimizers",
    "optimizer_class",
    "param_groups_without_1d_decay",
]


@dataclass(frozen=True)
class OptimizerSpec:
    """One catalogue entry.

    Attributes:
        name: registry name (lower case), e.g. ``"nag"``.
        target: ``"module:Class"`` implementing it (imported on first use).
        description: one line for tables and ``optlab list``.
        paper: the publication the algorithm comes from.
        defaults_source: where the class defaults come from.
        overrides: defaults this entry changes on top of the class defaults.
    """

    name: str
    target: str
    description: str
    paper: str
    defaults_source: str
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "overrides", MappingProxyType(dict(self.overrides)))

    @property
    def cls(self) -> type[torch.optim.Optimizer]:
        module_name, _, class_name = self.target.partition(":")
        return getattr(importlib.import_module(module_name), class_name)

    def hparam_names(self) -> tuple[str, ...]:
        """Hyper-parameters the class accepts (everything but ``params``)."""
        signature = inspect.signature(self.cls.__init__)
        return tuple(name for name in signature.parameters if name not in self._not_hparams())

    def _not_hparams(self) -> frozenset[str]:
        # torch.optim's capturable / differentiable, taken only switched off, tune nothing.
        return frozenset(("self", "params", *getattr(self.cls, "torch_off_only", ())))

    def defaults(self) -> dict[str, Any]:
        """Every hyper-parameter with the value this entry uses when none is given."""
        signature = inspect.signature(self.cls.__init__)
        values = {
            name: parameter.default
            for name, parameter in signature.parameters.items()
            if name not in self._not_hparams() and parameter.default is not inspect.Parameter.empty
        }
        values.update(self.overrides)
        return values


#: Where the factorial's cells come from: they are this project's ablation, not a paper's.
_FACTORIAL = (
    "optlab's ablation of Adam (Kingma & Ba, ICLR 2015), EAdam (Yuan & Gao, "
    "arXiv:2011.02150) and AdaBelief (Zhuang et al., NeurIPS 2020, arXiv:2010.07468)"
)

_SPECS: tuple[OptimizerSpec, ...] = (
    OptimizerSpec(
        "sgd",
        "optlab.optim.sgd:SGD",
        "stochastic gradient descent",
        "Robbins & Monro, A Stochastic Approximation Method, Ann. Math. Stat. 1951",
        "torch.optim.SGD 2.13",
    ),
    OptimizerSpec(
        "momentum",
        "optlab.optim.sgd:SGD",
        "SGD with heavy-ball momentum 0.9",
        "Polyak, Some methods of speeding up the convergence of iteration methods, 1964",
        "torch.optim.SGD 2.13, momentum=0.9",
        {"momentum": 0.9},
    ),
    OptimizerSpec(
        "nag",
        "optlab.optim.sgd:SGD",
        "SGD with Nesterov momentum 0.9",
        "Sutskever et al., On the importance of initialization and momentum in deep "
        "learning, ICML 2013 (after Nesterov 1983)",
        "torch.optim.SGD 2.13, momentum=0.9, nesterov=True",
        {"momentum": 0.9, "nesterov": True},
    ),
    OptimizerSpec(
        "adagrad",
        "optlab.optim.adagrad:Adagrad",
        "per-coordinate steps from the sum of squared gradients",
        "Duchi, Hazan & Singer, Adaptive Subgradient Methods, JMLR 2011",
        "torch.optim.Adagrad 2.13",
    ),
    OptimizerSpec(
        "adadelta",
        "optlab.optim.adadelta:Adadelta",
        "AdaGrad with decaying averages and unit-correct steps",
        "Zeiler, ADADELTA: An Adaptive Learning Rate Method, arXiv:1212.5701",
        "torch.optim.Adadelta 2.13",
    ),
    OptimizerSpec(
        "rmsprop",
        "optlab.optim.rmsprop:RMSprop",
        "steps scaled by a running RMS of gradients",
        "Tieleman & Hinton, Lecture 6.5 rmsprop, COURSERA: Neural Networks for ML, 2012",
        "torch.optim.RMSprop 2.13",
    ),
    OptimizerSpec(
        "adam",
        "optlab.optim.adam:Adam",
        "adaptive moment estimation",
        "Kingma & Ba, Adam: A Method for Stochastic Optimization, ICLR 2015, arXiv:1412.6980",
        "torch.optim.Adam 2.13",
    ),
    OptimizerSpec(
        "adamw",
        "optlab.optim.adam:AdamW",
        "Adam with decoupled weight decay",
        "Loshchilov & Hutter, Decoupled Weight Decay Regularization, ICLR 2019, arXiv:1711.05101",
        "torch.optim.AdamW 2.13",
    ),
    OptimizerSpec(
        "amsgrad",
        "optlab.optim.adam:Adam",
        "Adam with the running maximum of the second moment",
        "Reddi, Kale & Kumar, On the Convergence of Adam and Beyond, ICLR 2018",
        "torch.optim.Adam 2.13, amsgrad=True",
        {"amsgrad": True},
    ),
    OptimizerSpec(
        "yogi",
        "optlab.optim.yogi:Yogi",
        "Adam with an additive, sign-controlled second-moment update",
        "Zaheer et al., Adaptive Methods for Nonconvex Optimization, NeurIPS 2018",
        "the paper (lr=1e-2, eps=1e-3, initial accumulator 1e-6)",
    ),
    OptimizerSpec(
        "eadam",
        "optlab.optim.eadam:EAdam",
        "Adam with eps accumulated inside the square root",
        "Yuan & Gao, EAdam Optimizer: How epsilon Impact Adam, arXiv:2011.02150",
        "the paper and the authors' code",
    ),
    OptimizerSpec(
        "adabelief",
        "optlab.optim.adabelief:AdaBelief",
        "steps scaled by the belief in the observed gradient",
        "Zhuang et al., AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed "
        "Gradients, NeurIPS 2020, arXiv:2010.07468",
        "adabelief-pytorch 0.2.1",
    ),
    # The belief / eps factorial (optlab's ablation): one class, one entry per cell.
    OptimizerSpec(
        "belief-eps",
        "optlab.optim.belief_eps:BeliefEps",
        "the belief / eps factorial: second moment g*g or (g-m)^2 x eps outside, inside "
        "or accumulated (defaults: the Adam cell)",
        _FACTORIAL,
        "torch.optim.Adam 2.13 (the g*g, outside cell)",
    ),
    OptimizerSpec(
        "g2-outside",
        "optlab.optim.belief_eps:BeliefEps",
        "factorial cell: g*g, eps outside the root (equals adam)",
        _FACTORIAL,
        "torch.optim.Adam 2.13 (eps=1e-8)",
        {"second_moment": "grad_sq", "eps_mode": "outside", "eps": 1e-8},
    ),
    OptimizerSpec(
        "g2-inside",
        "optlab.optim.belief_eps:BeliefEps",
        "factorial cell: g*g, eps inside the root, not stored",
        _FACTORIAL,
        "Adam's, eps=1e-16 (Adam's 1e-8 squared: the same floor of the denominator)",
        {"second_moment": "grad_sq", "eps_mode": "inside", "eps": 1e-16},
    ),
    OptimizerSpec(
        "g2-accum",
        "optlab.optim.belief_eps:BeliefEps",
        "factorial cell: g*g, eps accumulated in the state (equals eadam)",
        _FACTORIAL,
        "EAdam's paper (eps=1e-8)",
        {"second_moment": "grad_sq", "eps_mode": "accumulated", "eps": 1e-8},
    ),
    OptimizerSpec(
        "belief-outside",
        "optlab.optim.belief_eps:BeliefEps",
        "factorial cell: belief (g-m)^2, eps outside the root",
        _FACTORIAL,
        "Adam's (eps=1e-8 outside the root)",
        {"second_moment": "belief", "eps_mode": "outside", "eps": 1e-8},
    ),
    OptimizerSpec(
        "belief-inside",
        "optlab.optim.belief_eps:BeliefEps",
        "factorial cell: belief (g-m)^2, eps inside the root, not stored",
        _FACTORIAL,
        "Adam's, eps=1e-16 (Adam's 1e-8 squared: the same floor of the denominator)",
        {"second_moment": "belief", "eps_mode": "inside", "eps": 1e-16},
    ),
    OptimizerSpec(
        "belief-accum",
        "optlab.optim.belief_eps:BeliefEps",
        "factorial cell: belief (g-m)^2, eps accumulated in the state (adabelief with "
        "rectify=False, without its outside eps)",
        _FACTORIAL,
        "adabelief-pytorch 0.2.1 (eps=1e-16), eps_out=0",
        {"second_moment": "belief", "eps_mode": "accumulated", "eps": 1e-16},
    ),
)

_BY_NAME: dict[str, OptimizerSpec] = {spec.name: spec for spec in _SPECS}


def list_optimizers() -> list[str]:
    """Registry names, in catalogue order (classic first, then the adaptive methods up to
    AdaBelief, then the belief / eps factorial's cells)."""
    return [spec.name for spec in _SPECS]


def get_spec(name: str) -> OptimizerSpec:
    """The entry for ``name`` (case-insensitive); ``ValueError`` listing the valid names."""
    key = name.lower() if isinstance(name, str) else name
    try:
        return _BY_NAME[key]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown optimizer {name!r}; valid names: {', '.join(list_optimizers())}"
        ) from None


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The class behind registry name ``name``."""
    return get_spec(name).cls


def param_groups_without_1d_decay(
    module: torch.nn.Module, weight_decay: float
) -> list[dict[str, Any]]:
    """Two param groups: weights with ``weight_decay``; biases and norm weights (ndim <= 1) without.

    Parameters that do not require grad are left out; empty groups are dropped.
    """
    decay, no_decay = [], []
    for parameter in module.parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


def create_optimizer(
    model_or_params: torch.nn.Module | Iterable[Any],
    name: str,
    *,
    decay_1d_params: bool = False,
    **hparams: Any,
) -> torch.optim.Optimizer:
    """Build the optimizer registered as ``name``.

    Args:
        model_or_params: a module, or parameters / param groups as for torch.optim.
        name: a registry name (see :func:`list_optimizers`).
        decay_1d_params: given a module, also apply weight decay to parameters
            with ``ndim <= 1`` (biases, norm weights). By default they go into a
            group of their own with ``weight_decay=0``.
        **hparams: hyper-parameters; they override the entry's defaults.

    Raises:
        ValueError: unknown name, or a hyper-parameter the optimizer does not take.
    """
    spec = get_spec(name)
    accepted = spec.hparam_names()
    unknown = sorted(set(hparams) - set(accepted))
    if unknown:
        raise ValueError(
            f"optimizer {spec.name!r} does not take {', '.join(map(repr, unknown))}; "
            f"valid hyper-parameters: {', '.join(accepted)}"
        )
    kwargs = {**spec.overrides, **hparams}
    if isinstance(model_or_params, torch.nn.Module):
        if "weight_decay" in accepted and not decay_1d_params:
            weight_decay = kwargs.get("weight_decay", spec.defaults().get("weight_decay", 0.0))
            params: Any = param_groups_without_1d_decay(model_or_params, weight_decay)
        else:
            params = [p for p in model_or_params.parameters() if p.requires_grad]
    else:
        params = model_or_params
    return spec.cls(params, **kwargs)
