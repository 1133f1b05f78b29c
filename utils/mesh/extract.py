"""Chunked, coarse-to-fine marching cubes for SDF-like fields.

Conventions (every function here):

- The field is SDF-like: the surface is the level set ``value == threshold`` and the *inside*
  is where ``value < threshold`` (a signed distance that is negative inside, as NeuS learns).
  For a density/occupancy field that is *larger* inside, pass its negation.
- Faces are oriented so that the right-hand normal ``(v1 - v0) x (v2 - v0)`` points *outward*,
  i.e. from ``value < threshold`` towards ``value > threshold`` (along the field gradient).
  Both backends give the same orientation.
- ``marching_cubes`` returns vertices in *grid index coordinates*: a vertex ``(a, b, c)`` lies at
  fractional index ``a`` along axis 0 of ``values``, ``b`` along axis 1, ``c`` along axis 2.
- ``extract_isosurface`` samples a regular grid with ``resolution`` points per axis, the first
  and last at ``bounds`` min and max (spacing ``(max - min) / (resolution - 1)``), and returns a
  ``Mesh`` in scene coordinates.

Backends: ``"pymcubes"`` (PyMCubes, CPU) and ``"torchmcubes"`` (optional, imported lazily;
CPU or CUDA). ``"auto"`` uses torchmcubes when it imports and the values are on CUDA (and, on
CUDA, when its per-voxel scratch buffer fits in free GPU memory), PyMCubes otherwise.
torchmcubes output is brought to the same form as PyMCubes': vertices in index order, shared
vertices merged (some versions return a triangle soup), the same winding.

Axis names in shapes: N points, V vertices, F faces, X/Y/Z grid sizes.
"""
from __future__ import annotations

import logging
import math
import sys
import time
from typing import Callable, Literal, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from utils.mesh.mesh import Mesh

__all__ = [
    "Mesh",
    "EmptySurfaceError",
    "NonFiniteFieldError",
    "marching_cubes",
    "extract_isosurface",
    "torchmcubes_available",
]

logger = logging.getLogger(__name__)

Backend = Literal["auto", "pymcubes", "torchmcubes"]
BoundsLike = Union[Tuple[Sequence[float], Sequence[float]], Tensor, np.ndarray]
FieldFn = Callable[[Tensor], Tensor]

# torchmcubes' CUDA kernel keeps a [X, Y, Z, 12, 3] float32 scratch buffer plus two int32 grids
_TORCHMCUBES_CUDA_BYTES_PER_VOXEL = 12 * 3 * 4 + 2 * 4

# torchmcubes vertex copies closer than this (in voxels) are merged
_MERGE_TOLERANCE = 1e-3


class EmptySurfaceError(ValueError):
    """The field never crosses the threshold on the grid, so there is no surface to mesh."""


class NonFiniteFieldError(ValueError):
    """The field returned NaN."""


# --------------------------------------------------------------------------------------------
# backends
# --------------------------------------------------------------------------------------------
_TORCHMCUBES = None  # cached import: None = not tried, False = unavailable, else the function


def _torchmcubes_fn():
    global _TORCHMCUBES
    if _TORCHMCUBES is None:
        try:
            from torchmcubes import marching_cubes as fn  # type: ignore[import-not-found]

            _TORCHMCUBES = fn
        except Exception:  # ImportError, or a broken build (undefined symbol, CUDA mismatch)
            _TORCHMCUBES = False
    return _TORCHMCUBES or None


def torchmcubes_available() -> bool:
    """Whether the optional ``torchmcubes`` package imports."""
    return _torchmcubes_fn() is not None


def _pymcubes_available() -> bool:
    try:
        import mcubes  # noqa: F401
    except ImportError:
        return False
    return True


def _torchmcubes_fits(numel: int, device: torch.device) -> bool:
    if device.type != "cuda":
        return True
    try:
        free, _ = torch.cuda.mem_get_info(device)
    except Exception:
        return True
    return numel * _TORCHMCUBES_CUDA_BYTES_PER_VOXEL < 0.8 * free


