"""NeuS: an SDF rendered by volume rendering with the SDF-derived opacity of Wang et al. 2021."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from models import register
from models.rendering import accumulate_along_rays, render_weight_from_alpha
from models.texture import VarianceConfig, VarianceNetwork
from models.volume_renderer import RendererConfig, VolumeRenderer
from utils.config import component


def neus_alpha(sdf: Tensor, grad: Tensor, dirs: Tensor, dists: Tensor, inv_s: Tensor, cos_anneal_ratio: float) -> Tensor:
    """Opacity of each sample section from the SDF (NeuS, eq. 13, with the cosine annealing trick).

    sdf [S] at the section midpoints, grad [S, 3] their SDF gradients, dirs [S, 3] unit ray
    directions, dists [S] section lengths, inv_s scalar -> alpha [S] in [0, 1].
    """
    return neus_alpha_from_slope(sdf, (dirs * grad).sum(-1), dists, inv_s, cos_anneal_ratio)


def neus_alpha_from_slope(sdf: Tensor, true_cos: Tensor, dists: Tensor, inv_s: Tensor, cos_anneal_ratio: float) -> Tensor:
    """neus_alpha given the SDF's rate of change along each ray, true_cos [S] (= dirs . grad)."""
    # early on, anneal from a cosine that never lets the SDF look like it faces away (-0.5 ... 0)
    iter_cos = -(F.relu(-true_cos * 0.5 + 0.5) * (1.0 - cos_anneal_ratio) + F.relu(-true_cos) * cos_anneal_ratio)
    next_sdf = sdf + iter_cos * dists * 0.5
    prev_sdf = sdf - iter_cos * dists * 0.5
    prev_cdf = torch.sigmoid(prev_sdf * inv_s)
    next_cdf = torch.sigmoid(next_sdf * inv_s)
    return ((prev_cdf - next_cdf + 1e-5) / (prev_cdf + 1e-5)).clamp(0.0, 1.0)


def slope_along_rays(values: Tensor, t: Tensor, ray_indices: Tensor) -> Tensor:
    """Rate of change along each ray of values [S] at distances t [S] of packed samples (sorted by
    ray, then t): the difference to the next sample of the same ray, or to the previous one for a
    ray's last sample; -1 (head-on) for a ray's only sample -> [S]."""
    values = values.float()  # e.g. bfloat16 under autocast; t is float32
    slope = torch.full_like(values, -1.0)
    if values.shape[0] < 2:
        return slope
    same = ray_indices[1:] == ray_indices[:-1]  # sample i and i + 1 share a ray
    diff = (values[1:] - values[:-1]) / (t[1:] - t[:-1]).clamp_min(1e-12)
    slope[:-1] = torch.where(same, diff, slope[:-1])
    last_with_previous = torch.zeros_like(slope, dtype=torch.bool)
    last_with_previous[1:] = same
    last_with_previous[:-1] &= ~same
    idx = torch.nonzero(last_with_previous)[:, 0]
    slope[idx] = diff[idx - 1]
    return slope


