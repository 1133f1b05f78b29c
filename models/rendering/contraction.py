"""Scene contraction to the unit cube, and background samples beyond the scene box."""
from __future__ import annotations

from typing import Literal, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .aabb import as_aabb, ray_aabb_intersect

ContractionKind = Literal["aabb", "un_bounded_sphere"]


def contract(x: Tensor, aabb: Union[Tensor, Sequence[float]], kind: ContractionKind = "aabb") -> Tensor:
    """World points to encoding coordinates in [0, 1]^3.

    x [N, 3], aabb [6] -> [N, 3].
    "aabb": affine map of the box onto [0, 1]^3 (points outside the box land outside [0, 1]; no
    clamping, so callers can still tell them apart).
    "un_bounded_sphere": the box is first mapped onto [-1, 1]^3 (y), then mip-NeRF 360's
    contraction y -> y if |y| <= 1 else (2 - 1/|y|) y/|y| (Euclidean norm) maps all space into the
    ball of radius 2, and finally u = y / 4 + 0.5 puts it in [0, 1]^3 (the box interior becomes the
    ball of radius 1/4 about the centre, and u is affine in x there).
    """
    box = as_aabb(aabb, x)
    unit = (x - box[:3]) / (box[3:] - box[:3])
    if kind == "aabb":
        return unit
    if kind != "un_bounded_sphere":
        raise ValueError(f"unknown contraction '{kind}'; choose 'aabb' or 'un_bounded_sphere'")
    y = unit * 2 - 1
    mag = y.norm(dim=-1, keepdim=True)
    safe = mag.clamp_min(1.0)  # the branch below is only taken where mag > 1; keep gradients finite
    y = torch.where(mag > 1, (2 - 1 / safe) * (y / safe), y)
    return y / 4 + 0.5


def sample_background(
    rays_o: Tensor,
    rays_d: Tensor,
    aabb: Union[Tensor, Sequence[float]],
    far_plane: float,
    n_samples: int,
    stratified: bool = False,
    generator: Optional[torch.Generator] = None,
    near_plane: float = 0.0,
) -> Tuple[Tensor, Tensor, Tensor]:
    """``n_samples`` contiguous intervals per ray from where it leaves the box to ``far_plane``,
    uniform in inverse depth (disparity), as for a NeRF++-style background model.

    rays_o [R, 3], rays_d [R, 3], aabb [6] -> ray_indices [R * n], t_starts [R * n], t_ends [R * n]
    (packed, sorted by ray then t).

    A ray that hits the box starts at its exit; one that misses starts where it passes closest to
    the box centre (at least ``near_plane``). Starts are kept below ``far_plane`` (intervals may
    then be very short). ``stratified`` jitters the inner interval edges within the bins (each edge
    between the midpoints of its neighbouring bins, in disparity), deterministically given
    ``generator`` (on the rays' device).
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    box = as_aabb(aabb, rays_o)
    with torch.no_grad():
        _, t_exit, hit = ray_aabb_intersect(rays_o, rays_d, box, near_plane=near_plane)
        centre = (box[:3] + box[3:]) / 2
        closest = ((centre - rays_o) * rays_d).sum(-1) / rays_d.square().sum(-1).clamp_min(1e-30)
        start = torch.where(hit, t_exit, closest.clamp_min(near_plane))
        start = start.clamp(min=1e-6, max=far_plane * (1 - 1e-6))
        # edges in [0, 1] of disparity space: s = 0 at the start, s = 1 at far_plane
        n_rays = rays_o.shape[0]
        s = torch.linspace(0.0, 1.0, n_samples + 1, dtype=rays_o.dtype, device=rays_o.device)
        s = s.expand(n_rays, n_samples + 1)
        if stratified and n_samples > 1:
            mids = 0.5 * (s[:, 1:] + s[:, :-1])  # [R, n]
            lower, upper = mids[:, :-1], mids[:, 1:]  # bounds of the inner edges 1..n-1
            u = torch.rand(lower.shape, generator=generator, device=s.device, dtype=s.dtype)
            s = torch.cat([s[:, :1], lower + (upper - lower) * u, s[:, -1:]], dim=1)
        disparity = (1 / start)[:, None] * (1 - s) + (1 / far_plane) * s
        t = 1 / disparity
        # guard the ends against rounding of 1/(1/x)
        t = torch.cat([start[:, None], t[:, 1:-1], torch.full_like(start[:, None], far_plane)], dim=1)
        t = torch.cummax(t, dim=1).values
    ray_indices = torch.arange(n_rays, device=rays_o.device).repeat_interleave(n_samples)
    return ray_indices, t[:, :-1].reshape(-1), t[:, 1:].reshape(-1)
