"""The ``Mesh`` container (vertices, faces, optional vertex colours) and similarity transforms.

Axis names in shapes: V vertices, F faces.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Union

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    import trimesh

ArrayLike = Union[Tensor, np.ndarray]

# --------------------------------------------------------------------------------------------
# similarity transforms
# --------------------------------------------------------------------------------------------
def _as_float64_matrix(matrix: ArrayLike) -> np.ndarray:
    if isinstance(matrix, Tensor):
        matrix = matrix.detach().cpu().numpy()
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape == (3, 4):  # [R|t] without the homogeneous row
        m = np.vstack([m, [0.0, 0.0, 0.0, 1.0]])
    if m.shape != (4, 4):
        raise ValueError(f"expected a 4x4 (or 3x4) transform matrix, got shape {tuple(m.shape)}")
    if not np.all(np.isfinite(m)):
        raise ValueError("transform matrix has non-finite entries")
    return m


def check_similarity(matrix: ArrayLike, atol: float = 1e-4) -> float:
    """Check that ``matrix`` [4, 4] is a similarity ``x -> s R x + t`` and return ``s * det(R)``.

    ``R`` may be a rotation or a reflection (the sign of the returned value tells which). Raises
    ``ValueError`` if the last row is not ``[0, 0, 0, 1]`` or the linear part is not a uniform
    scale times an orthogonal matrix (relative tolerance ``atol``).
    """
    m = _as_float64_matrix(matrix)
    if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=1e-9):
        raise ValueError(
            f"the last row of a similarity transform must be [0, 0, 0, 1], got {m[3].tolist()} "
            "(is the matrix transposed?)"
        )
    a = m[:3, :3]
    det = float(np.linalg.det(a))
    if abs(det) < 1e-300:
        raise ValueError("transform matrix is singular")
    scale = abs(det) ** (1.0 / 3.0)
    gram = a.T @ a / scale**2
    if not np.allclose(gram, np.eye(3), atol=atol):
        raise ValueError(
            "matrix is not a similarity transform (its 3x3 part is not a uniform scale times a "
            f"rotation); A^T A / s^2 =\n{gram}"
        )
    return float(np.sign(det) * scale)


def apply_similarity(vertices: ArrayLike, matrix: ArrayLike, check: bool = True) -> ArrayLike:
    """Map points by a 4x4 similarity transform: ``x' = A x + t`` with ``A = M[:3, :3]``,
    ``t = M[:3, 3]``.

    vertices: [V, 3] tensor or array; matrix: [4, 4] (or [3, 4]) tensor or array.
    Returns [V, 3] of the same kind, dtype and device as ``vertices``; computed in float64.
    With ``check=True`` (default) the matrix must be a similarity (see ``check_similarity``);
    ``check=False`` accepts any affine matrix.
    """
    m = _as_float64_matrix(matrix)
    if check:
        check_similarity(m)
    if vertices.ndim != 2 or vertices.shape[-1] != 3:
        raise ValueError(f"vertices must be [V, 3], got shape {tuple(vertices.shape)}")
    if isinstance(vertices, Tensor):
        mt = torch.as_tensor(m, dtype=torch.float64, device=vertices.device)
        out = vertices.detach().to(torch.float64) @ mt[:3, :3].T + mt[:3, 3]
        return out.to(vertices.dtype) if vertices.is_floating_point() else out
    v = np.asarray(vertices)
    out = v.astype(np.float64) @ m[:3, :3].T + m[:3, 3]
    return out.astype(v.dtype) if np.issubdtype(v.dtype, np.floating) else out


# --------------------------------------------------------------------------------------------
# Mesh container
# --------------------------------------------------------------------------------------------
@dataclass(eq=False)
class Mesh:
    """A triangle mesh.

    vertices: [V, 3] float32 tensor (scene coordinates unless stated otherwise).
    faces: [F, 3] int64 tensor of vertex indices; counter-clockwise seen from outside, so the
        right-hand normal ``(v1 - v0) x (v2 - v0)`` points outward.
    vertex_colors: optional [V, 3] float32 tensor, RGB in [0, 1].
    Numpy arrays are accepted and converted; tensors stay on their device.
    """

    vertices: Tensor
    faces: Tensor
    vertex_colors: Optional[Tensor] = field(default=None)

    def __post_init__(self) -> None:
        v = self.vertices
        v = v if isinstance(v, Tensor) else torch.as_tensor(np.asarray(v, dtype=np.float32))
        self.vertices = v.to(torch.float32)
        f = self.faces
        f = f if isinstance(f, Tensor) else torch.as_tensor(np.asarray(f, dtype=np.int64))
        f = f.to(torch.int64)
        self.faces = f.reshape(0, 3) if f.numel() == 0 else f
        if self.vertices.ndim != 2 or self.vertices.shape[1] != 3:
            raise ValueError(f"Mesh.vertices must be [V, 3], got {tuple(self.vertices.shape)}")
        if self.faces.ndim != 2 or self.faces.shape[1] != 3:
            raise ValueError(f"Mesh.faces must be [F, 3], got {tuple(self.faces.shape)}")
        if self.vertex_colors is not None:
            c = self.vertex_colors
            c = c if isinstance(c, Tensor) else torch.as_tensor(np.asarray(c))
            if c.dtype == torch.uint8:
                c = c.to(torch.float32) / 255.0
            c = c.to(torch.float32)
            if c.ndim != 2 or c.shape[1] not in (3, 4) or c.shape[0] != self.vertices.shape[0]:
                raise ValueError(
                    f"Mesh.vertex_colors must be [V, 3] with V={self.vertices.shape[0]}, "
                    f"got {tuple(c.shape)}"
                )
            self.vertex_colors = c[:, :3]

    def __repr__(self) -> str:
        colors = "" if self.vertex_colors is None else ", with vertex colours"
        return (f"Mesh({self.num_vertices} vertices, {self.num_faces} faces{colors}, "
                f"device={self.vertices.device})")

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    def to(self, device: Union[str, torch.device]) -> "Mesh":
        """A copy with every tensor on ``device``."""
        return Mesh(self.vertices.to(device), self.faces.to(device),
                    None if self.vertex_colors is None else self.vertex_colors.to(device))

    def transformed(self, matrix: ArrayLike) -> "Mesh":
        """A new Mesh with vertices mapped by the similarity ``matrix`` [4, 4] (see
        ``apply_similarity``). A reflection (negative determinant) also reverses the face winding
        so normals keep pointing outward."""
        signed_scale = check_similarity(matrix)
        faces = self.faces.clone()
        if signed_scale < 0:
            faces = faces[:, [0, 2, 1]]
        colors = None if self.vertex_colors is None else self.vertex_colors.clone()
        return Mesh(apply_similarity(self.vertices, matrix, check=False), faces, colors)

    def face_normals(self) -> Tensor:
        """Unit face normals [F, 3] (right-hand rule over the face's vertex order)."""
        v = self.vertices[self.faces]
        n = torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1)
        return torch.nn.functional.normalize(n, dim=-1)

    def to_trimesh(self) -> "trimesh.Trimesh":
        """A ``trimesh.Trimesh`` (no vertex merging or reordering)."""
        import trimesh

        colors = None
        if self.vertex_colors is not None:
            colors = np.clip(np.round(self.vertex_colors.detach().cpu().numpy() * 255.0), 0, 255)
            colors = colors.astype(np.uint8)
        return trimesh.Trimesh(
            vertices=self.vertices.detach().cpu().numpy().astype(np.float64),
            faces=self.faces.detach().cpu().numpy(),
            vertex_colors=colors,
            process=False,
        )

    @classmethod
    def from_trimesh(cls, mesh: "trimesh.Trimesh") -> "Mesh":
        colors = None
        visual = getattr(mesh, "visual", None)
        if visual is not None and getattr(visual, "kind", None) == "vertex":
            vc = np.asarray(visual.vertex_colors)
            if vc.shape[0] == len(mesh.vertices):
                colors = vc[:, :3].astype(np.float32) / 255.0
        faces = np.asarray(getattr(mesh, "faces", np.zeros((0, 3))), dtype=np.int64).reshape(-1, 3)
        return cls(np.asarray(mesh.vertices, dtype=np.float32), faces, colors)
