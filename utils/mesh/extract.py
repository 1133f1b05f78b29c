"""Isosurface extraction: mesh the level set ``field_fn(x) == threshold`` inside a box.

Conventions (see ``utils.mesh.backends`` for marching cubes itself):

- The field is SDF-like: the *inside* is where ``value < threshold``; for a density/occupancy
  field that is larger inside, pass its negation. Faces wind counter-clockwise seen from outside.
- The grid has ``resolution`` points per axis, the first and last at ``bounds`` min and max
  (spacing ``(max - min) / (resolution - 1)``); the mesh comes back in scene coordinates.

Two ways through the grid, chosen by ``block_size`` (both give the same mesh: the same
vertices up to float rounding and the same faces, in another order):

- one pass: the box of the grid that holds the surface (found by a coarse pass) is sampled into
  one value grid and meshed at once. Memory: 4 bytes per point of that box (512 MiB at 512^3,
  32 GiB at 2048^3).
- block-wise: the grid is cut into cubes of ``block_size`` cells that share their boundary
  samples. A coarse pass on a sub-grid of the fine grid (every ``stride``-th point, where
  ``stride`` divides ``block_size``) marks the blocks that can hold the surface; only those are
  sampled and meshed, one at a time. A vertex on a face between two blocks is made by both (from
  the same samples); the copies are welded by the grid edge they lie on, so the mesh is closed
  across the seams without duplicate vertices. Memory: one block of values (4 (B+1)^3 bytes)
  plus one chunk of points, plus the mesh itself.

Axis names in shapes: N points, V vertices, F faces.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from utils.mesh.backends import (
    Backend,
    NonFiniteFieldError,
    marching_cubes,
    marching_cubes_f64,
    resolve_backend,
    torchmcubes_available,
)
from utils.mesh.grid import (
    BoundsLike,
    EmptySurfaceError,
    FieldFn,
    FieldStats,
    Progress,
    empty_surface_error,
    evaluate_box,
    grid_axes,
    infer_device,
    parse_bounds,
    parse_resolution,
)
from utils.mesh.mesh import Mesh

__all__ = [
    "Mesh",
    "EmptySurfaceError",
    "NonFiniteFieldError",
    "marching_cubes",
    "extract_isosurface",
    "torchmcubes_available",
    "DEFAULT_BLOCK_SIZE",
]

logger = logging.getLogger(__name__)

BlockSize = Union[int, str, None]

# cells per block edge with block_size="auto": 65^3 samples (1.1 MiB) per block; smaller blocks
# sample a thinner shell around the surface but pay more per-block overhead (see
# scripts/bench_mesh.py for the trade-off)
DEFAULT_BLOCK_SIZE = 64
# block_size="auto" samples grids up to this many points in one pass (a 64 MiB value grid)
AUTO_ONE_PASS_POINTS = 256**3
# the coarse pass of "auto"/int blocks samples every (block_size // 8)-th point by default
_COARSE_CELLS_PER_BLOCK = 8
# ... but no finer than 256 coarse cells per axis (a 64 MiB coarse grid)
_MAX_COARSE_CELLS = 256
_ONE_PASS_COARSE_RESOLUTION = 64
_MIB = 2.0**20


def extract_isosurface(
    field_fn: FieldFn,
    bounds: BoundsLike,
    resolution: Union[int, Sequence[int]] = 512,
    threshold: float = 0.0,
    chunk_size: int = 2**18,
    coarse_to_fine: bool = True,
    coarse_resolution: Optional[int] = None,
    margin: int = 2,
    band: Optional[float] = None,
    skip_fn: Optional[Callable[[Tensor], Tensor]] = None,
    skip_value: float = 1e4,
    color_fn: Optional[Callable[[Tensor], Tensor]] = None,
    device: Optional[Union[str, torch.device]] = None,
    backend: Backend = "auto",
    progress: bool = False,
    block_size: BlockSize = "auto",
) -> Mesh:
    """Mesh the surface ``field_fn(x) == threshold`` inside ``bounds``.

    field_fn: points [N, 3] (float32, scene coordinates, on ``device``) -> values [N] (or
        [N, 1]); SDF-like: inside where value < threshold. Called under ``torch.no_grad()``
        on chunks of at most ``chunk_size`` points (at least one grid row of Z points).
    bounds: ([3] min, [3] max) of the grid in scene coordinates (or a [2, 3] tensor/array).
    resolution: grid points per axis (int or three ints) over the full ``bounds``; spacing is
        ``(max - min) / (resolution - 1)``.
    block_size: cells per block edge for block-wise extraction (see the module docstring): an
        int >= 2; None for one pass over the whole box; "auto" (default): one pass for grids of
        at most 256^3 points, blocks of ``DEFAULT_BLOCK_SIZE`` cells above that.
    coarse_to_fine: first sample a coarse grid and keep only what lies near the surface: coarse
        cells whose corner values straddle ``threshold`` or come within ``band`` of it (default:
        one coarse cell diagonal, which never misses a surface of a true SDF in scene units),
        grown by ``margin`` coarse cells. One pass: the box around those cells is sampled at
        full resolution; block-wise: the blocks that hold one of those cells. The fine samples
        are the very points of the full grid, so the mesh equals the one from sampling every
        point whenever the kept part holds the whole surface. For fields that are not
        distance-like (thin features may fall between coarse samples), pass a larger ``band``
        (in field units) or ``coarse_to_fine=False``.
    coarse_resolution: points per axis of the coarse grid (about, block-wise: the coarse grid
        there is every ``stride``-th fine point with ``stride`` a divisor of ``block_size``).
        Default: 64 for one pass, ``stride = block_size // 8`` block-wise.
    skip_fn: points [N, 3] -> [N] bool, True where space is known to be empty (e.g. from an
        occupancy grid); those points get ``threshold + skip_value`` without calling field_fn.
    color_fn: optional points [V, 3] -> colours [V, 3] in [0, 1], evaluated at the vertices.
    device: where points are made and field_fn runs; default: the device of field_fn's
        parameters when it is a Module, else of ``bounds`` when a tensor, else CPU.
    backend: "auto" | "pymcubes" | "torchmcubes" (see ``marching_cubes``).
    progress: report progress of the field evaluation on stderr (tqdm when available).

    Returns a ``Mesh`` on CPU: vertices [V, 3] float32 in scene coordinates, faces [F, 3] int64
    wound counter-clockwise seen from outside (normals point outward), optional colours [V, 3].
    Memory (logged at INFO before it is allocated): one pass holds 4 bytes per point of the kept
    box (on CPU for PyMCubes, on ``device`` for torchmcubes); block-wise holds one block of
    values and the growing mesh (about 12 bytes per vertex and 24 per face while assembling).
    Raises ``EmptySurfaceError`` (a ValueError) when the field does not cross the threshold,
    ``NonFiniteFieldError`` (a ValueError) when the field returns NaN.
    """
    with torch.no_grad():
        return _extract(field_fn, bounds, resolution, threshold, chunk_size, coarse_to_fine,
                        coarse_resolution, margin, band, skip_fn, skip_value, color_fn, device,
                        backend, progress, block_size)


def _extract(field_fn, bounds, resolution, threshold, chunk_size, coarse_to_fine,
             coarse_resolution, margin, band, skip_fn, skip_value, color_fn, device, backend,
             progress, block_size) -> Mesh:
    t0 = time.perf_counter()
    threshold = float(threshold)
    lo, hi = parse_bounds(bounds)
    res = parse_resolution(resolution, "resolution")
    chunk_size = int(chunk_size)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0 coarse cells, got {margin}")
    if coarse_resolution is not None and int(coarse_resolution) < 2:
        raise ValueError(f"coarse_resolution must be >= 2, got {coarse_resolution}")
    block = _parse_block_size(block_size, res)
    device = torch.device(device) if device is not None else infer_device(field_fn, bounds)
    grid_points = int(np.prod(res)) if block is None else (block + 1) ** 3
    name = resolve_backend(backend, device, grid_points)
    grid_device = device if name == "torchmcubes" else torch.device("cpu")
    common = dict(field_fn=field_fn, lo=lo, hi=hi, res=res, threshold=threshold,
                  chunk_size=chunk_size, coarse_to_fine=coarse_to_fine, margin=int(margin),
                  band=band, skip_fn=skip_fn, skip_value=skip_value, device=device,
                  grid_device=grid_device, backend=name, progress=progress)
    if block is None:
        verts, faces = _extract_one_pass(
            coarse_resolution=_ONE_PASS_COARSE_RESOLUTION if coarse_resolution is None
            else int(coarse_resolution), **common)
    else:
        verts, faces = _extract_blocks(block=block, coarse_resolution=coarse_resolution,
                                       **common)
    colors = _vertex_colors(color_fn, verts, chunk_size, device)
    logger.info("isosurface: %d vertices, %d faces in %.2f s", verts.shape[0], faces.shape[0],
                time.perf_counter() - t0)
    return Mesh(verts, faces, colors)


def _parse_block_size(block_size: BlockSize, res: Sequence[int]) -> Optional[int]:
    if block_size is None:
        return None
    if isinstance(block_size, str):
        if block_size != "auto":
            raise ValueError(f"block_size must be 'auto', None or an int >= 2, got {block_size!r}")
        return None if int(np.prod(res)) <= AUTO_ONE_PASS_POINTS else DEFAULT_BLOCK_SIZE
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) \
            or block_size < 2:
        raise ValueError(f"block_size must be 'auto', None or an int >= 2 (cells per block "
                         f"edge), got {block_size!r}")
    return int(block_size)


def _vertex_colors(color_fn, verts: Tensor, chunk_size: int, device) -> Optional[Tensor]:
    if color_fn is None:
        return None
    parts = []
    for s in range(0, verts.shape[0], chunk_size):
        c = color_fn(verts[s:s + chunk_size].to(device))
        parts.append(c.reshape(-1, 3).to(torch.float32).clamp(0.0, 1.0).cpu())
    return torch.cat(parts)


def _to_scene(verts_index: Tensor, lo: np.ndarray, hi: np.ndarray, res) -> Tensor:
    """Grid index coordinates [V, 3] float64 -> scene coordinates [V, 3] float32."""
    spacing = torch.as_tensor((hi - lo) / (np.asarray(res) - 1), dtype=torch.float64)
    return (torch.as_tensor(lo, dtype=torch.float64) + verts_index * spacing).to(torch.float32)


# --------------------------------------------------------------------------------------------
# one pass
# --------------------------------------------------------------------------------------------
def _coarse_box(field_fn, lo, hi, res, threshold, coarse_res, margin, band, chunk_size, skip_fn,
                skip_value, device, progress: bool) -> Tuple[np.ndarray, np.ndarray]:
    """Fine-grid index box [start, stop) along each axis that holds every coarse cell near the
    surface, grown by ``margin`` coarse cells."""
    cres = (coarse_res,) * 3
    axes = grid_axes(lo, hi, cres, device)
    bar = Progress(progress, int(np.prod(cres)), "isosurface coarse pass")
    try:
        values, stats = evaluate_box(field_fn, axes, (0, 0, 0), cres, threshold, chunk_size,
                                     skip_fn, skip_value, device, bar)
    finally:
        bar.close()
    cspacing = (hi - lo) / (np.asarray(cres) - 1)
    if band is None:
        band = float(np.linalg.norm(cspacing))  # a cell diagonal: exact for a true SDF
    active = _near_surface_cells(values, threshold, band)
    if not bool(active.any()):
        raise empty_surface_error(stats, threshold, cres, lo, hi, "coarse grid")
    fres = np.asarray(res)
    fspacing = (hi - lo) / (fres - 1)
    start, stop = np.zeros(3, dtype=np.int64), np.zeros(3, dtype=np.int64)
    for a in range(3):
        other = tuple(d for d in range(3) if d != a)
        idx = torch.nonzero(active.any(dim=other[1]).any(dim=other[0])).reshape(-1)
        c0 = max(int(idx.min()) - margin, 0)
        c1 = min(int(idx.max()) + 1 + margin, coarse_res - 1)  # cell c spans points c..c+1
        f0 = math.floor(c0 * cspacing[a] / fspacing[a] - 1e-6)
        f1 = math.ceil(c1 * cspacing[a] / fspacing[a] + 1e-6)
        start[a] = min(max(f0, 0), fres[a] - 2)
        stop[a] = max(min(f1, fres[a] - 1), start[a] + 1) + 1
    return start, stop


def _near_surface_cells(values: Tensor, threshold: float, band: float) -> Tensor:
    """Cells of a grid whose 8 corner values straddle ``threshold`` or come within ``band`` of
    it. values [X, Y, Z] -> [X-1, Y-1, Z-1] bool."""
    v = values[None, None]
    # max pooling over 2x2x2 windows gives each cell's corner max (and, negated, min) without
    # stacking 8 shifted copies of the grid
    cmax = torch.nn.functional.max_pool3d(v, 2, stride=1)[0, 0]
    near = cmax >= threshold - band
    del cmax
    cmin = -torch.nn.functional.max_pool3d(-v, 2, stride=1)[0, 0]
    return near & (cmin < threshold + band)


def _extract_one_pass(field_fn, lo, hi, res, threshold, chunk_size, coarse_to_fine,
                      coarse_resolution, margin, band, skip_fn, skip_value, device, grid_device,
                      backend, progress) -> Tuple[Tensor, Tensor]:
    start, stop = np.zeros(3, dtype=np.int64), np.asarray(res, dtype=np.int64)
    if coarse_to_fine and min(res) > coarse_resolution:
        start, stop = _coarse_box(field_fn, lo, hi, res, threshold, coarse_resolution, margin,
                                  band, chunk_size, skip_fn, skip_value, device, progress)
    shape = stop - start
    n = int(np.prod(shape))
    nbytes = 4 * n
    logger.info("isosurface: one pass over %d fine points of a %dx%dx%d grid (box %s..%s), "
                "backend %s: allocating a %.1f MiB value grid on %s", n, *res, start.tolist(),
                (stop - 1).tolist(), backend, nbytes / _MIB, grid_device)
    if nbytes > 4 * 2**30:
        logger.warning("isosurface: the one-pass value grid takes %.1f GiB; pass block_size "
                       "(e.g. 'auto' or %d) to extract block by block in bounded memory",
                       nbytes / 2**30, DEFAULT_BLOCK_SIZE)

    axes = grid_axes(lo, hi, res, device)
    bar = Progress(progress, n, "isosurface fine pass")
    try:
        values, stats = evaluate_box(field_fn, axes, start, shape, threshold, chunk_size,
                                     skip_fn, skip_value, grid_device, bar)
    finally:
        bar.close()
    where = "grid" if np.all(shape == np.asarray(res)) else "part of the grid the coarse pass kept"
    if not stats.crosses(threshold):
        raise empty_surface_error(stats, threshold, res, lo, hi, where)
    t_mc = time.perf_counter()
    verts, faces = marching_cubes_f64(values, threshold, backend)
    logger.info("isosurface: marching cubes %.2f s", time.perf_counter() - t_mc)
    del values
    if faces.shape[0] == 0:
        raise empty_surface_error(stats, threshold, res, lo, hi, where)
    verts = verts.cpu() + torch.as_tensor(start, dtype=torch.float64)
    return _to_scene(verts, lo, hi, res), faces.cpu()


# --------------------------------------------------------------------------------------------
# block-wise
# --------------------------------------------------------------------------------------------
def _coarse_stride(block: int, res: Sequence[int], coarse_resolution: Optional[int]) -> int:
    """Coarse spacing in fine cells: a divisor of ``block``. By default the smallest divisor
    >= block / 8 that keeps the coarse grid within 257 points per axis; with
    ``coarse_resolution``, the largest divisor not above the spacing it asks for."""
    divisors = [d for d in range(1, block + 1) if block % d == 0]
    if coarse_resolution is None:
        want = max(block // _COARSE_CELLS_PER_BLOCK, math.ceil((max(res) - 1) / _MAX_COARSE_CELLS))
        return min(d for d in divisors if d >= want) if want <= block else block
    want = max(1, (max(res) - 1) // (int(coarse_resolution) - 1))
    return max(d for d in divisors if d <= want)


def _active_blocks(field_fn, axes, lo, hi, res, block, stride, threshold, margin, band,
                   chunk_size, skip_fn, skip_value, device, progress) -> np.ndarray:
    """Blocks that hold a coarse cell near the surface (grown by ``margin`` coarse cells).

    The coarse grid is every ``stride``-th point of the fine grid along each axis plus the last
    one, so each coarse cell lies inside exactly one block (``stride`` divides ``block``).
    Returns [BX, BY, BZ] bool with B* = ceil((res - 1) / block).
    """
    idx = [np.unique(np.r_[np.arange(0, r - 1, stride), r - 1]) for r in res]
    caxes = [axes[a][torch.as_tensor(idx[a], device=axes[a].device)] for a in range(3)]
    cres = tuple(len(i) for i in idx)
    n = int(np.prod(cres))
    logger.info("isosurface: coarse pass over %dx%dx%d points (every %d-th fine point): "
                "allocating %.1f MiB of values", *cres, stride, 4 * n / _MIB)
    bar = Progress(progress, n, "isosurface coarse pass")
    try:
        values, stats = evaluate_box(field_fn, caxes, (0, 0, 0), cres, threshold, chunk_size,
                                     skip_fn, skip_value, device, bar)
    finally:
        bar.close()
    if band is None:  # a regular coarse cell's diagonal: exact for a true SDF
        band = float(np.linalg.norm(stride * (hi - lo) / (np.asarray(res) - 1)))
    near = _near_surface_cells(values, threshold, band)
    del values
    if margin:
        near = torch.nn.functional.max_pool3d(near[None, None].float(), 2 * margin + 1, stride=1,
                                              padding=margin)[0, 0] > 0
    near = near.cpu().numpy()
    if not near.any():
        raise empty_surface_error(stats, threshold, cres, lo, hi, "coarse grid")
    per = block // stride  # coarse cells per block edge
    nb = [math.ceil((r - 1) / block) for r in res]
    padded = np.zeros([b * per for b in nb], dtype=bool)
    padded[:near.shape[0], :near.shape[1], :near.shape[2]] = near
    return padded.reshape(nb[0], per, nb[1], per, nb[2], per).any(axis=(1, 3, 5))


def _extract_blocks(field_fn, lo, hi, res, threshold, chunk_size, coarse_to_fine,
                    coarse_resolution, margin, band, skip_fn, skip_value, device, grid_device,
                    backend, progress, block) -> Tuple[Tensor, Tensor]:
    t0 = time.perf_counter()
    res_a = np.asarray(res, dtype=np.int64)
    nb = [math.ceil((r - 1) / block) for r in res]
    axes = grid_axes(lo, hi, res, device)
    stride = _coarse_stride(block, res, coarse_resolution)
    if coarse_to_fine and stride > 1:
        active = _active_blocks(field_fn, axes, lo, hi, res, block, stride, threshold, margin,
                                band, chunk_size, skip_fn, skip_value, device, progress)
    else:  # a coarse grid as fine as the grid itself would sample every point twice
        active = np.ones(nb, dtype=bool)
    t_coarse = time.perf_counter()

    ids = np.argwhere(active)  # raster order
    starts = ids * block
    stops = np.minimum(starts + block, res_a - 1) + 1  # inclusive of the shared last sample
    n_points = int(np.prod(stops - starts, axis=1).sum())
    logger.info(
        "isosurface: %d of %d blocks of %d^3 cells hold the surface; sampling %d points "
        "(%.1f%% of the %dx%dx%d grid), backend %s; allocating per block %.1f MiB of values on "
        "%s and %.1f MiB per chunk of points", len(ids), int(np.prod(nb)), block, n_points,
        100.0 * n_points / float(np.prod(res_a)), *res, backend, 4 * (block + 1) ** 3 / _MIB,
        grid_device, 12 * min(chunk_size, n_points) / _MIB)

    # interior block faces: vertices there are made by both blocks and are welded below
    on_block_face = [np.zeros(r, dtype=bool) for r in res]
    for a in range(3):
        on_block_face[a][block:res[a] - 1:block] = True
    parts_v: List[np.ndarray] = []
    parts_f: List[np.ndarray] = []
    seam_keys: List[np.ndarray] = []
    seam_index: List[np.ndarray] = []
    n_v, n_meshed = 0, 0
    stats = FieldStats()
    bar = Progress(progress, n_points, "isosurface blocks")
    try:
        for start, stop in zip(starts, stops):
            values, st = evaluate_box(field_fn, axes, start, stop - start, threshold, chunk_size,
                                      skip_fn, skip_value, grid_device, bar)
            stats.merge(st)
            if not st.crosses(threshold):
                continue
            v, f = marching_cubes_f64(values, threshold, backend)
            del values
            if f.shape[0] == 0:
                continue
            n_meshed += 1
            v = v.cpu().numpy() + start  # grid index coordinates, float64
            keys, local = _seam_edge_keys(v, on_block_face, res)
            seam_keys.append(keys)
            seam_index.append(local + n_v)
            parts_v.append(_to_scene(torch.from_numpy(v), lo, hi, res).numpy())
            parts_f.append(f.cpu().numpy() + n_v)
            n_v += v.shape[0]
    finally:
        bar.close()
    t_blocks = time.perf_counter()
    if n_v == 0:
        where = "grid" if active.all() else "blocks the coarse pass kept"
        raise empty_surface_error(stats, threshold, res, lo, hi, where)
    n_f = sum(len(f) for f in parts_f)
    logger.info("isosurface: assembling %d vertices and %d faces from %d blocks: allocating "
                "%.1f MiB", n_v, n_f, n_meshed, (12 * n_v + 24 * n_f + 8 * n_v) / _MIB)
    verts = np.concatenate(parts_v)
    parts_v.clear()
    faces = np.concatenate(parts_f)
    parts_f.clear()
    verts, faces, n_welded, n_dropped = _weld(verts, faces, np.concatenate(seam_keys),
                                              np.concatenate(seam_index))
    logger.info("isosurface: welded %d seam vertices%s; coarse pass %.2f s, blocks %.2f s, "
                "assembly %.2f s", n_welded,
                f", dropped {n_dropped} faces that became degenerate" if n_dropped else "",
                t_coarse - t0, t_blocks - t_coarse, time.perf_counter() - t_blocks)
    return torch.from_numpy(verts), torch.from_numpy(faces)


def _seam_edge_keys(v: np.ndarray, on_block_face: Sequence[np.ndarray],
                    res: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
    """Integer ids of the grid edges that the vertices on interior block faces lie on.

    v: [V, 3] float64 grid index coordinates. Marching cubes puts a vertex on a grid edge: two
    coordinates are exact integers, the third is ``k + t`` with 0 <= t <= 1. Neighbouring blocks
    compute the same vertex from the same two samples, but not always in the same order, so the
    copies may differ in the last bits: the edge (lower corner, axis), not the position, says
    which copies are one vertex. A vertex exactly on a sample (t = 0 or 1, a sample at the
    threshold) is keyed by that sample point (axis code 3).
    Returns (keys [K] int64, indices [K] into ``v``) for the K vertices on an interior face.
    """
    corner = np.floor(v).astype(np.int64)
    is_int = v == corner
    on_seam = np.zeros(v.shape[0], dtype=bool)
    for a in range(3):
        c = np.clip(corner[:, a], 0, len(on_block_face[a]) - 1)
        on_seam |= is_int[:, a] & on_block_face[a][c]
    index = np.nonzero(on_seam)[0]
    corner, is_int = corner[index], is_int[index]
    axis = np.where(is_int.all(axis=1), 3, np.argmin(is_int, axis=1))
    keys = ((corner[:, 0] * res[1] + corner[:, 1]) * res[2] + corner[:, 2]) * 4 + axis
    return keys, index


def _weld(verts: np.ndarray, faces: np.ndarray, keys: np.ndarray, index: np.ndarray):
    """Merge the vertices ``index`` [K] that share a key [K] into the first of them, drop the
    unused copies and any face that became degenerate. verts [V, 3], faces [F, 3] int64.
    Returns (verts [V', 3], faces [F', 3], number of copies removed, faces dropped)."""
    if keys.size == 0:
        return verts, faces, 0, 0
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    lut = np.arange(len(verts), dtype=np.int64)
    lut[index] = index[first][inverse.reshape(-1)]
    keep = lut == np.arange(len(verts))
    new_index = np.cumsum(keep) - 1
    lut = new_index[lut]
    del new_index
    np.take(lut, faces, out=faces)
    degenerate = (faces[:, 0] == faces[:, 1]) | (faces[:, 1] == faces[:, 2]) \
        | (faces[:, 0] == faces[:, 2])
    n_dropped = int(degenerate.sum())
    if n_dropped:
        faces = faces[~degenerate]
    return verts[keep], faces, int((~keep).sum()), n_dropped


# What a mesh costs at the peak of its extraction, measured block-wise on two spheres at
# 256-1024^3 (2 CPU cores): ~2.7 faces per resolution^2 and ~120 B of process memory per face
# (vertices, faces, the welding's keys). 4 faces per resolution^2 leaves room for surfaces with
# more area than a sphere (folded, thin or noisy ones).
MESH_FACES_PER_RES2 = 4.0
MESH_BYTES_PER_FACE = 128


def mesh_memory_estimate(resolution: int) -> int:
    """Bytes (CPU) an extraction at ``resolution`` points per axis with block_size="auto" is
    expected to hold at its peak: the mesh, plus the one-pass value grid (up to 256^3 points) or
    the block-wise coarse grid."""
    r = int(resolution)
    grid = 4 * min(r**3, AUTO_ONE_PASS_POINTS)
    return int(MESH_FACES_PER_RES2 * r * r * MESH_BYTES_PER_FACE) + grid
