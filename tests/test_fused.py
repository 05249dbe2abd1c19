"""The fused path (optlab.optim._fused): same numbers as the loop, no recompiles, clear errors.

Every flag combination of every optimizer is checked against the loop: the
options are runtime scalars of a few kernels (only those that add a state
tensor, such as ``amsgrad``, make a separate kernel), and the tests share
kernels: a signature compiled by one test is reused by the next in the same
process.
"""

from __future__ import annotations

import copy
import io
import itertools
import json
import logging
import subprocess
import sys
import threading

import pytest
import torch

from _registry_grid import first_name_per_class
from optlab.optim import _fused, _inductor
from optlab.optim.registry import get_spec, optimizer_class

#: Every optimizer class of the registry, once (aliases such as nag share SGD's kernels).
NAMES = first_name_per_class()

#: The options optlab optimizers share, on and off: an optimizer's grid when it has
#: no entry in OPTIONS (those of them it takes: Fromage has no weight decay).
COMMON_OPTIONS = {"weight_decay": [0.0, 0.01], "maximize": [False, True]}


def _common_options(name: str) -> dict:
    takes = set(get_spec(name).hparam_names())
    return {option: values for option, values in COMMON_OPTIONS.items() if option in takes}


# Every option of every optimizer that changes the update's form (not just
# its numbers), each way: the full product, on and off.
OPTIONS = {
    "sgd": {
        "momentum": [0.0, 0.9],
        "dampening": [0.0, 0.1],
        "nesterov": [False, True],
        "weight_decay": [0.0, 0.01],
        "maximize": [False, True],
    },
    "adagrad": {"lr_decay": [0.0, 0.01], "weight_decay": [0.0, 0.01], "maximize": [False, True]},
    "rmsprop": {
        "centered": [False, True],
        "momentum": [0.0, 0.9],
        "weight_decay": [0.0, 0.01],
        "maximize": [False, True],
    },
    "adam": {"amsgrad": [False, True], "weight_decay": [0.0, 0.01], "maximize": [False, True]},
    "adamw": {"amsgrad": [False, True], "weight_decay": [0.0, 0.01], "maximize": [False, True]},
    "eadam": {"amsgrad": [False, True], "weight_decay": [0.0, 0.01], "maximize": [False, True]},
    "adabelief": {
        "amsgrad": [False, True],
        "weight_decouple": [False, True],
        "fixed_decay": [False, True],
        "rectify": [False, True],
        "degenerated_to_sgd": [False, True],
        "weight_decay": [0.0, 0.1],
        "maximize": [False, True],
    },
    # Both factors (and eps_out) are runtime scalars: every cell runs on the same kernels.
    "belief-eps": {
        "second_moment": ["grad_sq", "belief"],
        "eps_mode": ["outside", "inside", "accumulated"],
        "amsgrad": [False, True],
        "rectify": [False, True],
        "decoupled_weight_decay": [False, True],
        "weight_decay": [0.0, 0.01],
        "maximize": [False, True],
    },
    "radam": {
        "decoupled_weight_decay": [False, True],
        "weight_decay": [0.0, 0.01],
        "maximize": [False, True],
    },
    "nadam": {
        "decoupled_weight_decay": [False, True],
        "weight_decay": [0.0, 0.01],
        "maximize": [False, True],
    },
    "adabound": {
        "amsbound": [False, True],
        "weight_decouple": [False, True],
        "weight_decay": [0.0, 0.01],
        "maximize": [False, True],
    },
}


def _valid(name: str, hparams: dict) -> bool:
    # belief-eps refuses amsgrad with rectify (the rectified step ignores the maximum).
    if hparams.get("amsgrad") and hparams.get("rectify") and name == "belief-eps":
        return False
    # torch.optim.SGD: Nesterov momentum requires a momentum and zero dampening.
    return not (hparams.get("nesterov") and (not hparams["momentum"] or hparams["dampening"]))


