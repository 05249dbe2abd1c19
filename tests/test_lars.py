"""LARS against the published algorithm, and against pytorch_optimizer 4.1.0's LARS.

The oracle is You, Gitman & Ginsburg (arXiv:1708.03888) Algorithm 1 written
out per tensor in float64, with the paper's momentum ``v = m v + lr * local_lr
* (g + wd w)``, ``w = w - v`` (the learning rate inside the buffer; optlab's
buffer is ``lr``-free, the same steps while ``lr`` is constant, which is what
the oracle runs check: each group has its own constant ``lr``). Every option
combination is a param group of one optimizer, so one run checks all of them
for an implementation and dtype; ``PassCounter`` (used by the LAMB and
Fromage tests too) measures the passes over memory the module docstring
documents.
"""

from __future__ import annotations

import copy
import functools
import io
import itertools
import re

import pytest
import pytorch_optimizer
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from optlab.optim.lars import LARS

STEPS = 100
SHAPES = [(3,), (5, 7), (2, 3, 4)]
RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}
IMPLEMENTATIONS = {
    "loop": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One thread: a fused kernel call then has no OpenMP region to wait for.

    On a loaded 2-core machine each parallel region of a kernel call can wait
    milliseconds for a descheduled thread, and LARS calls its kernel once per
    tensor. The maths is the same for any thread count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------
# Helpers (test_lamb.py and test_fromage.py import these).
# --------------------------------------------------------------------------


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, what: str):
    """Within ``rtol`` of the largest entry of ``expected``."""
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(
        actual.double(), expected.double(), rtol=rtol, atol=rtol * scale, msg=what
    )


