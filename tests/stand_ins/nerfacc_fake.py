"""A stand-in for nerfacc 0.5.3 in PyTorch: the functions the toolkit calls, same signatures.

Written independently of the toolkit's rendering code (padded per-ray cumulative products and
sums; marching by stepping every ray through the grid), so parity with the toolkit's torch
backend means something. As in nerfacc, ``traverse_grids`` and every function given
``ray_indices`` need CUDA tensors (``pack_info`` raises otherwise) unless ``accept_cpu``;
``accumulate_along_rays`` runs anywhere. ``nerfacc.cuda._backend._C`` is None when made with
``kernels_built=False`` (nerfacc could not build its CUDA extension). Calls are logged in ``calls``.
"""
from __future__ import annotations

import types

import torch


def make_nerfacc(kernels_built: bool = True) -> types.ModuleType:
    nf = types.ModuleType("nerfacc")
    nf.__version__ = "0.5.3"
    nf.calls = []
    nf.accept_cpu = False
    cuda = types.ModuleType("nerfacc.cuda")
    backend = types.ModuleType("nerfacc.cuda._backend")
    backend._C = object() if kernels_built else None
    cuda._backend = backend
    nf.cuda = cuda
    nf._submodules = {"nerfacc.cuda": cuda, "nerfacc.cuda._backend": backend}

    def cuda_only(name, *tensors):
        nf.calls.append((name, tensors[0].device.type))
        if not nf.accept_cpu and any(t.device.type != "cuda" for t in tensors if t is not None):
            raise NotImplementedError("Only support cuda inputs.")  # nerfacc's pack_info
        if backend._C is None:
            raise AttributeError("'NoneType' object has no attribute 'exclusive_sum'")

    def padded(values: torch.Tensor, ray_indices: torch.Tensor, n_rays: int, fill: float):
        """values [S] -> [R, W] (sorted ray_indices), with the position of each sample."""
        counts = torch.bincount(ray_indices, minlength=n_rays)
        starts = torch.cumsum(counts, 0) - counts
        pos = torch.arange(values.shape[0], device=values.device) - starts[ray_indices]
        width = int(counts.max()) + 1 if counts.numel() else 1
        grid = values.new_full((n_rays, width), fill).index_put((ray_indices, pos), values)
        return grid, pos

    def render_transmittance_from_alpha(alphas, packed_info=None, ray_indices=None, n_rays=None, prefix_trans=None):
        cuda_only("render_transmittance_from_alpha", alphas, ray_indices)
        grid, pos = padded(1.0 - alphas, ray_indices, n_rays, 1.0)
        excl = torch.cumprod(torch.cat([torch.ones_like(grid[:, :1]), grid[:, :-1]], dim=1), dim=1)
        return excl[ray_indices, pos]

    def render_weight_from_density(t_starts, t_ends, sigmas, packed_info=None, ray_indices=None, n_rays=None,
                                   prefix_trans=None):
        cuda_only("render_weight_from_density", sigmas, ray_indices)
        tau = sigmas * (t_ends - t_starts)
        grid, pos = padded(tau, ray_indices, n_rays, 0.0)
        excl = torch.cumsum(torch.cat([torch.zeros_like(grid[:, :1]), grid[:, :-1]], dim=1), dim=1)
        trans = torch.exp(-excl[ray_indices, pos])
        alphas = 1.0 - torch.exp(-tau)
        return trans * alphas, trans, alphas

    def accumulate_along_rays(weights, values=None, ray_indices=None, n_rays=None):
        nf.calls.append(("accumulate_along_rays", weights.device.type))
        src = weights[:, None] if values is None else weights[:, None] * values
        return torch.zeros(n_rays, src.shape[1], dtype=src.dtype, device=src.device).index_add(0, ray_indices, src)

    class RayIntervals:
        def __init__(self, vals, is_left, is_right):
            self.vals, self.is_left, self.is_right = vals, is_left, is_right

    class RaySamples:
        def __init__(self, vals, ray_indices):
            self.vals, self.ray_indices = vals, ray_indices

    @torch.no_grad()
    def traverse_grids(rays_o, rays_d, binaries, aabbs, near_planes=None, far_planes=None, step_size=1e-3,
                       cone_angle=0.0, traverse_steps_limit=None, over_allocate=False, rays_mask=None,
                       t_sorted=None, t_indices=None, hits=None):
        """Steps t_{k+1} = t_k + max(t_k * cone_angle, step_size) from near_planes; a step is kept when
        its midpoint is before far_planes and in an occupied cell of the finest level holding it."""
        cuda_only("traverse_grids", rays_o, rays_d, binaries)
        n_rays = rays_o.shape[0]
        o, d = rays_o.double(), rays_d.double()
        t = near_planes.double().clone()
        far = far_planes.double()
        boxes = aabbs.double()
        res = torch.tensor(binaries.shape[1:], dtype=torch.float64, device=o.device)
        found = []
        active = t < far
        while bool(active.any()):
            dt = torch.clamp(t * cone_angle, min=step_size)
            mid = t + 0.5 * dt
            active = mid < far
            p = o + mid[:, None] * d
            occupied = torch.zeros(n_rays, dtype=torch.bool, device=o.device)
            placed = torch.zeros_like(occupied)
            for level in range(binaries.shape[0]):
                lo, hi = boxes[level, :3], boxes[level, 3:]
                inside = ((p >= lo) & (p < hi)).all(dim=1) & ~placed
                cell = ((p - lo) / (hi - lo) * res).floor().long()
                cell = torch.minimum(cell.clamp_min(0), res.long() - 1)
                occupied |= inside & binaries[level, cell[:, 0], cell[:, 1], cell[:, 2]]
                placed |= inside
            keep = active & occupied
            rays = torch.nonzero(keep)[:, 0]
            found.append((rays, t[rays], (t + dt)[rays]))
            t = t + dt
        rays = torch.cat([f[0] for f in found])
        starts = torch.cat([f[1] for f in found]).float()
        ends = torch.cat([f[2] for f in found]).float()
        order = torch.argsort(starts, stable=True)
        order = order[torch.argsort(rays[order], stable=True)]  # by ray, then by t
        rays, starts, ends = rays[order], starts[order], ends[order]
        vals = torch.stack([starts, ends], dim=1).reshape(-1)
        is_left = torch.tensor([True, False], device=o.device).repeat(rays.shape[0])
        intervals = RayIntervals(vals, is_left, ~is_left)
        samples = RaySamples((starts + ends) / 2, rays.int())
        return intervals, samples, None

    nf.render_transmittance_from_alpha = render_transmittance_from_alpha
    nf.render_weight_from_density = render_weight_from_density
    nf.accumulate_along_rays = accumulate_along_rays
    nf.traverse_grids = traverse_grids
    nf.RayIntervals, nf.RaySamples = RayIntervals, RaySamples
    grid_mod = types.ModuleType("nerfacc.grid")
    grid_mod.traverse_grids = traverse_grids
    nf.grid = grid_mod
    nf._submodules["nerfacc.grid"] = grid_mod
    return nf