GRIDS = {name: OPTIONS.get(name) or _common_options(name) for name in NAMES}
COMBOS = [
    (name, dict(zip(options, values, strict=True)))
    for name, options in GRIDS.items()
    for values in itertools.product(*options.values())
    if _valid(name, dict(zip(options, values, strict=True)))
]

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
LEARNING_RATES = {"sgd": 0.05, "adagrad": 0.05, "adadelta": 1.0, "rmsprop": 0.01, "yogi": 0.01}
SHAPES = [(7, 5), (33,), (1,), (2, 3, 4, 4)]


def _ids(combo):
    name, hparams = combo
    return name + "".join(f"-{k}={v}" for k, v in hparams.items())


def _params(seed: int, dtype=torch.float32, device="cpu") -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter(torch.randn(shape, generator=generator, dtype=dtype).to(device))
        for shape in SHAPES
    ]


def _set_grads(params_sets, step: int) -> None:
    """The same gradients for every copy; the last parameter has none on every third step."""
    generator = torch.Generator().manual_seed(10_000 + step)
    for index, shape in enumerate(SHAPES):
        first = params_sets[0][index]
        grad = torch.randn(shape, generator=generator, dtype=first.dtype).to(first.device)
        for params in params_sets:
            params[index].grad = None if index == 3 and step % 3 == 0 else grad.clone()


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    if not expected.numel():
        assert actual.shape == expected.shape
        return 0.0
    scale = expected.abs().max().clamp_min(1e-12)
    return ((actual - expected).abs().max() / scale).item()


def _assert_close_states(fused_opt, loop_opt, fused_params, loop_params, tol=1e-5) -> None:
    for fused_p, loop_p in zip(fused_params, loop_params, strict=True):
        assert _relative_error(fused_p.detach(), loop_p.detach()) <= tol
        fused_state, loop_state = fused_opt.state[fused_p], loop_opt.state[loop_p]
        assert set(fused_state) == set(loop_state)
        for key, value in loop_state.items():
            assert fused_state[key].shape == value.shape, key
            assert _relative_error(fused_state[key], value) <= tol, key


def _step_together(first, second, first_params, second_params, steps) -> None:
    """Step two optimizers on the same gradients (see ``_set_grads``) for ``steps``."""
    for step in steps:
        _set_grads([first_params, second_params], step)
        first.step()
        second.step()


def _make(name, params, hparams, **flags):
    kwargs = {"lr": LEARNING_RATES.get(name, 0.01), **hparams, **flags}
    return optimizer_class(name)(params, **kwargs)


def test_every_option_grid_is_an_optimizer_of_the_registry():
    # A grid under a name the registry no longer has would silently test nothing.
    assert set(OPTIONS) <= set(NAMES)


@pytest.mark.filterwarnings("ignore:AdaBelief. amsgrad=True has no effect")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("combo", COMBOS, ids=_ids)
def test_fused_matches_loop_over_100_steps_with_lr_changes_and_missing_grads(combo, device):
    name, hparams = combo
    fused_params, loop_params = _params(0, device=device), _params(0, device=device)
    fused_opt = _make(name, fused_params, hparams, fused=True)
    loop_opt = _make(name, loop_params, hparams, foreach=False)
    schedulers = [
        torch.optim.lr_scheduler.StepLR(opt, step_size=30, gamma=0.5)
        for opt in (fused_opt, loop_opt)
    ]
    compiles_after_first_step = None
    for step in range(100):
        _set_grads([fused_params, loop_params], step)
        fused_opt.step()
        loop_opt.step()
        for scheduler in schedulers:
            scheduler.step()
        if step == 0:
            compiles_after_first_step = _fused.compile_count()
    _assert_close_states(fused_opt, loop_opt, fused_params, loop_params)
    # A new lr every 30 steps, a parameter without grad every third step: no compile.
    assert _fused.compile_count() == compiles_after_first_step


