"""vpmel.schedules gives exactly the learning rates the trainers used before it existed."""

from __future__ import annotations

import math

import pytest

from vpmel.schedules import cosine_decay, linear_decay


def old_iier_factor(step: int, warmup: int, total: int) -> float:
    """stages/train.py's lr_lambda before the move (IIER)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (total - step) / max(1, total - warmup))


def old_encoder_factor(step: int, warmup: int, total: int, floor: float) -> float:
    """vpmel/encoders/training.py's lr_factor before the move (the demo encoder)."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(t, 1)))


@pytest.mark.parametrize("warmup, total", [(10, 90), (0, 16), (1, 16), (5, 5), (100, 4000)])
def test_linear_decay_is_the_iier_schedule(warmup: int, total: int) -> None:
    factor = linear_decay(warmup, total)
    assert [factor(s) for s in range(total + 3)] == [
        old_iier_factor(s, warmup, total) for s in range(total + 3)
    ]


@pytest.mark.parametrize(
    "warmup, total, floor", [(100, 4000, 0.05), (65, 780, 0.05), (1, 10, 0.0), (0, 7, 0.5)]
)
def test_cosine_decay_is_the_encoder_schedule(warmup: int, total: int, floor: float) -> None:
    factor = cosine_decay(warmup, total, floor)
    assert [factor(s) for s in range(total + 3)] == [
        old_encoder_factor(s, warmup, total, floor) for s in range(total + 3)
    ]
