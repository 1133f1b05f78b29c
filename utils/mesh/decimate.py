"""Decimation to a face budget with ``fast-simplification`` (quadric edge collapse, the library
trimesh's own ``simplify_quadric_decimation`` calls).

Vertex colours are carried over from the nearest vertex of the input mesh: the simplifier moves
vertices to quadric-optimal positions, so no input vertex maps one-to-one onto an output one.

Axis names in shapes: V vertices, F faces.
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np
import torch

from utils.mesh.mesh import Mesh

__all__ = ["decimate"]


# fast-simplification holds ~280 bytes per input face (its triangle, vertex and reference
# records); meshes above this many faces are decimated piece by piece first (see decimate)
MAX_FACES_PER_CALL = 2**22


def decimate(mesh: Mesh, target_faces: Optional[int] = None, ratio: Optional[float] = None,
             aggressiveness: float = 7.0, preserve_border: bool = False,
             max_faces_per_call: int = MAX_FACES_PER_CALL) -> Mesh:
    """Simplify ``mesh`` to about ``target_faces`` faces, or to ``ratio`` of its faces.

    Give exactly one of ``target_faces`` (a positive int not above the mesh's face count) and
    ``ratio`` (in (0, 1]). The result has at most the target (the simplifier stops at the target
    or slightly below it; fewer when it cannot collapse more edges without flipping faces).
    aggressiveness: fast-simplification's ``agg`` (0 careful and slow ... 10 fast and rough).
    preserve_border: keep open boundaries (holes, the edge of a cut surface) where they are.
    max_faces_per_call: memory bound. A larger mesh is cut into spatial pieces of at most this
        many faces (median splits of the face centres); each piece is decimated to twice its
        share of the target with its cut edges kept in place, the pieces are joined again
        (their shared cut vertices did not move, so they weld exactly) and the result is
        decimated to the target in one call. Peak memory: ~280 bytes x max_faces_per_call inside
        fast-simplification (~1.1 GiB at the default 2^22) instead of ~280 bytes per face.
    mesh: a Mesh with optional vertex colours; a textured mesh is refused (decimate before
    unwrapping: collapses would tear the UV charts). Returns a new Mesh on the mesh's device.
    """
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
    if isinstance(max_faces_per_call, bool) or not isinstance(max_faces_per_call, int) \
            or max_faces_per_call < 1:
        raise ValueError(f"max_faces_per_call must be a positive int, got {max_faces_per_call!r}")
    device = mesh.vertices.device
    if target == mesh.num_faces:
        return mesh.to(device)
    points = mesh.vertices.detach().cpu().numpy().astype(np.float64)
    faces = np.ascontiguousarray(mesh.faces.detach().cpu().numpy())  # int64, no copy
    if len(faces) > max_faces_per_call and 2 * target < len(faces):
        points_in, faces_in = _decimate_by_pieces(points, faces, 2 * target, max_faces_per_call,
                                                  aggressiveness)
    else:
        points_in, faces_in = points, faces
    new_points, new_faces = _simplify(points_in, faces_in, min(target, len(faces_in)),
                                      aggressiveness, preserve_border)
    del points_in, faces_in
    colors = None
    if mesh.vertex_colors is not None:
        from scipy.spatial import cKDTree

        _, nearest = cKDTree(points).query(new_points, workers=-1)
        colors = mesh.vertex_colors.detach().cpu()[torch.from_numpy(nearest)]
    out = Mesh(new_points.astype(np.float32), np.asarray(new_faces, dtype=np.int64), colors)
    return out.to(device)


def _simplify(points: np.ndarray, faces: np.ndarray, target: int, aggressiveness: float,
              preserve_border: bool):
    import fast_simplification

    if target >= len(faces):
        return points, faces
    return fast_simplification.simplify(points, faces, target_count=int(target),
                                        agg=float(aggressiveness),
                                        preserve_border=preserve_border)


def _split_faces(centres: np.ndarray, index: np.ndarray, max_faces: int) -> List[np.ndarray]:
    """Face index groups of at most ``max_faces``: median splits along the longest extent."""
    if len(index) <= max_faces:
        return [index]
    c = centres[index]
    axis = int(np.argmax(c.max(axis=0) - c.min(axis=0)))
    half = len(index) // 2
    order = np.argpartition(c[:, axis], half)
    return (_split_faces(centres, index[order[:half]], max_faces)
            + _split_faces(centres, index[order[half:]], max_faces))


def _decimate_by_pieces(points: np.ndarray, faces: np.ndarray, target: int, max_faces: int,
                        aggressiveness: float):
    """Decimate spatial pieces of the mesh one by one to their share of ``target`` faces, cut
    edges kept in place, and join them: (points [V', 3] float64, faces [F', 3] int64)."""
    centres = points[faces].mean(axis=1).astype(np.float32)
    groups = _split_faces(centres, np.arange(len(faces)), max_faces)
    del centres
    out_points, out_faces, offset = [], [], 0
    for group in groups:
        used, local = np.unique(faces[group], return_inverse=True)
        piece_faces = local.reshape(-1, 3)
        share = max(1, int(round(target * len(group) / len(faces))))
        p, f = _simplify(points[used], piece_faces, share, aggressiveness, preserve_border=True)
        out_points.append(np.asarray(p, dtype=np.float64))
        out_faces.append(np.asarray(f, dtype=np.int64) + offset)
        offset += len(p)
    joined = np.concatenate(out_points)
    # vertices on the cuts were not moved (their edges were kept), so their copies from the
    # pieces on both sides are equal bit for bit
    unique, inverse = np.unique(joined, axis=0, return_inverse=True)
    return unique, inverse.reshape(-1)[np.concatenate(out_faces)]