def test_buckets_of_many_tensors_match_loop():
    # More tensors than two buckets hold (the last bucket padded), assorted sizes
    # (a 0-dim, an empty and a large one), a non-contiguous parameter (run
    # eagerly) in the middle, and tensors without grad on some steps.
    count = 2 * _fused.BUCKET_SIZE + 3
    shapes = [(3 + index % 5, 1 + index % 3) for index in range(count)]
    shapes[4], shapes[9], shapes[17] = (), (0,), (70_001,)

    def make():
        generator = torch.Generator().manual_seed(11)
        params = [torch.nn.Parameter(torch.randn(s, generator=generator)) for s in shapes]
        params[6] = torch.nn.Parameter(torch.randn(5, 4, generator=generator).t())
        return params

    fused_params, loop_params = make(), make()
    assert not fused_params[6].is_contiguous()
    fused_opt = optimizer_class("adabelief")(fused_params, lr=1e-2, fused=True)
    loop_opt = optimizer_class("adabelief")(loop_params, lr=1e-2, foreach=False)
    for step in range(20):
        generator = torch.Generator().manual_seed(step)
        for index, (fused_p, loop_p) in enumerate(zip(fused_params, loop_params, strict=True)):
            grad = (
                torch.randn(fused_p.shape, generator=generator).as_strided(
                    fused_p.shape, fused_p.stride()
                )
                if fused_p.numel()
                else torch.zeros(fused_p.shape)
            )
            missing = (index + step) % 7 == 0
            fused_p.grad = None if missing else grad.clone()
            loop_p.grad = None if missing else grad.clone()
        fused_opt.step()
        loop_opt.step()
    _assert_close_states(fused_opt, loop_opt, fused_params, loop_params)


def test_no_recompile_across_steps_lr_changes_and_missing_grads():
    from torch._dynamo.utils import counters

    params = _params(1)
    optimizer = optimizer_class("adabelief")(params, lr=1e-2, fused=True)
    _set_grads([params], 1)
    optimizer.step()
    graphs, compiles = counters["stats"]["unique_graphs"], _fused.compile_count()
    for step in range(2, 12):
        _set_grads([params], step)
        params[0].grad = None
        optimizer.param_groups[0]["lr"] = 1e-2 / step
        optimizer.param_groups[0]["betas"] = (0.9 - 0.01 * step, 0.999)
        optimizer.step()
    assert counters["stats"]["unique_graphs"] == graphs
    assert _fused.compile_count() == compiles


def test_fused_adam_matches_torch_fused_adam():
    ours_params, torch_params = _params(2), _params(2)
    ours = optimizer_class("adamw")(ours_params, lr=1e-2, weight_decay=0.1, fused=True)
    reference = torch.optim.AdamW(torch_params, lr=1e-2, weight_decay=0.1, fused=True)
    _step_together(ours, reference, ours_params, torch_params, range(100))
    _assert_close_states(ours, reference, ours_params, torch_params)


def test_fused_adabelief_matches_the_reference_package():
    adabelief_pytorch = pytest.importorskip("adabelief_pytorch")
    ours_params, reference_params = _params(3), _params(3)
    ours = optimizer_class("adabelief")(ours_params, lr=1e-2, fused=True)
    reference = adabelief_pytorch.AdaBelief(reference_params, lr=1e-2, print_change_log=False)
    _step_together(ours, reference, ours_params, reference_params, range(100))
    for ours_p, reference_p in zip(ours_params, reference_params, strict=True):
        assert _relative_error(ours_p.detach(), reference_p.detach()) <= 1e-5


