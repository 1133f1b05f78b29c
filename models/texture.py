"""Colour fields: ``volume-radiance`` (features + encoded view direction [+ normal] -> rgb) and
``volume-color`` (features -> rgb), plus the NeuS variance (the sharpness of the SDF's density)."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import torch
from torch import Tensor, nn

from models import register
from models.encodings import encodings
from models.networks import networks
from utils.config import component
from utils.schedules import Weight as Schedule, check_weight, weight_at


@register("volume-radiance")
class VolumeRadiance(nn.Module):
    @dataclasses.dataclass
    class Config:
        input_feature_dim: int = 13  # must equal the geometry's feature_dim
        dir_encoding: Any = component("encoding", {"name": "spherical-harmonics", "degree": 4})
        mlp_network: Any = component(
            "network", {"name": "mlp", "n_neurons": 64, "n_hidden_layers": 2, "activation": "relu",
                        "output_activation": "sigmoid"},
        )
        use_normal: bool = False  # also feed the geometry's normal

    def __init__(self, cfg: "VolumeRadiance.Config") -> None:
        super().__init__()
        self.cfg = cfg
        self.dir_encoding = encodings.make(cfg.dir_encoding.name, cfg.dir_encoding, n_input_dims=3)
        n_in = cfg.input_feature_dim + self.dir_encoding.n_output_dims + (3 if cfg.use_normal else 0)
        self.network = networks.make(cfg.mlp_network.name, cfg.mlp_network, n_input_dims=n_in, n_output_dims=3)

    def forward(self, features: Tensor, dirs: Tensor, normal: Optional[Tensor] = None) -> Tensor:
        """features [N, F], unit view directions dirs [N, 3], normal [N, 3] -> rgb [N, 3]."""
        parts = [features, self.dir_encoding(dirs)]
        if self.cfg.use_normal:
            if normal is None:
                raise ValueError("model.texture.use_normal is set but the geometry gave no normal")
            parts.append(normal)
        return self.network(torch.cat(parts, dim=-1))

    def update_step(self, epoch: int, global_step: int) -> None:
        if hasattr(self.dir_encoding, "update_step"):
            self.dir_encoding.update_step(epoch, global_step)


@register("volume-color")
class VolumeColor(nn.Module):
    @dataclasses.dataclass
    class Config:
        input_feature_dim: int = 13
        mlp_network: Any = component(
            "network", {"name": "mlp", "n_neurons": 64, "n_hidden_layers": 1, "output_activation": "sigmoid"}
        )

    def __init__(self, cfg: "VolumeColor.Config") -> None:
        super().__init__()
        self.cfg = cfg
        self.network = networks.make(cfg.mlp_network.name, cfg.mlp_network, n_input_dims=cfg.input_feature_dim,
                                     n_output_dims=3)

    def forward(self, features: Tensor, dirs: Optional[Tensor] = None, normal: Optional[Tensor] = None) -> Tensor:
        """features [N, F] -> rgb [N, 3] (view direction and normal unused)."""
        return self.network(features)

    def update_step(self, epoch: int, global_step: int) -> None:
        pass


@dataclasses.dataclass
class VarianceConfig:
    init_val: float = 0.3  # inv_s starts at exp(10 * init_val)
    # optionally cap inv_s, raising the cap from exp(10 * init_val) to max_inv_s over training
    modulate: bool = False
    mod_start_steps: int = 0
    reach_max_steps: int = 10000
    max_inv_s: float = 4096.0
    # a floor under inv_s: a number or a [[step, value], ...] schedule (0: none). NeuS's finite
    # sharpness gives rays that pass just outside the surface some opacity, which the silhouettes
    # of the images answer by shrinking the surface (by about 1 / inv_s); a rising floor late in
    # training shrinks that bias
    min_inv_s: Schedule = 0.0


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
