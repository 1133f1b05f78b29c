"""Mesh clean-up: drop small disconnected pieces (floaters) and fill small holes.

Pieces are the connected components of the vertex graph (faces that share a vertex are
connected), found with ``scipy.sparse.csgraph.connected_components``; a mesh whose vertices are
split along UV seams is connected through vertices at the same position. Holes are filled with
``trimesh.repair.fill_holes``, which closes holes bounded by 3 or 4 edges (larger ones stay
open: a fan over a large, non-planar hole would be worse than the hole).

Axis names in shapes: V vertices, F faces.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import numpy as np
import torch

from utils.mesh.mesh import Mesh

__all__ = ["CleanupReport", "clean_mesh", "component_labels", "fill_small_holes",
           "remove_small_components"]


@dataclasses.dataclass
class CleanupReport:
    """What ``clean_mesh`` changed, for the caller's log."""

    components: int = 0  # connected pieces before
    components_removed: int = 0
    faces_removed: int = 0
    vertices_removed: int = 0
    hole_faces_added: int = 0
    open_edges_left: Optional[int] = None  # boundary edges after hole filling (None: not tried)

    def __str__(self) -> str:
        s = (f"removed {self.components_removed} of {self.components} pieces "
             f"({self.faces_removed} faces, {self.vertices_removed} vertices)")
        if self.open_edges_left is not None:
            s += (f"; filled holes with {self.hole_faces_added} faces, "
                  f"{self.open_edges_left} open edges left")
        return s


def _check_not_empty(mesh: Mesh, what: str) -> None:
    if mesh.num_faces == 0:
        raise ValueError(f"cannot {what} an empty mesh (0 faces)")


def component_labels(mesh: Mesh) -> Tuple[np.ndarray, int]:
    """Connected piece of each face: (labels [F] int in [0, n), n). Faces sharing a vertex, or
    a vertex position when the mesh is textured (UV seams split vertices), are connected."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    faces = mesh.faces.detach().cpu().numpy()
    n_v = mesh.num_vertices
    if mesh.uvs is not None:  # one node per position, so seams do not cut pieces apart
        _, node = np.unique(mesh.vertices.detach().cpu().numpy(), axis=0, return_inverse=True)
        faces = node.reshape(-1)[faces]
        n_v = int(faces.max()) + 1
    rows = faces[:, [0, 1]].reshape(-1)
    cols = faces[:, [1, 2]].reshape(-1)
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n_v, n_v))
    _, vertex_label = connected_components(graph, directed=False)
    face_label = vertex_label[faces[:, 0]]
    # number the pieces that have faces 0..n-1 (unused vertices form pieces of their own)
    used, face_label = np.unique(face_label, return_inverse=True)
    return face_label.reshape(-1), len(used)


def remove_small_components(mesh: Mesh, min_faces: Optional[int] = None,
                            min_fraction: Optional[float] = None) -> Tuple[Mesh, CleanupReport]:
    """Drop disconnected pieces smaller than a size.

    With neither ``min_faces`` nor ``min_fraction``, keep only the largest piece. Otherwise keep
    every piece with at least ``min_faces`` faces and at least ``min_fraction`` of all faces;
    the largest piece is always kept, so the result is never empty.
    mesh: Mesh (vertex colours / UVs are kept). Returns (the cleaned Mesh, a CleanupReport).
    """
    _check_not_empty(mesh, "clean")
    if min_faces is not None and (isinstance(min_faces, bool) or int(min_faces) != min_faces
                                  or min_faces < 1):
        raise ValueError(f"min_faces must be a positive int, got {min_faces!r}")
    if min_fraction is not None and not 0.0 < float(min_fraction) <= 1.0:
        raise ValueError(f"min_fraction must be in (0, 1], got {min_fraction!r}")
    labels, n = component_labels(mesh)
    sizes = np.bincount(labels, minlength=n)
    if min_faces is None and min_fraction is None:
        keep_piece = np.zeros(n, dtype=bool)
    else:
        need = max(int(min_faces or 0), float(min_fraction or 0.0) * mesh.num_faces)
        keep_piece = sizes >= need
    keep_piece[np.argmax(sizes)] = True
    keep = keep_piece[labels]
    out = mesh.select_faces(torch.from_numpy(keep))
    return out, CleanupReport(components=n, components_removed=int(n - keep_piece.sum()),
                              faces_removed=int((~keep).sum()),
                              vertices_removed=mesh.num_vertices - out.num_vertices)


def fill_small_holes(mesh: Mesh) -> Tuple[Mesh, int, int]:
    """Close the holes bounded by 3 or 4 edges (``trimesh.repair.fill_holes``).

    Returns (the Mesh with the new faces appended (vertices unchanged), faces added, boundary
    edges left open). A textured mesh is refused: new faces would cross UV charts.
    """
    import trimesh

    _check_not_empty(mesh, "fill the holes of")
    if mesh.texture is not None:
        raise ValueError("fill holes before UV unwrapping: a textured mesh's faces cannot be "
                         "added without new UV charts")
    tm = mesh.to_trimesh()
    before = len(tm.faces)
    trimesh.repair.fill_holes(tm)
    faces = np.asarray(tm.faces, dtype=np.int64)
    open_edges = len(trimesh.grouping.group_rows(tm.edges_sorted, require_count=1))
    out = Mesh(mesh.vertices.clone(), torch.from_numpy(faces).to(mesh.faces.device),
               None if mesh.vertex_colors is None else mesh.vertex_colors.clone())
    return out, len(faces) - before, int(open_edges)


def clean_mesh(mesh: Mesh, min_faces: Optional[int] = None, min_fraction: Optional[float] = None,
               fill_holes: bool = False) -> Tuple[Mesh, CleanupReport]:
    """``remove_small_components`` (see its size rules), then optionally ``fill_small_holes``.
    Returns (the cleaned Mesh, a CleanupReport to log)."""
    out, report = remove_small_components(mesh, min_faces=min_faces, min_fraction=min_fraction)
    if fill_holes:
        out, report.hole_faces_added, report.open_edges_left = fill_small_holes(out)
    return out, report