@pytest.mark.parametrize(("saved_with", "loaded_with"), [("fused", "loop"), ("loop", "fused")])
def test_checkpoint_moves_between_fused_and_loop_and_continues_identically(saved_with, loaded_with):
    flags = {"fused": {"fused": True}, "loop": {"foreach": False}}
    first_params = _params(4)
    first = optimizer_class("adabelief")(first_params, lr=1e-2, **flags[saved_with])
    for step in range(10):
        _set_grads([first_params], step)
        first.step()
    buffer = io.BytesIO()  # as a checkpoint file: no tensor shared between the two
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer)
    second_params = [torch.nn.Parameter(p.detach().clone()) for p in first_params]
    second = optimizer_class("adabelief")(second_params, lr=1e-2, **flags[loaded_with])
    second.load_state_dict(checkpoint)
    for key, value in checkpoint["state"][0].items():  # torch's layout: per-parameter tensors
        assert value.shape == (() if key == "step" else first_params[0].shape)
    _step_together(first, second, first_params, second_params, range(10, 20))
    _assert_close_states(second, first, second_params, first_params)


def test_fused_state_dict_loads_into_torch_adam():
    params = _params(5)
    ours = optimizer_class("adam")(params, lr=1e-2, fused=True)
    for step in range(5):
        _set_grads([params], step)
        ours.step()
    torch_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    reference = torch.optim.Adam(torch_params, lr=1e-2)
    reference.load_state_dict(copy.deepcopy(ours.state_dict()))
    _step_together(ours, reference, params, torch_params, range(5, 10))
    _assert_close_states(ours, reference, params, torch_params)


def test_non_contiguous_and_complex_parameters_take_the_same_steps():
    def make():
        generator = torch.Generator().manual_seed(6)
        return [
            torch.nn.Parameter(torch.randn(5, 7, generator=generator).t()),  # not contiguous
            torch.nn.Parameter(torch.randn(4, 3, dtype=torch.complex64, generator=generator)),
        ]

    fused_params, loop_params = make(), make()
    fused_opt = optimizer_class("adam")(fused_params, lr=1e-2, fused=True)
    loop_opt = optimizer_class("adam")(loop_params, lr=1e-2, foreach=False)
    for step in range(20):
        generator = torch.Generator().manual_seed(step)
        for fused_p, loop_p in zip(fused_params, loop_params, strict=True):
            grad = torch.randn(loop_p.shape, dtype=loop_p.dtype, generator=generator)
            fused_p.grad, loop_p.grad = grad.clone(), grad.clone()
        fused_opt.step()
        loop_opt.step()
    for fused_p, loop_p in zip(fused_params, loop_params, strict=True):
        assert _relative_error(fused_p.detach(), loop_p.detach()) <= 1e-5


@pytest.mark.parametrize("flags", [{"fused": True}, {"foreach": True}])
def test_a_group_mixing_dtypes_takes_the_loops_steps(flags):
    def make():
        params = _params(8)
        params[1] = torch.nn.Parameter(params[1].detach().double())
        return params

    ours_params, loop_params = make(), make()
    ours = optimizer_class("adam")(ours_params, lr=1e-2, **flags)
    loop = optimizer_class("adam")(loop_params, lr=1e-2, foreach=False)
    _step_together(ours, loop, ours_params, loop_params, range(10))
    _assert_close_states(ours, loop, ours_params, loop_params)
    assert ours_params[1].dtype == torch.float64


def test_one_device_and_dtype_tells_cpu_from_meta_tensors():
    cpu, meta = torch.zeros(2), torch.zeros(2, device="meta")
    assert cpu.get_device() == meta.get_device()  # why get_device() alone would not do
    assert _fused.one_device_and_dtype([cpu, torch.ones(3)])
    assert not _fused.one_device_and_dtype([cpu, meta])
    assert not _fused.one_device_and_dtype([meta, cpu])
    assert not _fused.one_device_and_dtype([cpu, torch.zeros(2, dtype=torch.float64)])


