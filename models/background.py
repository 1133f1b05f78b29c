"""A learned background beyond the scene box (NeRF++ / mip-NeRF 360 style), for unbounded scenes.

A density field with radiance (``volume-density`` geometry + ``volume-radiance`` texture) over all
of space, queried at contracted coordinates (``contract(x, scene box, 'un_bounded_sphere')``, so
infinity maps to a finite cell of the encoding). Each ray gets ``n_samples`` contiguous intervals
from where it leaves the scene box to ``far_plane``, uniform in disparity (1/t), which is close to
uniform in contracted space. The model composites it behind the foreground (see ``BaseModel.composite_background``):

    rgb = fg_rgb + (1 - fg_opacity) * (bg_rgb + (1 - bg_opacity) * background_colour)

with ``fg_rgb`` and ``bg_rgb`` premultiplied by their opacities.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Literal

import torch
from torch import Tensor, nn

from models import backgrounds, geometries, textures
from models.outputs import BackgroundOutput, PackedSamples, count
from models.rendering import FieldValues, contract, render_packed, sample_background
from utils.config import at_least, checked, component, positive

# the field's unit-cube inputs are the contracted coordinates: a geometry box of radius 1 maps
# [-1, 1]^3 onto [0, 1]^3 (see field_points)
_FIELD_RADIUS = 1.0


@backgrounds.register("nerf-background")
class NeRFBackground(nn.Module):
    @dataclasses.dataclass
    class Config:
        # intervals per ray, uniform in disparity from the box exit to far_plane
        n_samples: int = checked(at_least(1), default=32)
        far_plane: float = checked(positive(), default=1000.0)  # ray distance (scene units) where the background ends
        contraction: Literal["un_bounded_sphere"] = "un_bounded_sphere"
        # the field, over contracted coordinates
        geometry: Any = component(
            "geometry",
            {"name": "volume-density", "feature_dim": 7,
             "xyz_encoding": {"name": "hashgrid", "n_levels": 12, "n_features_per_level": 2, "log2_hashmap_size": 17,
                              "base_resolution": 16, "per_level_scale": 1.4},
             "mlp_network": {"name": "mlp", "n_neurons": 32, "n_hidden_layers": 1, "activation": "relu"},
             # start thin (density ~ e^-5 per unit distance): the background's intervals run to the far
             # plane, and a denser start saturates their opacity, so gradients vanish where it must clear
             "density_bias": -5.0},
        )
        texture: Any = component(
            "texture",
            {"name": "volume-radiance",
             "dir_encoding": {"name": "spherical-harmonics", "degree": 4},
             "mlp_network": {"name": "mlp", "n_neurons": 32, "n_hidden_layers": 2, "activation": "relu",
                             "output_activation": "sigmoid"}},
        )

    def __init__(self, cfg: "NeRFBackground.Config") -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.n_samples < 1:
            raise ValueError(f"model.background.n_samples must be >= 1, got {cfg.n_samples}")
        if not cfg.far_plane > 0:
            raise ValueError(f"model.background.far_plane must be > 0, got {cfg.far_plane}")
        if cfg.geometry.name != "volume-density":
            raise ValueError(f"model.background.geometry must be a volume-density field, got '{cfg.geometry.name}'")
        self.geometry = geometries.make(cfg.geometry.name, cfg.geometry, radius=_FIELD_RADIUS,
                                        path="model.background.geometry")
        self.texture = textures.make(cfg.texture.name, cfg.texture, n_feature_dims=self.geometry.feature_dim,
                                     path="model.background.texture")

    def update_step(self, epoch: int, global_step: int) -> None:
        self.geometry.update_step(epoch, global_step)
        self.texture.update_step(epoch, global_step)

    def field_points(self, points: Tensor, aabb: Tensor) -> Tensor:
        """World points [N, 3] -> the points [N, 3] to hand the geometry so that its unit-cube map
        yields the contracted coordinates (geometry.to_unit_cube(p) = p / (2 radius) + 1/2)."""
        u = contract(points, aabb, self.cfg.contraction)
        return (u - 0.5) * (2.0 * self.geometry.radius)

    def density(self, points: Tensor, aabb: Tensor) -> Tensor:
        """World points [N, 3] -> density [N] (per unit of world distance)."""
        return self.geometry.density(self.field_points(points, aabb))

    def field_values(self, rays_o: Tensor, rays_d: Tensor, aabb: Tensor, samples: PackedSamples) -> FieldValues:
        """Density and colour at the samples of rays [R, 3] beyond the box aabb [6]."""
        dirs = samples.directions(rays_d)
        geo = self.geometry(self.field_points(samples.points(rays_o, dirs), aabb))
        return FieldValues(rgb=self.texture(geo["feature"], dirs), sigma=geo["density"])

    def forward(
        self,
        rays_o: Tensor,
        rays_d: Tensor,
        aabb: Tensor,
        near_plane: float = 0.0,
        far_plane: float = math.inf,
        backend: str = "auto",
    ) -> BackgroundOutput:
        """Rays [R, 3] and the scene box aabb [6] -> the background alone (see BackgroundOutput):
        rgb [R, 3] premultiplied by its opacity [R, 1], depth [R, 1], and during training its
        samples with their weights, and their intervals in normalized disparity (0 at the box exit,
        1 at the far plane).
        """
        n_rays = rays_o.shape[0]
        far = min(float(self.cfg.far_plane), float(far_plane))
        n = self.cfg.n_samples
        ray_indices, t_starts, t_ends = sample_background(
            rays_o, rays_d, aabb, far_plane=far, n_samples=n, stratified=self.training, near_plane=near_plane
        )
        samples = PackedSamples(ray_indices, t_starts, t_ends, n_rays=n_rays)
        acc, _ = render_packed(samples, functools.partial(self.field_values, rays_o, rays_d, aabb), backend=backend)
        out = BackgroundOutput(rgb=acc.rgb, opacity=acc.opacity, depth=acc.depth, num_samples=count(len(samples), rays_o))
        if self.training:
            with torch.no_grad():  # samples are sorted by ray, n per ray
                start = t_starts.view(n_rays, n)[:, :1]
                inv_start, inv_far = 1.0 / start, 1.0 / far
                span = (inv_start - inv_far).clamp_min(1e-12)
                s_starts = ((inv_start - 1.0 / t_starts.view(n_rays, n)) / span).clamp(0.0, 1.0).reshape(-1)
                s_ends = ((inv_start - 1.0 / t_ends.view(n_rays, n)) / span).clamp(0.0, 1.0).reshape(-1)
            out.samples, out.s_starts, out.s_ends = samples, s_starts, s_ends
        return out
