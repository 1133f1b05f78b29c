"""Surface reconstruction metrics: accuracy, completeness, Chamfer distance and F-score.

Distances are Euclidean, in the units of the ground truth: the prediction must already be in
the ground truth's frame (e.g. a mesh extracted in a dataset's normalised scene mapped back with
``Mesh.transformed(scene_to_world)``), and ``threshold`` is in those units too (for DTU, which
is in millimetres, that is e.g. 1.0 mm; for a unit-scale object, e.g. 0.01).

- accuracy: mean distance from each predicted point to the nearest ground-truth point.
- completeness: mean distance from each ground-truth point to the nearest predicted point.
- chamfer: (accuracy + completeness) / 2.
- precision / recall: fraction of predicted / ground-truth points closer than ``threshold``
  to the other set; fscore = 2 P R / (P + R) (0 when both are 0).

A region (``Box`` or ``Sphere``, or a ``(min [3], max [3])`` pair meaning a box) restricts the
evaluation: points of both sets outside it are dropped before any distance is computed.

Meshes are compared through points sampled uniformly on their surfaces (area-weighted).
Axis names in shapes: N predicted points, M ground-truth points, V vertices, F faces.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from utils.mesh.io import load_trimesh
from utils.mesh.mesh import Mesh

PathLike = Union[str, os.PathLike]
POINT_CLOUD_EXTENSIONS = (".npy", ".xyz", ".txt", ".pts")


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _vertices_faces(mesh) -> Tuple[np.ndarray, np.ndarray]:
    if isinstance(mesh, Mesh):
        return _to_numpy(mesh.vertices), mesh.faces.detach().cpu().numpy().astype(np.int64)
    if isinstance(mesh, (tuple, list)) and len(mesh) == 2:
        return _to_numpy(mesh[0]), np.asarray(
            mesh[1].detach().cpu() if isinstance(mesh[1], torch.Tensor) else mesh[1],
            dtype=np.int64)
    if hasattr(mesh, "vertices") and hasattr(mesh, "faces"):  # trimesh.Trimesh and the like
        return np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64)
    raise TypeError(f"expected a Mesh, a trimesh.Trimesh or (vertices, faces), got {type(mesh)}")


def sample_surface(mesh, n_points: int, seed: int = 0) -> np.ndarray:
    """Sample ``n_points`` points uniformly (by area) on a triangle mesh.

    mesh: ``Mesh``, ``trimesh.Trimesh`` or (vertices [V, 3], faces [F, 3]).
    Returns [N, 3] float64. Deterministic for a given ``seed``.
    """
    vertices, faces = _vertices_faces(mesh)
    if faces.size == 0:
        raise ValueError("cannot sample the surface of a mesh without faces")
    if n_points < 1:
        raise ValueError(f"n_points must be positive, got {n_points}")
    tri = vertices[faces.reshape(-1, 3)]  # [F, 3, 3]
    areas = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    total = areas.sum()
    if not np.isfinite(total) or total <= 0:
        raise ValueError("cannot sample a mesh whose total surface area is zero or not finite")
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(areas)
    face = np.searchsorted(cdf, rng.random(n_points) * cdf[-1], side="right")
    face = np.minimum(face, len(areas) - 1)
    r1, r2 = rng.random(n_points), rng.random(n_points)
    s = np.sqrt(r1)
    w0, w1, w2 = 1.0 - s, s * (1.0 - r2), s * r2  # uniform barycentric coordinates
    t = tri[face]
    return w0[:, None] * t[:, 0] + w1[:, None] * t[:, 1] + w2[:, None] * t[:, 2]


@dataclasses.dataclass(frozen=True)
class Box:
    """Axis-aligned box [lo, hi] (both corners included)."""

    lo: Tuple[float, float, float]
    hi: Tuple[float, float, float]

    def __post_init__(self) -> None:
        lo, hi = _vec3(self.lo, "box min"), _vec3(self.hi, "box max")
        if any(a >= b for a, b in zip(lo, hi)):
            raise ValueError(f"a box needs min < max on every axis, got min {lo} and max {hi}")
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)

    def contains(self, points: np.ndarray) -> np.ndarray:
        """points [N, 3] -> inside [N] bool."""
        return np.all((points >= np.asarray(self.lo)) & (points <= np.asarray(self.hi)), axis=1)

    def to_dict(self) -> Dict[str, Any]:
        return {"box": [*self.lo, *self.hi]}


@dataclasses.dataclass(frozen=True)
class Sphere:
    """Ball of ``radius`` around ``center`` (the boundary included)."""

    center: Tuple[float, float, float]
    radius: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "center", _vec3(self.center, "sphere centre"))
        r = float(self.radius)
        if not np.isfinite(r) or r <= 0:
            raise ValueError(f"a sphere needs a positive radius, got {self.radius}")
        object.__setattr__(self, "radius", r)

    def contains(self, points: np.ndarray) -> np.ndarray:
        """points [N, 3] -> inside [N] bool."""
        return np.linalg.norm(points - np.asarray(self.center), axis=1) <= self.radius

    def to_dict(self) -> Dict[str, Any]:
        return {"sphere": [*self.center, self.radius]}


Region = Union[Box, Sphere, Tuple[Sequence[float], Sequence[float]]]


def _vec3(v, what: str) -> Tuple[float, float, float]:
    a = _to_numpy(v).reshape(-1)
    if a.shape != (3,) or not np.all(np.isfinite(a)):
        raise ValueError(f"{what} must be 3 finite numbers, got {v}")
    return (float(a[0]), float(a[1]), float(a[2]))


def as_region(region: Optional[Region]) -> Optional[Union[Box, Sphere]]:
    """A Box or Sphere from ``region``: a Box, a Sphere, a (min [3], max [3]) pair, or a mapping
    ``{"box": [xmin, ymin, zmin, xmax, ymax, zmax]}`` / ``{"sphere": [cx, cy, cz, r]}``."""
    if region is None or isinstance(region, (Box, Sphere)):
        return region
    if isinstance(region, dict):
        if set(region) == {"box"} and len(region["box"]) == 6:
            return Box(region["box"][:3], region["box"][3:])
        if set(region) == {"sphere"} and len(region["sphere"]) == 4:
            return Sphere(region["sphere"][:3], region["sphere"][3])
        raise ValueError(f"a region mapping is {{'box': [6 numbers]}} or {{'sphere': [4 numbers]}}, got {region}")
    if isinstance(region, (tuple, list)) and len(region) == 2:
        return Box(region[0], region[1])
    raise ValueError(f"cannot read a region from {region!r}")


def mesh_region(values: Optional[Sequence[float]]) -> Optional[Union[Box, Sphere]]:
    """A region from a flat list, as configs write it: 6 numbers (box min, max) or 4 (sphere centre,
    radius); None stays None."""
    if values is None:
        return None
    values = [float(v) for v in values]
    if len(values) == 6:
        return Box(values[:3], values[3:])
    if len(values) == 4:
        return Sphere(values[:3], values[3])
    raise ValueError(f"a region is 6 numbers (a box: xmin ymin zmin xmax ymax zmax) or 4 (a sphere: cx cy cz r), "
                     f"got {len(values)}")


def _crop(points: np.ndarray, region: Optional[Union[Box, Sphere]]) -> np.ndarray:
    if region is None:
        return points
    return points[region.contains(points)]


def mesh_distance_metrics(pred_points, gt_points, threshold: float = 0.01,
                          region: Optional[Region] = None) -> Dict[str, float]:
    """Accuracy, completeness, Chamfer distance, precision, recall and F-score between two point
    sets (see the module docstring).

    pred_points: [N, 3]; gt_points: [M, 3] (tensors or arrays; computed in float64).
    threshold: distance for precision/recall/F-score, in ground-truth units.
    region: optional ``Box``/``Sphere`` (or see ``as_region``); both sets are cropped to it first.
    Returns a dict of floats: accuracy, completeness, chamfer, precision, recall, fscore, and
    n_pred, n_gt (points used after cropping).
    """
    from scipy.spatial import cKDTree

    pred = _to_numpy(pred_points).reshape(-1, 3)
    gt = _to_numpy(gt_points).reshape(-1, 3)
    if threshold <= 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    for name, pts in (("predicted", pred), ("ground-truth", gt)):
        if not np.all(np.isfinite(pts)):
            raise ValueError(f"{name} points contain NaN or inf")
    region = as_region(region)
    pred, gt = _crop(pred, region), _crop(gt, region)
    for name, pts in (("predicted", pred), ("ground-truth", gt)):
        if len(pts) == 0:
            where = f" inside region {region.to_dict()}" if region is not None else ""
            raise ValueError(f"no {name} points{where}")
    d_pred, _ = cKDTree(gt).query(pred, k=1, workers=-1)  # pred -> gt
    d_gt, _ = cKDTree(pred).query(gt, k=1, workers=-1)  # gt -> pred
    accuracy, completeness = float(d_pred.mean()), float(d_gt.mean())
    precision = float((d_pred < threshold).mean())
    recall = float((d_gt < threshold).mean())
    fscore = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return dict(
        accuracy=accuracy,
        completeness=completeness,
        chamfer=0.5 * (accuracy + completeness),
        precision=precision,
        recall=recall,
        fscore=float(fscore),
        n_pred=int(len(pred)),
        n_gt=int(len(gt)),
    )


def load_points(path: PathLike) -> np.ndarray:
    """Points [N, 3] float64 from ``.npy`` ([N, >=3]), text (``.xyz``/``.txt``/``.pts``: first
    three columns, whitespace or comma separated) or a mesh/point-cloud file (its vertices)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"point file not found: '{path}'")
    ext = path.suffix.lower()
    if ext == ".npy":
        pts = np.load(path)
    elif ext in (".xyz", ".txt", ".pts"):
        with open(path) as f:
            text = f.read().replace(",", " ")
        pts = np.loadtxt(text.splitlines(), ndmin=2)
    else:
        pts = np.asarray(load_trimesh(path).vertices)
    pts = np.asarray(pts, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise ValueError(f"'{path}' does not hold [N, 3] points (shape {pts.shape})")
    return pts[:, :3]


def _as_samples(obj, n_points: int, seed: int) -> np.ndarray:
    """Points from a mesh (sampled), a point array, or a file of either."""
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        if not path.is_file():
            raise FileNotFoundError(f"file not found: '{path}'")
        if path.suffix.lower() in POINT_CLOUD_EXTENSIONS:
            obj = load_points(path)
        else:
            loaded = load_trimesh(path)
            faces = getattr(loaded, "faces", None)
            if faces is None or len(faces) == 0:
                obj = np.asarray(loaded.vertices, dtype=np.float64)  # a point cloud file
            else:
                obj = loaded
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        pts = _to_numpy(obj)
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise ValueError(f"expected points [N, 3], got shape {pts.shape}")
        return pts
    return sample_surface(obj, n_points, seed)


def evaluate_mesh(pred, gt, n_points: int = 100_000, threshold: float = 0.01,
                  region: Optional[Region] = None, seed: int = 0) -> Dict[str, float]:
    """Compare a predicted surface with the ground truth (metrics in ground-truth units).

    pred: a mesh path, ``Mesh``, ``trimesh.Trimesh``, or points [N, 3].
    gt: the same, or a point-cloud file (``.npy``, ``.xyz``/``.txt``/``.pts``, or a ``.ply``
        without faces), used as is.
    Meshes are sampled with ``n_points`` surface points (pred with ``seed``, gt with
    ``seed + 1``, so two copies of one mesh are not trivially sampled at the same points).
    Returns the dict of ``mesh_distance_metrics``.
    """
    pred_pts = _as_samples(pred, n_points, seed)
    gt_pts = _as_samples(gt, n_points, seed + 1)
    return mesh_distance_metrics(pred_pts, gt_pts, threshold=threshold, region=region)
