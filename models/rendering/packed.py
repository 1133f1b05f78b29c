"""Packed samples: the samples of many rays in one flat list, as nerfacc packs them."""
from __future__ import annotations

import dataclasses
from typing import Optional

from torch import Tensor


@dataclasses.dataclass
class PackedSamples:
    """Intervals [t_start, t_end) along R rays, packed: ray_indices [S] int64 (sorted), t_starts [S],
    t_ends [S]; ``weights`` [S] once they are rendered. n_rays is R (a ray may have no samples)."""

    ray_indices: Tensor
    t_starts: Tensor
    t_ends: Tensor
    n_rays: int
    weights: Optional[Tensor] = None

    def __len__(self) -> int:
        return int(self.ray_indices.shape[0])

    @property
    def midpoints(self) -> Tensor:
        """[S] the middle of each interval."""
        return (self.t_starts + self.t_ends) * 0.5

    @property
    def deltas(self) -> Tensor:
        """[S] the length of each interval."""
        return self.t_ends - self.t_starts

    def directions(self, rays_d: Tensor) -> Tensor:
        """rays_d [R, 3] -> each sample's ray direction [S, 3]."""
        return rays_d[self.ray_indices]

    def points(self, rays_o: Tensor, dirs: Tensor) -> Tensor:
        """rays_o [R, 3], the samples' directions dirs [S, 3] -> the interval midpoints [S, 3]."""
        return rays_o[self.ray_indices] + dirs * self.midpoints[:, None]
