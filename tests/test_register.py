"""Your own optimizer in optlab: ``register_optimizer`` and the ``optlab.optimizers`` entry points.

An optimizer defined here (a few lines of SGD, subclassing torch.optim.Optimizer)
is registered and runs through ``create_optimizer``, ``optlab list`` and
``optlab compare`` (in this process, ``--jobs 1``: spawned workers do not see
registrations made at run time, see optlab.optim.registry). Every bad
registration fails with an error naming the entry, and changes nothing. A fake
installed distribution shows that entry points are loaded lazily, and that a
broken one is skipped with a warning naming it and its distribution while the
rest still load.
"""

from __future__ import annotations

import csv
import sys
import textwrap
import warnings

import pytest
import torch

import optlab
from optlab.cli import main
from optlab.optim import registry
from optlab.optim.registry import OptimizerEntryPointWarning, OptimizerSpec

BUILTIN = optlab.list_optimizers(builtin_only=True)


class TinySGD(torch.optim.Optimizer):
    """Plain SGD in a few lines, as a user writes it."""

    def __init__(self, params, lr: float = 0.1, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad + group["weight_decay"] * p, alpha=-group["lr"])
        return loss


@pytest.fixture
def tiny():
    """``tiny-sgd`` registered for the test, and gone afterwards."""
    spec = optlab.register_optimizer("tiny-sgd", TinySGD, paper="a test", tags=("mine",))
    yield spec
    optlab.unregister_optimizer("tiny-sgd")
    assert optlab.list_optimizers() == BUILTIN


# ----- register, use, unregister ---------------------------------------------


