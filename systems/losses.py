"""Loss terms. Their weights are numbers or piecewise-linear schedules over steps (see
utils/schedules.py: ``[[0, 0.0], [1000, 0.1]]`` ramps from 0 to 0.1 over the first 1000 steps)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from utils.schedules import Weight, check_weight, weight_at, weight_nonzero  # noqa: F401 (re-exported)


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
