"""Learning-rate schedules: a factor of the base learning rate per optimizer step.

Both start with a linear warm-up ``(step + 1) / ramp`` and then decay:

* :func:`linear_decay` (IIER training, a ``LambdaLR`` factor): ramp ``warmup + 1`` (the
  last warm-up step reaches ``warmup / (warmup + 1)``, step ``warmup`` the full rate), then
  linearly to 0 at ``total`` steps;
* :func:`cosine_decay` (the demo encoder's training, set on the optimizer each step): ramp
  ``warmup`` (the last warm-up step reaches the full rate), then a half cosine down to
  ``floor`` times the rate at ``total`` steps, held there after.

The two ramps differ by one step, as the runs they reproduce were trained. transformers'
``get_linear_schedule_with_warmup`` / ``get_cosine_schedule_with_warmup`` ramp as
``step / warmup`` (0 at the first step) and their cosine ends at 0, so using them would
change every learning rate and hence the trained weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable

Schedule = Callable[[int], float]


def _ramp(step: int, length: int) -> float:
    return (step + 1) / length


def linear_decay(warmup: int, total: int) -> Schedule:
    """Linear warm-up over ``warmup`` steps, then linear decay to 0 at ``total`` steps."""

    def factor(step: int) -> float:
        if step < warmup:
            return _ramp(step, warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def cosine_decay(warmup: int, total: int, floor: float) -> Schedule:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``floor`` at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return _ramp(step, warmup)
        t = (step - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(t, 1)))

    return factor
