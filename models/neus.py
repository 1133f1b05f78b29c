"""NeuS: an SDF rendered by volume rendering with the SDF-derived opacity of Wang et al. 2021."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterator, Literal, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from models import register
from models.base import BaseModel, GridConfig, ModelConfig
from models.outputs import PackedSamples, RenderOutput
from models.rendering import FieldValues
from models.variance import VarianceConfig, VarianceNetwork
from utils.config import at_least, checked, component


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


@dataclasses.dataclass
class NeuSGridConfig(GridConfig):
    # what the grid keeps: 'alpha' = cells whose NeuS opacity is high (inside too);
    # 'shell' = only cells within about a cell of the surface, so rays skip the interior
    mode: Literal["alpha", "shell"] = "alpha"


@dataclasses.dataclass
class SdfValues(FieldValues):
    """NeuS's field at packed samples: besides colour, alpha and normals, the SDF sdf [S], its
    gradient sdf_grad [S, 3] and (optionally) its Laplacian sdf_laplace [S], for the losses."""

    sdf: Optional[Tensor] = None
    sdf_grad: Optional[Tensor] = None
    sdf_laplace: Optional[Tensor] = None


@register("neus")
class NeuSModel(BaseModel):
    @dataclasses.dataclass
    class Config(ModelConfig):
        geometry: Any = component("geometry", {"name": "volume-sdf"})
        texture: Any = component("texture", {"name": "volume-radiance"})
        variance: VarianceConfig = dataclasses.field(default_factory=VarianceConfig)
        grid: NeuSGridConfig = dataclasses.field(default_factory=NeuSGridConfig)
        # steps over which the cosine annealing ratio goes 0 -> 1 (0: none)
        cos_anneal_end: int = checked(at_least(0), default=20000)
        compute_laplace: bool = False  # needed by the curvature loss

        def check(self) -> Iterator[Tuple[str, str]]:
            yield from super().check()
            if self.geometry.name != "volume-sdf":
                yield "geometry.name", f"NeuS needs an SDF geometry (volume-sdf), got '{self.geometry.name}'"

    def __init__(self, cfg: "NeuSModel.Config") -> None:
        super().__init__(cfg)
        if cfg.geometry.name != "volume-sdf":
            raise ValueError(f"model.geometry: NeuS needs an SDF geometry (volume-sdf), got '{cfg.geometry.name}'")
        self.variance = VarianceNetwork(cfg.variance)
        self.cos_anneal_ratio = 1.0 if cfg.cos_anneal_end <= 0 else 0.0

    @property
    def inv_s(self) -> Tensor:
        return self.variance.inv_s

    def train_stats(self) -> Dict[str, float]:
        return {"inv_s": float(self.inv_s.detach()), "cos_anneal_ratio": float(self.cos_anneal_ratio)}

    def update_step(self, epoch: int, global_step: int) -> None:
        self.variance.update_step(epoch, global_step)
        end = self.cfg.cos_anneal_end
        self.cos_anneal_ratio = 1.0 if end <= 0 else min(1.0, global_step / end)
        super().update_step(epoch, global_step)

    @torch.no_grad()
    def occupancy_fn(self, points: Tensor) -> Tensor:
        """points [N, 3] -> NeuS opacity of a step of render_step_size facing the surface [N]."""
        sdf = self.geometry.sdf(points)
        if self.cfg.grid.mode == "shell" and self.grid is not None:
            # as if approaching the surface head-on from the nearest point of the cell
            box = self.grid.aabbs[0]
            cell_diag = float(((box[3:] - box[:3]) / torch.tensor(self.grid.resolution, device=box.device)).norm())
            sdf = (sdf.abs() - cell_diag).clamp_min(0.0)
        head_on = torch.full_like(sdf, -1.0)
        steps = torch.full_like(sdf, self.render_step_size)
        return neus_alpha_from_slope(sdf, head_on, steps, self.inv_s.clamp(1e-6, 1e6), cos_anneal_ratio=1.0)

    def field_values(self, rays_o: Tensor, rays_d: Tensor, samples: PackedSamples) -> SdfValues:
        """SDF, normals, NeuS opacity and colour at the samples of rays [R, 3]."""
        dirs = samples.directions(rays_d)
        positions = samples.points(rays_o, dirs)
        geo = self.geometry(positions, with_grad=True, with_laplace=self.training and self.cfg.compute_laplace)
        normal = F.normalize(geo["grad"], dim=-1)
        alpha = neus_alpha(geo["sdf"], geo["grad"], dirs, samples.deltas, self.inv_s, self.cos_anneal_ratio)
        rgb = self.texture(geo["feature"], dirs, normal)
        return SdfValues(rgb=rgb, alpha=alpha, normal=normal, sdf=geo["sdf"], sdf_grad=geo["grad"],
                         sdf_laplace=geo.get("laplace"))

    def add_training_values(self, out: RenderOutput, values: SdfValues) -> None:
        out.sdf, out.sdf_grad, out.sdf_laplace = values.sdf, values.sdf_grad, values.sdf_laplace

    @torch.no_grad()
    def estimate_alpha(self, rays_o: Tensor, rays_d: Tensor, t_starts: Tensor, t_ends: Tensor,
                       ray_indices: Tensor) -> Tensor:
        """NeuS's alpha [S] with the SDF's rate of change along the ray taken from neighbouring
        samples instead of the gradient: SDF values only, one field evaluation without gradients."""
        samples = PackedSamples(ray_indices, t_starts, t_ends, n_rays=rays_o.shape[0])
        mid = samples.midpoints
        sdf = self.geometry.sdf(samples.points(rays_o, samples.directions(rays_d)))
        slope = slope_along_rays(sdf, mid, ray_indices)
        return neus_alpha_from_slope(sdf, slope, samples.deltas, self.inv_s, self.cos_anneal_ratio)

    # ------------------------------------------------------------------ regularizers on the field
    def sdf_gradients_at_random_points(self, n: int) -> Tensor:
        """SDF gradients [n, 3] at uniform random points of the scene box (for an eikonal term
        where rays never sample)."""
        r = float(self.cfg.radius)
        points = (torch.rand(n, 3, device=self.aabb.device) * 2.0 - 1.0) * r
        return self.geometry(points, with_grad=True)["grad"]

    @torch.no_grad()
    def surface_points(self, rays_o: Tensor, rays_d: Tensor, out: RenderOutput, max_points: int) -> Tensor:
        """Expected surface points [K, 3] (K <= max_points) of the rays [R, 3] that are mostly
        opaque in ``out``, at their weight-averaged depth, inside the scene box."""
        opacity = out.opacity.squeeze(-1)
        hit = torch.nonzero(opacity > 0.5).squeeze(-1)[:max_points]
        depth = out.depth.squeeze(-1)[hit] / opacity[hit]
        points = rays_o[hit] + rays_d[hit] * depth[:, None]
        r = float(self.cfg.radius)
        return points[(points.abs() <= r).all(dim=-1)]

    def normals_near_surface(self, rays_o: Tensor, rays_d: Tensor, out: RenderOutput, max_points: int,
                             std: float) -> Optional[tuple]:
        """Unit normals ([K, 3], [K, 3]) at the rays' expected surface points and at the same points
        moved by Gaussian offsets of ``std`` scene units (for a normal-smoothness term); None when
        no ray of ``out`` hits the surface."""
        points = self.surface_points(rays_o, rays_d, out, max_points)
        if points.shape[0] == 0:
            return None
        nudged = points + torch.randn_like(points) * std
        grads = self.geometry(torch.cat([points, nudged]), with_grad=True)["grad"]
        return tuple(F.normalize(grads, dim=-1).chunk(2))

    # ------------------------------------------------------------------ export
    @torch.no_grad()
    def surface_colors(self, points: Tensor, normals: Optional[Tensor] = None, chunk: int = 65536) -> Tensor:
        """Colour of surface points [N, 3] seen head-on (view direction = -normal) -> [N, 3].
        normals [N, 3]: the surface's unit normals (e.g. a mesh's); without them the SDF's
        gradient gives them (a costlier evaluation with gradients)."""
        colours = []
        for i in range(0, points.shape[0], chunk):
            geo = self.geometry(points[i:i + chunk], with_grad=normals is None)
            normal = F.normalize(geo["grad"] if normals is None else normals[i:i + chunk], dim=-1)
            colours.append(self.texture(geo["feature"], -normal, normal))
        return torch.cat(colours) if colours else points.new_zeros(0, 3)

    def known_empty_fn(self):
        """As the base class, except that a 'shell' grid also marks the object's inside empty: then
        only the cells frozen empty (outside the masks' visual hull) count as known empty."""
        if self.grid is not None and self.cfg.grid.mode == "shell":
            return self.grid.query_frozen_empty
        return super().known_empty_fn()

    def isosurface_field(self, threshold: float):
        """(fn: points [N, 3] -> values [N], level): the surface is where fn = level, inside below it."""
        return self.geometry.sdf, threshold
