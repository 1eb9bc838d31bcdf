"""The three learning phases read off one reconstruction-loss (RL) curve: a pure function, no I/O.

    (i)   RL nearly constant, from step 0 until RL is clearly below its start;
    (ii)  RL decreasing, until its minimum;
    (iii) RL increasing after the minimum ("fitting a few").

"Clearly below" means by more than a threshold: `relative_tolerance` of the start value, or, when
several seeds exist, `spread_multiple` times the seed-to-seed standard deviation, whichever is larger,
so noise between seeds is never read as a phase boundary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

RELATIVE_TOLERANCE = 0.02  # 2% of the start value: below this, a drop is not called a drop
SPREAD_MULTIPLE = 2.0  # a drop must exceed twice the seed-to-seed standard deviation


@dataclass(frozen=True)
class Phases:
    start: float  # RL at the first step
    end_of_phase_one: int | None  # first step where RL is clearly below its start; None if it never is
    minimum_step: int  # step of the lowest RL: the start of phase (iii)
    minimum: float
    end: float  # RL at the last step
    rise_percent: float  # (end - minimum) / minimum, in percent
    threshold: float  # the margin that "clearly" used, in RL units
    minimum_inside: bool  # the minimum is neither the first nor the last step
    rises: bool  # the RL after the minimum ends clearly above it: phase (iii) is there


def detect_phases(steps: Sequence[int], values: Sequence[float], seed_spread: float = 0.0,
                  relative_tolerance: float = RELATIVE_TOLERANCE, spread_multiple: float = SPREAD_MULTIPLE) -> Phases:
    """Phase boundaries of the RL curve `values` measured at increasing `steps`.

    `seed_spread` is the seed-to-seed standard deviation of RL (0 for a single run), e.g. the mean over
    steps of the per-step standard deviation across seeds.
    """
    if len(steps) != len(values) or not steps:
        raise ValueError(f"need as many steps as values, at least one: got {len(steps)} steps, {len(values)} values")
    if any(later <= earlier for earlier, later in zip(steps, steps[1:], strict=False)):
        raise ValueError(f"steps must increase: {list(steps)}")
    if any(math.isnan(value) for value in values):
        raise ValueError("the RL curve has NaN values")
    start, end = float(values[0]), float(values[-1])
    threshold = max(relative_tolerance * abs(start), spread_multiple * seed_spread)
    end_of_phase_one = next((int(step) for step, value in zip(steps, values, strict=True) if value < start - threshold),
                            None)
    lowest = min(range(len(values)), key=lambda index: values[index])  # the first of equal minima
    minimum = float(values[lowest])
    return Phases(
        start=start,
        end_of_phase_one=end_of_phase_one,
        minimum_step=int(steps[lowest]),
        minimum=minimum,
        end=end,
        rise_percent=(end - minimum) / abs(minimum) * 100 if minimum else math.nan,
        threshold=threshold,
        minimum_inside=0 < lowest < len(values) - 1,
        rises=end > minimum + threshold,
    )
