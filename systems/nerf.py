"""The NeRF system: photometric loss, optional distortion and opacity regularizers."""
from __future__ import annotations

import dataclasses
from typing import Dict

from torch import Tensor

from models.rendering import distortion_loss
from systems import register
from systems.base import BaseSystem, SystemConfig
from systems.losses import Weight, mask_loss, opaque_loss
from systems.neus import weight_nonzero


@dataclasses.dataclass
class NeRFLossConfig:
    lambda_rgb_mse: Weight = 1.0
    lambda_rgb_l1: Weight = 0.0
    lambda_mask: Weight = 0.0
    lambda_opaque: Weight = 0.0
    lambda_distortion: Weight = 0.0
    lambda_tv: Weight = 0.0
    lambda_l1: Weight = 0.0


@register("nerf-system")
class NeRFSystem(BaseSystem):
    @dataclasses.dataclass
    class Config(SystemConfig):
        loss: NeRFLossConfig = dataclasses.field(default_factory=NeRFLossConfig)

    def losses(self, batch: Dict[str, Tensor], out: Dict[str, Tensor]) -> Dict[str, Tensor]:
        loss_cfg = self.cfg.loss
        terms: Dict[str, Tensor] = {}
        diff = out["rgb"] - batch["rgb"]
        if weight_nonzero(loss_cfg.lambda_rgb_mse):
            terms["rgb_mse"] = (diff ** 2).mean()
        if weight_nonzero(loss_cfg.lambda_rgb_l1):
            terms["rgb_l1"] = diff.abs().mean()
        opacity = out["opacity"].squeeze(-1)
        if weight_nonzero(loss_cfg.lambda_mask):
            terms["mask"] = mask_loss(opacity, batch["alpha"])
        if weight_nonzero(loss_cfg.lambda_opaque):
            terms["opaque"] = opaque_loss(opacity)
        if weight_nonzero(loss_cfg.lambda_distortion) and out["weights"].shape[0] > 0:
            terms["distortion"] = distortion_loss(
                out["weights"], out["t_starts"], out["t_ends"], out["ray_indices"], opacity.shape[0]
            ).mean()
        regs = self.model.geometry.regularizations()
        for name in ("tv", "l1"):
            if weight_nonzero(getattr(loss_cfg, f"lambda_{name}")) and name in regs:
                terms[name] = regs[name]
        return terms