def test_low_precision_parameters_are_updated_through_float32_state():
    fused_params, loop_params = _params(7, torch.bfloat16), _params(7, torch.bfloat16)
    fused_opt = optimizer_class("adabelief")(fused_params, lr=1e-2, fused=True)
    loop_opt = optimizer_class("adabelief")(loop_params, lr=1e-2, foreach=False)
    _step_together(fused_opt, loop_opt, fused_params, loop_params, range(10))
    for fused_p, loop_p in zip(fused_params, loop_params, strict=True):
        assert fused_opt.state[fused_p]["exp_avg"].dtype == torch.float32
        # bf16 rounding of nearly equal float32 results: at most one ulp apart
        assert _relative_error(fused_p.detach().float(), loop_p.detach().float()) <= 1e-2


# ----- choosing, and failing clearly ----------------------------------------


def test_default_picks_fused_only_for_groups_large_enough_to_repay_the_compile(monkeypatch):
    small = [torch.nn.Parameter(torch.zeros(1000))]
    large = [torch.nn.Parameter(torch.zeros(_fused.FUSED_DEFAULT_MIN_NUMEL))]
    for params, expected in ((small, "foreach"), (large, "fused")):
        optimizer = optimizer_class("adabelief")(params)
        assert optimizer._implementation(optimizer.param_groups[0], params) == expected
    # Plain SGD is one pass already: fusing saves nothing, the default stays foreach
    # (and turns fused when an option adds a pass, even after construction).
    plain = optimizer_class("sgd")(large, lr=0.1)
    assert plain._implementation(plain.param_groups[0], large) == "foreach"
    plain.param_groups[0]["momentum"] = 0.9
    assert plain._implementation(plain.param_groups[0], large) == "fused"
    # fused=False set on the group after a default step: the kept choice must not stay fused.
    plain.param_groups[0]["fused"] = False
    assert plain._implementation(plain.param_groups[0], large) == "foreach"
    explicit = optimizer_class("adabelief")(large, foreach=True)
    assert explicit._implementation(explicit.param_groups[0], large) == "foreach"
    monkeypatch.setenv("OPTLAB_DISABLE_FUSED", "1")
    optimizer = optimizer_class("adabelief")(large)
    assert optimizer._implementation(optimizer.param_groups[0], large) == "foreach"


def test_fused_true_without_a_compiler_raises_a_clear_error(monkeypatch):
    monkeypatch.setitem(_fused._reason_cache, "cpu", "no C++ compiler found (set $CXX)")
    with pytest.raises(RuntimeError, match=r"fused=True\) cannot run on cpu: no C\+\+ compiler"):
        optimizer_class("adam")([torch.nn.Parameter(torch.zeros(3))], fused=True)
    monkeypatch.setenv("OPTLAB_DISABLE_FUSED", "1")
    with pytest.raises(RuntimeError, match="disabled by OPTLAB_DISABLE_FUSED.*fused=False"):
        optimizer_class("yogi")([torch.nn.Parameter(torch.zeros(3))], fused=True)


def test_fused_group_added_later_or_loaded_without_a_compiler_is_refused_and_changes_nothing(
    monkeypatch,
):
    monkeypatch.setenv("OPTLAB_DISABLE_FUSED", "1")
    first, second = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    optimizer = optimizer_class("adam")([first], foreach=False)
    with pytest.raises(RuntimeError, match="disabled by OPTLAB_DISABLE_FUSED"):
        optimizer.add_param_group({"params": [second], "fused": True})
    assert len(optimizer.param_groups) == 1

    # torch.optim.Adam(fused=True)'s checkpoint asks for the fused path in its groups.
    reference = torch.optim.Adam([torch.nn.Parameter(torch.ones(3))])
    checkpoint = reference.state_dict()
    checkpoint["param_groups"][0]["fused"] = True
    before = copy.deepcopy(optimizer.state_dict())
    with pytest.raises(RuntimeError, match="disabled by OPTLAB_DISABLE_FUSED"):
        optimizer.load_state_dict(checkpoint)
    assert optimizer.state_dict() == before
    assert optimizer.param_groups[0]["fused"] is None