def _resolve_backend(backend: str, device: torch.device, numel: int = 0) -> str:
    if backend not in ("auto", "pymcubes", "torchmcubes"):
        raise ValueError(f"unknown marching cubes backend {backend!r}; "
                         "choose 'auto', 'pymcubes' or 'torchmcubes'")
    if backend == "torchmcubes":
        if not torchmcubes_available():
            raise ImportError(
                "backend='torchmcubes' but torchmcubes does not import; install it with "
                "`pip install git+https://github.com/tatsy/torchmcubes.git` or use "
                "backend='pymcubes'")
        return backend
    if backend == "pymcubes":
        if not _pymcubes_available():
            raise ImportError("backend='pymcubes' but PyMCubes is not installed "
                              "(`pip install PyMCubes`)")
        return backend
    # auto
    if device.type == "cuda" and torchmcubes_available() and _torchmcubes_fits(numel, device):
        return "torchmcubes"
    if _pymcubes_available():
        return "pymcubes"
    if torchmcubes_available():
        return "torchmcubes"
    raise ImportError("no marching cubes backend: install PyMCubes (`pip install PyMCubes`) "
                      "or torchmcubes")


def _mc_pymcubes(values: Tensor, threshold: float) -> Tuple[Tensor, Tensor]:
    import mcubes

    vol = values.detach().cpu()
    if vol.dtype not in (torch.float32, torch.float64):
        vol = vol.to(torch.float32)
    verts, faces = mcubes.marching_cubes(np.ascontiguousarray(vol.numpy()), float(threshold))
    verts = torch.from_numpy(np.asarray(verts, dtype=np.float64))
    faces = torch.from_numpy(np.asarray(faces, dtype=np.int64)).reshape(-1, 3)
    # PyMCubes orients faces towards decreasing values (its "inside" is value > isovalue), so
    # reverse the winding to point towards increasing values (outward for an SDF).
    return verts.reshape(-1, 3), faces[:, [0, 2, 1]].contiguous()


def _mc_torchmcubes(values: Tensor, threshold: float) -> Tuple[Tensor, Tensor]:
    fn = _torchmcubes_fn()
    vol = values.detach().to(torch.float32).contiguous()
    verts, faces = fn(vol, float(threshold))
    # torchmcubes reads vol[z][y][x] and writes vertices as (x, y, z): reverse to index order.
    verts = verts[:, [2, 1, 0]].to(torch.float64)
    faces = faces.to(torch.int64).reshape(-1, 3)
    # Some versions return one vertex per triangle corner, and copies of a vertex computed in
    # neighbouring cells may differ in the last float32 bits: merge them so the mesh is closed.
    if verts.shape[0] > 0:
        verts, faces = _merge_close_vertices(verts.cpu(), faces.cpu(), _MERGE_TOLERANCE)
    # Its tables orient outward in its (x, y, z) frame; reversing the axes mirrors the frame, so
    # the winding is reversed too. Check against the field gradient rather than trust a version.
    faces = faces[:, [0, 2, 1]].contiguous()
    if faces.shape[0] > 0 and _outward_fraction(verts, faces, vol.cpu()) < 0.5:
        logger.warning("torchmcubes returned inward-facing triangles; reversing their winding")
        faces = faces[:, [0, 2, 1]].contiguous()
    return verts, faces


