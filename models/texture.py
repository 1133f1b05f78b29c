"""Colour fields: ``volume-radiance`` (features + encoded view direction [+ normal] -> rgb) and
``volume-color`` (features -> rgb). Their feature input is the geometry's: ``n_feature_dims`` is
handed over when the model builds its texture, not configured."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch
from torch import Tensor, nn

from models import textures
from models.encodings import encodings
from models.networks import networks
from utils.config import component


@textures.register("volume-radiance")
class VolumeRadiance(nn.Module):
    @dataclasses.dataclass
    class Config:
        dir_encoding: Any = component("encoding", {"name": "spherical-harmonics", "degree": 4})
        mlp_network: Any = component(
            "network", {"name": "mlp", "n_neurons": 64, "n_hidden_layers": 2, "activation": "relu",
                        "output_activation": "sigmoid"},
        )
        use_normal: bool = False  # also feed the geometry's normal

    def __init__(self, cfg: "VolumeRadiance.Config", n_feature_dims: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.dir_encoding = encodings.make(cfg.dir_encoding.name, cfg.dir_encoding, n_input_dims=3)
        n_in = n_feature_dims + self.dir_encoding.n_output_dims + (3 if cfg.use_normal else 0)
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


@textures.register("volume-color")
class VolumeColor(nn.Module):
    @dataclasses.dataclass
    class Config:
        mlp_network: Any = component(
            "network", {"name": "mlp", "n_neurons": 64, "n_hidden_layers": 1, "output_activation": "sigmoid"}
        )

    def __init__(self, cfg: "VolumeColor.Config", n_feature_dims: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.network = networks.make(cfg.mlp_network.name, cfg.mlp_network, n_input_dims=n_feature_dims,
                                     n_output_dims=3)

    def forward(self, features: Tensor, dirs: Optional[Tensor] = None, normal: Optional[Tensor] = None) -> Tensor:
        """features [N, F] -> rgb [N, 3] (view direction and normal unused)."""
        return self.network(features)

    def update_step(self, epoch: int, global_step: int) -> None:
        pass