def _failing_compile(self, num_scalars):
    raise _fused.FusedCompileError("simulated: the C++ compiler crashed")


def test_failed_compile_with_fused_true_raises_and_changes_nothing(monkeypatch):
    monkeypatch.setattr(_fused, "_kernels", {})
    monkeypatch.setattr(_fused._Kernel, "load", lambda self, num_scalars: False)
    monkeypatch.setattr(_fused._Kernel, "compile", _failing_compile)
    params = _params(8)
    before = [p.detach().clone() for p in params]
    optimizer = optimizer_class("adam")(params, fused=True)
    _set_grads([params], 1)
    with pytest.raises(RuntimeError, match="simulated"):
        optimizer.step()
    for param, original in zip(params, before, strict=True):
        assert torch.equal(param.detach(), original)
    assert all(state["step"].item() == 0 for state in optimizer.state.values())


def test_failed_compile_under_the_default_logs_and_falls_back(monkeypatch, caplog):
    monkeypatch.setattr(_fused, "_kernels", {})
    monkeypatch.setattr(_fused, "_failed_device_types", set())
    monkeypatch.setattr(_fused._Kernel, "load", lambda self, num_scalars: False)
    monkeypatch.setattr(_fused._Kernel, "compile", _failing_compile)
    monkeypatch.setattr(_fused, "FUSED_DEFAULT_MIN_NUMEL", 1)  # make the tiny group "large"
    default_params, foreach_params = _params(9), _params(9)
    default = optimizer_class("adam")(default_params, lr=1e-2)
    foreach = optimizer_class("adam")(foreach_params, lr=1e-2, foreach=True)
    with caplog.at_level(logging.WARNING, logger="optlab.optim._fused"):
        for step in range(3):
            _set_grads([default_params, foreach_params], step)
            default.step()
            foreach.step()
    assert len([r for r in caplog.records if "compiling the fused" in r.getMessage()]) == 1
    for ours, expected in zip(default_params, foreach_params, strict=True):
        assert torch.equal(ours.detach(), expected.detach())


# ----- kernels remembered across processes ----------------------------------


def _compiled_adam_kernel():
    """The fp32 Adam kernel, compiled (or loaded) by a fused step in this process."""
    params = _params(12)
    optimizer = optimizer_class("adam")(params, lr=1e-2, fused=True)
    _set_grads([params], 1)
    optimizer.step()
    # (Not a compact-state Adam kernel another test of this process made.)
    return next(
        k for k in _fused._kernels.values() if k.rule.__name__ == "_adam_rule" and not k.layout
    )


@pytest.mark.parametrize("floats", [8, 16])
def test_full_precision_cpu_kernels_take_two_registers_a_step_where_one_holds_eight_floats(
    monkeypatch, floats
):
    """Where a vector register holds 8 float32 (AVX2) a full-precision kernel's loop steps
    over two (``VectorizedN<float,2>`` in the generated C++), elsewhere over one; the
    step is torch's either way. The register width is set here, so both cases run on
    any machine with a vector instruction set; nothing is remembered across processes
    (a record would outlive the pretended width)."""
    if (reason := _fused._probe("cpu")) is not None:
        pytest.skip(f"cannot compile on CPU: {reason}")
    if _inductor.floats_per_register() == 0:
        pytest.skip("Inductor has no vector instruction set on this CPU")
    monkeypatch.setattr(_inductor, "floats_per_register", lambda: floats)
    monkeypatch.setattr(_fused, "_kernels", {})
    monkeypatch.setattr(_fused._Kernel, "load", lambda self, num_scalars: False)
    monkeypatch.setattr(_fused, "_remember", lambda *args, **kwargs: None)
    params, torch_params = _params(31), _params(31)
    ours = optimizer_class("adam")(params, lr=1e-2, fused=True)
    reference = torch.optim.Adam(torch_params, lr=1e-2, fused=True)
    _step_together(ours, reference, params, torch_params, range(3))
    _assert_close_states(ours, reference, params, torch_params)
    kernel = next(k for k in _fused._kernels.values() if k.rule.__name__ == "_adam_rule")
    path = _inductor.wrapper_file(kernel._direct) if kernel._direct is not None else None
    if path is None:
        pytest.skip("the kernel runs through Dynamo here: no generated source to read")
    with open(path) as source:
        two_registers = "VectorizedN<float,2>" in source.read()
    assert two_registers is (floats == 8)


