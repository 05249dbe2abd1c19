"""The catalogue: every optimizer optlab knows, described once, and open to yours.

Each :class:`OptimizerSpec` names an optimizer, the class that implements it,
the defaults it overrides (for aliases such as ``nag`` = SGD with Nesterov
momentum 0.9), where its defaults come from, the paper it comes from and its
tags (``core``: the optimizers of the lab's default study).
:func:`create_optimizer`, :func:`list_optimizers`, ``optlab list``, the lab
(``optlab compare``), the step-speed benchmark and the test grids all read
this registry. Adding an optimizer to optlab is its module, its entry in
``_SPECS`` below and its oracle test.

The registry lists, in this order:

- optlab's own entries (``_SPECS``), whose modules are imported on first use;
- the entries of installed packages, from the entry-point group
  ``optlab.optimizers`` (:data:`ENTRY_POINT_GROUP`), loaded once: on the first
  listing, the first lookup of a name not registered yet, or the first
  :func:`register_optimizer`;
- yours, from :func:`register_optimizer`, in the order they were made.

A target is a class or ``"module:Class"``. Every entry but optlab's own is
imported and checked when it is registered (so a typo fails there, and every
listed entry can be built); optlab's own are imported on first use.

An entry point names one of: an ``Optimizer`` subclass (registered under the
entry point's name, described by the first line of its docstring), an
:class:`OptimizerSpec` (registered under the spec's name), or a function that
takes no arguments and returns a spec or an iterable of specs. In a
package's ``pyproject.toml``::

    [project.entry-points."optlab.optimizers"]
    lion = "my_package.lion:Lion"
    my-variants = "my_package.lion:optlab_specs"

An entry point that cannot be registered (it does not import, names something
else, a name that is taken or malformed) is skipped with an
:class:`OptimizerEntryPointWarning` naming it and its distribution; the other
entries are not affected. Entry points never replace an entry; optlab's own
entries are never replaced nor removed.

Processes: the lab's ``--jobs N > 1`` trains in *spawned* worker processes,
which import optlab afresh. They see optlab's entries, installed entry points
and registrations made while a module is imported (spawn re-imports the main
script as ``__mp_main__``, so a :func:`register_optimizer` call at the top
level of the script counts), but not registrations made at run time in the
parent (under ``if __name__ == "__main__":``, in a function, in a test): such
an optimizer trains with ``--jobs 1`` only. A worker that meets a name it does
not know says so. Forked processes inherit the parent's registry.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import inspect
import re
import sys
import threading
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

__all__ = [
    "ENTRY_POINT_GROUP",
    "OptimizerEntryPointWarning",
    "OptimizerSpec",
    "create_optimizer",
    "get_spec",
    "list_optimizers",
    "optimizer_class",
    "param_groups_without_1d_decay",
    "register_optimizer",
    "unregister_optimizer",
]

#: The entry-point group installed packages declare their optimizers in.
ENTRY_POINT_GROUP = "optlab.optimizers"

#: Registry names and tags: lower-case identifiers, dashes allowed between words.
_NAME = re.compile(r"[a-z][a-z0-9_]*(?:-[a-z0-9_]+)*")
_TARGET = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
#: The origin of optlab's own entries.
_BUILTIN = "optlab"
_CORE = ("core",)


class OptimizerEntryPointWarning(RuntimeWarning):
    """An entry point of the ``optlab.optimizers`` group was skipped (the message says why)."""


@dataclass(frozen=True)
class OptimizerSpec:
    """One catalogue entry.

    Attributes:
        name: registry name: a lower-case identifier, dashes allowed (``"nag"``, ``"g2-inside"``).
        target: the ``torch.optim.Optimizer`` subclass implementing it, or
            ``"module:Class"`` naming it.
        description: one line for tables and ``optlab list``.
        paper: the publication the algorithm comes from.
        defaults_source: where the class defaults come from.
        overrides: defaults this entry changes on top of the class defaults.
        tags: labels for selecting entries (:func:`list_optimizers`); ``core`` marks
            the optimizers of the lab's default study.
        origin: who registered it, set by the registry: ``"optlab"`` for optlab's
            own, else the entry point or the module that called
            :func:`register_optimizer`.
    """

    name: str
    target: str | type[torch.optim.Optimizer]
    description: str = ""
    paper: str = ""
    defaults_source: str = ""
    overrides: Mapping[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    origin: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "overrides", MappingProxyType(dict(self.overrides)))
        tags = (self.tags,) if isinstance(self.tags, str) else tuple(self.tags)
        object.__setattr__(self, "tags", tags)

    @property
    def builtin(self) -> bool:
        """One of optlab's own entries."""
        return self.origin == _BUILTIN

    @property
    def target_name(self) -> str:
        """The target as ``"module:Class"`` (also for a class)."""
        if isinstance(self.target, str):
            return self.target
        return f"{self.target.__module__}:{self.target.__qualname__}"

    @property
    def cls(self) -> type[torch.optim.Optimizer]:
        if isinstance(self.target, str):
            return _import_target(self.name, self.target)
        return self.target

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
        tags=_CORE,
    ),
    OptimizerSpec(
        "momentum",
        "optlab.optim.sgd:SGD",
        "SGD with heavy-ball momentum 0.9",
        "Polyak, Some methods of speeding up the convergence of iteration methods, 1964",
        "torch.optim.SGD 2.13, momentum=0.9",
        {"momentum": 0.9},
        tags=_CORE,
    ),
    OptimizerSpec(
        "nag",
        "optlab.optim.sgd:SGD",
        "SGD with Nesterov momentum 0.9",
        "Sutskever et al., On the importance of initialization and momentum in deep "
        "learning, ICML 2013 (after Nesterov 1983)",
        "torch.optim.SGD 2.13, momentum=0.9, nesterov=True",
        {"momentum": 0.9, "nesterov": True},
        tags=_CORE,
    ),
    OptimizerSpec(
        "adagrad",
        "optlab.optim.adagrad:Adagrad",
        "per-coordinate steps from the sum of squared gradients",
        "Duchi, Hazan & Singer, Adaptive Subgradient Methods, JMLR 2011",
        "torch.optim.Adagrad 2.13",
        tags=_CORE,
    ),
    OptimizerSpec(
        "adadelta",
        "optlab.optim.adadelta:Adadelta",
        "AdaGrad with decaying averages and unit-correct steps",
        "Zeiler, ADADELTA: An Adaptive Learning Rate Method, arXiv:1212.5701",
        "torch.optim.Adadelta 2.13",
        tags=_CORE,
    ),
    OptimizerSpec(
        "rmsprop",
        "optlab.optim.rmsprop:RMSprop",
        "steps scaled by a running RMS of gradients",
        "Tieleman & Hinton, Lecture 6.5 rmsprop, COURSERA: Neural Networks for ML, 2012",
        "torch.optim.RMSprop 2.13",
        tags=_CORE,
    ),
    OptimizerSpec(
        "adam",
        "optlab.optim.adam:Adam",
        "adaptive moment estimation",
        "Kingma & Ba, Adam: A Method for Stochastic Optimization, ICLR 2015, arXiv:1412.6980",
        "torch.optim.Adam 2.13",
        tags=_CORE,
    ),
    OptimizerSpec(
        "adamw",
        "optlab.optim.adam:AdamW",
        "Adam with decoupled weight decay",
        "Loshchilov & Hutter, Decoupled Weight Decay Regularization, ICLR 2019, arXiv:1711.05101",
        "torch.optim.AdamW 2.13",
        tags=_CORE,
    ),
    OptimizerSpec(
        "amsgrad",
        "optlab.optim.adam:Adam",
        "Adam with the running maximum of the second moment",
        "Reddi, Kale & Kumar, On the Convergence of Adam and Beyond, ICLR 2018",
        "torch.optim.Adam 2.13, amsgrad=True",
        {"amsgrad": True},
        tags=_CORE,
    ),
    OptimizerSpec(
        "yogi",
        "optlab.optim.yogi:Yogi",
        "Adam with an additive, sign-controlled second-moment update",
        "Zaheer et al., Adaptive Methods for Nonconvex Optimization, NeurIPS 2018",
        "the paper (lr=1e-2, eps=1e-3, initial accumulator 1e-6)",
        tags=_CORE,
    ),
    OptimizerSpec(
        "eadam",
        "optlab.optim.eadam:EAdam",
        "Adam with eps accumulated inside the square root",
        "Yuan & Gao, EAdam Optimizer: How epsilon Impact Adam, arXiv:2011.02150",
        "the paper and the authors' code",
        tags=_CORE,
    ),
    OptimizerSpec(
        "adabelief",
        "optlab.optim.adabelief:AdaBelief",
        "steps scaled by the belief in the observed gradient",
        "Zhuang et al., AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed "
        "Gradients, NeurIPS 2020, arXiv:2010.07468",
        "adabelief-pytorch 0.2.1",
        tags=_CORE,
    ),
    # The AdaBelief paper's comparison set, the large-batch methods and today's favourites.
    OptimizerSpec(
        "radam",
        "optlab.optim.radam:RAdam",
        "Adam with the variance of its adaptive step rectified (SGD steps until it is tractable)",
        "Liu et al., On the Variance of the Adaptive Learning Rate and Beyond, ICLR 2020, "
        "arXiv:1908.03265",
        "torch.optim.RAdam 2.13",
    ),
    OptimizerSpec(
        "nadam",
        "optlab.optim.nadam:NAdam",
        "Adam with Nesterov momentum and a momentum schedule (NAdamW: decoupled_weight_decay)",
        "Dozat, Incorporating Nesterov Momentum into Adam, ICLR 2016 workshop",
        "torch.optim.NAdam 2.13",
    ),
    OptimizerSpec(
        "adabound",
        "optlab.optim.adabound:AdaBound",
        "Adam with per-coordinate steps clipped into bounds that converge to SGD's",
        "Luo et al., Adaptive Gradient Methods with Dynamic Bound of Learning Rate, ICLR 2019, "
        "arXiv:1902.09843",
        "adabound 0.0.5 (the authors' package)",
    ),
    OptimizerSpec(
        "amsbound",
        "optlab.optim.adabound:AdaBound",
        "AdaBound on the running maximum of the second moment",
        "Luo et al., Adaptive Gradient Methods with Dynamic Bound of Learning Rate, ICLR 2019, "
        "arXiv:1902.09843",
        "adabound 0.0.5, amsbound=True",
        {"amsbound": True},
    ),
    OptimizerSpec(
        "msvag",
        "optlab.optim.msvag:MSVAG",
        "momentum SGD damped per coordinate by the estimated gradient variance",
        "Balles & Hennig, Dissecting Adam: The Sign, Magnitude and Variance of Stochastic "
        "Gradients, ICML 2018, arXiv:1705.07774",
        "beta=0.9 from the paper and the authors' code; lr=1e-2 from pytorch_optimizer 4.1.0 "
        "(the authors' code has none)",
    ),
    OptimizerSpec(
        "fromage",
        "optlab.optim.fromage:Fromage",
        "steps of a fixed size relative to each tensor's norm",
        "Bernstein, Vahdat, Yue & Liu, On the distance between two neural networks and the "
        "stability of learning, NeurIPS 2020, arXiv:2002.03432",
        "the paper (lr=1e-2)",
    ),
    OptimizerSpec(
        "lars",
        "optlab.optim.lars:LARS",
        "momentum SGD with a per-tensor trust ratio eta ||p|| / (||g|| + wd ||p||)",
        "You, Gitman & Ginsburg, Large Batch Training of Convolutional Networks, arXiv:1708.03888",
        "pytorch_optimizer 4.1.0 (lr=1e-3, momentum=0.9, trust_coefficient=1e-3, the paper's eta)",
    ),
    OptimizerSpec(
        "lamb",
        "optlab.optim.lamb:Lamb",
        "Adam steps scaled per tensor by min(||p||, 10) / ||step||",
        "You et al., Large Batch Optimization for Deep Learning: Training BERT in 76 minutes, "
        "ICLR 2020, arXiv:1904.00962",
        "the paper's Algorithm 2 and BERT setting (eps=1e-6, bias correction); "
        "the weight-norm cap of 10 of pytorch-lamb 1.0.0",
    ),
    OptimizerSpec(
        "lion",
        "optlab.optim.lion:Lion",
        "steps of size lr along the sign of an interpolated momentum",
        "Chen et al., Symbolic Discovery of Optimization Algorithms, NeurIPS 2023, "
        "arXiv:2302.06675",
        "lion-pytorch 0.2.5 (lr=1e-4; betas=(0.9, 0.99), the paper's)",
    ),
    OptimizerSpec(
        "adamw-schedulefree",
        "optlab.optim.schedule_free:AdamWScheduleFree",
        "AdamW without a schedule: gradients at y, evaluation at the average x (eval()/train())",
        "Defazio et al., The Road Less Scheduled, NeurIPS 2024, arXiv:2405.15682",
        "schedulefree 1.4.1 AdamWScheduleFree",
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

# ---------------------------------------------------------------------------- checks


def _import_target(name: str, target: str) -> type[torch.optim.Optimizer]:
    """The class ``target`` (``"module:Class"``) names; errors name the entry and the target."""
    module_name, _, attribute = target.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise ImportError(
            f"optimizer {name!r}: its target {target!r} does not import: {error}"
        ) from error
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise ImportError(
                f"optimizer {name!r}: its target {target!r} does not import: "
                f"{found.__name__!r} has no attribute {part!r}"
            )
        found = getattr(found, part)
    _check_class(name, found, repr(target))
    return found


def _check_class(name: str, target: Any, text: str | None = None) -> None:
    """``TypeError`` unless ``target`` (named ``text`` in the registration) is an Optimizer class."""
    if isinstance(target, type) and issubclass(target, torch.optim.Optimizer):
        return
    if isinstance(target, type):
        what = f"class {target.__qualname__}"
    else:
        what = f"a {type(target).__name__} object"
    hint = " (give the class, not an instance)" if isinstance(target, torch.optim.Optimizer) else ""
    raise TypeError(
        f"optimizer {name!r}: its target {f'{text} ' if text else ''}is {what}, not a "
        f"torch.optim.Optimizer subclass{hint}"
    )


def _validated(spec: OptimizerSpec, origin: str) -> OptimizerSpec:
    """``spec`` checked and stamped with its origin.

    A class, or a string target of an entry not optlab's own, is imported and checked
    now, so that a registry entry can always be built; optlab's own are imported on
    first use (and tested).
    """
    if not isinstance(spec.name, str) or not _NAME.fullmatch(spec.name):
        raise ValueError(
            "an optimizer's name must be a lower-case identifier, dashes allowed between "
            f"words (e.g. 'my-adam'), got {spec.name!r}"
        )
    label = f"optimizer {spec.name!r}"
    for tag in spec.tags:
        if not isinstance(tag, str) or not _NAME.fullmatch(tag):
            raise ValueError(
                f"{label}: a tag must be a lower-case identifier, dashes allowed, got {tag!r}"
            )
    if isinstance(spec.target, str):
        if not _TARGET.fullmatch(spec.target):
            raise ValueError(
                f"{label}: its target must be an Optimizer class or 'module:Class', "
                f"got {spec.target!r}"
            )
        if origin == _BUILTIN:
            return dataclasses.replace(spec, origin=origin)
        cls = _import_target(spec.name, spec.target)
    else:
        _check_class(spec.name, spec.target)
        cls = spec.target
    spec = dataclasses.replace(spec, origin=origin)
    accepted = spec.hparam_names()
    unknown = sorted(set(spec.overrides) - set(accepted))
    if unknown:
        raise ValueError(
            f"{label}: its overrides set {', '.join(map(repr, unknown))}, which "
            f"{cls.__name__} does not take; it takes {', '.join(accepted)}"
        )
    return spec


_SPECS = tuple(_validated(spec, _BUILTIN) for spec in _SPECS)

#: Every entry, in listing order (see the module's docstring).
_REGISTRY: dict[str, OptimizerSpec] = {spec.name: spec for spec in _SPECS}
_LOCK = threading.RLock()
_entry_points_loaded = False


def _insert(spec: OptimizerSpec, *, replace: bool) -> OptimizerSpec:
    with _LOCK:
        old = _REGISTRY.get(spec.name)
        if old is not None and old.builtin:
            raise ValueError(
                f"optimizer {spec.name!r} is one of optlab's own and cannot be replaced; "
                "register yours under another name"
            )
        if old is not None and not replace:
            raise ValueError(
                f"optimizer {spec.name!r} is already registered ({old.target_name}, by "
                f"{old.origin}); choose another name, or pass replace=True to replace it"
            )
        _REGISTRY[spec.name] = spec
    return spec


# ---------------------------------------------------------------------------- entry points


def _load_entry_points() -> None:
    """Register the ``optlab.optimizers`` entry points of installed packages, once."""
    global _entry_points_loaded
    with _LOCK:
        if _entry_points_loaded:
            return
        _entry_points_loaded = True  # first: a plugin that lists optimizers must not recurse
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            _load_entry_point(entry_point)


def _load_entry_point(entry_point: importlib.metadata.EntryPoint) -> None:
    dist = getattr(entry_point, "dist", None)
    where = f"entry point {entry_point.name} = {entry_point.value} of " + (
        f"{dist.name} {dist.version}" if dist is not None else "an unknown distribution"
    )

    def skip(error: Exception) -> None:
        warnings.warn(
            f"skipped the {ENTRY_POINT_GROUP} {where}: {type(error).__name__}: {error}",
            OptimizerEntryPointWarning,
            stacklevel=5,
        )

    try:
        specs = _specs_of(entry_point.name, entry_point.load(), dist)
    except Exception as error:  # whatever a broken package raises, the others still load
        skip(error)
        return
    for spec in specs:
        try:
            _insert(_validated(spec, where), replace=False)
        except (ValueError, TypeError, ImportError) as error:
            skip(error)


def _specs_of(name: str, loaded: Any, dist: Any) -> list[OptimizerSpec]:
    """The specs an entry point's object stands for (see the module's docstring)."""
    if isinstance(loaded, type):
        source = f"{dist.name} {dist.version}" if dist is not None else ""
        return [OptimizerSpec(name, loaded, _first_line(loaded.__doc__), "", source)]
    if isinstance(loaded, OptimizerSpec):
        return [loaded]
    if not callable(loaded):
        raise TypeError(
            f"it names a {type(loaded).__name__}, not an Optimizer class, an OptimizerSpec "
            "or a function returning specs"
        )
    made = loaded()
    specs = [made] if isinstance(made, OptimizerSpec) else list(made)
    for spec in specs:
        if not isinstance(spec, OptimizerSpec):
            raise TypeError(f"its function returned a {type(spec).__name__}, not an OptimizerSpec")
    return specs


def _first_line(doc: str | None) -> str:
    return inspect.cleandoc(doc).partition("\n")[0] if doc else ""


def _forget_entry_points() -> None:
    """Drop the entries that came from entry points and load them again on next use (tests)."""
    global _entry_points_loaded
    with _LOCK:
        for name in [n for n, s in _REGISTRY.items() if s.origin.startswith("entry point ")]:
            del _REGISTRY[name]
        _entry_points_loaded = False


# ---------------------------------------------------------------------------- public


def register_optimizer(
    spec_or_name: OptimizerSpec | str,
    target: type[torch.optim.Optimizer] | str | None = None,
    *,
    description: str | None = None,
    paper: str = "",
    defaults_source: str = "",
    overrides: Mapping[str, Any] | None = None,
    tags: Iterable[str] = (),
    replace: bool = False,
) -> OptimizerSpec:
    """Add an optimizer to the registry: ``create_optimizer``, ``optlab list`` and the lab
    (``optlab compare --optimizers NAME``) see it from then on.

    Args:
        spec_or_name: the registry name (a lower-case identifier, dashes allowed), or a
            whole :class:`OptimizerSpec` (then give nothing else but ``replace``).
        target: a ``torch.optim.Optimizer`` subclass, or ``"module:Class"`` (imported now).
        description: one line for ``optlab list``; by default the first line of the
            class's docstring.
        paper, defaults_source: where the algorithm and its defaults come from.
        overrides: defaults this entry changes on top of the class defaults (an alias
            such as ``nag`` = SGD with ``momentum=0.9, nesterov=True``).
        tags: labels for :func:`list_optimizers`; ``core`` marks the lab's default study.
        replace: replace an entry of that name registered earlier (never one of optlab's).

    Returns:
        The registered entry.

    Raises:
        ValueError: a malformed name or tag, a name already registered, overrides the
            class does not take.
        TypeError: a target that is not a ``torch.optim.Optimizer`` subclass.
        ImportError: a ``"module:Class"`` target that does not import.

    Example::

        class Lion(torch.optim.Optimizer): ...

        optlab.register_optimizer("lion", Lion, paper="Chen et al., arXiv:2302.06675")
        optimizer = optlab.create_optimizer(model, "lion", lr=1e-4)
    """
    if isinstance(spec_or_name, OptimizerSpec):
        given = (target, description, overrides)
        if any(value is not None for value in given) or paper or defaults_source or tags:
            raise TypeError("register_optimizer(spec): give the spec alone (and replace=)")
        spec = spec_or_name
    else:
        if target is None:
            raise TypeError(f"register_optimizer({spec_or_name!r}): give the target class")
        if description is None:
            description = "" if isinstance(target, str) else _first_line(target.__doc__)
        spec = OptimizerSpec(
            spec_or_name, target, description, paper, defaults_source, overrides or {}, tags
        )
    caller = sys._getframe(1).f_globals.get("__name__", "?")
    spec = _validated(spec, f"register_optimizer() in {caller}")
    _load_entry_points()  # a name an entry point takes is taken whatever the order
    return _insert(spec, replace=replace)


def unregister_optimizer(name: str) -> OptimizerSpec:
    """Remove the entry ``name`` registered by :func:`register_optimizer` or an entry point
    and return it; ``ValueError`` for an unknown name or one of optlab's own."""
    spec = get_spec(name)
    if spec.builtin:
        raise ValueError(f"optimizer {spec.name!r} is one of optlab's own and cannot be removed")
    with _LOCK:
        if _REGISTRY.get(spec.name) is spec:
            del _REGISTRY[spec.name]
    return spec


def list_optimizers(tag: str | None = None, *, builtin_only: bool = False) -> list[str]:
    """Registry names in listing order: optlab's own in catalogue order (classic first,
    then the adaptive methods up to AdaBelief, then the belief / eps factorial's cells),
    then those of installed packages, then those registered here.

    Args:
        tag: only the entries with this tag (``"core"``: the lab's default study).
        builtin_only: only optlab's own entries (entry points are not loaded).
    """
    if not builtin_only:
        _load_entry_points()
    with _LOCK:
        specs = list(_REGISTRY.values())
    return [
        spec.name
        for spec in specs
        if (spec.builtin or not builtin_only) and (tag is None or tag in spec.tags)
    ]


def get_spec(name: str) -> OptimizerSpec:
    """The entry for ``name`` (case-insensitive); ``ValueError`` listing the valid names."""
    key = name.lower() if isinstance(name, str) else None
    spec = _REGISTRY.get(key) if key is not None else None
    if spec is None and key is not None and not _entry_points_loaded:
        _load_entry_points()
        spec = _REGISTRY.get(key)
    if spec is None:
        raise ValueError(
            f"unknown optimizer {name!r}; valid names: {', '.join(list_optimizers())}"
            + _worker_hint()
        )
    return spec


def _worker_hint() -> str:
    import multiprocessing

    if multiprocessing.parent_process() is None:
        return ""
    return (
        " (in a worker process, which does not see optimizers registered at run time in "
        "its parent: register them at the top level of a module it imports, or through "
        "an entry point, or train with --jobs 1)"
    )


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
