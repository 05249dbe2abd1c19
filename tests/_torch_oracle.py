"""The side-by-side harness of the oracle tests against a torch.optim optimizer (RAdam, NAdam).

Odd shapes in one or more param groups, a noisy quadratic's gradients with
some missing, an lr change at step 60; what each test asserts stays in its file.
"""

from __future__ import annotations

import pytest
import torch

from optlab.optim import _fused

RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}
SHAPES = [(3,), (5, 7), (2, 3, 4)]
STEPS = 100

needs_fused = pytest.mark.skipif(
    _fused.fused_unavailable_reason("cpu") is not None,
    reason=f"fused kernels unavailable: {_fused.fused_unavailable_reason('cpu')}",
)
IMPLEMENTATIONS = [
    pytest.param({"foreach": False}, id="loop"),
    pytest.param({"foreach": True}, id="foreach"),
    pytest.param({"fused": True}, id="fused", marks=needs_fused),
]


def make_params(dtype: torch.dtype, groups: int = 2) -> list[torch.Tensor]:
    """``groups`` sets of the odd shapes, the same values every call."""
    generator = torch.Generator().manual_seed(0)
    return [
        torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype).requires_grad_()
        for _ in range(groups)
        for shape in SHAPES
    ]


def groups_of(params, options: list[dict]) -> list[dict]:
    size = len(SHAPES)
    return [{"params": params[size * i : size * (i + 1)], **o} for i, o in enumerate(options)]


def gradients(params, step: int, generator: torch.Generator) -> list[torch.Tensor | None]:
    """A noisy quadratic's gradient; none for each (5, 7) parameter every fourth step, and none
    for the whole last group every seventh (when there are more than two groups)."""
    grads = []
    last_group = len(params) - len(SHAPES)
    for index, param in enumerate(params):
        noise = torch.randn(param.shape, generator=generator, dtype=torch.float64)
        grad = (2 * (param.detach().double() - 1.0) + 0.5 * noise).to(param.dtype)
        missing = index % len(SHAPES) == 1 and step % 4 == 3
        missing |= len(params) > 2 * len(SHAPES) and index >= last_group and step % 7 == 0
        grads.append(None if missing else grad)
    return grads


def set_grads(params, grads) -> None:
    for param, grad in zip(params, grads, strict=True):
        param.grad = None if grad is None else grad.clone()


def assert_rel_close(actual, expected, rtol: float, what: str) -> None:
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale, msg=what)


def run_side_by_side(
    reference, optimizer, options: list[dict], implementation, dtype, steps=STEPS, **defaults
):
    """``optimizer`` (optlab's) and ``reference`` (torch.optim's, per-tensor loop), one group per
    entry of ``options``, on the same gradients; the lr of every group halved at step 60."""
    theirs_params = make_params(dtype, len(options))
    ours_params = make_params(dtype, len(options))
    theirs = reference(groups_of(theirs_params, options), foreach=False, **defaults)
    ours = optimizer(groups_of(ours_params, options), **implementation, **defaults)
    generator = torch.Generator().manual_seed(1)
    for step in range(steps):
        if step == 60:
            for optimizer in (theirs, ours):
                for group in optimizer.param_groups:
                    group["lr"] *= 0.5
        grads = gradients(theirs_params, step, generator)
        set_grads(theirs_params, grads)
        set_grads(ours_params, grads)
        theirs.step()
        ours.step()
    return theirs, theirs_params, ours, ours_params
