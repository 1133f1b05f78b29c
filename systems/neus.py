"""The NeuS system: photometric loss plus the SDF's regularizers."""
from __future__ import annotations

import dataclasses
from typing import Dict

import torch
from torch import Tensor

from systems import register
from systems.base import BaseSystem, CommonLossConfig, SystemConfig
from systems.losses import (
    Weight,
    curvature_loss,
    eikonal_loss,
    normal_smoothness_loss,
    sparsity_loss,
    weight_nonzero,
)


@dataclasses.dataclass
class NeuSLossConfig(CommonLossConfig):
    lambda_rgb_l1: Weight = 1.0
    lambda_eikonal: Weight = 0.1
    # eikonal loss also on uniform random points in the scene box: keeps the SDF distance-like
    # where rays never sample (e.g. inside objects, with model.grid_mode: shell)
    lambda_eikonal_random: Weight = 0.0
    eikonal_random_points: int = 4096
    lambda_sparsity: Weight = 0.0
    lambda_curvature: Weight = 0.0  # needs model.compute_laplace
    # normals at each ray's expected surface point and at that point moved by a random offset of
    # normal_smoothness_std scene units should agree: flattens bumps where colour says little
    lambda_normal_smoothness: Weight = 0.0
    normal_smoothness_std: float = 0.01
    normal_smoothness_rays: int = 1024  # at most this many rays (those that hit the surface) per step
    sparsity_scale: float = 1.0


@register("neus-system")
class NeuSSystem(BaseSystem):
    @dataclasses.dataclass
    class Config(SystemConfig):
        loss: NeuSLossConfig = dataclasses.field(default_factory=NeuSLossConfig)

    def __init__(self, cfg, model_cfg, context) -> None:
        super().__init__(cfg, model_cfg, context)
        if weight_nonzero(cfg.loss.lambda_curvature) and not self.model.cfg.compute_laplace:
            raise ValueError("system.loss.lambda_curvature > 0 needs model.compute_laplace: true")
        if weight_nonzero(cfg.loss.lambda_distortion_bg) and self.model.background is None:
            raise ValueError("system.loss.lambda_distortion_bg > 0 needs a learned background (model.background)")

    def losses(self, batch: Dict[str, Tensor], out: Dict[str, Tensor]) -> Dict[str, Tensor]:
        terms = self.common_losses(batch, out)
        loss_cfg = self.cfg.loss
        has_samples = out["sdf_grad_samples"].shape[0] > 0
        if weight_nonzero(loss_cfg.lambda_eikonal) and has_samples:
            terms["eikonal"] = eikonal_loss(out["sdf_grad_samples"])
        if weight_nonzero(loss_cfg.lambda_eikonal_random):
            terms["eikonal_random"] = eikonal_loss(self.random_box_gradients(loss_cfg.eikonal_random_points))
        if weight_nonzero(loss_cfg.lambda_sparsity) and has_samples:
            terms["sparsity"] = sparsity_loss(out["sdf_samples"], loss_cfg.sparsity_scale)
        if weight_nonzero(loss_cfg.lambda_curvature) and "sdf_laplace_samples" in out and has_samples:
            terms["curvature"] = curvature_loss(out["sdf_laplace_samples"])
        if weight_nonzero(loss_cfg.lambda_normal_smoothness):
            points = self.surface_points(batch, out, loss_cfg.normal_smoothness_rays)
            if points.shape[0] > 0:
                nudged = points + torch.randn_like(points) * loss_cfg.normal_smoothness_std
                grads = self.model.geometry(torch.cat([points, nudged]), with_grad=True)["grad"]
                normals = torch.nn.functional.normalize(grads, dim=-1)
                terms["normal_smoothness"] = normal_smoothness_loss(*normals.chunk(2))
        return terms

    @torch.no_grad()
    def surface_points(self, batch: Dict[str, Tensor], out: Dict[str, Tensor], max_points: int) -> Tensor:
        """Expected surface points [K, 3] (K <= max_points) of the rays that are mostly opaque,
        at their weight-averaged depth, inside the scene box."""
        opacity = out["opacity"].squeeze(-1)
        hit = torch.nonzero(opacity > 0.5).squeeze(-1)[:max_points]
        depth = out["depth"].squeeze(-1)[hit] / opacity[hit]
        points = batch["rays_o"][hit] + batch["rays_d"][hit] * depth[:, None]
        r = float(self.model.cfg.radius)
        return points[(points.abs() <= r).all(dim=-1)]

    def random_box_gradients(self, n: int) -> Tensor:
        """SDF gradients [n, 3] at uniform random points of the scene box."""
        r = float(self.model.cfg.radius)
        points = (torch.rand(n, 3, device=self.device) * 2.0 - 1.0) * r
        return self.model.geometry(points, with_grad=True)["grad"]

    def log_extra_train_stats(self) -> None:
        self.log("train/inv_s", float(self.model.inv_s.detach()), prog_bar=True)
        self.log("train/cos_anneal_ratio", float(self.model.cos_anneal_ratio))

