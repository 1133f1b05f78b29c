"""Loss terms. Their weights are numbers or piecewise-linear schedules over steps (see
utils/schedules.py: ``[[0, 0.0], [1000, 0.1]]`` ramps from 0 to 0.1 over the first 1000 steps)."""
from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn.functional as F
from torch import Tensor

from models.outputs import RenderOutput
from models.rendering import distortion_loss
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


def common_loss_terms(loss_cfg: Any, batch: Dict[str, Tensor], out: RenderOutput, model: Any) -> Dict[str, Tensor]:
    """The unweighted terms every system has, each only when its weight (loss_cfg.lambda_<name>)
    can be non-zero: photometric (rgb_mse, rgb_l1), mask (BCE of opacity against batch["alpha"]),
    opaque, distortion of the foreground and of the learned background, and the fields' own
    regularizers (model.field_regularizations: tv, l1). batch: rays [R, ...]; out: their render."""
    terms: Dict[str, Tensor] = {}
    diff = out.rgb - batch["rgb"]
    if weight_nonzero(loss_cfg.lambda_rgb_mse):
        terms["rgb_mse"] = (diff ** 2).mean()
    if weight_nonzero(loss_cfg.lambda_rgb_l1):
        terms["rgb_l1"] = diff.abs().mean()
    opacity = out.opacity.squeeze(-1)
    if weight_nonzero(loss_cfg.lambda_mask):
        terms["mask"] = mask_loss(opacity, batch["alpha"])
    if weight_nonzero(loss_cfg.lambda_opaque):
        terms["opaque"] = opaque_loss(opacity)
    samples = out.samples
    if weight_nonzero(loss_cfg.lambda_distortion) and samples is not None and len(samples) > 0:
        terms["distortion"] = distortion_loss(samples.weights, samples.t_starts, samples.t_ends, samples.ray_indices,
                                              samples.n_rays).mean()
    bg = out.background
    if weight_nonzero(loss_cfg.lambda_distortion_bg) and bg is not None and bg.samples is not None:
        terms["distortion_bg"] = distortion_loss(bg.samples.weights, bg.s_starts, bg.s_ends, bg.samples.ray_indices,
                                                 bg.samples.n_rays).mean()
    regs = model.field_regularizations()
    for name in ("tv", "l1"):
        if weight_nonzero(getattr(loss_cfg, f"lambda_{name}")) and name in regs:
            terms[name] = regs[name]
    return terms
