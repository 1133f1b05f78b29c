"""NeuS's variance network: the one learnable sharpness ``inv_s`` of the SDF-derived opacity."""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch
from torch import Tensor, nn

from utils.config import at_least, checked, non_negative, positive, schedule
from utils.schedules import Weight as Schedule, check_weight, weight_at


@dataclasses.dataclass
class VarianceConfig:
    init_val: float = 0.3  # inv_s starts at exp(10 * init_val)
    # optionally cap inv_s, raising the cap from exp(10 * init_val) to max_inv_s over training
    modulate: bool = False
    mod_start_steps: int = checked(at_least(0), default=0)
    reach_max_steps: int = checked(at_least(0), default=10000)
    max_inv_s: float = checked(positive(), default=4096.0)
    # a floor under inv_s: a number or a [[step, value], ...] schedule (0: none). NeuS's finite
    # sharpness gives rays that pass just outside the surface some opacity, which the silhouettes
    # of the images answer by shrinking the surface (by about 1 / inv_s); a rising floor late in
    # training shrinks that bias
    min_inv_s: Schedule = checked(schedule(non_negative()), default=0.0)


class VarianceNetwork(nn.Module):
    """NeuS's single learnable sharpness: inv_s = exp(10 * variance)."""

    def __init__(self, cfg: VarianceConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.variance = nn.Parameter(torch.tensor(float(cfg.init_val)))
        self._cap: Optional[float] = None
        check_weight(cfg.min_inv_s, "model.variance.min_inv_s")
        self._floor = weight_at(cfg.min_inv_s, 0)

    @property
    def inv_s(self) -> Tensor:
        """Scalar tensor, differentiable w.r.t. the variance."""
        value = torch.exp(self.variance * 10.0)
        if self._floor > 0:
            value = value.clamp(min=self._floor)
        if self._cap is not None:
            value = value.clamp(max=self._cap)
        return value

    def update_step(self, epoch: int, global_step: int) -> None:
        cfg = self.cfg
        self._floor = weight_at(cfg.min_inv_s, global_step)
        if not cfg.modulate or global_step < cfg.mod_start_steps:
            self._cap = None if not cfg.modulate else math.exp(10.0 * cfg.init_val)
            return
        frac = min(1.0, (global_step - cfg.mod_start_steps) / max(1, cfg.reach_max_steps - cfg.mod_start_steps))
        start = math.exp(10.0 * cfg.init_val)
        self._cap = start + (cfg.max_inv_s - start) * frac