def _merge_close_vertices(verts: Tensor, faces: Tensor, tol: float) -> Tuple[Tensor, Tensor]:
    """Merge vertices closer than ``tol`` (transitively) into their mean and drop the faces that
    become degenerate. verts [V, 3] float64 (CPU), faces [F, 3] int64 (CPU)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    v = verts.numpy()
    uniq, inverse = np.unique(v, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    pairs = cKDTree(uniq).query_pairs(tol, output_type="ndarray")
    if len(pairs):
        graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])),
                           shape=(len(uniq), len(uniq)))
        n, label = connected_components(graph, directed=False)
        count = np.bincount(label, minlength=n).astype(np.float64)
        merged = np.stack([np.bincount(label, weights=uniq[:, a], minlength=n)
                           for a in range(3)], axis=1) / count[:, None]
    else:
        label, merged = np.arange(len(uniq)), uniq
    f = label[inverse][faces.numpy()]
    f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])]
    return torch.from_numpy(merged), torch.from_numpy(np.ascontiguousarray(f, dtype=np.int64))


def _outward_fraction(vertices: Tensor, faces: Tensor, values: Tensor,
                      max_faces: int = 4096) -> float:
    """Fraction of (up to ``max_faces`` evenly picked) faces whose right-hand normal agrees with
    the field gradient (towards larger values). vertices [V, 3] in index coordinates,
    faces [F, 3], values [X, Y, Z]."""
    device = values.device
    n_faces = faces.shape[0]
    pick = torch.linspace(0, n_faces - 1, min(n_faces, max_faces), device=faces.device).long()
    tri = vertices[faces[pick]].to(device=device, dtype=torch.float64)  # [K, 3, 3]
    normal = torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    centre = tri.mean(dim=1)
    hi = torch.tensor(values.shape, device=device) - 2
    cell = centre.floor().long().clamp(min=torch.zeros_like(hi), max=hi.clamp(min=0))
    corner = {}
    for a in (0, 1):
        for b in (0, 1):
            for c in (0, 1):
                corner[a, b, c] = values[cell[:, 0] + a, cell[:, 1] + b, cell[:, 2] + c].double()
    # gradient of the trilinear interpolant averaged over the cell
    gx = sum(corner[1, b, c] - corner[0, b, c] for b in (0, 1) for c in (0, 1))
    gy = sum(corner[a, 1, c] - corner[a, 0, c] for a in (0, 1) for c in (0, 1))
    gz = sum(corner[a, b, 1] - corner[a, b, 0] for a in (0, 1) for b in (0, 1))
    grad = torch.stack([gx, gy, gz], dim=-1)
    return float(((normal * grad).sum(-1) > 0).double().mean())


def _marching_cubes_f64(values: Tensor, threshold: float, backend: str) -> Tuple[Tensor, Tensor]:
    if values.ndim != 3:
        raise ValueError(f"marching cubes needs a [X, Y, Z] grid, got shape {tuple(values.shape)}")
    if min(values.shape) < 2:
        raise ValueError("marching cubes needs at least 2 samples per axis, got "
                         f"{tuple(values.shape)}")
    if torch.isnan(values).any():
        raise NonFiniteFieldError(f"values hold {int(torch.isnan(values).sum())} NaN entries")
    name = _resolve_backend(backend, values.device, values.numel())
    if name == "torchmcubes":
        return _mc_torchmcubes(values, threshold)
    return _mc_pymcubes(values, threshold)


def marching_cubes(values: Tensor, threshold: float = 0.0,
                   backend: Backend = "auto") -> Tuple[Tensor, Tensor]:
    """Triangulate the level set ``values == threshold`` of a dense grid.

    values: [X, Y, Z] tensor (any device). Inside is ``values < threshold``.
    Returns (vertices [V, 3] float32 in grid index coordinates (axis order of ``values``),
    faces [F, 3] int64), both on the device of ``values``; faces wind counter-clockwise seen
    from outside (normals towards larger values). No crossing gives V = F = 0.
    """
    verts, faces = _marching_cubes_f64(values, threshold, backend)
    return verts.to(device=values.device, dtype=torch.float32), faces.to(values.device)


# --------------------------------------------------------------------------------------------
# progress
# --------------------------------------------------------------------------------------------
class _Progress:
    """A tqdm bar when tqdm imports, else a line on stderr every ~10%; silent when disabled."""

    def __init__(self, enabled: bool, total: int, desc: str):
        self.enabled, self.total, self.desc = enabled, max(int(total), 1), desc
        self.done, self.next_report, self.bar = 0, 0.1, None
        self.start = time.perf_counter()
        if enabled:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=self.total, desc=desc, unit="pt", unit_scale=True,
                                leave=False, file=sys.stderr)
            except ImportError:
                print(f"{desc}: {self.total} points", file=sys.stderr, flush=True)

    def update(self, n: int) -> None:
        if not self.enabled:
            return
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.done / self.total >= self.next_report or self.done >= self.total:
            frac = self.done / self.total
            print(f"{self.desc}: {100 * frac:5.1f}% ({self.done}/{self.total} points, "
                  f"{time.perf_counter() - self.start:.1f} s)", file=sys.stderr, flush=True)
            self.next_report = math.floor(frac * 10 + 1) / 10

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------------------------
# grid evaluation
# --------------------------------------------------------------------------------------------
class _FieldStats:
    def __init__(self) -> None:
        self.vmin, self.vmax = math.inf, -math.inf
        self.n_evaluated = self.n_skipped = 0

    def crosses(self, threshold: float) -> bool:
        """Whether some grid value is < threshold and some is >= threshold (skipped points
        count as outside)."""
        has_inside = self.n_evaluated > 0 and self.vmin < threshold
        has_outside = self.n_skipped > 0 or (self.n_evaluated > 0 and self.vmax >= threshold)
        return has_inside and has_outside

    def describe(self) -> str:
        if self.n_evaluated == 0:
            return f"skip_fn marked all {self.n_skipped} grid points as empty"
        s = f"the field ranges over [{self.vmin:.6g}, {self.vmax:.6g}]"
        if self.n_skipped:
            s += (f" on the {self.n_evaluated} evaluated points ({self.n_skipped} skipped by "
                  "skip_fn)")
        return s


def _call_field(field_fn: FieldFn, pts: Tensor) -> Tensor:
    out = field_fn(pts)
    if not isinstance(out, Tensor):
        raise TypeError(f"field_fn must return a Tensor, got {type(out).__name__}")
    if out.numel() != pts.shape[0]:
        raise ValueError(f"field_fn must return [N] (or [N, 1]) values for [N, 3] points; got "
                         f"shape {tuple(out.shape)} for N={pts.shape[0]}")
    return out.reshape(-1).to(torch.float32)


def _chunks(shape: Sequence[int], chunk_size: int):
    """Split a [X, Y, Z] box into sub-boxes (i0, i1, j0, j1) (all of axis 2) that are contiguous
    in C order: whole axis-0 slabs when a slab fits in ``chunk_size`` points, else runs of
    axis-1 rows of one slab (at least one row, so a chunk holds max(chunk_size, Z) points at
    most)."""
    sx, sy, sz = shape
    rows = max(1, chunk_size // sz)
    if rows >= sy:
        step = rows // sy
        for i0 in range(0, sx, step):
            yield i0, min(sx, i0 + step), 0, sy
    else:
        for i0 in range(sx):
            for j0 in range(0, sy, rows):
                yield i0, i0 + 1, j0, min(sy, j0 + rows)


def _evaluate_box(field_fn: FieldFn, axes: Sequence[Tensor], start: Sequence[int],
                  shape: Sequence[int], threshold: float, chunk_size: int,
                  skip_fn: Optional[Callable[[Tensor], Tensor]], skip_value: float,
                  out_device: torch.device, progress: _Progress) -> Tuple[Tensor, _FieldStats]:
    """Evaluate the field on the grid points ``axes[a][start[a] : start[a] + shape[a]]``.

    Points [N, 3] are generated per chunk of about ``chunk_size`` grid points (slabs of axis-0
    slices, or rows of one slice), never all at once. Returns values [X, Y, Z] float32 on
    ``out_device`` and the range of the evaluated values.
    """
    sx, sy, sz = (int(s) for s in shape)
    ax = [axes[a][int(start[a]):int(start[a]) + int(shape[a])] for a in range(3)]
    device = ax[0].device
    values = torch.empty(sx * sy * sz, dtype=torch.float32, device=out_device)
    stats = _FieldStats()
    for i0, i1, j0, j1 in _chunks((sx, sy, sz), chunk_size):
        ni, nj = i1 - i0, j1 - j0
        n = ni * nj * sz
        pts = torch.empty(ni, nj, sz, 3, dtype=torch.float32, device=device)
        pts[..., 0] = ax[0][i0:i1, None, None]
        pts[..., 1] = ax[1][None, j0:j1, None]
        pts[..., 2] = ax[2][None, None, :]
        pts = pts.view(n, 3)
        if skip_fn is not None:
            skip = skip_fn(pts).reshape(-1).to(device=device, dtype=torch.bool)
            if skip.shape[0] != n:
                raise ValueError(f"skip_fn must return [N] booleans, got shape {tuple(skip.shape)}")
            keep = ~skip
            out = torch.full((n,), threshold + skip_value, dtype=torch.float32, device=device)
            evaluated_pts = pts[keep]
            evaluated = _call_field(field_fn, evaluated_pts).to(device) if len(evaluated_pts) \
                else out[:0]
            out[keep] = evaluated
            stats.n_skipped += n - evaluated.numel()
        else:
            evaluated_pts = pts
            evaluated = out = _call_field(field_fn, pts).to(device)
        if evaluated.numel():
            lo, hi = torch.aminmax(evaluated)  # NaN anywhere makes them NaN
            lo, hi = torch.stack([lo, hi]).tolist()
            if math.isnan(lo) or math.isnan(hi):
                nan = torch.isnan(evaluated)
                raise NonFiniteFieldError(
                    f"field_fn returned NaN at {int(nan.sum())} of {evaluated.numel()} points in "
                    f"a chunk (first at {[round(float(x), 6) for x in evaluated_pts[nan][0]]}); "
                    "the model has probably diverged (check the training losses and weights for "
                    "NaN)")
            stats.vmin, stats.vmax = min(stats.vmin, lo), max(stats.vmax, hi)
            stats.n_evaluated += evaluated.numel()
        offset = (i0 * sy + j0) * sz
        values[offset:offset + n] = out.to(out_device)
        progress.update(n)
    return values.view(sx, sy, sz), stats


def _parse_bounds(bounds: BoundsLike) -> Tuple[np.ndarray, np.ndarray]:
    if isinstance(bounds, Tensor):
        b = bounds.detach().cpu().double().numpy()
    else:
        b = np.asarray([np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x,
                                   dtype=np.float64) for x in bounds], dtype=np.float64)
    if b.shape != (2, 3):
        raise ValueError(f"bounds must be ([3] min, [3] max), got shape {b.shape}")
    lo, hi = b[0], b[1]
    if not np.all(np.isfinite(b)) or not np.all(hi > lo):
        raise ValueError(f"bounds need finite min < max on every axis, got min={lo.tolist()} "
                         f"max={hi.tolist()}")
    return lo, hi


def _parse_resolution(resolution: Union[int, Sequence[int]], name: str) -> Tuple[int, int, int]:
    res = (int(resolution),) * 3 if np.isscalar(resolution) else tuple(int(r) for r in resolution)
    if len(res) != 3 or min(res) < 2:
        raise ValueError(f"{name} must be an int >= 2 (or three of them), got {resolution!r}")
    return res  # type: ignore[return-value]


def _make_axes(lo: np.ndarray, hi: np.ndarray, res: Sequence[int], device) -> list:
    # float64 linspace then float32: the same coordinates whichever sub-box is evaluated
    return [torch.linspace(float(lo[a]), float(hi[a]), int(res[a]), dtype=torch.float64)
            .to(torch.float32).to(device) for a in range(3)]


def _infer_device(field_fn, bounds) -> torch.device:
    if isinstance(field_fn, torch.nn.Module):
        for p in field_fn.parameters():
            return p.device
        for b in field_fn.buffers():
            return b.device
    if isinstance(bounds, Tensor):
        return bounds.device
    return torch.device("cpu")


def _empty_error(stats: _FieldStats, threshold: float, res, lo, hi,
                 where: str) -> EmptySurfaceError:
    hint = ""
    if stats.n_evaluated:
        if stats.vmin >= threshold:
            hint = (" Every value is >= the threshold (all outside): the bounds may miss the "
                    "object, or the field may be offset.")
        elif stats.vmax < threshold:
            hint = (" Every value is < the threshold (all inside): the bounds may lie inside the "
                    "object, or the field may have the opposite sign convention (negate it).")
    return EmptySurfaceError(
        f"no surface to extract on the {where} ({res[0]}x{res[1]}x{res[2]} points over bounds "
        f"min={np.round(lo, 6).tolist()} max={np.round(hi, 6).tolist()}): {stats.describe()}, "
        f"which does not cross the threshold {threshold:.6g} (inside is value < threshold).{hint}"
        " Check that training has converged, that the threshold suits the field (0 for an SDF) "
        "and that the bounds enclose the object.")


def _coarse_box(field_fn, lo, hi, res, threshold, coarse_res, margin, band, chunk_size, skip_fn,
                skip_value, device, progress: bool) -> Tuple[np.ndarray, np.ndarray]:
    """Fine-grid index box [start, stop) along each axis that holds every coarse cell near the
    surface, grown by ``margin`` coarse cells."""
    cres = (coarse_res,) * 3
    axes = _make_axes(lo, hi, cres, device)
    bar = _Progress(progress, int(np.prod(cres)), "isosurface coarse pass")
    try:
        values, stats = _evaluate_box(field_fn, axes, (0, 0, 0), cres, threshold, chunk_size,
                                      skip_fn, skip_value, device, bar)
    finally:
        bar.close()
    cspacing = (hi - lo) / (np.asarray(cres) - 1)
    if band is None:
        band = float(np.linalg.norm(cspacing))  # a cell diagonal: exact for a true SDF
    v = values
    corners = [v[a:a + coarse_res - 1, b:b + coarse_res - 1, c:c + coarse_res - 1]
               for a in (0, 1) for b in (0, 1) for c in (0, 1)]
    cmin = torch.stack(corners).amin(0)
    cmax = torch.stack(corners).amax(0)
    active = (cmin < threshold + band) & (cmax >= threshold - band)
    if not bool(active.any()):
        raise _empty_error(stats, threshold, cres, lo, hi, "coarse grid")
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


def extract_isosurface(
    field_fn: FieldFn,
    bounds: BoundsLike,
    resolution: Union[int, Sequence[int]] = 512,
    threshold: float = 0.0,
    chunk_size: int = 2**18,
    coarse_to_fine: bool = True,
    coarse_resolution: int = 64,
    margin: int = 2,
    band: Optional[float] = None,
    skip_fn: Optional[Callable[[Tensor], Tensor]] = None,
    skip_value: float = 1e4,
    color_fn: Optional[Callable[[Tensor], Tensor]] = None,
    device: Optional[Union[str, torch.device]] = None,
    backend: Backend = "auto",
    progress: bool = False,
) -> Mesh:
    """Mesh the surface ``field_fn(x) == threshold`` inside ``bounds``.

    field_fn: points [N, 3] (float32, scene coordinates, on ``device``) -> values [N] (or
        [N, 1]); SDF-like: inside where value < threshold. Called under ``torch.no_grad()``
        on chunks of at most ``chunk_size`` points (at least one grid row of Z points): whole
        axis-0 slices of the grid, or rows of one slice, generated per chunk.
    bounds: ([3] min, [3] max) of the grid in scene coordinates (or a [2, 3] tensor/array).
    resolution: grid points per axis (int or three ints) over the full ``bounds``; spacing is
        ``(max - min) / (resolution - 1)``.
    coarse_to_fine: first sample a ``coarse_resolution``^3 grid over ``bounds``, keep the box of
        coarse cells whose corner values straddle ``threshold`` or come within ``band`` of it
        (default: one coarse cell diagonal, which never misses a surface of a true SDF in scene
        units), grown by ``margin`` coarse cells, and sample only that box at the fine spacing.
        The fine samples are the very points of the full grid, so the mesh equals the one from a
        single full-resolution pass whenever the box holds the whole surface. For fields that are
        not distance-like (thin features may fall between coarse samples), pass a larger
        ``band`` (in field units) or ``coarse_to_fine=False``.
    skip_fn: points [N, 3] -> [N] bool, True where space is known to be empty (e.g. from an
        occupancy grid); those points get ``threshold + skip_value`` without calling field_fn.
    color_fn: optional points [V, 3] -> colours [V, 3] in [0, 1], evaluated at the vertices.
    device: where points are made and field_fn runs; default: the device of field_fn's
        parameters when it is a Module, else of ``bounds`` when a tensor, else CPU.
    backend: "auto" | "pymcubes" | "torchmcubes" (see ``marching_cubes``).
    progress: report progress of the field evaluation on stderr (tqdm when available).

    Returns a ``Mesh`` on CPU: vertices [V, 3] float32 in scene coordinates, faces [F, 3] int64
    wound counter-clockwise seen from outside (normals point outward), optional colours [V, 3].
    Memory: the value grid is 4 bytes per fine point (512 MiB at 512^3) plus one chunk of
    points; the grid lives on CPU for PyMCubes, on ``device`` for torchmcubes.
    Raises ``EmptySurfaceError`` (a ValueError) when the field does not cross the threshold,
    ``NonFiniteFieldError`` (a ValueError) when the field returns NaN.
    """
    with torch.no_grad():
        return _extract(field_fn, bounds, resolution, threshold, chunk_size, coarse_to_fine,
                        coarse_resolution, margin, band, skip_fn, skip_value, color_fn, device,
                        backend, progress)


def _extract(field_fn, bounds, resolution, threshold, chunk_size, coarse_to_fine,
             coarse_resolution, margin, band, skip_fn, skip_value, color_fn, device, backend,
             progress) -> Mesh:
    t0 = time.perf_counter()
    threshold = float(threshold)
    lo, hi = _parse_bounds(bounds)
    res = _parse_resolution(resolution, "resolution")
    chunk_size = int(chunk_size)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0 coarse cells, got {margin}")
    device = torch.device(device) if device is not None else _infer_device(field_fn, bounds)
    total = int(np.prod(res))
    name = _resolve_backend(backend, device, total)
    grid_device = device if name == "torchmcubes" else torch.device("cpu")

    start, stop = np.zeros(3, dtype=np.int64), np.asarray(res, dtype=np.int64)
    if coarse_to_fine and min(res) > coarse_resolution:
        if coarse_resolution < 2:
            raise ValueError(f"coarse_resolution must be >= 2, got {coarse_resolution}")
        start, stop = _coarse_box(field_fn, lo, hi, res, threshold, int(coarse_resolution),
                                  int(margin), band, chunk_size, skip_fn, skip_value, device,
                                  progress)
    shape = stop - start
    logger.info("isosurface: %s fine points of a %dx%dx%d grid (box %s..%s), backend %s",
                int(np.prod(shape)), *res, start.tolist(), (stop - 1).tolist(), name)

    axes = _make_axes(lo, hi, res, device)
    bar = _Progress(progress, int(np.prod(shape)), "isosurface fine pass")
    try:
        values, stats = _evaluate_box(field_fn, axes, start, shape, threshold, chunk_size,
                                      skip_fn, skip_value, grid_device, bar)
    finally:
        bar.close()
    where = "grid" if np.all(shape == np.asarray(res)) else "part of the grid the coarse pass kept"
    if not stats.crosses(threshold):
        raise _empty_error(stats, threshold, res, lo, hi, where)

    t_eval = time.perf_counter()
    verts, faces = _marching_cubes_f64(values, threshold, name)
    t_mc = time.perf_counter()
    del values
    if faces.shape[0] == 0:
        raise _empty_error(stats, threshold, res, lo, hi, where)
    spacing = torch.as_tensor((hi - lo) / (np.asarray(res) - 1), dtype=torch.float64)
    verts = verts.cpu() + torch.as_tensor(start, dtype=torch.float64)
    verts = (torch.as_tensor(lo, dtype=torch.float64) + verts * spacing).to(torch.float32)
    faces = faces.cpu()

    colors = None
    if color_fn is not None:
        parts = []
        for s in range(0, verts.shape[0], chunk_size):
            c = color_fn(verts[s:s + chunk_size].to(device))
            parts.append(c.reshape(-1, 3).to(torch.float32).clamp(0.0, 1.0).cpu())
        colors = torch.cat(parts)
    logger.info("isosurface: %d vertices, %d faces in %.2f s (field %.2f s, marching cubes "
                "%.2f s)", verts.shape[0], faces.shape[0], time.perf_counter() - t0,
                t_eval - t0, t_mc - t_eval)
    return Mesh(verts, faces, colors)
