"""Loss terms and their weights. A weight is a number or a piecewise-linear schedule over steps,
written as a list of [step, value] points: ``[[0, 0.0], [1000, 0.1]]`` ramps from 0 to 0.1 over
the first 1000 steps and stays there."""
from __future__ import annotations

import bisect
from typing import List, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

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


def eikonal_loss(grad: Tensor) -> Tensor:
    """SDF gradients [S, 3] should have unit length -> scalar."""
    return ((grad.norm(dim=-1) - 1.0) ** 2).mean()


def mask_loss(opacity: Tensor, mask: Tensor) -> Tensor:
    """Binary cross-entropy of per-ray opacity [R] against the foreground mask [R] -> scalar."""
    return F.binary_cross_entropy(opacity.clamp(1e-3, 1.0 - 1e-3), mask.clamp(0.0, 1.0))


def opaque_loss(opacity: Tensor) -> Tensor:
    """Entropy of per-ray opacity [R]: pushes each ray to be fully opaque or fully clear -> scalar."""
    o = opacity.clamp(1e-3, 1.0 - 1e-3)
    return -(o * torch.log(o) + (1.0 - o) * torch.log(1.0 - o)).mean()


def sparsity_loss(sdf: Tensor, scale: float) -> Tensor:
    """Penalize SDF values [S] near zero away from the surface (few spurious surfaces) -> scalar."""
    return torch.exp(-scale * sdf.abs()).mean()


def normal_smoothness_loss(normals: Tensor, perturbed_normals: Tensor) -> Tensor:
    """Unit normals [K, 3] at surface points and [K, 3] at points nudged off them should agree:
    mean squared difference -> scalar (0 for a plane; penalizes bumps finer than the nudge)."""
    return (normals - perturbed_normals).pow(2).sum(-1).mean()


def curvature_loss(laplace: Tensor) -> Tensor:
    """Mean absolute Laplacian [S] of the SDF -> scalar."""
    return laplace.abs().mean()
