"""Ray marching: rays -> packed samples (ray_indices, t_starts, t_ends), skipping empty space.

Sampling rule (both backends; it is nerfacc 0.5's ``traverse_grids`` with each ray's near plane
set to t_0): along each ray the steps form a lattice that starts at ``t_0`` (the ray's clipped
near distance, plus one random offset in [0, dt_0) per ray when ``stratified``) with
``t_{k+1} = t_k + dt_k``,
``dt_k = max(t_k * cone_angle, render_step_size)`` (constant steps when cone_angle is 0). Step
[t_k, t_{k+1}) is kept iff its midpoint lies in the clipped interval [t_near, t_far) and in an
occupied cell of the grid. So the last kept step may end up to half a step past t_far.

The torch backend finds the occupied parts of each ray coarse-to-fine over the grid's pyramid
(see ``OccupancyGrid.pyramid``): intervals of a ray inside occupied coarse cells are split at the
planes of the next finer level, and only intervals inside occupied finest cells become samples
(their lattice indices follow in closed form). No Python loop over rays or steps.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from utils import backends

from .aabb import as_aabb, ray_aabb_intersect
from .compositing import BackendName, render_transmittance_from_alpha, uses_nerfacc
from .occupancy_grid import PYRAMID_FACTOR, OccupancyGrid

AlphaFn = Callable[[Tensor, Tensor, Tensor], Tensor]


@torch.no_grad()
def ray_marching(
    rays_o: Tensor,
    rays_d: Tensor,
    *,
    aabb: Union[Tensor, Sequence[float], None] = None,
    grid: Optional[OccupancyGrid] = None,
    near_plane: float = 0.0,
    far_plane: float = 1e10,
    render_step_size: float,
    stratified: bool = False,
    cone_angle: float = 0.0,
    alpha_fn: Optional[AlphaFn] = None,
    alpha_thre: float = 0.0,
    early_stop_eps: float = 0.0,
    max_samples_per_ray: Optional[int] = None,
    backend: BackendName = "auto",
    generator: Optional[torch.Generator] = None,
    early_stop_chunk: int = 0,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Packed samples along rays (not differentiable).

    rays_o [R, 3], rays_d [R, 3] (t is in units of |d|; unit directions are usual)
    -> ray_indices [S] int64, t_starts [S], t_ends [S], sorted by ray, then by t.

    Marching covers [near_plane, far_plane] clipped to ``aabb`` and to the grid's outermost box
    (at least one of ``aabb`` / ``grid`` is needed; with both, their intersection). See the module
    docstring for the step lattice. ``alpha_fn(t_starts, t_ends, ray_indices) -> alpha [S]``, if
    given and ``alpha_thre > 0`` or ``early_stop_eps > 0``, is evaluated (without grad) on the
    samples; those with ``alpha < alpha_thre`` are dropped, and with ``early_stop_eps > 0`` also
    those whose transmittance (from these alphas) is below it.
    ``max_samples_per_ray`` then keeps the first samples of each ray. ``generator`` drives the
    stratified offsets (it must live on the rays' device). ``early_stop_chunk`` > 0 (with
    ``early_stop_eps``) evaluates ``alpha_fn`` front to back, that many samples of each ray at a
    time, and never on the samples of a ray that is already opaque: the samples kept are the same
    (up to ``alpha_fn`` seeing its samples in smaller groups), the estimate costs only what lies
    in front of each surface.
    """
    if render_step_size <= 0:
        raise ValueError(f"render_step_size must be > 0, got {render_step_size}")
    if cone_angle < 0:
        raise ValueError(f"cone_angle must be >= 0, got {cone_angle}")
    if aabb is None and grid is None:
        raise ValueError("ray_marching needs an aabb or an occupancy grid to bound the rays")
    n_rays = rays_o.shape[0]
    lattice = _Lattice.for_rays(
        rays_o, rays_d, aabb, grid, near_plane, far_plane, render_step_size, cone_angle, stratified, generator
    )
    if uses_nerfacc(backend, rays_o.device):
        ray_indices, t_starts, t_ends = _march_nerfacc(rays_o, rays_d, grid, aabb, lattice)
    else:
        ray_indices, t_starts, t_ends = _march_torch(rays_o, rays_d, grid, lattice)

    keep = None
    if alpha_fn is not None and (alpha_thre > 0 or early_stop_eps > 0) and ray_indices.numel():
        if early_stop_eps > 0 and early_stop_chunk > 0:
            alphas, evaluated = _alphas_front_to_back(alpha_fn, t_starts, t_ends, ray_indices, n_rays,
                                                      early_stop_chunk, early_stop_eps)
        else:
            alphas, evaluated = alpha_fn(t_starts, t_ends, ray_indices).reshape(-1), None
        keep = alphas >= alpha_thre
        if early_stop_eps > 0:
            trans = render_transmittance_from_alpha(alphas, ray_indices, n_rays, backend=backend)
            keep = keep & (trans >= early_stop_eps)
        if evaluated is not None:
            keep = keep & evaluated
    if max_samples_per_ray is not None:
        if keep is None:
            keep = _rank_in_ray(ray_indices, n_rays) < max_samples_per_ray
        else:
            kept = torch.nonzero(keep)[:, 0]
            over = _rank_in_ray(ray_indices[kept], n_rays) >= max_samples_per_ray
            keep[kept[over]] = False
    if keep is not None:
        ray_indices, t_starts, t_ends = ray_indices[keep], t_starts[keep], t_ends[keep]
    return ray_indices, t_starts, t_ends


