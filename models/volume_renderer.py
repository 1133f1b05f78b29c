"""What NeuS and NeRF share: the scene box, the occupancy grid, marching, the optional learned
background beyond the box, chunked rendering."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Literal, Optional

import torch
from torch import Tensor, nn

import models
from models.rendering import OccupancyGrid, chunked, ray_marching
from utils.config import component


@dataclasses.dataclass
class RendererConfig:
    """Options of the volume renderer (part of every model's config)."""

    radius: float = 1.0  # the scene box is [-radius, radius]^3
    num_samples_per_ray: int = 1024  # sets render_step_size = box diagonal / num_samples_per_ray
    max_samples_per_ray: Optional[int] = None
    cone_angle: float = 0.0  # > 0: steps grow with distance (for large scenes)
    # after marching, an opacity estimate of every sample (one field evaluation without gradients)
    # drops the samples below alpha_thre and those behind which the ray is already opaque
    # (transmittance below early_stop_eps); 0 turns each off
    alpha_thre: float = 0.0
    early_stop_eps: float = 0.0
    near_plane: float = 0.0
    far_plane: float = 1e10
    grid_prune: bool = True  # skip empty space with an occupancy grid
    grid_resolution: int = 128
    grid_update_every: int = 16
    grid_warmup_steps: int = 256
    grid_occ_thre: float = 0.001
    grid_ema_decay: float = 0.95
    # carve the grid with the training masks' visual hull before training (when the data has masks)
    grid_init_from_masks: bool = False
    # ... and keep the whole hull occupied for this many steps, so the surface can form anywhere
    # in it before the grid follows the field (which, in NeuS's shell mode, keeps only a thin shell)
    grid_hull_hold_steps: int = 256
    eval_chunk_size: int = 8192  # rays per chunk when rendering whole images
    backend: Literal["auto", "torch", "nerfacc"] = "auto"
    # a learned background beyond the scene box, for unbounded scenes (e.g. {name: nerf-background});
    # null: the background colour of the batch shows wherever the foreground is transparent
    background: Any = component("model", None, help="learned background model (null: none)")


class VolumeRenderer(nn.Module):
    """Base of the models: owns the geometry and texture fields and the occupancy grid, and renders
    rays in chunks outside training. ``cfg`` needs ``geometry`` and ``texture`` components."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = cfg
        r = float(cfg.radius)
        if abs(cfg.geometry.radius - r) > 1e-9:
            raise ValueError(
                f"model.geometry.radius ({cfg.geometry.radius}) must equal model.radius ({r}); "
                "write radius: ${model.radius} in the geometry"
            )
        self.geometry = models.make(cfg.geometry.name, cfg.geometry, path="model.geometry")
        self.texture = models.make(cfg.texture.name, cfg.texture, path="model.texture")
        self.register_buffer("aabb", torch.tensor([-r, -r, -r, r, r, r], dtype=torch.float32), persistent=False)
        self.render_step_size = 2.0 * 3.0**0.5 * r / cfg.num_samples_per_ray
        self.grid: Optional[OccupancyGrid] = None
        if cfg.grid_prune:
            self.grid = OccupancyGrid(aabb=[-r, -r, -r, r, r, r], resolution=cfg.grid_resolution)
        # bool [L, rx, ry, rz]: the cells init_grid_from_masks kept (recomputed on resume, not saved)
        self.visual_hull: Optional[Tensor] = None
        self.background: Optional[nn.Module] = None
        if cfg.background is not None:
            self.background = models.make(cfg.background.name, cfg.background, path="model.background")

    # ------------------------------------------------------------------ per step
    def occupancy_fn(self, points: Tensor) -> Tensor:
        """points [N, 3] -> opacity of a step of render_step_size at each point [N] (no grad)."""
        raise NotImplementedError

    def update_step(self, epoch: int, global_step: int) -> None:
        self.geometry.update_step(epoch, global_step)
        self.texture.update_step(epoch, global_step)
        if self.background is not None:
            self.background.update_step(epoch, global_step)
        if self.grid is not None and self.training:
            updated = self.grid.update_every_n_steps(
                global_step,
                self.occupancy_fn,
                n=self.cfg.grid_update_every,
                occ_thre=self.cfg.grid_occ_thre,
                ema_decay=self.cfg.grid_ema_decay,
                warmup_steps=self.cfg.grid_warmup_steps,
            )
            if updated and self.visual_hull is not None and global_step < self.cfg.grid_hull_hold_steps:
                self.grid.binaries |= self.visual_hull.to(self.grid.binaries.device)

    @torch.no_grad()
    def init_grid_from_masks(self, c2w: Tensor, intrinsics: Tensor, alpha: Tensor) -> float:
        """Mark cells outside the masks' visual hull as empty for good; returns the fraction kept.

        c2w [N, 3, 4] (OpenCV), intrinsics [N, 4], alpha [N, H, W] foreground coverage. A cell is
        carved when, in some view that sees it, its centre projects farther from every foreground
        pixel than the cell's projected half-diagonal (so the carving is conservative).
        """
        import cv2
        import numpy as np

        if self.grid is None:
            return 1.0
        grid = self.grid
        res = torch.tensor(grid.resolution, dtype=torch.float32)
        box = grid.aabbs[0].float().cpu()
        cell = (box[3:] - box[:3]) / res
        axes = [torch.arange(int(n), dtype=torch.float32) + 0.5 for n in grid.resolution]
        centres = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3) * cell + box[:3]
        half_diag = float(cell.norm()) * 0.5
        keep = torch.ones(centres.shape[0], dtype=torch.bool)
        height, width = alpha.shape[1:]
        for c2w_i, k, a in zip(c2w.float().cpu(), intrinsics.float().cpu(), alpha.float().cpu()):
            rot, t = c2w_i[:, :3], c2w_i[:, 3]
            cam = (centres - t) @ rot  # world -> camera: R^T (p - t)
            z = cam[:, 2]
            front = z > 1e-6
            u = k[0] * cam[:, 0] / z.clamp_min(1e-6) + k[2]
            v = k[1] * cam[:, 1] / z.clamp_min(1e-6) + k[3]
            inside = front & (u >= 0) & (u < width) & (v >= 0) & (v < height)
            background = (a.numpy() < 0.5).astype(np.uint8)
            # distance (pixels) from each pixel to the nearest foreground pixel
            dist = torch.from_numpy(cv2.distanceTransform(background, cv2.DIST_L2, 5))
            ui = u.clamp(0, width - 1).long()
            vi = v.clamp(0, height - 1).long()
            radius_px = k[0] * half_diag / z.clamp_min(1e-6) + 1.0
            keep &= ~(inside & (dist[vi, ui] > radius_px))
        mask = keep.reshape(tuple(int(n) for n in grid.resolution)).to(grid.binaries.device)
        grid.set_binary(mask, freeze_empty=True)
        self.visual_hull = grid.binaries.clone()
        return float(keep.float().mean())

    # ------------------------------------------------------------------ rendering
    def prunes_samples(self) -> bool:
        """Whether marching evaluates an opacity estimate to drop samples (model.alpha_thre / early_stop_eps)."""
        return self.cfg.alpha_thre > 0 or self.cfg.early_stop_eps > 0

    def march(self, rays_o: Tensor, rays_d: Tensor, alpha_fn: Optional[Callable] = None):
        """Packed samples (ray_indices [S], t_starts [S], t_ends [S]) along rays [R, 3].

        alpha_fn(t_starts [S], t_ends [S], ray_indices [S]) -> alpha [S]: the opacity estimate for
        pruning (see RendererConfig.alpha_thre / early_stop_eps); called without gradients."""
        return ray_marching(
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
        )

    def composite_background(self, out: Dict[str, Tensor], fg_rgb: Tensor, opacity: Tensor, rays_o: Tensor,
                             rays_d: Tensor, background: Tensor) -> Tensor:
        """The final colour [R, 3] from the foreground's premultiplied colour fg_rgb [R, 3], its
        opacity [R, 1] and the background colours [R, 3] of the batch.

        Without a learned background: fg_rgb + (1 - opacity) * background. With one (rays [R, 3]),
        it is rendered beyond the scene box and composited behind the foreground:
        fg_rgb + (1 - opacity) * (bg_rgb + (1 - bg_opacity) * background); ``out`` then gets
        bg_rgb [R, 3], bg_opacity [R, 1], bg_depth [R, 1], its samples are added to num_samples,
        and during training its packed samples (bg_weights, bg_ray_indices, bg_t_starts,
        bg_t_ends, bg_s_starts, bg_s_ends [S_bg]) are added for the losses.
        """
        if self.background is None:
            return fg_rgb + background * (1.0 - opacity)
        bg = self.background(rays_o, rays_d, self.aabb, near_plane=self.cfg.near_plane,
                             far_plane=self.cfg.far_plane, backend=self.cfg.backend)
        out["bg_rgb"], out["bg_opacity"], out["bg_depth"] = bg["rgb"], bg["opacity"], bg["depth"]
        out["num_samples"] = out["num_samples"] + bg["num_samples"]
        if self.training:
            for key in ("weights", "ray_indices", "t_starts", "t_ends", "s_starts", "s_ends"):
                out[f"bg_{key}"] = bg[key]
        return fg_rgb + (1.0 - opacity) * (bg["rgb"] + (1.0 - bg["opacity"]) * background)

    def render(self, rays_o: Tensor, rays_d: Tensor, background: Tensor) -> Dict[str, Tensor]:
        raise NotImplementedError

    def known_empty_fn(self) -> Optional[Callable[[Tensor], Tensor]]:
        """For mesh extraction: points [N, 3] -> bool [N], True where the occupancy grid says space
        is empty (None without a grid)."""
        grid = self.grid
        if grid is None:
            return None
        return lambda points: ~grid.query(points)

    def forward(self, rays_o: Tensor, rays_d: Tensor, background: Tensor) -> Dict[str, Tensor]:
        """Rays [R, 3] and background colours [R, 3] -> per-ray outputs (rgb [R, 3], opacity [R, 1], ...).

        Outside training the rays go through in chunks of eval_chunk_size, so whole images fit in memory.
        """
        if self.training:
            return self.render(rays_o, rays_d, background)
        return chunked(self.render, rays_o.shape[0], self.cfg.eval_chunk_size, rays_o, rays_d, background)