def test_the_scalar_vector_is_rewritten_in_place_and_kept_per_thread():
    kernel = _compiled_adam_kernel()
    first = kernel.scalar_vector([1.0, 2.0, 3.0])
    again = kernel.scalar_vector([4.0, 5.0, 6.0])
    assert again is first and again.dtype == torch.float64
    assert again.tolist() == [4.0, 5.0, 6.0]
    other = []
    thread = threading.Thread(target=lambda: other.append(kernel.scalar_vector([7.0, 8.0, 9.0])))
    thread.start()
    thread.join()
    assert other[0] is not first and other[0].tolist() == [7.0, 8.0, 9.0]
    assert first.tolist() == [4.0, 5.0, 6.0]
    assert kernel.scalar_vector([1.0]).tolist() == [1.0]  # another length: a new vector


def test_threads_stepping_optimizers_that_share_a_kernel_take_their_own_steps():
    """Two threads stepping fused optimizers concurrently, on one kernel with different
    learning rates, each take the loop's steps (the test above checks the per-thread
    vector directly; a race on a shared one would rarely show here)."""
    _compiled_adam_kernel()
    pairs = []
    for seed, lr in enumerate((1e-1, 1e-3)):
        fused_params, loop_params = _params(20 + seed), _params(20 + seed)
        pairs.append(
            (
                optimizer_class("adam")(fused_params, lr=lr, fused=True),
                optimizer_class("adam")(loop_params, lr=lr, foreach=False),
                fused_params,
                loop_params,
            )
        )
    errors = []

    def train(pair, seed):
        try:
            _step_together(*pair, range(seed, seed + 200))
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=train, args=(pair, 100 * i)) for i, pair in enumerate(pairs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for pair in pairs:
        _assert_close_states(*pair)


def test_a_recorded_kernel_is_loaded_without_compiling_and_takes_the_same_steps(monkeypatch):
    _compiled_adam_kernel()  # makes sure the record exists
    monkeypatch.setattr(_fused, "_kernels", {})
    monkeypatch.setattr(_fused._Kernel, "compile", _failing_compile)
    fused_params, loop_params = _params(13), _params(13)
    fused_opt = optimizer_class("adam")(fused_params, lr=1e-2, fused=True)
    loop_opt = optimizer_class("adam")(loop_params, lr=1e-2, foreach=False)
    _step_together(fused_opt, loop_opt, fused_params, loop_params, range(20))
    _assert_close_states(fused_opt, loop_opt, fused_params, loop_params)


def test_a_fresh_process_loads_the_recorded_kernel_instead_of_compiling():
    _compiled_adam_kernel()
    script = """
import torch
from optlab.optim import _fused, create_optimizer

def refuse(self, num_scalars):
    raise AssertionError("compiled although a checked record exists")

_fused._Kernel.compile = refuse
params = [torch.nn.Parameter(torch.randn(40)) for _ in range(3)]
for param in params:
    param.grad = torch.randn(40)
create_optimizer(params, "adam", lr=1e-2, fused=True).step()
print("loaded", _fused.compile_count())
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "loaded 1"


def test_kernels_are_kept_and_recorded_per_thread_count(monkeypatch):
    """Inductor writes serial C++ for a one-thread process (a lab worker, say): such a
    kernel must not serve a process with more threads, in this process or a later one."""
    from optlab.optim.sgd import _sgd_rule

    monkeypatch.setattr(_fused, "_kernels", {})
    built = []
    monkeypatch.setattr(_fused._Kernel, "load", lambda self, num_scalars: not built.append(self))
    before = torch.get_num_threads()
    got = []
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            got.append(
                _fused._kernel(
                    _sgd_rule,
                    {"momentum": True},
                    (True, True, True),
                    torch.device("cpu"),
                    torch.float32,
                    7,
                )  # fmt: skip
            )
    finally:
        torch.set_num_threads(before)
    assert [kernel.threads for kernel in built] == [1, 2]
    assert got[0] is got[2] and got[0] is not got[1]
    assert _fused._record_path(got[0]) != _fused._record_path(got[1])


@pytest.mark.parametrize("damage", ["reordered arguments", "missing library", "not json"])
def test_a_damaged_record_is_not_used(damage):
    compiled = _compiled_adam_kernel()
    record_path = _fused._record_path(compiled)
    record = json.loads(record_path.read_text())
    fresh = _fused._Kernel(
        compiled.rule, compiled.flags, compiled.present, compiled.device, compiled.dtype,
        compiled.arity,
    )  # fmt: skip
    num_scalars = 8
    assert fresh.load(num_scalars)  # the intact record works
    original = record_path.read_text()
    try:
        if damage == "reordered arguments":
            items = record["items"]
            tensors = [i for i, item in enumerate(items) if item.startswith("t[")]
            first = tensors[0]
            second = next(i for i in tensors if items[i] != items[first])
            items[first], items[second] = items[second], items[first]
            record_path.write_text(json.dumps(record))
        elif damage == "missing library":
            record_path.write_text(json.dumps({**record, "library": "/nonexistent/k.so"}))
        else:
            record_path.write_text("{not json")
        damaged = _fused._Kernel(
            compiled.rule, compiled.flags, compiled.present, compiled.device, compiled.dtype,
            compiled.arity,
        )  # fmt: skip
        assert not damaged.load(num_scalars)
        assert damaged._runner is None
    finally:
        record_path.write_text(original)


def _module_call(allocations):
    """A stand-in for a generated module's ``call``: two buffers per call, in its globals."""
    namespace = {
        "empty_strided_cpu": lambda size, stride, dtype: (
            allocations.append(size) or torch.empty_strided(size, stride, dtype=dtype)
        ),
        "torch": torch,
    }
    source = (
        "def call(args):\n"
        "    (n,) = args\n"
        "    a = empty_strided_cpu((n, 4), (4, 1), torch.float32)\n"
        "    b = empty_strided_cpu((n, 1), (1, 1), torch.float32)\n"
        "    a.fill_(1.0); b.fill_(2.0)\n"
        "    return a.data_ptr(), b.data_ptr(), a.shape, b.shape\n"
    )
    exec(compile(source, "<generated>", "exec"), namespace)  # noqa: S102
    return namespace["call"]


def test_reused_buffers_are_kept_per_thread_and_grow_when_a_call_needs_more():
    allocations = []
    call = _module_call(allocations)
    reused = _inductor.reuse_buffers(call)
    first = reused([3])
    assert first[2:] == ((3, 4), (3, 1)) and first[0] != first[1]
    assert reused([3])[:2] == first[:2] and reused([2])[:2] == first[:2]  # kept, smaller fits
    assert len(allocations) == 2
    bigger = reused([5])
    assert bigger[2:] == ((5, 4), (5, 1)) and len(allocations) == 4  # grown
    assert reused([5])[:2] == bigger[:2] and len(allocations) == 4
    call([3])  # not through reuse_buffers: allocates as the module would
    assert allocations[-2:] == [(3, 4), (3, 1)]
    other = []
    thread = threading.Thread(target=lambda: other.append(reused([5])))
    thread.start()
    thread.join()
    assert len(allocations) == 8 and set(other[0][:2]).isdisjoint(bigger[:2])
