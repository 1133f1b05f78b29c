"""Cameras and rays.

One convention inside the toolkit: OpenCV camera axes (x right, y down, z forward), camera-to-
world matrices ``c2w [..., 3, 4]``, intrinsics per image as ``[fx, fy, cx, cy]`` in pixels with
the image's top-left pixel *corner* at (0, 0), so pixel (i, j)'s centre is (i + 0.5, j + 0.5).
Loaders convert from their format once (see ``opengl_to_opencv``).
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
from torch import Tensor


def opengl_to_opencv(c2w: Tensor) -> Tensor:
    """Blender/OpenGL camera axes (x right, y up, z backward) -> OpenCV. c2w [..., 3|4, 4] -> same."""
    out = c2w.clone()
    out[..., :3, 1:3] *= -1
    return out


def intrinsics_from_fov(width: int, height: int, camera_angle_x: float) -> Tensor:
    """Horizontal field of view (radians) -> [fx, fy, cx, cy] with square pixels and a centred principal point."""
    focal = 0.5 * width / math.tan(0.5 * camera_angle_x)
    return torch.tensor([focal, focal, width / 2.0, height / 2.0], dtype=torch.float32)


def scale_intrinsics(intrinsics: Tensor, sx: float, sy: float) -> Tensor:
    """Intrinsics [..., 4] for an image resized by (sx, sy) (new size / old size)."""
    scale = torch.tensor([sx, sy, sx, sy], dtype=intrinsics.dtype, device=intrinsics.device)
    return intrinsics * scale


def pixel_directions(width: int, height: int, intrinsics: Tensor) -> Tensor:
    """Camera-space ray directions through pixel centres.

    intrinsics [4] (fx, fy, cx, cy) -> directions [H, W, 3], z = 1 (not normalized).
    """
    fx, fy, cx, cy = intrinsics.tolist()
    j, i = torch.meshgrid(
        torch.arange(height, dtype=torch.float32) + 0.5,
        torch.arange(width, dtype=torch.float32) + 0.5,
        indexing="ij",
    )
    return torch.stack([(i - cx) / fx, (j - cy) / fy, torch.ones_like(i)], dim=-1)


def pixel_directions_at(pixels: Tensor, intrinsics: Tensor) -> Tensor:
    """Camera-space directions through given pixel positions.

    pixels [N, 2] (x, y) in pixels (use +0.5 for centres), intrinsics [N, 4] -> directions [N, 3], z = 1.
    """
    fx, fy, cx, cy = intrinsics.unbind(-1)
    x = (pixels[:, 0] - cx) / fx
    y = (pixels[:, 1] - cy) / fy
    return torch.stack([x, y, torch.ones_like(x)], dim=-1)


def camera_rays(directions: Tensor, c2w: Tensor, normalize: bool = True) -> Tuple[Tensor, Tensor]:
    """Camera-space directions [..., 3] and poses [..., 3, 4] (broadcastable) -> world rays.

    Returns rays_o [..., 3], rays_d [..., 3] (unit length if ``normalize``).
    """
    rays_d = (directions[..., None, :] * c2w[..., :3, :3]).sum(-1)
    rays_o = c2w[..., :3, 3].expand(rays_d.shape)
    if normalize:
        rays_d = torch.nn.functional.normalize(rays_d, dim=-1)
    return rays_o, rays_d


def look_at(eye: Tensor, target: Tensor, up: Tensor) -> Tensor:
    """OpenCV camera-to-world [3, 4] for a camera at ``eye`` looking at ``target``; ``up`` is the world's up."""
    forward = torch.nn.functional.normalize(target - eye, dim=-1)
    right = torch.linalg.cross(forward, up)
    if right.norm() < 1e-8:  # looking straight along up: pick any perpendicular
        right = torch.linalg.cross(forward, torch.tensor([1.0, 0.0, 0.0]))
    right = torch.nn.functional.normalize(right, dim=-1)
    down = torch.linalg.cross(forward, right)
    return torch.stack([right, down, forward, eye], dim=-1)


def orbit_poses(
    n_views: int,
    radius: float,
    elevation_deg: float = 30.0,
    center: Sequence[float] = (0.0, 0.0, 0.0),
    up: Sequence[float] = (0.0, 0.0, 1.0),
    elevation_swing_deg: float = 0.0,
    turns: float = 1.0,
) -> Tensor:
    """Cameras on a circle (or a spiral, with ``elevation_swing_deg``) around ``center``, looking at it.

    Returns c2w [n_views, 3, 4] (OpenCV). ``up`` is the world's up axis (z for Blender scenes).
    """
    center_t = torch.tensor(center, dtype=torch.float32)
    up_t = torch.nn.functional.normalize(torch.tensor(up, dtype=torch.float32), dim=0)
    # an orthonormal frame (a, b) of the plane perpendicular to up
    helper = torch.tensor([1.0, 0.0, 0.0]) if abs(float(up_t[0])) < 0.9 else torch.tensor([0.0, 1.0, 0.0])
    a = torch.nn.functional.normalize(torch.linalg.cross(up_t, helper), dim=0)
    b = torch.linalg.cross(up_t, a)
    poses = []
    for k in range(n_views):
        frac = k / n_views
        azimuth = 2 * math.pi * turns * frac
        elevation = math.radians(elevation_deg + elevation_swing_deg * math.sin(2 * math.pi * frac))
        offset = radius * (
            math.cos(elevation) * (math.cos(azimuth) * a + math.sin(azimuth) * b) + math.sin(elevation) * up_t
        )
        poses.append(look_at(center_t + offset, center_t, up_t))
    return torch.stack(poses)
