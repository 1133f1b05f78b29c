"""The identity encoding and the "with-xyz" wrapper (centred coordinates + an inner encoding)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Tuple

import torch

from models.encodings import encodings, register
from models.encodings.base import Encoding
from utils.config import component


@register("identity")
class Identity(Encoding):
    """x [N, D] -> x [N, D]."""

    @dataclass
    class Config:
        pass

    def __init__(self, cfg: "Identity.Config", n_input_dims: int = 3):
        super().__init__()
        self.n_input_dims = n_input_dims
        self.n_output_dims = n_input_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, D] -> [N, D]."""
        return x

    def forward_with_jacobian(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """x [N, D] -> (x, identity [N, D, D] (an expanded view))."""
        N, D = x.shape
        eye = torch.eye(D, dtype=x.dtype, device=x.device)
        return x, eye.expand(N, D, D)


def make_inner(inner: Any, n_input_dims: int) -> Encoding:
    """Build a nested encoding from its parsed Config (with ``.name``) or a raw mapping."""
    if inner is None:
        raise ValueError("a nested encoding is required (a mapping with a 'name')")
    if isinstance(inner, Mapping):
        return encodings.make(inner["name"], inner, n_input_dims=n_input_dims)
    return encodings.make(inner.name, inner, n_input_dims=n_input_dims)


@register("with-xyz")
class WithXYZ(Encoding):
    """x [N, D] in [0, 1]^D -> concat((2x - 1) * xyz_scale, inner(x)): [N, D + F_inner].

    The centred coordinates come FIRST (the MLP's sphere initialization relies on it).
    ``finest_active_resolution`` and ``current_level`` are forwarded from the inner encoding
    when it has them.
    """

    @dataclass
    class Config:
        inner: Any = component("encoding", {"name": "hashgrid"}, help="the wrapped encoding")
        xyz_scale: float = 1.0  # multiplies the centred coordinates 2x - 1

    _FORWARDED = ("finest_active_resolution", "current_level")

    def __init__(self, cfg: "WithXYZ.Config", n_input_dims: int = 3):
        super().__init__()
        self.cfg = cfg
        self.inner = make_inner(cfg.inner, n_input_dims)
        self.n_input_dims = n_input_dims
        self.n_output_dims = n_input_dims + self.inner.n_output_dims
        self.xyz_scale = float(cfg.xyz_scale)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in WithXYZ._FORWARDED and "inner" in self._modules:
                return getattr(self._modules["inner"], name)
            raise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, D] -> [N, D + F_inner]."""
        return torch.cat([(x * 2.0 - 1.0) * self.xyz_scale, self.inner(x)], dim=-1)

    def forward_with_jacobian(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """x [N, D] -> (features [N, F], d features / d x [N, F, D])."""
        N, D = x.shape
        feats, jac = self.inner.forward_with_jacobian(x)
        eye = torch.eye(D, dtype=jac.dtype, device=x.device) * (2.0 * self.xyz_scale)
        out = torch.cat([(x * 2.0 - 1.0) * self.xyz_scale, feats], dim=-1)
        return out, torch.cat([eye.expand(N, D, D), jac], dim=1)

    def has_explicit_jacobian(self, x: torch.Tensor) -> bool:
        return self.inner.has_explicit_jacobian(x)

    def update_step(self, epoch: int, global_step: int) -> None:
        self.inner.update_step(epoch, global_step)

    def regularizations(self) -> Dict[str, torch.Tensor]:
        return self.inner.regularizations()
