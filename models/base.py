"""What NeuS and NeRF share: the scene box, the parts (geometry, texture, optional background), the
occupancy grid, marching, the shared packed rendering and chunked rendering of whole images.

A model turns rays into a ``RenderOutput`` (models/outputs.py). One ``render`` call:

    march (skip empty space, prune by an opacity estimate)  -> PackedSamples
    render_packed(samples, self.field_values)                -> per-ray colour, opacity, depth, ...
    composite_background                                     -> the final colour

Subclasses supply ``field_values`` (the fields at the samples: colour plus alpha or density),
``estimate_alpha`` (a cheap opacity estimate without gradients, for pruning), ``occupancy_fn``
(what the occupancy grid keeps) and the export hooks (``isosurface_field``, ``surface_colors``).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Dict, Iterator, Literal, Optional, Tuple

import torch
from torch import Tensor, nn

from models import backgrounds, geometries, textures
from models.outputs import PackedSamples, RenderOutput, count
from models.rendering import OccupancyGrid, chunked, ray_marching
from models.rendering.volume import Accumulated, FieldValues, render_packed
from utils.config import at_least, checked, component, fraction, in_range, non_negative, positive


@dataclasses.dataclass
class GridConfig:
    """The occupancy grid that lets rays skip empty space (model.grid)."""

    enabled: bool = True
    resolution: int = checked(at_least(1), default=128)  # cells per axis over the scene box
    update_every: int = checked(at_least(1), default=16)  # steps between updates
    warmup_steps: int = checked(at_least(0), default=256)  # every cell is evaluated at each update before this step
    occ_thre: float = checked(fraction(), default=0.001)  # opacity above which a cell is occupied
    ema_decay: float = checked(fraction(), default=0.95)
    # carve the grid with the training masks' visual hull before training (when the data has masks)
    init_from_masks: bool = False
    # ... and keep the whole hull occupied for this many steps, so the surface can form anywhere
    # in it before the grid follows the field (which, in NeuS's shell mode, keeps only a thin shell)
    hull_hold_steps: int = checked(at_least(0), default=256)


@dataclasses.dataclass
class ModelConfig:
    """Options every model has (the scene box, sampling, the grid, the parts)."""

    # the scene box is [-radius, radius]^3; the geometry and the data use it too
    radius: float = checked(positive(), default=1.0)
    # sets render_step_size = box diagonal / num_samples_per_ray
    num_samples_per_ray: int = checked(at_least(1), default=1024)
    max_samples_per_ray: Optional[int] = checked(at_least(1), default=None)
    cone_angle: float = checked(non_negative(), default=0.0)  # > 0: steps grow with distance (for large scenes)
    # after marching, an opacity estimate of every sample (one field evaluation without gradients)
    # drops the samples below alpha_thre and those behind which the ray is already opaque
    # (transmittance below early_stop_eps); 0 turns each off
    alpha_thre: float = checked(in_range(0, 1, hi_open=True), default=0.0)
    early_stop_eps: float = checked(in_range(0, 1, hi_open=True), default=0.0)
    # > 0: estimate opacities front to back, this many samples per ray at a time, and stop on rays
    # already opaque, so samples behind a surface cost nothing (0: all samples in one go)
    early_stop_chunk: int = checked(non_negative(), default=0)
    near_plane: float = checked(non_negative(), default=0.0)
    far_plane: float = checked(positive(), default=1e10)
    grid: GridConfig = dataclasses.field(default_factory=GridConfig)
    # rays per chunk when rendering whole images (checked against the device's memory before a run)
    eval_chunk_size: int = checked(at_least(1), default=8192)
    backend: Literal["auto", "torch", "nerfacc"] = "auto"
    # a learned background beyond the scene box, for unbounded scenes (e.g. {name: nerf-background});
    # null: the background colour of the batch shows wherever the foreground is transparent
    background: Any = component("background", None, help="learned background model (null: none)")

    def check(self) -> Iterator[Tuple[str, str]]:
        if self.far_plane <= self.near_plane:
            yield "far_plane", f"must be > near_plane ({self.near_plane}), got {self.far_plane}"


class BaseModel(nn.Module):
    """Base of the models. ``cfg`` is a ``ModelConfig`` with ``geometry`` and ``texture`` components.

    The geometry is built for the scene box (``radius``) and the texture for the geometry's feature
    size: both are derived here, not configured twice."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = cfg
        r = float(cfg.radius)
        self.geometry = geometries.make(cfg.geometry.name, cfg.geometry, radius=r, path="model.geometry")
        self.texture = textures.make(cfg.texture.name, cfg.texture, n_feature_dims=self.geometry.feature_dim,
                                     path="model.texture")
        self.register_buffer("aabb", torch.tensor([-r, -r, -r, r, r, r], dtype=torch.float32), persistent=False)
        self.render_step_size = 2.0 * 3.0**0.5 * r / cfg.num_samples_per_ray
        self.grid: Optional[OccupancyGrid] = None
        if cfg.grid.enabled:
            self.grid = OccupancyGrid(aabb=[-r, -r, -r, r, r, r], resolution=cfg.grid.resolution)
        # bool [L, rx, ry, rz]: the cells start_grid_from_hull kept (recomputed on resume, not saved)
        self.visual_hull: Optional[Tensor] = None
        self._previous_grid_step: Optional[int] = None
        self.background: Optional[nn.Module] = None
        if cfg.background is not None:
            self.background = backgrounds.make(cfg.background.name, cfg.background, path="model.background")

    # ------------------------------------------------------------------ what subclasses supply
    def field_values(self, rays_o: Tensor, rays_d: Tensor, samples: PackedSamples) -> FieldValues:
        """The fields at the samples of rays [R, 3]: rgb [S, 3] and alpha [S] or sigma [S]."""
        raise NotImplementedError

    def estimate_alpha(self, rays_o: Tensor, rays_d: Tensor, t_starts: Tensor, t_ends: Tensor,
                       ray_indices: Tensor) -> Tensor:
        """A cheap opacity estimate [S] of packed samples (no gradients), for pruning after marching."""
        raise NotImplementedError

    def occupancy_fn(self, points: Tensor) -> Tensor:
        """points [N, 3] -> opacity of a step of render_step_size at each point [N] (no grad)."""
        raise NotImplementedError

    def add_training_values(self, out: RenderOutput, values: FieldValues) -> None:
        """Put the per-sample values the losses need into ``out`` (training only)."""

    def train_stats(self) -> Dict[str, float]:
        """Scalars worth logging during training (e.g. NeuS's sharpness)."""
        return {}

    def field_regularizations(self) -> Dict[str, Tensor]:
        """The fields' own regularizers by name (e.g. a tri-plane's 'tv' and 'l1')."""
        return self.geometry.regularizations()

    # ------------------------------------------------------------------ per step
    def update_step(self, epoch: int, global_step: int) -> None:
        """Per-step state at schedule step ``global_step`` (systems/schedule.py): the parts'
        schedules and, while training, the occupancy grid's update."""
        self.geometry.update_step(epoch, global_step)
        self.texture.update_step(epoch, global_step)
        if self.background is not None:
            self.background.update_step(epoch, global_step)
        grid_cfg = self.cfg.grid
        if self.grid is not None and self.training:
            updated = self.grid.update_every_n_steps(
                global_step,
                self.occupancy_fn,
                n=grid_cfg.update_every,
                occ_thre=grid_cfg.occ_thre,
                ema_decay=grid_cfg.ema_decay,
                warmup_steps=grid_cfg.warmup_steps,
                previous_step=self._previous_grid_step,
            )
            self._previous_grid_step = global_step
            if updated and self.visual_hull is not None and global_step < grid_cfg.hull_hold_steps:
                self.grid.binaries |= self.visual_hull.to(self.grid.binaries.device)

    @torch.no_grad()
    def start_grid_from_hull(self, hull: Tensor) -> float:
        """Mark the grid's cells outside ``hull`` (bool [rx, ry, rz], see
        ``models.rendering.visual_hull_cells``) empty for good; returns the fraction kept."""
        if self.grid is None:
            return 1.0
        self.grid.set_binary(hull.to(self.grid.binaries.device), freeze_empty=True)
        self.visual_hull = self.grid.binaries.clone()
        return float(hull.float().mean())

    # ------------------------------------------------------------------ rendering
    def prunes_samples(self) -> bool:
        """Whether marching evaluates an opacity estimate to drop samples (model.alpha_thre / early_stop_eps)."""
        return self.cfg.alpha_thre > 0 or self.cfg.early_stop_eps > 0

    def march(self, rays_o: Tensor, rays_d: Tensor) -> PackedSamples:
        """Packed samples along rays [R, 3]: the scene box's steps in occupied cells, pruned by
        ``estimate_alpha`` when model.alpha_thre / early_stop_eps are set."""
        alpha_fn = functools.partial(self.estimate_alpha, rays_o, rays_d) if self.prunes_samples() else None
        ray_indices, t_starts, t_ends = ray_marching(
            rays_o, rays_d,
            aabb=self.aabb,
            grid=self.grid,
            near_plane=self.cfg.near_plane,
            far_plane=self.cfg.far_plane,
            render_step_size=self.render_step_size,
            stratified=self.training,
            cone_angle=self.cfg.cone_angle,
            alpha_fn=alpha_fn,
            alpha_thre=self.cfg.alpha_thre,
            early_stop_eps=self.cfg.early_stop_eps,
            max_samples_per_ray=self.cfg.max_samples_per_ray,
            backend=self.cfg.backend,
            early_stop_chunk=self.cfg.early_stop_chunk,
        )
        return PackedSamples(ray_indices, t_starts, t_ends, n_rays=rays_o.shape[0])

    def render(self, rays_o: Tensor, rays_d: Tensor, background: Tensor) -> RenderOutput:
        """Rays [R, 3] and background colours [R, 3] -> RenderOutput (see models/outputs.py)."""
        samples = self.march(rays_o, rays_d)
        field_fn = functools.partial(self.field_values, rays_o, rays_d)
        acc, values = render_packed(samples, field_fn, backend=self.cfg.backend)
        out = RenderOutput(rgb=acc.rgb, opacity=acc.opacity, depth=acc.depth, normal=acc.normal,
                           num_samples=count(len(samples), rays_o))
        out.rgb = self.composite_background(out, acc, rays_o, rays_d, background)
        if self.training:
            out.samples = samples
            self.add_training_values(out, values)
        return out

    def composite_background(self, out: RenderOutput, fg: Accumulated, rays_o: Tensor, rays_d: Tensor,
                             background: Tensor) -> Tensor:
        """The final colour [R, 3] from the foreground's premultiplied colour and opacity and the
        batch's background colours [R, 3].

        Without a learned background: fg_rgb + (1 - opacity) * background. With one, it is rendered
        beyond the scene box (``out.background``, its samples counted in ``out.num_samples``) and
        composited behind the foreground: fg_rgb + (1 - opacity) * (bg_rgb + (1 - bg_opacity) * background).
        """
        if self.background is None:
            return fg.rgb + background * (1.0 - fg.opacity)
        bg = self.background(rays_o, rays_d, self.aabb, near_plane=self.cfg.near_plane,
                             far_plane=self.cfg.far_plane, backend=self.cfg.backend)
        out.background = bg
        out.num_samples = out.num_samples + bg.num_samples
        return fg.rgb + (1.0 - fg.opacity) * (bg.rgb + (1.0 - bg.opacity) * background)

    def forward(self, rays_o: Tensor, rays_d: Tensor, background: Tensor) -> RenderOutput:
        """Rays [R, 3] and background colours [R, 3] -> RenderOutput.

        Outside training the rays go through in chunks of eval_chunk_size, so whole images fit in memory.
        """
        if self.training:
            return self.render(rays_o, rays_d, background)
        return chunked(self.render, rays_o.shape[0], self.cfg.eval_chunk_size, rays_o, rays_d, background)

    # ------------------------------------------------------------------ export
    def known_empty_fn(self) -> Optional[Callable[[Tensor], Tensor]]:
        """For mesh extraction: points [N, 3] -> bool [N], True where the occupancy grid says space
        is empty (None without a grid)."""
        grid = self.grid
        if grid is None:
            return None
        return lambda points: ~grid.query(points)

    def isosurface_field(self, threshold: float):
        """(fn: points [N, 3] -> values [N], level): the surface is where fn = level, inside below it."""
        raise NotImplementedError

    def surface_colors(self, points: Tensor, normals: Optional[Tensor] = None) -> Tensor:
        """View-independent colour [N, 3] of surface points [N, 3] (for meshes), seen along
        their unit normals [N, 3] when given."""
        raise NotImplementedError
