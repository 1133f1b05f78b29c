"""NeRF positional encoding with optional coarse-to-fine band weights (BARF)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import torch

from models.encodings import register
from utils.config import at_least, checked
from models.encodings.base import Encoding, on_empty_batch


@register("frequency")
class Frequency(Encoding):
    """x [N, D] -> [sin(2^k pi x_d), cos(2^k pi x_d)] for k < n_frequencies: [N, D * 2 * n_frequencies].

    Layout (as tiny-cuda-nn's "Frequency"): ``out[:, d * 2n + 2k]`` = sin, ``+ 1`` = cos. The
    input itself is not included; use the "with-xyz" wrapper for that. With ``c2f_end_step``
    set, band k is weighted by ``(1 - cos(pi * clamp(alpha - k, 0, 1))) / 2`` where alpha grows
    linearly from 0 at ``c2f_start_step`` to n_frequencies at ``c2f_end_step`` (BARF).
    """

    @dataclass
    class Config:
        n_frequencies: int = checked(at_least(1), default=6)
        c2f_start_step: int = checked(at_least(0), default=0)
        c2f_end_step: Optional[int] = checked(at_least(1), default=None)  # None: no coarse-to-fine weighting

        def check(self) -> Iterator[Tuple[str, str]]:
            if self.c2f_end_step is not None and self.c2f_end_step <= self.c2f_start_step:
                yield "c2f_end_step", f"must be after c2f_start_step ({self.c2f_start_step}), got {self.c2f_end_step}"

    def __init__(self, cfg: "Frequency.Config", n_input_dims: int = 3):
        super().__init__()
        if cfg.n_frequencies < 1:
            raise ValueError("frequency: n_frequencies must be >= 1")
        if cfg.c2f_end_step is not None and cfg.c2f_end_step <= cfg.c2f_start_step:
            raise ValueError("frequency: c2f_end_step must be after c2f_start_step")
        self.cfg = cfg
        self.n_input_dims = n_input_dims
        self.n_frequencies = cfg.n_frequencies
        self.n_output_dims = n_input_dims * 2 * cfg.n_frequencies
        self.register_buffer(
            "freqs", math.pi * 2.0 ** torch.arange(cfg.n_frequencies, dtype=torch.float32), persistent=False
        )
        self.register_buffer("band_weights", torch.ones(cfg.n_frequencies), persistent=False)
        if cfg.c2f_end_step is not None:
            self.update_step(0, 0)

    def update_step(self, epoch: int, global_step: int) -> None:
        cfg = self.cfg
        if cfg.c2f_end_step is None:
            return
        progress = (global_step - cfg.c2f_start_step) / (cfg.c2f_end_step - cfg.c2f_start_step)
        alpha = min(max(progress, 0.0), 1.0) * self.n_frequencies
        k = torch.arange(self.n_frequencies, dtype=torch.float64)
        w = (1.0 - torch.cos(math.pi * (alpha - k).clamp(0.0, 1.0))) / 2.0
        self.band_weights.copy_(w.to(self.band_weights))

    def _phases(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(-1) * self.freqs.to(x.dtype)  # [N, D, n]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, D] -> features [N, D * 2 * n_frequencies]."""
        if x.shape[0] == 0:
            return on_empty_batch(self.forward, x)
        a = self._phases(x)
        w = self.band_weights.to(x.dtype).unsqueeze(-1)  # [n, 1]
        out = torch.stack([torch.sin(a), torch.cos(a)], dim=-1) * w
        return out.reshape(x.shape[0], -1)

    def forward_with_jacobian(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """x [N, D] -> (features [N, F], d features / d x [N, F, D]), block diagonal in d."""
        if x.shape[0] == 0:
            return on_empty_batch(self.forward_with_jacobian, x)
        N, D = x.shape
        a = self._phases(x)
        sin, cos = torch.sin(a), torch.cos(a)
        w = self.band_weights.to(x.dtype).unsqueeze(-1)
        feats = (torch.stack([sin, cos], dim=-1) * w).reshape(N, -1)
        f = (self.freqs.to(x.dtype) * self.band_weights.to(x.dtype)).unsqueeze(-1)  # [n, 1]
        der = torch.stack([cos, -sin], dim=-1) * f  # [N, D, n, 2]
        eye = torch.eye(D, dtype=x.dtype, device=x.device).view(1, D, 1, 1, D)
        jac = (der.unsqueeze(-1) * eye).reshape(N, -1, D)
        return feats, jac

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, n_frequencies={self.n_frequencies}"
