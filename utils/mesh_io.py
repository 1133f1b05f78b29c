"""Triangle meshes: a small ``Mesh`` container, similarity transforms, and PLY/OBJ files.

``save_mesh`` picks the format from the file extension:

- ``.ply``: binary little-endian PLY; ``float x y z`` per vertex, plus ``uchar red green blue``
  when the mesh has vertex colours; faces as ``list uchar int vertex_indices``.
- ``.obj``: text OBJ; vertex colours as three extra floats in [0, 1] on each ``v`` line
  (``v x y z r g b``), which MeshLab and trimesh read; 1-based ``f a b c`` faces.

``load_mesh`` reads whatever trimesh reads (PLY, OBJ, STL, OFF, GLB, ...), vertex order kept.
Vertex colours are stored as float32 in [0, 1]; PLY files keep them as 8-bit values, so a round
trip is exact to 1/255 (loading goes through trimesh, which also keeps 8 bits for OBJ colours).

Axis names in shapes: V vertices, F faces.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    import trimesh

ArrayLike = Union[Tensor, np.ndarray]
PathLike = Union[str, os.PathLike]

SUPPORTED_SAVE_EXTENSIONS = (".ply", ".obj")


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


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------
def _colors_uint8(colors: Tensor) -> np.ndarray:
    c = colors.detach().cpu().numpy().astype(np.float64)
    return np.clip(np.round(c * 255.0), 0, 255).astype(np.uint8)


def _write_ply(f, vertices: np.ndarray, faces: np.ndarray, colors: Optional[np.ndarray]) -> None:
    n_v, n_f = len(vertices), len(faces)
    header = [
        "ply",
        "format binary_little_endian 1.0",
        "comment neural surface reconstruction toolkit",
        f"element vertex {n_v}",
        "property float x",
        "property float y",
        "property float z",
    ]
    vdtype = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if colors is not None:
        header += ["property uchar red", "property uchar green", "property uchar blue"]
        vdtype += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    header += [f"element face {n_f}", "property list uchar int vertex_indices", "end_header"]
    f.write(("\n".join(header) + "\n").encode("ascii"))

    vrec = np.empty(n_v, dtype=vdtype)
    vrec["x"], vrec["y"], vrec["z"] = vertices[:, 0], vertices[:, 1], vertices[:, 2]
    if colors is not None:
        vrec["red"], vrec["green"], vrec["blue"] = colors[:, 0], colors[:, 1], colors[:, 2]
    f.write(vrec.tobytes())

    frec = np.empty(n_f, dtype=[("n", "u1"), ("idx", "<i4", (3,))])
    frec["n"] = 3
    frec["idx"] = faces
    f.write(frec.tobytes())


def _write_obj(f, vertices: np.ndarray, faces: np.ndarray, colors: Optional[np.ndarray]) -> None:
    f.write(b"# neural surface reconstruction toolkit\n")
    if colors is not None:
        data = np.concatenate([vertices.astype(np.float64), colors.astype(np.float64)], axis=1)
        line = "v %.9g %.9g %.9g %.6g %.6g %.6g\n"
    else:
        data = vertices.astype(np.float64)
        line = "v %.9g %.9g %.9g\n"
    _write_rows(f, line, data)
    _write_rows(f, "f %d %d %d\n", faces.astype(np.int64) + 1)


def _write_rows(f, line: str, data: np.ndarray, rows_per_block: int = 100_000) -> None:
    for start in range(0, len(data), rows_per_block):
        block = data[start:start + rows_per_block]
        f.write((line * len(block) % tuple(block.ravel().tolist())).encode("ascii"))


def save_mesh(path: PathLike, mesh: Union[Mesh, "trimesh.Trimesh"]) -> Path:
    """Write ``mesh`` to ``path`` as PLY (binary) or OBJ, chosen by the extension.

    Parent folders are created. The file is written to a temporary name next to ``path`` and
    renamed at the end, so an interrupted write leaves no half file. Returns the path.
    Raises ``ValueError`` for an unknown extension and ``OSError`` naming the path when it
    cannot be written.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in SUPPORTED_SAVE_EXTENSIONS:
        raise ValueError(
            f"cannot save mesh to '{path}': unknown extension '{path.suffix}' "
            f"(supported: {', '.join(SUPPORTED_SAVE_EXTENSIONS)})"
        )
    if not isinstance(mesh, Mesh):
        mesh = Mesh.from_trimesh(mesh)
    vertices = mesh.vertices.detach().cpu().numpy().astype(np.float32)
    faces = mesh.faces.detach().cpu().numpy().astype(np.int64)
    if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise ValueError(f"cannot save mesh to '{path}': face indices out of range")
    if ext == ".ply" and len(vertices) >= 2**31:
        raise ValueError(f"cannot save mesh to '{path}': too many vertices for int32 PLY indices")
    colors = None if mesh.vertex_colors is None else mesh.vertex_colors

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise NotADirectoryError(
            f"cannot write mesh to '{path}': '{ancestor}' is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            if ext == ".ply":
                _write_ply(f, vertices, faces, None if colors is None else _colors_uint8(colors))
            else:
                c = None if colors is None else colors.detach().cpu().numpy().clip(0.0, 1.0)
                _write_obj(f, vertices, faces, c)
        os.replace(tmp, path)
    except OSError as e:
        try:
            if tmp.exists():
                tmp.unlink()
        except OSError:
            pass
        reason = e.strerror or str(e)
        raise OSError(f"cannot write mesh to '{path}': {reason}") from e
    return path


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------
def load_trimesh(path: PathLike):
    """Load a file with trimesh, keeping vertex order (``process=False``). Returns a
    ``trimesh.Trimesh`` or ``trimesh.PointCloud`` (a file with vertices but no faces)."""
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mesh file not found: '{path}'")
    try:
        loaded = trimesh.load(str(path), process=False, maintain_order=True)
    except Exception as e:  # trimesh raises assorted types for unreadable files
        raise ValueError(f"cannot read mesh '{path}': {e}") from e
    if isinstance(loaded, trimesh.Scene):
        geoms = list(loaded.geometry.values())
        if not geoms:
            raise ValueError(f"mesh file '{path}' holds no geometry")
        loaded = trimesh.util.concatenate(geoms) if len(geoms) > 1 else geoms[0]
    return loaded


def load_mesh(path: PathLike) -> Mesh:
    """Read a mesh file (any format trimesh reads; vertex order kept) into a ``Mesh``.

    A file without faces gives a Mesh with ``faces`` of shape [0, 3]. Vertex colours, when the
    file has per-vertex colours, come back as float32 in [0, 1] (8-bit precision).
    """
    return Mesh.from_trimesh(load_trimesh(path))