def gradients(count: int, steps: int = STEPS, seed: int = 1) -> list[list[torch.Tensor | None]]:
    """float64 gradients per step for ``count`` tensors of SHAPES (cycled).

    Tensor 3k+2 has no gradient when ``(step + k) % 5 == 4`` and a zero one at step 7.
    """
    generator = torch.Generator().manual_seed(seed)
    per_step = []
    for step in range(steps):
        grads: list[torch.Tensor | None] = []
        for index in range(count):
            shape = SHAPES[index % 3]
            grad = torch.randn(shape, generator=generator, dtype=torch.float64)
            if index % 3 == 2 and (step + index // 3) % 5 == 4:
                grad = None
            elif index % 3 == 2 and step == 7:
                grad = torch.zeros(shape, dtype=torch.float64)
            grads.append(grad)
        per_step.append(grads)
    return per_step


def initial_params(count: int, seed: int = 0, zero_biases: bool = True) -> list[torch.Tensor]:
    """float64 starting points; tensor 3k (a vector) starts at zero for even k (a bias)."""
    generator = torch.Generator().manual_seed(seed)
    params = [
        torch.randn(SHAPES[index % 3], generator=generator, dtype=torch.float64)
        for index in range(count)
    ]
    for index in range(0, count, 6) if zero_biases else ():
        params[index].zero_()
    return params


def set_grads(params, grads) -> None:
    for param, grad in zip(params, grads, strict=True):
        param.grad = None if grad is None else grad.to(param.dtype, copy=True)


class PassCounter(TorchDispatchMode):
    """Passes over memory of the eager ops run inside it, in units of ``unit`` bytes.

    Each op's tensor inputs count as read once and its outputs (or the
    arguments it writes in place) as written once; tensors smaller than
    ``min_numel`` (norms, ratios, scalars) and views are not counted. Fused
    kernels are called directly, outside the dispatcher: their passes are
    added by the caller (each input read once, each output written once).
    """

    def __init__(self, unit: int, min_numel: int) -> None:
        super().__init__()
        self.unit, self.min_numel, self.bytes = unit, min_numel, 0

    def _sizes(self, values) -> dict[int, int]:
        return {
            t.data_ptr(): t.numel() * t.element_size()
            for t in tree_flatten(values)[0]
            if isinstance(t, torch.Tensor) and t.numel() >= self.min_numel
        }

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.is_view or func in (
            torch.ops.aten.empty_like.default,
            torch.ops.aten.detach.default,
        ):
            return out
        arguments = func._schema.arguments
        mutated = [
            args[i] if i < len(args) else kwargs.get(arg.name)
            for i, arg in enumerate(arguments)
            if arg.alias_info is not None and arg.alias_info.is_write
        ]
        read = self._sizes((args, kwargs))
        written = self._sizes(mutated if mutated else out)
        self.bytes += sum(read.values()) + sum(written.values())
        return out

    @property
    def passes(self) -> float:
        return self.bytes / self.unit


def count_passes(make, steps: int = 2, shape=(64, 1024)) -> float:
    """Eager passes per step of ``make(params)`` on four fp32 tensors of ``shape``."""
    params = [torch.randn(shape, requires_grad=True) for _ in range(4)]
    optimizer = make(params)
    for param in params:
        param.grad = torch.randn_like(param)
    optimizer.step()  # state made, kernels compiled
    counter = PassCounter(unit=sum(p.numel() * 4 for p in params), min_numel=params[0].numel())
    with counter:
        for _ in range(steps):
            optimizer.step()
    return counter.passes / steps


def round_trip(optimizer_class, make_params, options, steps_before, steps_after, grads_per_step):
    """Params and state of an uninterrupted run, and of one resumed from a checkpoint."""

    def run(params, optimizer, steps):
        for step in steps:
            set_grads(params, grads_per_step[step])
            optimizer.step()

    straight = make_params()
    straight_opt = optimizer_class(straight, **options)
    run(straight, straight_opt, range(steps_before + steps_after))

    first = make_params()
    first_opt = optimizer_class(first, **options)
    run(first, first_opt, range(steps_before))
    buffer = io.BytesIO()
    torch.save(first_opt.state_dict(), buffer)
    buffer.seek(0)
    resumed = [p.detach().clone().requires_grad_() for p in first]
    resumed_opt = optimizer_class(resumed, **options)
    resumed_opt.load_state_dict(torch.load(buffer, weights_only=True))
    run(resumed, resumed_opt, range(steps_before, steps_before + steps_after))
    for index, (a, b) in enumerate(zip(straight, resumed, strict=True)):
        assert torch.equal(a, b), f"param {index} differs after resuming"
        assert straight_opt.state[a].keys() == resumed_opt.state[b].keys()
        for key, value in straight_opt.state[a].items():
            assert torch.equal(value, resumed_opt.state[b][key]), f"state {key} of param {index}"
    assert straight_opt.state_dict()["param_groups"] == resumed_opt.state_dict()["param_groups"]


def assert_complex_and_strided_take_the_plain_steps(optimizer_class, options, steps=12):
    """A complex tensor steps as its real view would, a strided one as its contiguous copy."""
    generator = torch.Generator().manual_seed(5)
    matrix = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    complex_param = torch.randn(3, 2, generator=generator, dtype=torch.complex128)
    wide = torch.zeros(8, 4, dtype=torch.float64)
    strided = wide[::2, 1:]  # every other row: not contiguous
    strided.copy_(matrix)
    special = [complex_param.clone().requires_grad_(), strided.requires_grad_()]
    plain = [
        torch.view_as_real(complex_param).clone().requires_grad_(),
        matrix.clone().requires_grad_(),
    ]
    special_opt = optimizer_class(special, **options)
    plain_opt = optimizer_class(plain, **options)
    for _ in range(steps):
        grads = [torch.randn(3, 2, 2, generator=generator, dtype=torch.float64),
                 torch.randn(4, 3, generator=generator, dtype=torch.float64)]  # fmt: skip
        special[0].grad = torch.view_as_complex(grads[0].clone())
        special[1].grad = grads[1].clone()
        plain[0].grad, plain[1].grad = grads[0].clone(), grads[1].clone()
        special_opt.step()
        plain_opt.step()
    assert_rel_close(torch.view_as_real(special[0].detach()), plain[0].detach(), 1e-12, "complex")
    assert_rel_close(special[1].detach(), plain[1].detach(), 1e-12, "strided")
    assert not special[1].is_contiguous()


# --------------------------------------------------------------------------
# The published algorithm.
# --------------------------------------------------------------------------


class PublishedLARS:
    """Algorithm 1 of arXiv:1708.03888, per tensor, with optlab's options spelt out.

    ``local_lr = eta ||w|| / (||g|| + wd ||w||)`` (1 where ``||w||`` or the
    denominator is 0); ``trust_clip``: ``min(local_lr / lr, 1)`` (LARC);
    ``layer_adaptation=False``: 1. ``v = m v + (1 - dampening) lr local_lr
    (g + wd w)``, ``w = w - v`` (Nesterov: ``w = w - lr local_lr (g + wd w) -
    m v``); without momentum ``w = w - lr local_lr (g + wd w)``.
    """

    def __init__(self, lr, momentum, dampening, weight_decay, nesterov, trust_coefficient,
                 trust_clip, layer_adaptation, maximize):  # fmt: skip
        self.lr, self.momentum, self.dampening = lr, momentum, dampening
        self.weight_decay, self.nesterov, self.eta = weight_decay, nesterov, trust_coefficient
        self.trust_clip, self.layer_adaptation, self.maximize = (
            trust_clip,
            layer_adaptation,
            maximize,
        )
        self.v: dict[int, torch.Tensor] = {}

    def local_lr(self, w: torch.Tensor, g: torch.Tensor) -> float:
        if not self.layer_adaptation:
            return 1.0
        w_norm, g_norm = torch.linalg.vector_norm(w).item(), torch.linalg.vector_norm(g).item()
        denominator = g_norm + self.weight_decay * w_norm
        if w_norm == 0 or denominator == 0:
            return 1.0
        local = self.eta * w_norm / denominator
        return min(local / self.lr, 1.0) if self.trust_clip else local

    def step(self, key: int, w: torch.Tensor, g: torch.Tensor) -> None:
        g = -g if self.maximize else g
        scaled = self.local_lr(w, g) * (g + self.weight_decay * w)
        if not self.momentum:
            w.sub_(self.lr * scaled)
            return
        v = self.v.get(key, torch.zeros_like(w))
        v = self.momentum * v + (1 - self.dampening) * self.lr * scaled
        self.v[key] = v
        w.sub_(self.lr * scaled + self.momentum * v if self.nesterov else v)


def _combos() -> list[dict]:
    combos = []
    for (
        momentum,
        dampening,
        nesterov,
    ), weight_decay, adaptation, clip, maximize in itertools.product(
        [(0.0, 0.0, False), (0.9, 0.0, False), (0.9, 0.1, False), (0.9, 0.0, True)],
        [0.0, 0.01],
        [True, False],
        [False, True],
        [False, True],
    ):
        if clip and not adaptation:
            continue  # no ratio to clip
        combos.append(
            dict(
                momentum=momentum,
                dampening=dampening,
                nesterov=nesterov,
                weight_decay=weight_decay,
                layer_adaptation=adaptation,
                trust_clip=clip,
                maximize=maximize,
            )
        )
    return combos


COMBOS = _combos()  # 48: the product of the options, less clipping without adaptation
#: Learning rates per group: with eta 0.02 and ||w|| ~ ||g||, trust_clip caps some, not others.
LRS = (0.01, 0.05, 0.3)
ETA = 0.02


def _group_options(index: int) -> dict:
    return {**COMBOS[index], "lr": LRS[index % 3], "trust_coefficient": ETA}


@functools.cache
def published_run(dtype: torch.dtype):
    """The oracle over every combination: final params and ``lr``-free buffers (float64)."""
    count = 3 * len(COMBOS)
    params = [p.to(dtype).double() for p in initial_params(count)]
    oracles = [PublishedLARS(**_group_options(i)) for i in range(len(COMBOS))]
    for grads in gradients(count):
        for index, (param, grad) in enumerate(zip(params, grads, strict=True)):
            if grad is not None:
                oracles[index // 3].step(index, param, grad.to(dtype).double())
    buffers = {
        index: oracles[index // 3].v[index] / oracles[index // 3].lr
        for index in range(count)
        if index in oracles[index // 3].v
    }
    return params, buffers


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_every_option_combination_matches_the_published_algorithm(implementation, dtype):
    """Every combination, each a param group; fused float32 only with momentum, so the
    file compiles three kernels, not four (the momentum-free kernel runs in float64)."""
    count = 3 * len(COMBOS)
    chosen = [
        i
        for i, options in enumerate(COMBOS)
        if options["momentum"] or not (implementation == "fused" and dtype == torch.float32)
    ]
    indices = [3 * i + k for i in chosen for k in range(3)]
    start = initial_params(count)
    params = [start[index].to(dtype, copy=True).requires_grad_() for index in indices]
    groups = [
        {"params": params[3 * n : 3 * n + 3], **_group_options(i)} for n, i in enumerate(chosen)
    ]
    optimizer = LARS(groups, **IMPLEMENTATIONS[implementation])
    for grads in gradients(count):
        set_grads(params, [grads[index] for index in indices])
        optimizer.step()
    expected, buffers = published_run(dtype)
    rtol = RTOL[dtype]
    for index, mine in zip(indices, params, strict=True):
        options = COMBOS[index // 3]
        what = f"param {index} ({options})"
        assert mine.dtype == dtype
        assert_rel_close(mine.detach(), expected[index], rtol, what)
        if options["momentum"]:
            state = optimizer.state[mine]
            assert set(state) == {"momentum_buffer"}, what
            assert_rel_close(state["momentum_buffer"], buffers[index], rtol, f"buffer of {what}")
        else:
            assert mine not in optimizer.state, what  # no buffer, no entry (as torch.optim.SGD)
        moved = (mine.detach().double() - start[index]).abs().max() > 1e-3
        assert moved, f"{what} did not move"


def test_the_buffer_is_lr_free_as_torch_sgd_under_a_schedule():
    """With lr changing, the step is ``lr_t * b_t`` (torch's convention), not the paper's ``v``."""
    param = torch.randn(5, 7, dtype=torch.float64)
    ours = param.clone().requires_grad_()
    optimizer = LARS([ours], lr=0.5, momentum=0.9, trust_coefficient=ETA, weight_decay=0.01)
    buffer = torch.zeros_like(param)
    generator = torch.Generator().manual_seed(3)
    for step in range(30):
        lr = 0.5 * 0.9**step
        optimizer.param_groups[0]["lr"] = lr
        grad = torch.randn(5, 7, generator=generator, dtype=torch.float64)
        ours.grad = grad.clone()
        optimizer.step()
        w_norm, g_norm = param.norm(), grad.norm()
        buffer = 0.9 * buffer + ETA * w_norm / (g_norm + 0.01 * w_norm) * (grad + 0.01 * param)
        param = param - lr * buffer
    assert_rel_close(ours.detach(), param, 1e-12, "param")


# --------------------------------------------------------------------------
# pytorch_optimizer 4.1.0.
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        dict(momentum=0.9, weight_decay=0.01),
        dict(momentum=0.9, dampening=0.2, weight_decay=0.0),
        dict(momentum=0.9, nesterov=True, weight_decay=0.05),
        dict(momentum=0.0, weight_decay=0.01),
    ],
)
@pytest.mark.parametrize("implementation", ["loop", "foreach"])
def test_equals_pytorch_optimizer_with_vectors_in_a_group_without_adaptation(
    options, implementation
):
    """pytorch_optimizer leaves ndim <= 1 tensors out of the ratio and the decay: optlab does
    so for a group with ``layer_adaptation=False, weight_decay=0``; it starts the buffer at 0."""
    count = 9
    start = initial_params(count)
    theirs = [p.clone().requires_grad_() for p in start]
    ours = [p.clone().requires_grad_() for p in start]
    vectors = [p for p in ours if p.ndim <= 1]
    tensors = [p for p in ours if p.ndim > 1]
    reference = pytorch_optimizer.LARS(
        theirs, lr=0.3, trust_coefficient=ETA, foreach=implementation == "foreach", **options
    )
    optimizer = LARS(
        [
            {"params": tensors},
            {"params": vectors, "layer_adaptation": False, "weight_decay": 0.0},
        ],
        lr=0.3,
        trust_coefficient=ETA,
        **IMPLEMENTATIONS[implementation],
        **options,
    )
    for grads in gradients(count):
        set_grads(theirs, grads)  # theirs writes into p.grad: its own copies
        reference.step()
        set_grads(ours, grads)
        kept = [None if p.grad is None else p.grad.clone() for p in ours]
        optimizer.step()
        assert all(k is None or torch.equal(p.grad, k) for p, k in zip(ours, kept, strict=True)), (
            "optlab wrote into p.grad"
        )
    for index, (mine, other) in enumerate(zip(ours, theirs, strict=True)):
        assert_rel_close(mine.detach(), other.detach(), 1e-10, f"param {index}")
        if options["momentum"]:
            assert_rel_close(
                optimizer.state[mine]["momentum_buffer"],
                reference.state[other]["momentum_buffer"],
                1e-10,
                f"buffer {index}",
            )


# --------------------------------------------------------------------------
# Checkpoints, validation, passes over memory.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_resumed_run_is_bitwise_the_uninterrupted_one(implementation):
    count = 6
    grads = gradients(count, steps=20)
    options = dict(
        lr=0.2, momentum=0.9, weight_decay=0.01, trust_coefficient=ETA,
        **IMPLEMENTATIONS[implementation],
    )  # fmt: skip

    def make_params():
        return [p.float().requires_grad_() for p in initial_params(count)]

    round_trip(LARS, make_params, options, 9, 11, grads)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_complex_and_non_contiguous_parameters_take_the_plain_steps(implementation):
    options = dict(lr=0.3, momentum=0.9, weight_decay=0.01, trust_coefficient=ETA)
    assert_complex_and_strided_take_the_plain_steps(
        LARS, {**options, **IMPLEMENTATIONS[implementation]}
    )


INVALID = [
    ({"lr": -0.1}, "lr must be a finite number >= 0, got -0.1"),
    ({"momentum": 1.0}, "momentum must be in [0, 1), got 1.0"),
    ({"momentum": -0.5}, "momentum must be in [0, 1), got -0.5"),
    ({"dampening": 1.5}, "dampening must be in [0, 1], got 1.5"),
    ({"weight_decay": -1e-4}, "weight_decay must be a finite number >= 0, got -0.0001"),
    ({"trust_coefficient": float("nan")}, "trust_coefficient must be a finite number >= 0"),
    ({"trust_clip": 1}, "trust_clip must be True or False, got 1"),
    ({"layer_adaptation": None}, "layer_adaptation must be True or False, got None"),
    ({"nesterov": True, "momentum": 0.0}, "nesterov=True requires momentum > 0"),
    ({"nesterov": True, "dampening": 0.1}, "nesterov=True requires momentum > 0 and dampening"),
]


@pytest.mark.parametrize(("options", "message"), INVALID)
def test_bad_hyperparameters_raise_named_errors_and_change_nothing(options, message):
    param = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match=re.escape(message)):
        LARS([param], **options)
    optimizer = LARS([param], lr=0.1)
    before = copy.deepcopy(optimizer.state_dict())
    with pytest.raises(ValueError, match="param group 1"):
        optimizer.add_param_group({"params": [torch.zeros(2, requires_grad=True)], **options})
    assert optimizer.state_dict() == before and len(optimizer.param_groups) == 1


def test_defaults_and_state_dict_hold_every_option():
    optimizer = LARS([torch.zeros(2, requires_grad=True)])
    group = optimizer.state_dict()["param_groups"][0]
    assert {k: v for k, v in group.items() if k != "params"} == dict(
        lr=1e-3, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False,
        trust_coefficient=1e-3, trust_clip=False, layer_adaptation=True,
        maximize=False, foreach=None, fused=None,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("implementation", "weight_decay", "nesterov", "expected"),
    [
        ("foreach", 0.0, False, 10),
        ("foreach", 0.01, False, 13),
        ("foreach", 0.01, True, 16),
        ("loop", 0.0, False, 31),  # the rule run eagerly: a temporary per operation
        ("loop", 0.01, True, 36),
        ("fused", 0.0, False, 2),  # the norms; the kernel adds 5 (read p, g, b; write p, b)
        ("fused", 0.01, True, 2),
    ],
)
def test_passes_over_memory_are_the_documented_ones(
    implementation, weight_decay, nesterov, expected
):
    passes = count_passes(
        lambda params: LARS(
            params,
            lr=0.1,
            weight_decay=weight_decay,
            nesterov=nesterov,
            **IMPLEMENTATIONS[implementation],
        )  # fmt: skip
    )
    assert passes == expected
