"""A learned background beyond the scene box (NeRF++ / mip-NeRF 360 style), for unbounded scenes.

A density field with radiance (``volume-density`` geometry + ``volume-radiance`` texture) over all
of space, queried at contracted coordinates (``contract(x, scene box, 'un_bounded_sphere')``, so
infinity maps to a finite cell of the encoding). Each ray gets ``n_samples`` contiguous intervals
from where it leaves the scene box to ``far_plane``, uniform in disparity (1/t), which is close to
uniform in contracted space. The renderer composites it behind the foreground (see
``VolumeRenderer.composite_background``):

    rgb = fg_rgb + (1 - fg_opacity) * (bg_rgb + (1 - bg_opacity) * background_colour)

with ``fg_rgb`` and ``bg_rgb`` premultiplied by their opacities.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Literal

import torch
from torch import Tensor, nn

import models
from models import register
from models.rendering import accumulate_along_rays, contract, render_weight_from_density, sample_background
from utils.config import component


@register("nerf-background")
class NeRFBackground(nn.Module):
    @dataclasses.dataclass
    class Config:
        n_samples: int = 32  # intervals per ray, uniform in disparity from the box exit to far_plane
        far_plane: float = 1000.0  # ray distance (scene units) where the background ends
        contraction: Literal["un_bounded_sphere"] = "un_bounded_sphere"
        # the field; its inputs are contracted coordinates, so geometry.radius has no effect here
        geometry: Any = component(
            "model",
            {"name": "volume-density", "feature_dim": 7,
             "xyz_encoding": {"name": "hashgrid", "n_levels": 12, "n_features_per_level": 2, "log2_hashmap_size": 17,
                              "base_resolution": 16, "per_level_scale": 1.4},
             "mlp_network": {"name": "mlp", "n_neurons": 32, "n_hidden_layers": 1, "activation": "relu"},
             # start thin (density ~ e^-5 per unit distance): the background's intervals run to the far
             # plane, and a denser start saturates their opacity, so gradients vanish where it must clear
             "density_bias": -5.0},
        )
        texture: Any = component(
            "model",
            {"name": "volume-radiance", "input_feature_dim": 7,
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
        feature_dim = getattr(cfg.texture, "input_feature_dim", cfg.geometry.feature_dim)
        if feature_dim != cfg.geometry.feature_dim:
            raise ValueError(
                f"model.background.texture.input_feature_dim ({feature_dim}) must equal "
                f"model.background.geometry.feature_dim ({cfg.geometry.feature_dim})"
            )
        self.geometry = models.make(cfg.geometry.name, cfg.geometry, path="model.background.geometry")
        self.texture = models.make(cfg.texture.name, cfg.texture, path="model.background.texture")

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

    def forward(
        self,
        rays_o: Tensor,
        rays_d: Tensor,
        aabb: Tensor,
        near_plane: float = 0.0,
        far_plane: float = math.inf,
        backend: str = "auto",
    ) -> Dict[str, Tensor]:
        """Rays [R, 3] and the scene box aabb [6] -> the background alone:
        rgb [R, 3] (premultiplied by its opacity), opacity [R, 1], depth [R, 1], num_samples (scalar),
        and during training its packed samples: weights [S], ray_indices [S], t_starts [S], t_ends [S]
        and s_starts [S], s_ends [S] (the intervals in normalized disparity: 0 at the box exit, 1 at
        the far plane; what the distortion loss uses, as t spans orders of magnitude).
        """
        n_rays = rays_o.shape[0]
        far = min(float(self.cfg.far_plane), float(far_plane))
        n = self.cfg.n_samples
        ray_indices, t_starts, t_ends = sample_background(
            rays_o, rays_d, aabb, far_plane=far, n_samples=n, stratified=self.training, near_plane=near_plane
        )
        midpoints = (t_starts + t_ends) * 0.5
        dirs = rays_d[ray_indices]
        geo = self.geometry(self.field_points(rays_o[ray_indices] + dirs * midpoints[:, None], aabb))
        rgb = self.texture(geo["feature"], dirs)
        weights, _, _ = render_weight_from_density(
            t_starts, t_ends, geo["density"], ray_indices=ray_indices, n_rays=n_rays, backend=backend
        )
        out = {
            "rgb": accumulate_along_rays(weights, rgb, ray_indices, n_rays),
            "opacity": accumulate_along_rays(weights, None, ray_indices, n_rays),
            "depth": accumulate_along_rays(weights, midpoints[:, None], ray_indices, n_rays),
            "num_samples": torch.tensor(float(ray_indices.shape[0]), device=rays_o.device),
        }
        if self.training:
            with torch.no_grad():  # samples are sorted by ray, n per ray
                start = t_starts.view(n_rays, n)[:, :1]
                inv_start, inv_far = 1.0 / start, 1.0 / far
                span = (inv_start - inv_far).clamp_min(1e-12)
                s_starts = ((inv_start - 1.0 / t_starts.view(n_rays, n)) / span).clamp(0.0, 1.0).reshape(-1)
                s_ends = ((inv_start - 1.0 / t_ends.view(n_rays, n)) / span).clamp(0.0, 1.0).reshape(-1)
            out.update(weights=weights, ray_indices=ray_indices, t_starts=t_starts, t_ends=t_ends,
                       s_starts=s_starts, s_ends=s_ends)
        return out
