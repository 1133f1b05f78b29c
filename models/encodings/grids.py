"""Explicit feature grids: the EG3D tri-plane and a dense voxel grid.

Sampling convention (both): texel centres sit on the lattice ``i / (R - 1)``, i = 0..R-1, so
the first and last texels lie exactly on the faces of the unit cube (``align_corners=True`` in
``F.grid_sample`` terms). Inputs are clamped to [0, 1] (zero gradient outside); NaN inputs
sample at 0.

Both sample with the weighted gather of ``models.encodings.gather`` (an ``F.embedding_bag``
forward and a scatter backward), which on a CPU is several times faster than
``F.grid_sample`` (whose CPU backward is slow); ``scripts/bench_fields.py`` measures both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Literal, Optional, Tuple

import torch
from torch import nn

from models.encodings import register
from utils.config import at_least, checked, each, length, non_negative
from models.encodings.base import Encoding, on_empty_batch
from models.encodings.gather import GridSampler, combine_corner_terms, grid_gather, nlinear_weights

# the three axis-aligned planes: (first axis u, second axis v) of XY, XZ, YZ
PLANES: Tuple[Tuple[int, int], ...] = ((0, 1), (0, 2), (1, 2))


def _init_table(table: torch.Tensor, kind: str, scale: float, mean: float) -> None:
    with torch.no_grad():
        if kind == "normal":
            table.normal_(mean, scale)
        else:
            table.uniform_(mean - scale, mean + scale)


def _lattice(x: torch.Tensor, res: torch.Tensor):
    """x [D, C] in [0, 1], res [G] texels per axis -> cell [D, C, G] int32, frac [D, C, G], inside [D, C, 1]."""
    # NaN would index outside the table: it samples at 0 instead
    pos = torch.nan_to_num(x, nan=0.0).clamp_(0.0, 1.0).unsqueeze(-1) * (res - 1).to(x.dtype)
    cell = torch.floor(pos).clamp_(max=(res - 2).to(x.dtype))
    frac = pos - cell
    inside = ((x >= 0) & (x <= 1)).to(x.dtype).unsqueeze(-1)
    return cell.to(torch.int32), frac, inside


def tv_term(grid: torch.Tensor, dims: Tuple[int, ...]) -> torch.Tensor:
    """Mean over neighbouring texel pairs (along each of ``dims``, pooled) and channels of the squared difference."""
    total, count = 0.0, 0
    for d in dims:
        diff = grid.diff(dim=d)
        total = total + diff.pow(2).sum()
        count += diff.numel()
    return total / max(count, 1)


class DenseGridSampler(GridSampler):
    """One R^D lattice, row index ``sum_d c_d R^d`` (dimension 0 fastest)."""

    def __init__(self, n_dims: int, resolution: int):
        self.n_dims = n_dims
        self.resolution = resolution

    def n_out_groups(self, n_groups: int) -> int:
        return 1

    def n_corners(self) -> int:
        return 1 << self.n_dims

    def corners(self, x, n_groups, need_dw):
        C, D = x.shape
        R = self.resolution
        res = torch.full((1,), R, dtype=torch.int32, device=x.device)
        cell, frac, inside = _lattice(x.t(), res)  # [D, C, 1]
        ds = frac.new_full((1,), R - 1.0) * inside.expand_as(frac) if need_dw else None
        w, dw = nlinear_weights(frac, ds)
        strides = torch.tensor([R**d for d in range(D)], dtype=torch.int32, device=x.device).view(D, 1, 1)
        t = cell * strides
        terms = torch.stack([t, t + strides], dim=1)  # [D, 2, C, 1]
        idx = torch.empty(1 << D, C, 1, dtype=torch.int32, device=x.device)
        combine_corner_terms(terms, "add", idx)
        return idx, w, dw


class TriPlaneSampler(GridSampler):
    """Bilinear corners on the XY, XZ and YZ planes of each resolution.

    Groups are ordered (resolution, plane) with the plane fastest. With ``merge`` (sum
    aggregation) the three planes of a resolution form one bag of 12 corners, so the gather
    sums them directly.
    """

    def __init__(self, resolutions: List[int], merge: bool):
        self.n_dims = 3
        self.resolutions = list(resolutions)
        self.merge = merge
        offsets, off = [], 0
        for r in self.resolutions:
            offsets.append(off)
            off += 3 * r * r
        self.offsets = offsets
        self.n_entries = off

    def n_out_groups(self, n_groups: int) -> int:
        return len(self.resolutions) * (1 if self.merge else 3)

    def n_corners(self) -> int:
        return 12 if self.merge else 4

    def corners(self, x, n_groups, need_dw):
        C = x.shape[0]
        nr = len(self.resolutions)
        dev = x.device
        res = torch.tensor(self.resolutions, dtype=torch.int32, device=dev)
        off = torch.tensor(self.offsets, dtype=torch.int32, device=dev)
        cell, frac, inside = _lattice(x.t(), res)  # [3, C, nr]
        ds = None
        if need_dw:
            ds = (res - 1).to(x.dtype) * inside  # [3, C, nr] (broadcast)
            ds = ds.expand_as(frac)
        idx_p, w_p, dw_p = [], [], []
        for p, (a, b) in enumerate(PLANES):
            s = frac[[a, b]]  # [2, C, nr]
            w, dw = nlinear_weights(s, None if ds is None else ds[[a, b]])  # [4, C, nr], [2, 4, C, nr]
            ta = cell[a]
            tb = cell[b] * res + (off + p * res * res)
            terms = torch.stack([torch.stack([ta, ta + 1]), torch.stack([tb, tb + res])])  # [2, 2, C, nr]
            idx = torch.empty(4, C, nr, dtype=torch.int32, device=dev)
            combine_corner_terms(terms, "add", idx)
            idx_p.append(idx)
            w_p.append(w)
            if dw is not None:
                full = dw.new_zeros(3, 4, C, nr)
                full[a] = dw[0]
                full[b] = dw[1]
                dw_p.append(full)
        if self.merge:  # [3 planes * 4 corners, C, nr]
            idx = torch.cat(idx_p, 0)
            w = torch.cat(w_p, 0)
            dw = torch.cat(dw_p, 1) if dw_p else None
        else:  # [4, C, nr * 3], group = resolution * 3 + plane
            idx = torch.stack(idx_p, -1).view(4, C, nr * 3)
            w = torch.stack(w_p, -1).view(4, C, nr * 3)
            dw = torch.stack(dw_p, -1).view(3, 4, C, nr * 3) if dw_p else None
        return idx, w, dw


@register("triplane")
class TriPlane(Encoding):
    """EG3D tri-plane: x [N, 3] in [0, 1]^3 -> features from the XY, XZ and YZ planes.

    Each plane is R x R x n_features, sampled bilinearly (texel centres at i / (R - 1)). The
    three planes' features are summed, multiplied or concatenated; with several resolutions the
    per-resolution results are concatenated (coarse first).
    """

    @dataclass
    class Config:
        resolution: int = checked(at_least(2), default=128)
        # several resolutions stacked (features concatenated across them); overrides resolution
        resolutions: Optional[List[int]] = checked(length(at_least=1), each(at_least(2)), default=None)
        n_features: int = checked(at_least(1), default=16)
        aggregation: Literal["sum", "product", "concat"] = "sum"
        init: Literal["normal", "uniform"] = "normal"
        init_scale: float = checked(non_negative(), default=0.1)  # std of "normal", half-width of "uniform"
        # mean of the initial features; default 0, or 1 for the product aggregation
        init_mean: Optional[float] = None

    def __init__(self, cfg: "TriPlane.Config", n_input_dims: int = 3):
        super().__init__()
        if n_input_dims != 3:
            raise ValueError(f"triplane needs 3 input dims, got {n_input_dims}")
        self.cfg = cfg
        self.resolutions = list(cfg.resolutions) if cfg.resolutions else [cfg.resolution]
        if min(self.resolutions) < 2:
            raise ValueError(f"triplane resolutions must be >= 2, got {self.resolutions}")
        self.n_features = cfg.n_features
        self.n_input_dims = 3
        nr = len(self.resolutions)
        self.n_output_dims = nr * cfg.n_features * (3 if cfg.aggregation == "concat" else 1)
        self.sampler = TriPlaneSampler(self.resolutions, merge=cfg.aggregation == "sum")
        # all planes in one table: per resolution r, 3 planes of r*r texels (row v * r + u)
        self.table = nn.Parameter(torch.empty(self.sampler.n_entries, cfg.n_features))
        mean = cfg.init_mean if cfg.init_mean is not None else (1.0 if cfg.aggregation == "product" else 0.0)
        _init_table(self.table, cfg.init, cfg.init_scale, mean)

    def planes(self) -> List[torch.Tensor]:
        """Views of the planes, one [3, R, R, C] per resolution (plane, v, u, channel)."""
        out = []
        for r, off in zip(self.resolutions, self.sampler.offsets):
            out.append(self.table[off : off + 3 * r * r].view(3, r, r, self.n_features))
        return out

    def _aggregate(self, feats: torch.Tensor, N: int) -> torch.Tensor:
        agg = self.cfg.aggregation
        if agg == "product":
            return feats.view(N, -1, 3, self.n_features).prod(dim=2).reshape(N, -1)
        return feats.reshape(N, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, 3] in [0, 1]^3 -> features [N, F]."""
        if x.shape[0] == 0:
            return on_empty_batch(self.forward, x)
        feats, _ = grid_gather(x, self.table, self.sampler, 0)
        return self._aggregate(feats, x.shape[0])

    def forward_with_jacobian(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """x [N, 3] -> (features [N, F], d features / d x [N, F, 3] (a permuted view))."""
        if x.shape[0] == 0:
            return on_empty_batch(self.forward_with_jacobian, x)
        N = x.shape[0]
        feats, jac = grid_gather(x, self.table, self.sampler, 0, with_jac=True)
        if self.cfg.aggregation == "product":
            f = feats.view(N, -1, 3, self.n_features)  # [N, nr, 3, C]
            j = jac.view(3, N, -1, 3, self.n_features)  # [D, N, nr, 3, C]
            f0, f1, f2 = f.unbind(2)
            j0, j1, j2 = j.unbind(3)
            out = (f0 * f1 * f2).reshape(N, -1)
            jout = (j0 * (f1 * f2) + j1 * (f0 * f2) + j2 * (f0 * f1)).reshape(3, N, -1)
            return out, jout.permute(1, 2, 0)
        return feats.reshape(N, -1), jac.reshape(3, N, -1).permute(1, 2, 0)

    def regularizations(self) -> Dict[str, torch.Tensor]:
        """'tv': mean squared difference of neighbouring texels (pooled over both axes and the
        channels, averaged over planes and resolutions); 'l1': mean |feature|. Unweighted."""
        tv = []
        for planes in self.planes():
            for p in range(3):
                tv.append(tv_term(planes[p], (0, 1)))
        return {"tv": torch.stack(tv).mean(), "l1": self.table.abs().mean()}

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, resolutions={self.resolutions}, n_features={self.n_features}, "
            f"aggregation={self.cfg.aggregation}"
        )


