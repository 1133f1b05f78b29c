"""Decimation to a face budget with ``fast-simplification`` (quadric edge collapse, the library
trimesh's own ``simplify_quadric_decimation`` calls).

Vertex colours are carried over from the nearest vertex of the input mesh: the simplifier moves
vertices to quadric-optimal positions, so no input vertex maps one-to-one onto an output one.

Axis names in shapes: V vertices, F faces.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from utils.mesh.mesh import Mesh

__all__ = ["decimate"]


def decimate(mesh: Mesh, target_faces: Optional[int] = None, ratio: Optional[float] = None,
             aggressiveness: float = 7.0, preserve_border: bool = False) -> Mesh:
    """Simplify ``mesh`` to about ``target_faces`` faces, or to ``ratio`` of its faces.

    Give exactly one of ``target_faces`` (a positive int not above the mesh's face count) and
    ``ratio`` (in (0, 1]). The result has at most the target (the simplifier stops at the target
    or slightly below it; fewer when it cannot collapse more edges without flipping faces).
    aggressiveness: fast-simplification's ``agg`` (0 careful and slow ... 10 fast and rough).
    preserve_border: keep open boundaries (holes, the edge of a cut surface) where they are.
    mesh: a Mesh with optional vertex colours; a textured mesh is refused (decimate before
    unwrapping: collapses would tear the UV charts). Returns a new Mesh on the mesh's device.
    """
    import fast_simplification

    if mesh.num_faces == 0:
        raise ValueError("cannot decimate an empty mesh (0 faces)")
    if mesh.texture is not None:
        raise ValueError("decimate before UV unwrapping: a textured mesh's UV charts would tear")
    if (target_faces is None) == (ratio is None):
        raise ValueError(f"give exactly one of target_faces and ratio, got target_faces="
                         f"{target_faces!r}, ratio={ratio!r}")
    if ratio is not None:
        if not 0.0 < float(ratio) <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
        target = max(1, int(round(float(ratio) * mesh.num_faces)))
    else:
        if isinstance(target_faces, bool) or int(target_faces) != target_faces \
                or target_faces < 1:
            raise ValueError(f"target_faces must be a positive int, got {target_faces!r}")
        if target_faces > mesh.num_faces:
            raise ValueError(f"target_faces={target_faces} is more than the mesh's "
                             f"{mesh.num_faces} faces")
        target = int(target_faces)
    device = mesh.vertices.device
    if target == mesh.num_faces:
        return mesh.to(device)
    points = mesh.vertices.detach().cpu().numpy().astype(np.float64)
    faces = np.ascontiguousarray(mesh.faces.detach().cpu().numpy())  # int64, no copy
    new_points, new_faces = fast_simplification.simplify(
        points, faces, target_count=target, agg=float(aggressiveness),
        preserve_border=preserve_border)
    colors = None
    if mesh.vertex_colors is not None:
        from scipy.spatial import cKDTree

        _, nearest = cKDTree(points).query(new_points, workers=-1)
        colors = mesh.vertex_colors.detach().cpu()[torch.from_numpy(nearest)]
    out = Mesh(new_points.astype(np.float32), np.asarray(new_faces, dtype=np.int64), colors)
    return out.to(device)