@register("neus")
class NeuSModel(VolumeRenderer):
    @dataclasses.dataclass
    class Config(RendererConfig):
        geometry: Any = component("model", {"name": "volume-sdf"})
        texture: Any = component("model", {"name": "volume-radiance"})
        variance: VarianceConfig = dataclasses.field(default_factory=VarianceConfig)
        cos_anneal_end: int = 20000  # steps over which the cosine annealing ratio goes 0 -> 1
        compute_laplace: bool = False  # needed by the curvature loss
        # what the occupancy grid keeps: 'alpha' = cells whose NeuS opacity is high (inside too);
        # 'shell' = only cells within about a cell of the surface, so rays skip the interior
        grid_mode: Literal["alpha", "shell"] = "alpha"

    def __init__(self, cfg: "NeuSModel.Config") -> None:
        super().__init__(cfg)
        self.variance = VarianceNetwork(cfg.variance)
        self.cos_anneal_ratio = 1.0 if cfg.cos_anneal_end <= 0 else 0.0

    @property
    def inv_s(self) -> Tensor:
        return self.variance.inv_s

    def update_step(self, epoch: int, global_step: int) -> None:
        self.variance.update_step(epoch, global_step)
        end = self.cfg.cos_anneal_end
        self.cos_anneal_ratio = 1.0 if end <= 0 else min(1.0, global_step / end)
        super().update_step(epoch, global_step)

    @torch.no_grad()
    def occupancy_fn(self, points: Tensor) -> Tensor:
        """points [N, 3] -> NeuS opacity of a step of render_step_size facing the surface [N]."""
        sdf = self.geometry.sdf(points)
        if self.cfg.grid_mode == "shell" and self.grid is not None:
            # as if approaching the surface head-on from the nearest point of the cell
            box = self.grid.aabbs[0]
            cell_diag = float(((box[3:] - box[:3]) / torch.tensor(self.grid.resolution, device=box.device)).norm())
            sdf = (sdf.abs() - cell_diag).clamp_min(0.0)
        head_on = torch.full_like(sdf, -1.0)
        steps = torch.full_like(sdf, self.render_step_size)
        return neus_alpha_from_slope(sdf, head_on, steps, self.inv_s.clamp(1e-6, 1e6), cos_anneal_ratio=1.0)

    def render(self, rays_o: Tensor, rays_d: Tensor, background: Tensor) -> Dict[str, Tensor]:
        """Rays [R, 3], background [R, 3] -> rgb [R, 3], opacity [R, 1], depth [R, 1], normal [R, 3], ...

        opacity, depth and normal are the foreground's (inside the scene box); rgb has the learned
        background (model.background, if any) and then the background colour behind it.
        During training also the per-sample values the losses need (sdf_grad [S, 3], weights [S], ...).
        """
        n_rays = rays_o.shape[0]
        alpha_fn = self.estimated_alpha_fn(rays_o, rays_d) if self.prunes_samples() else None
        ray_indices, t_starts, t_ends = self.march(rays_o, rays_d, alpha_fn)
        midpoints = (t_starts + t_ends) * 0.5
        dirs = rays_d[ray_indices]
        positions = rays_o[ray_indices] + dirs * midpoints[:, None]
        geo = self.geometry(positions, with_grad=True, with_laplace=self.training and self.cfg.compute_laplace)
        normal = F.normalize(geo["grad"], dim=-1)
        alpha = neus_alpha(geo["sdf"], geo["grad"], dirs, t_ends - t_starts, self.inv_s, self.cos_anneal_ratio)
        rgb = self.texture(geo["feature"], dirs, normal)
        weights, _ = render_weight_from_alpha(alpha, ray_indices=ray_indices, n_rays=n_rays, backend=self.cfg.backend)
        opacity = accumulate_along_rays(weights, None, ray_indices, n_rays)
        out = {
            "opacity": opacity,
            "depth": accumulate_along_rays(weights, midpoints[:, None], ray_indices, n_rays),
            "normal": accumulate_along_rays(weights, normal, ray_indices, n_rays),
            "num_samples": torch.tensor(float(ray_indices.shape[0]), device=rays_o.device),
        }
        fg_rgb = accumulate_along_rays(weights, rgb, ray_indices, n_rays)
        out["rgb"] = self.composite_background(out, fg_rgb, opacity, rays_o, rays_d, background)
        if self.training:
            out.update(
                sdf_samples=geo["sdf"],
                sdf_grad_samples=geo["grad"],
                weights=weights,
                t_starts=t_starts,
                t_ends=t_ends,
                ray_indices=ray_indices,
            )
            if "laplace" in geo:
                out["sdf_laplace_samples"] = geo["laplace"]
        return out

    def estimated_alpha_fn(self, rays_o: Tensor, rays_d: Tensor):
        """The opacity estimate used to prune samples: NeuS's alpha with the SDF's rate of change
        along the ray taken from neighbouring samples instead of the gradient (SDF values only, so
        it costs one field evaluation without gradients)."""

        @torch.no_grad()
        def alpha_fn(t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor) -> Tensor:
            mid = (t_starts + t_ends) * 0.5
            sdf = self.geometry.sdf(rays_o[ray_indices] + rays_d[ray_indices] * mid[:, None])
            slope = slope_along_rays(sdf, mid, ray_indices)
            return neus_alpha_from_slope(sdf, slope, t_ends - t_starts, self.inv_s, self.cos_anneal_ratio)

        return alpha_fn

    # ------------------------------------------------------------------ export
    @torch.no_grad()
    def surface_colors(self, vertices: Tensor, chunk: int = 65536) -> Tensor:
        """Colour of surface points [V, 3] seen head-on (view direction = -normal) -> [V, 3]."""
        colours = []
        for i in range(0, vertices.shape[0], chunk):
            geo = self.geometry(vertices[i:i + chunk], with_grad=True)
            normal = F.normalize(geo["grad"], dim=-1)
            colours.append(self.texture(geo["feature"], -normal, normal))
        return torch.cat(colours) if colours else vertices.new_zeros(0, 3)

    def known_empty_fn(self):
        """As the base class, except that a 'shell' grid also marks the object's inside empty: then
        only the cells frozen empty (outside the masks' visual hull) count as known empty."""
        if self.grid is not None and self.cfg.grid_mode == "shell":
            return self.grid.query_frozen_empty
        return super().known_empty_fn()

    def isosurface_field(self, threshold: float):
        """(fn: points [N, 3] -> values [N], level): the surface is where fn = level, inside below it."""
        return self.geometry.sdf, threshold
