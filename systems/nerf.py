"""The NeRF system: photometric loss, optional distortion (of the foreground and of the learned
background) and opacity regularizers (all shared with NeuS, in ``systems.losses.common_loss_terms``)."""
from __future__ import annotations

import dataclasses

from systems import register
from systems.base import BaseSystem
from systems.config import LOSS_WEIGHT, CommonLossConfig, SystemConfig
from systems.losses import Weight
from utils.config import checked


@dataclasses.dataclass
class NeRFLossConfig(CommonLossConfig):
    lambda_rgb_mse: Weight = checked(LOSS_WEIGHT, default=1.0)


@register("nerf-system")
class NeRFSystem(BaseSystem):
    @dataclasses.dataclass
    class Config(SystemConfig):
        loss: NeRFLossConfig = dataclasses.field(default_factory=NeRFLossConfig)