@register("dense-grid")
class DenseGrid(Encoding):
    """Dense voxel grid R^D x C, trilinear (texel centres at i / (R - 1)); x [N, D] -> [N, C]."""

    @dataclass
    class Config:
        resolution: int = checked(at_least(2), default=64)
        n_features: int = checked(at_least(1), default=8)
        init: Literal["normal", "uniform"] = "normal"
        init_scale: float = checked(non_negative(), default=0.1)  # std of "normal", half-width of "uniform"

    def __init__(self, cfg: "DenseGrid.Config", n_input_dims: int = 3):
        super().__init__()
        if cfg.resolution < 2:
            raise ValueError(f"dense-grid resolution must be >= 2, got {cfg.resolution}")
        self.cfg = cfg
        self.n_input_dims = n_input_dims
        self.n_output_dims = cfg.n_features
        self.resolution = cfg.resolution
        self.sampler = DenseGridSampler(n_input_dims, cfg.resolution)
        # row index sum_d c_d R^d: as a volume [R (dim D-1), ..., R (dim 0), C]
        self.table = nn.Parameter(torch.empty(cfg.resolution**n_input_dims, cfg.n_features))
        _init_table(self.table, cfg.init, cfg.init_scale, 0.0)

    def volume(self) -> torch.Tensor:
        """The grid as [R, ..., R, C] with the last input dimension first (a view)."""
        return self.table.view(*([self.resolution] * self.n_input_dims), self.cfg.n_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, D] in [0, 1]^D -> features [N, C]."""
        if x.shape[0] == 0:
            return on_empty_batch(self.forward, x)
        feats, _ = grid_gather(x, self.table, self.sampler, 1)
        return feats.reshape(x.shape[0], -1)

    def forward_with_jacobian(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """x [N, D] -> (features [N, C], d features / d x [N, C, D] (a permuted view))."""
        if x.shape[0] == 0:
            return on_empty_batch(self.forward_with_jacobian, x)
        N, D = x.shape
        feats, jac = grid_gather(x, self.table, self.sampler, 1, with_jac=True)
        return feats.reshape(N, -1), jac.reshape(D, N, -1).permute(1, 2, 0)

    def regularizations(self) -> Dict[str, torch.Tensor]:
        """'tv': mean squared difference of neighbouring voxels (pooled over axes and channels);
        'l1': mean |feature|. Unweighted."""
        vol = self.volume()
        return {"tv": tv_term(vol, tuple(range(self.n_input_dims))), "l1": self.table.abs().mean()}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, resolution={self.resolution}"