# ------------------------------------------------------------------------------------------------
# the step lattice of each ray
# ------------------------------------------------------------------------------------------------
def _lattice_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


class _Lattice:
    """Per-ray clipped interval and closed-form step lattice (in float64; float32 on MPS, which
    has no float64).

    Uniform part t_k = t0 + k s for k <= k0, geometric part t_k = t_k0 (1 + c)^(k - k0) for
    k >= k0, where k0 is the first step with t_k * c >= s (k0 = +inf when c == 0).
    """

    def __init__(self, t_near, t_far, hit, t0, step, cone, level_near, level_far, level_hit):
        self.t_near, self.t_far, self.hit = t_near, t_far, hit  # [R] (rays' dtype), bool
        self.t0 = t0  # [R] float64 (float32 on MPS)
        self.step, self.cone = step, cone
        self.level_near, self.level_far, self.level_hit = level_near, level_far, level_hit  # [R, L]
        if cone > 0:
            k0 = torch.ceil((step / cone - t0) / step).clamp_min(0)
            self.k0 = k0
            self.t_k0 = t0 + k0 * step
        else:
            self.k0 = self.t_k0 = None

    @classmethod
    def for_rays(cls, rays_o, rays_d, aabb, grid, near, far, step, cone, stratified, generator) -> "_Lattice":
        boxes = []
        if grid is not None:
            boxes = [grid.aabbs[l].to(rays_o) for l in range(grid.levels)]
        hits = [ray_aabb_intersect(rays_o, rays_d, box, near, far) for box in boxes]
        if aabb is not None:
            a_near, a_far, _ = ray_aabb_intersect(rays_o, rays_d, as_aabb(aabb, rays_o), near, far)
            if not hits:
                hits = [(a_near, a_far, a_far > a_near)]
            else:  # clip every level to the aabb
                hits = [(n.maximum(a_near), f.minimum(a_far), None) for n, f, _ in hits]
                hits = [(n, f, f > n) for n, f, _ in hits]
        level_near = torch.stack([h[0] for h in hits], dim=1)
        level_far = torch.stack([h[1] for h in hits], dim=1)
        level_hit = torch.stack([h[2] for h in hits], dim=1)
        t_near, t_far, hit = level_near[:, -1], level_far[:, -1], level_hit[:, -1]
        t0 = t_near.to(_lattice_dtype(t_near.device))
        if stratified:
            dt0 = (t0 * cone).clamp(min=step, max=1e10)
            u = torch.rand(t0.shape, generator=generator, device=t0.device, dtype=t0.dtype)
            t0 = t0 + u * dt0
        return cls(t_near, t_far, hit, t0, float(step), float(cone), level_near, level_far, level_hit)

    def t_of(self, k: Tensor, ray: Tensor) -> Tensor:
        """Lattice value t_k for step indices k [N] (int64) of rays ray [N]."""
        kf = k.to(self.t0.dtype)
        t = self.t0[ray] + kf * self.step
        if self.cone > 0:
            k0 = self.k0[ray]
            geometric = self.t_k0[ray] * torch.exp((kf - k0) * math.log1p(self.cone))
            t = torch.where(kf <= k0, t, geometric)
        return t

    def first_step_at(self, t: Tensor, ray: Tensor) -> Tensor:
        """Smallest k >= 0 whose step midpoint is >= t, for t [N] of rays ray [N] -> int64 [N].

        Closed forms, monotone in t, so adjacent intervals sharing an end point never share or
        skip a step (a midpoint within rounding of an interval end may go to either side).
        """
        t = t.to(self.t0.dtype)
        k = torch.ceil((t - self.t0[ray]) / self.step - 0.5).clamp_min_(0)
        if self.cone > 0:
            k0 = self.k0[ray]
            base = self.t_k0[ray] * (1.0 + 0.5 * self.cone)  # midpoint of step k0
            ratio = (t / base).clamp_min(torch.finfo(t.dtype).tiny)
            kg = k0 + torch.ceil(torch.log(ratio) / math.log1p(self.cone)).clamp_min(0)
            k = torch.where(k < k0, k, kg)
        return k.clamp_max(2**62).long()


