"""NeRF: a density field with radiance, rendered by volume rendering.

Bounded scenes live in the box [-radius, radius]^3. For unbounded ones (real captures) set
``model.background: {name: nerf-background}``: the box holds the foreground field (with its
occupancy grid) and a second density field under mip-NeRF 360's contraction covers everything
beyond it, composited behind (see models/background.py)."""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Optional, Tuple

import torch
from torch import Tensor

from models import register
from models.base import BaseModel, GridConfig, ModelConfig
from models.outputs import PackedSamples
from models.rendering import FieldValues
from utils.config import checked, component, fraction


@dataclasses.dataclass
class NeRFGridConfig(GridConfig):
    # a density field's cells count as occupied above a larger opacity than NeuS's
    occ_thre: float = checked(fraction(), default=0.01)


@register("nerf")
class NeRFModel(BaseModel):
    @dataclasses.dataclass
    class Config(ModelConfig):
        geometry: Any = component("geometry", {"name": "volume-density"})
        texture: Any = component("texture", {"name": "volume-radiance"})
        grid: NeRFGridConfig = dataclasses.field(default_factory=NeRFGridConfig)

        def check(self) -> Iterator[Tuple[str, str]]:
            yield from super().check()
            if self.geometry.name != "volume-density":
                yield "geometry.name", f"NeRF needs a density geometry (volume-density), got '{self.geometry.name}'"

    def __init__(self, cfg: "NeRFModel.Config") -> None:
        super().__init__(cfg)
        if cfg.geometry.name != "volume-density":
            raise ValueError(f"model.geometry: NeRF needs a density geometry (volume-density), got '{cfg.geometry.name}'")

    @torch.no_grad()
    def occupancy_fn(self, points: Tensor) -> Tensor:
        """points [N, 3] -> opacity of one render step at each point [N]."""
        return 1.0 - torch.exp(-self.geometry.density(points) * self.render_step_size)

    def field_values(self, rays_o: Tensor, rays_d: Tensor, samples: PackedSamples) -> FieldValues:
        """Density and colour at the samples of rays [R, 3]."""
        dirs = samples.directions(rays_d)
        geo = self.geometry(samples.points(rays_o, dirs))
        return FieldValues(rgb=self.texture(geo["feature"], dirs), sigma=geo["density"])

    @torch.no_grad()
    def estimate_alpha(self, rays_o: Tensor, rays_d: Tensor, t_starts: Tensor, t_ends: Tensor,
                       ray_indices: Tensor) -> Tensor:
        """The opacity [S] of each interval from the density at its midpoint (no gradients)."""
        samples = PackedSamples(ray_indices, t_starts, t_ends, n_rays=rays_o.shape[0])
        density = self.geometry.density(samples.points(rays_o, samples.directions(rays_d)))
        return 1.0 - torch.exp(-density * samples.deltas)

    @torch.no_grad()
    def surface_colors(self, points: Tensor, normals: Optional[Tensor] = None, chunk: int = 65536) -> Tensor:
        """Colour of points [N, 3] seen head-on along their unit normals [N, 3] (a mesh's), or
        along -z without them (a density field has no normals of its own) -> [N, 3]."""
        colours = []
        for i in range(0, points.shape[0], chunk):
            pts = points[i:i + chunk]
            geo = self.geometry(pts)
            if normals is None:
                dirs = torch.zeros_like(pts)
                dirs[:, 2] = -1.0
            else:
                dirs = -torch.nn.functional.normalize(normals[i:i + chunk], dim=-1)
            colours.append(self.texture(geo["feature"], dirs))
        return torch.cat(colours) if colours else points.new_zeros(0, 3)

    def isosurface_field(self, threshold: float):
        """(fn: points [N, 3] -> -density [N], -threshold): inside, where density > threshold, is below the level."""
        return (lambda pts: -self.geometry.density(pts)), -threshold
