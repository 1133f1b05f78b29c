"""NeRF: a density field with radiance, rendered by volume rendering.

Bounded scenes live in the box [-radius, radius]^3. For unbounded ones (real captures) set
``model.background: {name: nerf-background}``: the box holds the foreground field (with its
occupancy grid) and a second density field under mip-NeRF 360's contraction covers everything
beyond it, composited behind (see models/background.py)."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict

import torch
from torch import Tensor

from models import register
from models.rendering import accumulate_along_rays, render_weight_from_density
from models.volume_renderer import RendererConfig, VolumeRenderer
from utils.config import component


@register("nerf")
class NeRFModel(VolumeRenderer):
    @dataclasses.dataclass
    class Config(RendererConfig):
        geometry: Any = component("model", {"name": "volume-density"})
        texture: Any = component("model", {"name": "volume-radiance", "input_feature_dim": 15})
        grid_occ_thre: float = 0.01

    @torch.no_grad()
    def occupancy_fn(self, points: Tensor) -> Tensor:
        """points [N, 3] -> opacity of one render step at each point [N]."""
        return 1.0 - torch.exp(-self.geometry.density(points) * self.render_step_size)

    def render(self, rays_o: Tensor, rays_d: Tensor, background: Tensor) -> Dict[str, Tensor]:
        """Rays [R, 3], background [R, 3] -> rgb [R, 3], opacity [R, 1], depth [R, 1], ...

        opacity and depth are the foreground's (inside the scene box); rgb has the learned
        background (model.background: an unbounded scene) and then the background colour behind it.
        """
        n_rays = rays_o.shape[0]

        @torch.no_grad()
        def alpha_fn(t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor) -> Tensor:
            mid = (t_starts + t_ends) * 0.5
            pts = rays_o[ray_indices] + rays_d[ray_indices] * mid[:, None]
            return 1.0 - torch.exp(-self.geometry.density(pts) * (t_ends - t_starts))

        ray_indices, t_starts, t_ends = self.march(rays_o, rays_d, alpha_fn if self.prunes_samples() else None)
        midpoints = (t_starts + t_ends) * 0.5
        dirs = rays_d[ray_indices]
        geo = self.geometry(rays_o[ray_indices] + dirs * midpoints[:, None])
        rgb = self.texture(geo["feature"], dirs)
        weights, _, _ = render_weight_from_density(
            t_starts, t_ends, geo["density"], ray_indices=ray_indices, n_rays=n_rays, backend=self.cfg.backend
        )
        opacity = accumulate_along_rays(weights, None, ray_indices, n_rays)
        out = {
            "opacity": opacity,
            "depth": accumulate_along_rays(weights, midpoints[:, None], ray_indices, n_rays),
            "num_samples": torch.tensor(float(ray_indices.shape[0]), device=rays_o.device),
        }
        fg_rgb = accumulate_along_rays(weights, rgb, ray_indices, n_rays)
        out["rgb"] = self.composite_background(out, fg_rgb, opacity, rays_o, rays_d, background)
        if self.training:
            out.update(weights=weights, t_starts=t_starts, t_ends=t_ends, ray_indices=ray_indices,
                       density_samples=geo["density"])
        return out

    @torch.no_grad()
    def surface_colors(self, vertices: Tensor, chunk: int = 65536) -> Tensor:
        """Colour of points [V, 3] viewed along -z (NeRF has no normals to look along) -> [V, 3]."""
        colours = []
        for i in range(0, vertices.shape[0], chunk):
            pts = vertices[i:i + chunk]
            geo = self.geometry(pts)
            dirs = torch.zeros_like(pts)
            dirs[:, 2] = -1.0
            colours.append(self.texture(geo["feature"], dirs))
        return torch.cat(colours) if colours else vertices.new_zeros(0, 3)

    def isosurface_field(self, threshold: float):
        """(fn: points [N, 3] -> -density [N], -threshold): inside, where density > threshold, is below the level."""
        return (lambda pts: -self.geometry.density(pts)), -threshold