# ------------------------------------------------------------------------------------------------
# torch backend
# ------------------------------------------------------------------------------------------------
def _march_torch(rays_o: Tensor, rays_d: Tensor, grid: Optional[OccupancyGrid], lat: _Lattice):
    ray, a, b, level = _level_segments(lat)
    if grid is not None and ray.numel():
        ray, a, b = _occupied_intervals(rays_o, rays_d, grid, ray, a, b, level)
    return _intervals_to_samples(lat, ray, a, b, rays_o.dtype)


def _level_segments(lat: _Lattice) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Splits each ray's interval into the parts inside level l's box but outside level l-1's,
    in t order -> ray [M], a [M], b [M], level [M] (empty parts dropped)."""
    near, far, hit = lat.level_near, lat.level_far, lat.level_hit
    n_levels = near.shape[1]
    near, far = near.clone(), far.clone()
    # make the intervals nested (inner ones empty where missed), robust to rounding
    for l in range(n_levels - 2, -1, -1):
        outer_n, outer_f = near[:, l + 1], far[:, l + 1]
        inner_n = torch.minimum(torch.maximum(near[:, l], outer_n), outer_f)
        inner_f = torch.minimum(torch.maximum(far[:, l], inner_n), outer_f)
        near[:, l] = torch.where(hit[:, l], inner_n, outer_n)
        far[:, l] = torch.where(hit[:, l], inner_f, outer_n)
    starts, ends, levels = [], [], []
    for l in range(n_levels - 1, 0, -1):  # entering: outer shells first
        starts.append(near[:, l]), ends.append(near[:, l - 1]), levels.append(l)
    starts.append(near[:, 0]), ends.append(far[:, 0]), levels.append(0)
    for l in range(1, n_levels):  # leaving
        starts.append(far[:, l - 1]), ends.append(far[:, l]), levels.append(l)
    a = torch.stack(starts, dim=1)  # [R, 2L-1]
    b = torch.stack(ends, dim=1)
    lev = torch.tensor(levels, device=a.device).expand_as(a)
    ray = torch.arange(a.shape[0], device=a.device)[:, None].expand_as(a)
    keep = (b > a) & lat.hit[:, None]
    return ray[keep], a[keep], b[keep], lev[keep]


def _occupied_intervals(rays_o, rays_d, grid: OccupancyGrid, ray, a, b, level):
    """Coarse-to-fine: the parts of the segments inside occupied finest cells, sorted by ray and t.

    At each pyramid level the intervals (each inside one cell of the previous level, or a whole
    level box at first) are split at the cell planes of this level; the pieces in empty cells are
    dropped, those in fully occupied cells are final, the others go on to the next level.
    Positions are handled in units of finest cells of the interval's grid level.
    """
    device = rays_o.device
    maps = [(m_any.to(device).reshape(-1), m_all.to(device).reshape(-1), tuple(m_any.shape[1:]))
            for m_any, m_all in grid.pyramid()]
    boxes = grid.aabbs.to(rays_o)
    fine_cell = (boxes[:, 3:] - boxes[:, :3]) / torch.tensor(grid.resolution, dtype=boxes.dtype, device=device)
    # ray origin and direction in finest-cell units of each interval's level
    org = (rays_o[ray] - boxes[level, :3]) / fine_cell[level]
    dirn = rays_d[ray] / fine_cell[level]
    n_maps = len(maps)
    done: list = []
    parent = torch.zeros(ray.shape[0], 3, dtype=torch.long, device=device)
    for j, (occ_any, occ_all, res) in enumerate(maps):
        factor = res if j == 0 else (PYRAMID_FACTOR,) * 3  # the first parent is the whole box
        scale = PYRAMID_FACTOR ** (n_maps - 1 - j)  # finest cells per cell of this level, per axis
        # crossings with the cell planes inside the parent cell, clamped into [a, b]
        a_col, b_col = a[:, None], b[:, None]
        cols = [a_col]
        for axis in range(3):
            f = factor[axis]
            if f <= 1:
                continue
            q = parent[:, axis : axis + 1] * f + torch.arange(1, f, device=device)  # [M, f-1]
            d_axis = dirn[:, axis : axis + 1]
            t = (q * scale - org[:, axis : axis + 1]) / d_axis
            t = torch.where((q >= res[axis]) | (d_axis == 0), b_col, t)
            cols.append(torch.minimum(torch.maximum(t, a_col), b_col))
        cols.append(b_col)
        edges = torch.cat(cols, dim=1)
        if edges.shape[1] > 2:
            edges = edges.sort(dim=1).values
        width = edges.shape[1]
        flat_edges = edges.reshape(-1)
        pieces = torch.nonzero((edges[:, 1:] > edges[:, :-1]).reshape(-1))[:, 0]
        row = pieces // (width - 1)
        start = pieces + row  # position of the piece's left edge in flat_edges
        t_lo = flat_edges[start]
        t_hi = flat_edges[start + 1]
        # cell of each piece (at its midpoint), kept inside the parent cell against rounding
        pos = org[row] + (0.5 * (t_lo + t_hi))[:, None] * dirn[row]
        idx = torch.floor(pos * (1.0 / scale)).long()
        factor_t = torch.tensor(factor, device=device)
        first = parent[row] * factor_t
        idx = torch.minimum(torch.maximum(idx, first), torch.minimum(first + factor_t, torch.tensor(res, device=device)) - 1)
        lev = level[row]
        lin = ((lev * res[0] + idx[:, 0]) * res[1] + idx[:, 1]) * res[2] + idx[:, 2]
        occupied = occ_any[lin]
        if j < n_maps - 1:
            full = occ_all[lin]
            fin = torch.nonzero(full)[:, 0]
            if fin.numel():
                done.append((ray[row[fin]], t_lo[fin], t_hi[fin]))
                occupied = occupied & ~full
        keep = torch.nonzero(occupied)[:, 0]
        row = row[keep]
        ray, a, b, level, parent = ray[row], t_lo[keep], t_hi[keep], lev[keep], idx[keep]
        if j < n_maps - 1:
            org, dirn = org[row], dirn[row]
        if ray.numel() == 0:
            break
    if not done:
        return ray, a, b
    done.append((ray, a, b))
    ray = torch.cat([p[0] for p in done])
    a = torch.cat([p[1] for p in done])
    b = torch.cat([p[2] for p in done])
    order = torch.argsort(a, stable=True)
    order = order[torch.argsort(ray[order], stable=True)]
    return ray[order], a[order], b[order]


def _intervals_to_samples(lat: _Lattice, ray: Tensor, a: Tensor, b: Tensor, dtype: torch.dtype):
    """Lattice steps whose midpoints fall in [a, b) of each interval (intervals sorted by ray and t,
    disjoint) -> ray_indices, t_starts, t_ends."""
    k_a = lat.first_step_at(a, ray)
    k_b = lat.first_step_at(b, ray)
    counts = (k_b - k_a).clamp_min(0)
    total = int(counts.sum()) if counts.numel() else 0
    if total == 0:
        empty = torch.zeros(0, dtype=dtype, device=lat.t0.device)
        return torch.zeros(0, dtype=torch.long, device=lat.t0.device), empty, empty.clone()
    interval = torch.repeat_interleave(torch.arange(counts.shape[0], device=counts.device), counts, output_size=total)
    offsets = torch.cumsum(counts, 0) - counts
    k = k_a[interval] + torch.arange(total, device=counts.device) - offsets[interval]
    ray_indices = ray[interval]
    t_starts = lat.t_of(k, ray_indices)
    t_ends = lat.t_of(k + 1, ray_indices)
    return ray_indices, t_starts.to(dtype), t_ends.to(dtype)


def _alphas_front_to_back(alpha_fn: AlphaFn, t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor, n_rays: int,
                          chunk: int, eps: float) -> Tuple[Tensor, Tensor]:
    """``alpha_fn`` on the samples of each ray ``chunk`` at a time, front to back, skipping the
    rays whose transmittance has fallen below ``eps`` -> (alphas [S], 0 where not evaluated;
    evaluated [S] bool). Every sample in front of the point where its ray turns opaque is
    evaluated, so the transmittance of those samples is exact."""
    rank = _rank_in_ray(ray_indices, n_rays)
    alphas = torch.zeros_like(t_starts)
    evaluated = torch.zeros_like(t_starts, dtype=torch.bool)
    log_trans = torch.zeros(n_rays, dtype=torch.float64, device=t_starts.device)
    alive = torch.ones(n_rays, dtype=torch.bool, device=t_starts.device)
    log_eps = math.log(eps)
    for first in range(0, int(rank.max()) + 1, chunk):
        pick = torch.nonzero((rank >= first) & (rank < first + chunk) & alive[ray_indices])[:, 0]
        if pick.numel() == 0:
            break
        a = alpha_fn(t_starts[pick], t_ends[pick], ray_indices[pick]).reshape(-1)
        alphas[pick] = a.to(alphas.dtype)
        evaluated[pick] = True
        log_trans.index_add_(0, ray_indices[pick], torch.log1p(-a.double().clamp(0.0, 1.0 - 1e-12)))
        alive = log_trans >= log_eps
    return alphas, evaluated


def _rank_in_ray(ray_indices: Tensor, n_rays: int) -> Tensor:
    """Position of each sample within its ray (0 for the first), for sorted ray_indices [S]."""
    counts = torch.bincount(ray_indices, minlength=n_rays)
    starts = torch.cumsum(counts, 0) - counts
    return torch.arange(ray_indices.shape[0], device=ray_indices.device) - starts[ray_indices]


# ------------------------------------------------------------------------------------------------
# nerfacc backend
# ------------------------------------------------------------------------------------------------
def _march_nerfacc(rays_o: Tensor, rays_d: Tensor, grid: Optional[OccupancyGrid], aabb, lat: _Lattice):
    traverse_grids = backends.library("nerfacc").traverse_grids

    if grid is not None:
        binaries, aabbs = grid.binaries.to(rays_o.device), grid.aabbs.to(rays_o.device)
    else:  # one always-occupied cell spanning the aabb
        binaries = torch.ones((1, 1, 1, 1), dtype=torch.bool, device=rays_o.device)
        aabbs = as_aabb(aabb, rays_o)[None]
    # the lattice starts at near_planes (our t0); far_planes also carries the aabb clipping
    zeros = torch.zeros_like(lat.t_near, dtype=torch.float32)
    near_planes = torch.where(lat.hit, lat.t0.float(), zeros).contiguous()
    far_planes = torch.where(lat.hit, lat.t_far.float(), zeros).contiguous()
    # nerfacc 0.5.0 returns (intervals, samples); later 0.5.x add the termination planes
    traversal = traverse_grids(
        rays_o.float().contiguous(),
        rays_d.float().contiguous(),
        binaries.contiguous(),
        aabbs.float().contiguous(),
        near_planes=near_planes,
        far_planes=far_planes,
        step_size=lat.step,
        cone_angle=lat.cone,
    )
    intervals, samples = traversal[0], traversal[1]
    t_starts = intervals.vals[intervals.is_left].to(rays_o.dtype)
    t_ends = intervals.vals[intervals.is_right].to(rays_o.dtype)
    return samples.ray_indices.long(), t_starts, t_ends
