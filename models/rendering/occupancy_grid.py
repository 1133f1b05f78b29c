"""Occupancy grid for empty-space skipping (as in Instant-NGP / nerfacc's OccGridEstimator).

The grid covers ``levels`` nested boxes: level 0 is the scene box, level l the box doubled l
times around its centre (for unbounded scenes); each level has the same resolution. A point is
looked up in the finest level whose box contains it.
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from utils.distributed import max_over_ranks

# refinement factor between consecutive levels of the coarse-to-fine pyramid used for marching
PYRAMID_FACTOR = 4
# the coarsest pyramid level has at most this many cells per axis
PYRAMID_COARSEST = 8


class OccupancyGrid(nn.Module):
    """Binary occupancy of L nested boxes, each a res_x x res_y x res_z grid, kept up to date by an
    exponential moving average of an opacity-like field.

    Args:
        aabb: the scene box (xmin, ymin, zmin, xmax, ymax, zmax); level 0 covers exactly this box.
        resolution: cells per axis, one int or three.
        levels: number of nested boxes; level l spans the scene box scaled by 2**l about its centre.

    Buffers in the state dict: ``occs`` [L * cells] float (EMA occupancy; a negative value marks a
    cell that is never occupied) and ``binaries`` [L, rx, ry, rz] bool. ``aabbs`` [L, 6] is
    recomputed from the arguments (not saved); cell coordinates are computed on the fly.
    """

    def __init__(
        self,
        aabb: Union[Sequence[float], Tensor],
        resolution: Union[int, Sequence[int]] = 128,
        levels: int = 1,
    ):
        super().__init__()
        if isinstance(resolution, int):
            resolution = (resolution,) * 3
        resolution = tuple(int(r) for r in resolution)
        if len(resolution) != 3 or min(resolution) < 1:
            raise ValueError(f"resolution must be a positive int or three of them, got {resolution}")
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        roi = torch.as_tensor(aabb, dtype=torch.float32).reshape(-1).clone()
        if roi.numel() != 6 or not bool((roi[3:] > roi[:3]).all()):
            raise ValueError(f"aabb must be (xmin, ymin, zmin, xmax, ymax, zmax) with max > min, got {roi.tolist()}")
        centre, half = (roi[:3] + roi[3:]) / 2, (roi[3:] - roi[:3]) / 2
        aabbs = torch.stack([torch.cat([centre - half * 2**l, centre + half * 2**l]) for l in range(levels)])

        self.resolution: Tuple[int, int, int] = resolution
        self.levels = levels
        self.cells_per_level = resolution[0] * resolution[1] * resolution[2]
        self.register_buffer("aabbs", aabbs, persistent=False)
        self.register_buffer("occs", torch.zeros(levels * self.cells_per_level))
        self.register_buffer("binaries", torch.zeros((levels,) + resolution, dtype=torch.bool))
        self._pyramid_key = None
        self._pyramid_maps: List[Tuple[Tensor, Tensor]] = []

    # ----------------------------------------------------------------------------------------
    # cells
    # ----------------------------------------------------------------------------------------
    def _cell_coords(self, idx: Tensor) -> Tensor:
        """Flat in-level cell indices [N] -> integer cell coordinates [N, 3]."""
        _, ry, rz = self.resolution
        return torch.stack([idx // (ry * rz), (idx // rz) % ry, idx % rz], dim=-1)

    def _random_points_in_cells(self, cell_ids: Tensor, generator: Optional[torch.Generator]) -> Tensor:
        """Flat cell ids over all levels [N] -> one uniformly random world point per cell [N, 3]."""
        level = cell_ids // self.cells_per_level
        coords = self._cell_coords(cell_ids % self.cells_per_level).to(self.aabbs.dtype)
        jitter = torch.rand(coords.shape, generator=generator, device=coords.device, dtype=coords.dtype)
        res = torch.tensor(self.resolution, dtype=coords.dtype, device=coords.device)
        unit = (coords + jitter) / res
        box = self.aabbs[level]
        return box[:, :3] + unit * (box[:, 3:] - box[:, :3])

    def _cells_to_evaluate(self, step: int, warmup_steps: int, generator: Optional[torch.Generator]) -> Tensor:
        """Flat cell ids over all levels, never frozen ones (their value cannot change): every live
        cell during warm-up, afterwards per level a random quarter of its live cells plus (up to)
        as many drawn from the occupied cells. Without frozen cells this is nerfacc's rule."""
        device = self.occs.device
        n_cells = self.cells_per_level
        live_by_level = (self.occs >= 0).reshape(self.levels, n_cells)
        ids = []
        for level in range(self.levels):
            live = torch.nonzero(live_by_level[level])[:, 0]
            if step < warmup_steps:
                ids.append(live + level * n_cells)
                continue
            n = live.numel() // 4
            uniform = live[torch.randint(live.numel(), (n,), generator=generator, device=device)] if n else live[:0]
            occupied = torch.nonzero(self.binaries[level].reshape(-1))[:, 0]
            if occupied.numel() > n:
                occupied = occupied[torch.randint(occupied.numel(), (n,), generator=generator, device=device)]
            ids.append(torch.cat([uniform, occupied]) + level * n_cells)
        return torch.cat(ids)

    # ----------------------------------------------------------------------------------------
    # updates
    # ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def update(
        self,
        step: int,
        occ_eval_fn: Callable[[Tensor], Tensor],
        occ_thre: float = 0.01,
        ema_decay: float = 0.95,
        warmup_steps: int = 256,
        *,
        generator: Optional[torch.Generator] = None,
        eval_chunk_size: Optional[int] = 2**18,
    ) -> None:
        """One EMA update of the occupancy (the rule of nerfacc's OccGridEstimator).

        Cells to evaluate (frozen ones never): all during warm-up (``step < warmup_steps``),
        afterwards per level ``live cells // 4`` uniformly random live cells plus up to as many
        random occupied ones. One random
        point inside each chosen cell goes to ``occ_eval_fn(x [N, 3] world points) -> [N] (or
        [N, 1])`` opacity-like values (called without grad, on at most ``eval_chunk_size`` points at
        a time; None: all at once). Each evaluated cell whose value is not negative becomes
        ``max(old * ema_decay, new)`` (a cell drawn twice takes its larger new value); cells not
        evaluated keep their value (as in nerfacc); negative cells stay. Finally
        ``binaries = occs > min(mean of the positive occs, occ_thre)``.

        In a distributed run (an initialized process group of several processes; every process
        updates at the same steps) the new values [L * cells] (-inf where a cell was not
        evaluated) are merged by an all-reduce max before the EMA: the update is the one a single
        process would make from all processes' evaluations, and the grid stays identical everywhere.
        """
        cell_ids = self._cells_to_evaluate(step, warmup_steps, generator)
        x = self._random_points_in_cells(cell_ids, generator)
        chunk = eval_chunk_size or max(1, x.shape[0])
        values = torch.cat([occ_eval_fn(x[i : i + chunk]).reshape(-1) for i in range(0, x.shape[0], chunk)])
        if values.shape[0] != x.shape[0]:
            raise ValueError(f"occ_eval_fn returned {values.shape[0]} values for {x.shape[0]} points")
        values = values.to(self.occs.dtype)
        new = torch.full_like(self.occs, -math.inf).scatter_reduce_(0, cell_ids, values, reduce="amax")
        new = max_over_ranks(new)
        evaluated = new > -math.inf
        updated = torch.maximum(self.occs * ema_decay, new)
        self.occs.copy_(torch.where(evaluated & (self.occs >= 0), updated, self.occs))
        self._binarize(occ_thre)

    def update_every_n_steps(
        self,
        step: int,
        occ_eval_fn: Callable[[Tensor], Tensor],
        n: int = 16,
        occ_thre: float = 0.01,
        ema_decay: float = 0.95,
        warmup_steps: int = 256,
        previous_step: Optional[int] = None,
        **kwargs,
    ) -> bool:
        """Runs ``update`` when ``step`` is a multiple of ``n`` or, given the step of the previous
        call, when a multiple of n lies in (previous_step, step] (steps that advance by more than
        one, e.g. a schedule stretched over a time budget); returns whether it did. kwargs go to
        ``update``."""
        due = step % n == 0 if previous_step is None else step // n > previous_step // n
        if not due:
            return False
        self.update(step, occ_eval_fn, occ_thre=occ_thre, ema_decay=ema_decay, warmup_steps=warmup_steps, **kwargs)
        return True

    @torch.no_grad()
    def _binarize(self, occ_thre: float) -> None:
        positive = self.occs[self.occs > 0]
        thre = min(float(positive.mean()), occ_thre) if positive.numel() else occ_thre
        self.binaries.copy_((self.occs > thre).reshape(self.binaries.shape))

    @torch.no_grad()
    def set_binary(self, mask: Tensor, freeze_empty: bool = False) -> None:
        """Start from a given occupancy (e.g. a visual hull).

        mask: bool [L, rx, ry, rz] ([rx, ry, rz] allowed when levels == 1). The binaries become
        ``mask`` until the next update; occupied cells keep their EMA value (at least 0), so the
        field alone decides from the next update on; empty ones get 0, or -1 with ``freeze_empty``
        (never occupied again, whatever the field says).
        """
        mask = torch.as_tensor(mask, device=self.binaries.device).to(torch.bool)
        if mask.dim() == 3 and self.levels == 1:
            mask = mask[None]
        if tuple(mask.shape) != tuple(self.binaries.shape):
            raise ValueError(f"mask must have shape {tuple(self.binaries.shape)}, got {tuple(mask.shape)}")
        flat = mask.reshape(-1)
        empty_value = -1.0 if freeze_empty else 0.0
        self.occs.copy_(torch.where(flat, self.occs.clamp_min(0.0), torch.full_like(self.occs, empty_value)))
        self.binaries.copy_(mask)

    def occupied_fraction(self) -> float:
        """Fraction of occupied cells over all levels."""
        return float(self.binaries.float().mean())

    # ----------------------------------------------------------------------------------------
    # queries
    # ----------------------------------------------------------------------------------------
    def _lookup(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """World points x [N, 3] -> (level [N], cell index [N, 3], inside [N] bool).

        A point is looked up in the finest level whose box contains it (boxes closed).
        """
        box = self.aabbs[0].to(x.dtype)
        centre, half = (box[:3] + box[3:]) / 2, (box[3:] - box[:3]) / 2
        xn = (x - centre) / half  # level l covers [-2**l, 2**l]^3
        extent = xn.abs().amax(dim=-1)
        level = torch.ceil(torch.log2(extent.clamp_min(1e-30))).clamp_min(0).long()
        inside = (level < self.levels) & torch.isfinite(extent)
        level = level.clamp_max(self.levels - 1)
        unit = (xn / (2.0 ** level.to(x.dtype))[:, None] + 1) / 2
        res = torch.tensor(self.resolution, device=x.device)
        idx = torch.minimum((unit * res.to(x.dtype)).floor().long().clamp_min(0), res - 1)
        return level, idx, inside

    @torch.no_grad()
    def query(self, x: Tensor) -> Tensor:
        """Occupancy at world points: x [N, 3] -> bool [N] (False outside the outermost box)."""
        level, idx, inside = self._lookup(x)
        occ = self.binaries.to(x.device)[level, idx[:, 0], idx[:, 1], idx[:, 2]]
        return occ & inside

    @torch.no_grad()
    def query_frozen_empty(self, x: Tensor) -> Tensor:
        """Cells marked empty for good (``set_binary(..., freeze_empty=True)``, e.g. outside a visual
        hull) at world points: x [N, 3] -> bool [N] (False outside the grid's boxes)."""
        level, idx, inside = self._lookup(x)
        frozen = (self.occs < 0).reshape(self.binaries.shape).to(x.device)
        return frozen[level, idx[:, 0], idx[:, 1], idx[:, 2]] & inside

    def pyramid(self) -> List[Tuple[Tensor, Tensor]]:
        """Coarse-to-fine maps for hierarchical marching: [(any_0, all_0), ..., (binaries, binaries)].

        Level j has [L, *ceil(res / 4**(J - j))] cells (J = number of levels - 1); a cell of
        ``any_j`` is True iff any of the finest cells it covers is occupied, of ``all_j`` iff all of
        them are (cells beyond the grid's edge do not count). Cached until ``binaries`` changes
        (in place or replaced).
        """
        b = self.binaries
        key = (b.data_ptr(), b._version, b.device, tuple(b.shape))
        if key != self._pyramid_key:
            maps = [(b, b)]
            while max(maps[0][0].shape[1:]) > PYRAMID_COARSEST:
                any_map, all_map = maps[0]
                maps.insert(0, (_pool(any_map, PYRAMID_FACTOR, "any"), _pool(all_map, PYRAMID_FACTOR, "all")))
            self._pyramid_maps, self._pyramid_key = maps, key
        return self._pyramid_maps


def _pool(m: Tensor, f: int, how: str) -> Tensor:
    """[L, X, Y, Z] bool -> [L, ceil(X/f), ceil(Y/f), ceil(Z/f)]: any / all over f^3 blocks
    (padding beyond the edge is neutral)."""
    L, X, Y, Z = m.shape
    pad = [(-s) % f for s in (X, Y, Z)]
    if any(pad):
        padded = torch.full((L, X + pad[0], Y + pad[1], Z + pad[2]), how == "all", dtype=torch.bool, device=m.device)
        padded[:, :X, :Y, :Z] = m
        m = padded
    X2, Y2, Z2 = (X + pad[0]) // f, (Y + pad[1]) // f, (Z + pad[2]) // f
    blocks = m.reshape(L, X2, f, Y2, f, Z2, f)
    if how == "any":
        return blocks.any(dim=6).any(dim=4).any(dim=2)
    return blocks.all(dim=6).all(dim=4).all(dim=2)
