"""The NeuS system: photometric loss plus the SDF's regularizers."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterator, Tuple

from torch import Tensor

from models.outputs import RenderOutput
from systems import register
from systems.base import BaseSystem
from systems.config import LOSS_WEIGHT, CommonLossConfig, SystemConfig
from systems.losses import (
    Weight,
    curvature_loss,
    eikonal_loss,
    normal_smoothness_loss,
    sparsity_loss,
    weight_nonzero,
)
from utils.config import at_least, checked, positive


@dataclasses.dataclass
class NeuSLossConfig(CommonLossConfig):
    lambda_rgb_l1: Weight = checked(LOSS_WEIGHT, default=1.0)
    lambda_eikonal: Weight = checked(LOSS_WEIGHT, default=0.1)
    # eikonal loss also on uniform random points in the scene box: keeps the SDF distance-like
    # where rays never sample (e.g. inside objects, with model.grid.mode: shell)
    lambda_eikonal_random: Weight = checked(LOSS_WEIGHT, default=0.0)
    eikonal_random_points: int = checked(at_least(1), default=4096)
    lambda_sparsity: Weight = checked(LOSS_WEIGHT, default=0.0)
    lambda_curvature: Weight = checked(LOSS_WEIGHT, default=0.0)  # needs model.compute_laplace
    # normals at each ray's expected surface point and at that point moved by a random offset of
    # normal_smoothness_std scene units should agree: flattens bumps where colour says little
    lambda_normal_smoothness: Weight = checked(LOSS_WEIGHT, default=0.0)
    normal_smoothness_std: float = checked(positive(), default=0.01)
    # at most this many rays (those that hit the surface) per step
    normal_smoothness_rays: int = checked(at_least(1), default=1024)
    sparsity_scale: float = checked(positive(), default=1.0)


@register("neus-system")
class NeuSSystem(BaseSystem):
    @dataclasses.dataclass
    class Config(SystemConfig):
        loss: NeuSLossConfig = dataclasses.field(default_factory=NeuSLossConfig)

        def model_problems(self, model_cfg: Any) -> Iterator[Tuple[str, str]]:
            if not hasattr(model_cfg, "variance"):  # (NeuS's config is the one with a variance)
                yield "model.name", f"neus-system needs a NeuS model (neus), got '{getattr(model_cfg, 'name', '?')}'"
                return
            yield from super().model_problems(model_cfg)
            if weight_nonzero(self.loss.lambda_curvature) and not model_cfg.compute_laplace:
                yield "system.loss.lambda_curvature", "> 0 needs model.compute_laplace: true"

    def __init__(self, cfg, model, context, schedule=None) -> None:
        super().__init__(cfg, model, context, schedule)  # (checks model_problems)

    def losses(self, batch: Dict[str, Tensor], out: RenderOutput) -> Dict[str, Tensor]:
        terms = super().losses(batch, out)
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
