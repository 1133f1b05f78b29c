"""Ray / axis-aligned box intersection (slab method), robust to zero direction components."""
from __future__ import annotations

import math
from typing import Sequence, Tuple, Union

import torch
from torch import Tensor


def as_aabb(aabb: Union[Tensor, Sequence[float]], like: Tensor) -> Tensor:
    """A box (xmin, ymin, zmin, xmax, ymax, zmax) as a tensor [6] with ``like``'s dtype and device."""
    box = torch.as_tensor(aabb, dtype=like.dtype, device=like.device).reshape(-1)
    if box.numel() != 6:
        raise ValueError(f"an aabb has 6 numbers (xmin, ymin, zmin, xmax, ymax, zmax), got {box.numel()}")
    return box


def ray_aabb_intersect(
    rays_o: Tensor,
    rays_d: Tensor,
    aabb: Union[Tensor, Sequence[float]],
    near_plane: float = 0.0,
    far_plane: float = math.inf,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Where each ray enters and leaves a box, clipped to [near_plane, far_plane].

    rays_o [R, 3], rays_d [R, 3] (need not be unit length; t is in units of |d|),
    aabb [6] (xmin, ymin, zmin, xmax, ymax, zmax)
    -> t_near [R], t_far [R], hit [R] bool.

    ``t_near = max(entry, near_plane)``, ``t_far = min(exit, far_plane)`` and ``hit`` is
    ``t_far > t_near``; a ray starting inside the box has ``t_near = near_plane``. Where a direction
    component is zero the ray is parallel to that slab: it is inside for every t if its origin is
    within the slab (boundary included), else never. Where ``hit`` is False both t are set to
    ``near_plane`` (an empty interval).
    """
    box = as_aabb(aabb, rays_o)
    lo, hi = box[:3], box[3:]
    zero = rays_d == 0
    safe_d = torch.where(zero, torch.ones_like(rays_d), rays_d)
    t1 = (lo - rays_o) / safe_d
    t2 = (hi - rays_o) / safe_d
    t_min = torch.minimum(t1, t2)
    t_max = torch.maximum(t1, t2)
    # parallel slabs: everything if the origin lies within the slab, nothing otherwise
    inside = (rays_o >= lo) & (rays_o <= hi)
    inf = torch.full_like(t_min, math.inf)
    t_min = torch.where(zero, torch.where(inside, -inf, inf), t_min)
    t_max = torch.where(zero, torch.where(inside, inf, -inf), t_max)
    t_near = t_min.amax(dim=-1).clamp_min(near_plane)
    t_far = t_max.amin(dim=-1).clamp_max(far_plane)
    hit = t_far > t_near
    miss_value = torch.full_like(t_near, near_plane)
    return torch.where(hit, t_near, miss_value), torch.where(hit, t_far, miss_value), hit
