"""The NeRF system: photometric loss, optional distortion and opacity regularizers (all shared with
NeuS, in ``BaseSystem.common_losses``)."""
from __future__ import annotations

import dataclasses
from systems import register
from systems.base import BaseSystem, SystemConfig
from systems.losses import Weight


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
