"""Learning-rate schedules by name, as per-step factors of the base learning rate.

A schedule is a function ``factor(step) -> float`` over the optimizer steps
``step = 0, 1, ..., total_steps - 1`` (``step`` is the index of the step about
to be taken); the trainer sets every param group's ``lr`` to
``base_lr * factor(step)`` before each step, where ``base_lr`` is the group's
learning rate when training starts. With ``T = total_steps``:

- ``constant``: ``1``.
- ``step``: ``gamma ** k`` where ``k`` counts the milestones already reached;
  milestones at 1/2 and 3/4 of training (``step >= round(f * T)``), ``gamma = 0.1``
  (the ResNet-on-CIFAR recipe, by steps rather than epochs).
- ``cosine``: ``0.5 * (1 + cos(pi * step / T))``, from 1 towards 0
  (SGDR without restarts, Loshchilov & Hutter 2017).
- ``warmup-cosine``: linear warm-up over the first ``W = max(1, round(0.05 * T))``
  steps, ``(step + 1) / W``, then cosine over the rest,
  ``0.5 * (1 + cos(pi * (step - W) / (T - W)))``.

Schedules are stepped per optimizer step, not per epoch, so a fractional
epoch count or an evaluation every few examples needs nothing special.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

__all__ = ["SCHEDULES", "Schedule", "list_schedules", "make_schedule"]

Schedule = Callable[[int], float]

#: Milestones (fractions of training) and decay of the ``step`` schedule.
STEP_MILESTONES: tuple[float, ...] = (0.5, 0.75)
STEP_GAMMA = 0.1
#: Fraction of training spent warming up in ``warmup-cosine``.
WARMUP_FRACTION = 0.05


def _constant(total_steps: int) -> Schedule:
    return lambda step: 1.0


def _step(
    total_steps: int,
    milestones: Sequence[float] = STEP_MILESTONES,
    gamma: float = STEP_GAMMA,
) -> Schedule:
    boundaries = [round(fraction * total_steps) for fraction in milestones]

    def factor(step: int) -> float:
        return gamma ** sum(step >= boundary for boundary in boundaries)

    return factor


def _cosine(total_steps: int) -> Schedule:
    def factor(step: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * step / total_steps))

    return factor


def _warmup_cosine(total_steps: int, warmup_fraction: float = WARMUP_FRACTION) -> Schedule:
    warmup = max(1, round(warmup_fraction * total_steps))
    decay = max(1, total_steps - warmup)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / decay))

    return factor


SCHEDULES: dict[str, Callable[[int], Schedule]] = {
    "constant": _constant,
    "step": _step,
    "cosine": _cosine,
    "warmup-cosine": _warmup_cosine,
}


def list_schedules() -> list[str]:
    """Schedule names, in the order above."""
    return list(SCHEDULES)


def make_schedule(name: str, total_steps: int) -> Schedule:
    """The schedule ``name`` for a run of ``total_steps`` optimizer steps.

    Raises:
        ValueError: unknown name (the message lists the valid ones) or
            ``total_steps`` not a positive integer.
    """
    if name not in SCHEDULES:
        raise ValueError(
            f"unknown learning-rate schedule {name!r}; valid names: {', '.join(SCHEDULES)}"
        )
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be an integer >= 1, got {total_steps!r}")
    return SCHEDULES[name](total_steps)
