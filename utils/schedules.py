"""Piecewise-linear schedules over training steps: a value is a number or a list of [step, value]
points, e.g. ``[[0, 0.0], [1000, 0.1]]`` ramps from 0 to 0.1 over the first 1000 steps and stays
there. Used for loss weights and other per-step settings."""
from __future__ import annotations

import bisect
from typing import List, Union

Weight = Union[float, List[List[float]]]


def weight_at(weight: Weight, step: int) -> float:
    """The value of a loss weight (number or [[step, value], ...] schedule) at ``step``."""
    if isinstance(weight, (int, float)):
        return float(weight)
    points = sorted((float(s), float(v)) for s, v in weight)
    steps = [s for s, _ in points]
    if step <= steps[0]:
        return points[0][1]
    if step >= steps[-1]:
        return points[-1][1]
    k = bisect.bisect_right(steps, step)
    (s0, v0), (s1, v1) = points[k - 1], points[k]
    return v0 + (v1 - v0) * (step - s0) / (s1 - s0)


def check_weight(weight: Weight, key: str) -> None:
    """A schedule must be a list of [step, value] pairs."""
    if isinstance(weight, (int, float)):
        return
    if not weight or any(len(p) != 2 for p in weight):
        raise ValueError(f"{key}: a weight schedule is a list of [step, value] pairs, got {weight}")


def weight_nonzero(weight: Weight) -> bool:
    """Whether a weight (number or schedule) is ever non-zero, so its loss must be computed."""
    if isinstance(weight, (int, float)):
        return weight != 0
    return any(float(v) != 0 for _, v in weight)
