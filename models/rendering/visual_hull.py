"""The visual hull of foreground masks on an occupancy grid's cells (space carving)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .occupancy_grid import OccupancyGrid


@torch.no_grad()
def visual_hull_cells(grid: OccupancyGrid, c2w: Tensor, intrinsics: Tensor, alpha: Sequence[Tensor]) -> Tensor:
    """Which cells of the grid's finest level lie inside every view's foreground -> bool [rx, ry, rz].

    c2w [N, 3, 4] (OpenCV camera-to-world), intrinsics [N, 4] (fx, fy, cx, cy), alpha: N foreground
    coverage maps [H_i, W_i] (a tensor [N, H, W] or a list, when the views differ in size). A cell
    is carved when, in some view that sees it, its centre projects farther from every foreground
    pixel than the cell's projected half-diagonal, so the carving is conservative.
    """
    import cv2  # distance transform: a maintained C implementation

    res = torch.tensor(grid.resolution, dtype=torch.float32)
    box = grid.aabbs[0].float().cpu()
    cell = (box[3:] - box[:3]) / res
    axes = [torch.arange(int(n), dtype=torch.float32) + 0.5 for n in grid.resolution]
    centres = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3) * cell + box[:3]
    half_diag = float(cell.norm()) * 0.5
    keep = torch.ones(centres.shape[0], dtype=torch.bool)
    for c2w_i, k, a in zip(c2w.float().cpu(), intrinsics.float().cpu(), alpha):
        a = torch.as_tensor(a).float().cpu()
        height, width = a.shape
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
    return keep.reshape(tuple(int(n) for n in grid.resolution))
