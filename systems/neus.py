"""The NeuS system: photometric loss plus the SDF's regularizers."""
from __future__ import annotations

import dataclasses
from typing import Dict

from torch import Tensor

from models.outputs import RenderOutput
from systems import register
from systems.base import BaseSystem
from systems.config import CommonLossConfig, SystemConfig
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
    # where rays never sample (e.g. inside objects, with model.grid.mode: shell)
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

    def __init__(self, cfg, model, context, schedule=None) -> None:
        super().__init__(cfg, model, context, schedule)
        if not hasattr(model, "variance"):
            raise ValueError(f"system: neus-system needs a NeuS model, got model.name '{model.cfg.name}'")
        if weight_nonzero(cfg.loss.lambda_curvature) and not model.cfg.compute_laplace:
            raise ValueError("system.loss.lambda_curvature > 0 needs model.compute_laplace: true")

    def losses(self, batch: Dict[str, Tensor], out: RenderOutput) -> Dict[str, Tensor]:
        terms = self.common_losses(batch, out)
        loss_cfg = self.cfg.loss
        has_samples = out.sdf_grad.shape[0] > 0
        if weight_nonzero(loss_cfg.lambda_eikonal) and has_samples:
            terms["eikonal"] = eikonal_loss(out.sdf_grad)
        if weight_nonzero(loss_cfg.lambda_eikonal_random):
            terms["eikonal_random"] = eikonal_loss(self.model.sdf_gradients_at_random_points(loss_cfg.eikonal_random_points))
        if weight_nonzero(loss_cfg.lambda_sparsity) and has_samples:
            terms["sparsity"] = sparsity_loss(out.sdf, loss_cfg.sparsity_scale)
        if weight_nonzero(loss_cfg.lambda_curvature) and out.sdf_laplace is not None and has_samples:
            terms["curvature"] = curvature_loss(out.sdf_laplace)
        if weight_nonzero(loss_cfg.lambda_normal_smoothness):
            normals = self.model.normals_near_surface(batch["rays_o"], batch["rays_d"], out,
                                                      loss_cfg.normal_smoothness_rays, loss_cfg.normal_smoothness_std)
            if normals is not None:
                terms["normal_smoothness"] = normal_smoothness_loss(*normals)
        return terms