def test_a_registered_optimizer_is_built_by_create_optimizer(tiny):
    assert tiny == optlab.get_spec("TINY-SGD")  # names are case-insensitive
    assert tiny.cls is TinySGD and optlab.optimizer_class("tiny-sgd") is TinySGD
    assert tiny.description == "Plain SGD in a few lines, as a user writes it."
    assert tiny.origin == f"register_optimizer() in {__name__}" and not tiny.builtin
    assert tiny.defaults() == {"lr": 0.1, "weight_decay": 0.0}
    net = torch.nn.Linear(3, 2)
    optimizer = optlab.create_optimizer(net, "tiny-sgd", lr=0.5, weight_decay=0.1)
    assert type(optimizer) is TinySGD
    # Given a module, the bias goes to a group without weight decay, as for optlab's own.
    decay, no_decay = optimizer.param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    assert decay["params"] == [net.weight] and no_decay["params"] == [net.bias]
    before = net.bias.detach().clone()
    net(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    assert torch.equal(net.bias, before - 0.5 * torch.ones(2))
    with pytest.raises(ValueError, match="'tiny-sgd' does not take 'momentum'"):
        optlab.create_optimizer(net, "tiny-sgd", momentum=0.9)


def test_it_is_listed_after_optlabs_own_and_selected_by_its_tags(tiny):
    assert optlab.list_optimizers() == [*BUILTIN, "tiny-sgd"]
    assert optlab.optim.list_optimizers("mine") == ["tiny-sgd"]
    assert optlab.list_optimizers(builtin_only=True) == BUILTIN
    # Not in the default study unless tagged so.
    assert "tiny-sgd" not in optlab.list_optimizers("core")


def test_overrides_make_an_alias_and_core_is_only_what_it_says(tiny):
    from optlab.lab.spec import CORE_OPTIMIZERS

    slow = optlab.register_optimizer(
        "tiny-sgd-slow", "test_register:TinySGD", overrides={"lr": 0.01}, tags="core"
    )
    try:
        assert slow.cls is TinySGD and slow.tags == ("core",)
        assert slow.target_name == "test_register:TinySGD"
        optimizer = optlab.create_optimizer([torch.zeros(2, requires_grad=True)], "tiny-sgd-slow")
        assert optimizer.defaults["lr"] == 0.01
        assert optlab.list_optimizers("core") == [*CORE_OPTIMIZERS, "tiny-sgd-slow"]
        # The default study is optlab's twelve, fixed at import.
        assert len(CORE_OPTIMIZERS) == 12 and "tiny-sgd-slow" not in CORE_OPTIMIZERS
    finally:
        optlab.unregister_optimizer("tiny-sgd-slow")


def test_a_whole_spec_registers_too_and_replace_swaps_it():
    class Other(TinySGD):
        pass

    spec = OptimizerSpec("tiny-spec", TinySGD, "one line", tags=("mine",))
    try:
        assert optlab.register_optimizer(spec) == spec
        with pytest.raises(ValueError, match="'tiny-spec' is already registered"):
            optlab.register_optimizer("tiny-spec", Other)
        assert optlab.get_spec("tiny-spec").cls is TinySGD
        optlab.register_optimizer("tiny-spec", Other, replace=True)
        assert optlab.get_spec("tiny-spec").cls is Other
        assert optlab.list_optimizers()[-1] == "tiny-spec"
    finally:
        assert optlab.unregister_optimizer("tiny-spec").cls is Other
    with pytest.raises(ValueError, match="unknown optimizer 'tiny-spec'"):
        optlab.get_spec("tiny-spec")


def test_optlab_list_shows_a_registered_optimizer(tiny, capsys):
    assert main(["list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert list(lines)[-1] == "tiny-sgd"
    assert lines["tiny-sgd"].split() == ["tiny-sgd", "TinySGD", "lr=0.1,", "weight_decay=0"]
    assert main(["list", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "Plain SGD in a few lines, as a user writes it." in out
    assert "paper: a test" in out and f"from: register_optimizer() in {__name__}" in out


def test_optlab_compare_trains_a_registered_optimizer_like_its_builtin_twin(tiny, tmp_path, capsys):
    out = tmp_path / "study"
    argv = ["compare", "--task", "cancer-logreg", "--optimizers", "tiny-sgd,sgd", "--seeds", "1"]
    argv += ["--epochs", "1", "--lr", "0.05", "--jobs", "1", "--out", str(out), "-q"]
    assert main(argv) == 0
    assert "tiny-sgd" in capsys.readouterr().out
    rows = {row["optimizer"]: row for row in csv.DictReader(open(out / "summary.csv"))}
    assert set(rows) == {"tiny-sgd", "sgd"}
    assert rows["tiny-sgd"]["hp_lr"] == "0.05" and rows["tiny-sgd"]["diverged"] == "0"
    # p - lr * g, the same operations as optlab's SGD without momentum: the same numbers.
    assert rows["tiny-sgd"]["final_mean"] == rows["sgd"]["final_mean"]
    assert rows["tiny-sgd"]["hparams"] == '{"lr": 0.05, "weight_decay": 0.0}'


def test_a_worker_process_says_why_it_does_not_know_a_name(monkeypatch):
    import multiprocessing

    monkeypatch.setattr(multiprocessing, "parent_process", lambda: object())
    with pytest.raises(ValueError, match="unknown optimizer 'tiny-sgd'.*in a worker process"):
        optlab.get_spec("tiny-sgd")


# ----- bad registrations: a clear error naming the entry, nothing registered ----


class NotAnOptimizer:
    pass


BAD = [
    (("adam", TinySGD), {}, ValueError, "'adam' is one of optlab's own and cannot be replaced"),
    (("adam", TinySGD), {"replace": True}, ValueError, "'adam' is one of optlab's own"),
    (("bad", NotAnOptimizer), {}, TypeError, "'bad'.*class NotAnOptimizer, not a torch.optim.Op"),
    (("bad", torch.optim.SGD([torch.zeros(1)])), {}, TypeError, "'bad'.*SGD object.*not an inst"),
    (("bad", "test_register:NotAnOptimizer"), {}, TypeError, "'bad'.*'test_register:NotAn"),
    (("bad", "torch:optim"), {}, TypeError, "'bad'.*'torch:optim' is a module object, not a"),
    (("bad", "no_such_module:Opt"), {}, ImportError, "'bad'.*'no_such_module:Opt' does not imp"),
    (("bad", "test_register:Missing"), {}, ImportError, "'bad'.*has no attribute 'Missing'"),
    (("bad", "test_register.TinySGD"), {}, ValueError, "'bad'.*Optimizer class or 'module:Cl"),
    (("bad", TinySGD), {"overrides": {"betas": (0.9, 0.99)}}, ValueError, "'bad'.*'betas', wh"),
    (("bad", TinySGD), {"tags": ("Core",)}, ValueError, "'bad': a tag must be.*'Core'"),
    (("bad",), {}, TypeError, "register_optimizer\\('bad'\\): give the target class"),
    *[
        ((name, TinySGD), {}, ValueError, f"lower-case identifier.*got {name!r}")
        for name in ("Tiny", "tiny sgd", "1tiny", "-tiny", "tiny-", "tiny--sgd", "a:b", "", 3)
    ],
]


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"), BAD, ids=[message for *_, message in BAD]
)
def test_a_bad_registration_names_the_entry_and_registers_nothing(args, kwargs, error, message):
    before = optlab.list_optimizers()
    with pytest.raises(error, match=message):
        optlab.register_optimizer(*args, **kwargs)
    assert optlab.list_optimizers() == before
    assert optlab.get_spec("adam").cls is optlab.Adam


def test_a_spec_goes_alone_and_optlabs_own_cannot_be_removed():
    with pytest.raises(TypeError, match="give the spec alone"):
        optlab.register_optimizer(OptimizerSpec("tiny-x", TinySGD), tags=("x",))
    with pytest.raises(ValueError, match="'sgd' is one of optlab's own and cannot be removed"):
        optlab.unregister_optimizer("sgd")
    with pytest.raises(ValueError, match="unknown optimizer 'never-registered'"):
        optlab.unregister_optimizer("never-registered")


def test_an_error_at_first_use_of_a_lazy_builtin_target_names_entry_and_target():
    spec = OptimizerSpec("ghost", "optlab.optim.no_such_module:Ghost")
    with pytest.raises(ImportError, match="'ghost': its target 'optlab.optim.no_such_module:G"):
        _ = spec.cls


# ----- entry points of installed packages -------------------------------------

FAKE_MODULE = '''
import torch
from optlab.optim.registry import OptimizerSpec


class FakeSGD(torch.optim.Optimizer):
    """SGD from an installed package."""

    def __init__(self, params, lr=0.2):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"])


def specs():
    return [
        OptimizerSpec("fake-slow", FakeSGD, "slow", overrides={"lr": 0.01}),
        OptimizerSpec("fake-core", "fake_pkg:FakeSGD", "tagged core", tags=("core",)),
        OptimizerSpec("fake-bad", FakeSGD, overrides={"momentum": 0.9}),
    ]


SPEC = OptimizerSpec("fake-spec", FakeSGD, "a spec")
NOT_AN_OPTIMIZER = 42
'''


def _distribution(root, name: str, version: str, entry_points: str, module: str = "") -> None:
    package = name.replace("-", "_")
    info = root / f"{package}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(
        "[optlab.optimizers]\n" + textwrap.dedent(entry_points).strip() + "\n"
    )
    if module:
        (root / f"{package}.py").write_text(module)


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """Two fake distributions on sys.path: fake-pkg (good entries and bad ones) and
    broken-pkg, whose only entry does not import."""
    _distribution(
        tmp_path,
        "fake-pkg",
        "0.1",
        """
        fake-sgd = fake_pkg:FakeSGD
        fake-variants = fake_pkg:specs
        fake-spec = fake_pkg:SPEC
        adam = fake_pkg:FakeSGD
        fake-number = fake_pkg:NOT_AN_OPTIMIZER
        fake-missing = fake_pkg:Missing
        """,
        FAKE_MODULE,
    )
    _distribution(tmp_path, "broken-pkg", "0.2", "broken = no_such_module_xyz:Optimizer")
    registry._forget_entry_points()
    monkeypatch.syspath_prepend(str(tmp_path))  # also invalidates importlib's caches
    yield tmp_path
    registry._forget_entry_points()
    sys.modules.pop("fake_pkg", None)


EXPECTED_SKIPS = [
    ("adam = fake_pkg:FakeSGD of fake-pkg 0.1", "'adam' is one of optlab's own"),
    ("fake-number = fake_pkg:NOT_AN_OPTIMIZER of fake-pkg 0.1", "names a int, not an Optimizer"),
    ("fake-missing = fake_pkg:Missing of fake-pkg 0.1", "Missing"),
    ("fake-variants = fake_pkg:specs of fake-pkg 0.1", "'fake-bad': its overrides set 'momentum'"),
    ("broken = no_such_module_xyz:Optimizer of broken-pkg 0.2", "No module named 'no_such_modu"),
]


def _assert_skips(messages: list[str]) -> None:
    assert len(messages) == len(EXPECTED_SKIPS), messages
    for where, why in EXPECTED_SKIPS:
        assert any(
            f"skipped the optlab.optimizers entry point {where}: " in m and why in m
            for m in messages
        ), where


def test_entry_points_are_loaded_on_first_listing_and_broken_ones_skipped(installed):
    assert "fake_pkg" not in sys.modules
    optlab.get_spec("adam")  # a known name: no entry point is loaded for it
    assert "fake_pkg" not in sys.modules
    with pytest.warns(OptimizerEntryPointWarning) as caught:
        names = optlab.list_optimizers()
    _assert_skips([str(warning.message) for warning in caught])
    assert names == [*BUILTIN, "fake-sgd", "fake-slow", "fake-core", "fake-spec"]
    fake = optlab.get_spec("fake-sgd")
    assert (
        fake.cls.__module__ == "fake_pkg" and fake.description == "SGD from an installed package."
    )
    assert fake.defaults_source == "fake-pkg 0.1"
    assert fake.origin == "entry point fake-sgd = fake_pkg:FakeSGD of fake-pkg 0.1"
    optimizer = optlab.create_optimizer([torch.zeros(2, requires_grad=True)], "fake-slow")
    assert type(optimizer).__name__ == "FakeSGD" and optimizer.defaults["lr"] == 0.01
    assert optlab.list_optimizers("core")[-1] == "fake-core"
    # Loaded once: listing again warns no more.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert optlab.list_optimizers() == names


def test_looking_up_a_name_an_entry_point_gives_loads_them(installed):
    with pytest.warns(OptimizerEntryPointWarning):
        assert optlab.get_spec("fake-spec").description == "a spec"


def test_a_name_an_entry_point_gives_is_taken_for_register_optimizer(installed):
    with pytest.warns(OptimizerEntryPointWarning):
        with pytest.raises(ValueError, match="'fake-sgd' is already registered.*of fake-pkg 0.1"):
            optlab.register_optimizer("fake-sgd", TinySGD)


def test_optlab_list_shows_entry_points_and_one_line_per_broken_one(installed, capsys):
    assert main(["list", "--verbose"]) == 0
    captured = capsys.readouterr()
    names = [line.split()[0] for line in captured.out.splitlines() if not line.startswith(" ")]
    assert names == [*BUILTIN, "fake-sgd", "fake-slow", "fake-core", "fake-spec"]
    assert "from: entry point fake-sgd = fake_pkg:FakeSGD of fake-pkg 0.1" in captured.out
    errors = captured.err.splitlines()
    assert all(
        line.startswith("optlab list: skipped the optlab.optimizers entry point ")
        for line in errors
    )
    _assert_skips(errors)
