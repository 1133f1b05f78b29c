"""Marching cubes of a dense grid, through PyMCubes or the optional torchmcubes.

Conventions:

- Inside is where ``value < threshold`` (a signed distance that is negative inside, as NeuS
  learns). For a density/occupancy field that is *larger* inside, pass its negation.
- Faces are oriented so that the right-hand normal ``(v1 - v0) x (v2 - v0)`` points *outward*,
  i.e. from ``value < threshold`` towards ``value > threshold`` (along the field gradient).
  Both backends give the same orientation.
- ``marching_cubes`` returns vertices in *grid index coordinates*: a vertex ``(a, b, c)`` lies at
  fractional index ``a`` along axis 0 of ``values``, ``b`` along axis 1, ``c`` along axis 2.

Backends: ``"pymcubes"`` (PyMCubes, CPU) and ``"torchmcubes"`` (optional, imported lazily;
CPU or CUDA). ``"auto"`` uses torchmcubes when it imports and the values are on CUDA (and, on
CUDA, when its per-voxel scratch buffer fits in free GPU memory), PyMCubes otherwise.
torchmcubes output is brought to the same form as PyMCubes': vertices in index order, shared
vertices merged (some versions return a triangle soup), the same winding.

Axis names in shapes: V vertices, F faces, X/Y/Z grid sizes.
"""
from __future__ import annotations

import logging
from typing import Literal, Tuple

import numpy as np
import torch
from torch import Tensor

from utils import backends

__all__ = ["NonFiniteFieldError", "marching_cubes", "torchmcubes_available"]

logger = logging.getLogger(__name__)

Backend = Literal["auto", "pymcubes", "torchmcubes"]

# torchmcubes' CUDA kernel keeps a [X, Y, Z, 12, 3] float32 scratch buffer plus two int32 grids
_TORCHMCUBES_CUDA_BYTES_PER_VOXEL = 12 * 3 * 4 + 2 * 4

# torchmcubes vertex copies closer than this (in voxels) are merged
_MERGE_TOLERANCE = 1e-3


class NonFiniteFieldError(ValueError):
    """The field returned NaN."""


# --------------------------------------------------------------------------------------------
# backends
# --------------------------------------------------------------------------------------------
def _torchmcubes_fn():
    """torchmcubes' ``marching_cubes`` (detected once by ``utils.backends``), or None."""
    module = backends.library("torchmcubes")
    return None if module is None else module.marching_cubes


def torchmcubes_available() -> bool:
    """Whether the optional ``torchmcubes`` package imports and has ``marching_cubes``."""
    return backends.available("torchmcubes")


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


def resolve_backend(backend: str, device: torch.device, numel: int = 0) -> str:
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


def marching_cubes_f64(values: Tensor, threshold: float, backend: str) -> Tuple[Tensor, Tensor]:
    if values.ndim != 3:
        raise ValueError(f"marching cubes needs a [X, Y, Z] grid, got shape {tuple(values.shape)}")
    if min(values.shape) < 2:
        raise ValueError("marching cubes needs at least 2 samples per axis, got "
                         f"{tuple(values.shape)}")
    if torch.isnan(values).any():
        raise NonFiniteFieldError(f"values hold {int(torch.isnan(values).sum())} NaN entries")
    name = resolve_backend(backend, values.device, values.numel())
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
    verts, faces = marching_cubes_f64(values, threshold, backend)
    return verts.to(device=values.device, dtype=torch.float32), faces.to(values.device)
