"""The ``Mesh`` container (vertices, faces, optional vertex colours or a UV texture) and
similarity transforms.

Texture convention (the one OBJ, OpenGL and trimesh use; glTF's is converted by the writers and
readers): ``uvs`` [V, 2] in [0, 1], u to the right, v *up*: v = 0 is the bottom row of the
texture image and v = 1 its top edge. ``texture`` [H, W, 3] is stored as an image is (row 0 at
the top), so texel (row i, column j) covers u in [j, j + 1] / W, v in [H - i - 1, H - i] / H.

Axis names in shapes: V vertices, F faces.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Union

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
    uvs: optional [V, 2] float32 texture coordinates (see the module docstring), with
    texture: optional [H, W, 3] float32 image, RGB in [0, 1] (uint8 is accepted); both or neither.
    A textured mesh has one UV per vertex, so vertices on a UV seam are repeated.
    Numpy arrays are accepted and converted; tensors stay on their device.
    """

    vertices: Tensor
    faces: Tensor
    vertex_colors: Optional[Tensor] = field(default=None)
    uvs: Optional[Tensor] = field(default=None)
    texture: Optional[Tensor] = field(default=None)

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
        if (self.uvs is None) != (self.texture is None):
            raise ValueError("Mesh.uvs and Mesh.texture come together: got "
                             f"uvs={'None' if self.uvs is None else 'a tensor'} and "
                             f"texture={'None' if self.texture is None else 'an image'}")
        if self.uvs is not None:
            uv = self.uvs if isinstance(self.uvs, Tensor) else torch.as_tensor(np.asarray(self.uvs))
            uv = uv.to(torch.float32)
            if uv.ndim != 2 or uv.shape[1] != 2 or uv.shape[0] != self.vertices.shape[0]:
                raise ValueError(f"Mesh.uvs must be [V, 2] with V={self.vertices.shape[0]}, "
                                 f"got {tuple(uv.shape)}")
            self.uvs = uv
            t = self.texture
            t = t if isinstance(t, Tensor) else torch.as_tensor(np.asarray(t))
            if t.dtype == torch.uint8:
                t = t.to(torch.float32) / 255.0
            t = t.to(torch.float32)
            if t.ndim != 3 or t.shape[2] not in (3, 4) or min(t.shape[:2]) < 1:
                raise ValueError(f"Mesh.texture must be an [H, W, 3] image, got {tuple(t.shape)}")
            self.texture = t[..., :3]

    def __repr__(self) -> str:
        colors = "" if self.vertex_colors is None else ", with vertex colours"
        if self.texture is not None:
            colors += f", with a {self.texture.shape[1]}x{self.texture.shape[0]} texture"
        return (f"Mesh({self.num_vertices} vertices, {self.num_faces} faces{colors}, "
                f"device={self.vertices.device})")

    @property
    def has_texture(self) -> bool:
        return self.texture is not None

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    def to(self, device: Union[str, torch.device]) -> "Mesh":
        """A copy with every tensor on ``device``."""
        def move(t):
            return None if t is None else t.to(device)

        return Mesh(self.vertices.to(device), self.faces.to(device), move(self.vertex_colors),
                    move(self.uvs), move(self.texture))

    def transformed(self, matrix: ArrayLike) -> "Mesh":
        """A new Mesh with vertices mapped by the similarity ``matrix`` [4, 4] (see
        ``apply_similarity``). A reflection (negative determinant) also reverses the face winding
        so normals keep pointing outward."""
        signed_scale = check_similarity(matrix)
        faces = self.faces.clone()
        if signed_scale < 0:
            faces = faces[:, [0, 2, 1]]
        def copy(t):
            return None if t is None else t.clone()

        return Mesh(apply_similarity(self.vertices, matrix, check=False), faces,
                    copy(self.vertex_colors), copy(self.uvs), copy(self.texture))

    def select_faces(self, keep: Union[Tensor, np.ndarray]) -> "Mesh":
        """A new Mesh with the faces where ``keep`` [F] (bool) is True and only the vertices
        they use (renumbered in their original order), with their colours / UVs."""
        keep = torch.as_tensor(np.asarray(keep) if not isinstance(keep, Tensor) else keep,
                               device=self.faces.device)
        if keep.dtype != torch.bool or keep.shape != (self.num_faces,):
            raise ValueError(f"keep must be [F] bool with F={self.num_faces}, got "
                             f"{keep.dtype} {tuple(keep.shape)}")
        faces = self.faces[keep]
        used = torch.zeros(self.num_vertices, dtype=torch.bool, device=faces.device)
        used[faces.reshape(-1)] = True
        new_index = torch.cumsum(used.long(), 0) - 1

        def pick(t):
            return None if t is None else t[used]

        return Mesh(self.vertices[used], new_index[faces], pick(self.vertex_colors),
                    pick(self.uvs), None if self.texture is None else self.texture.clone())

    def vertex_normals(self) -> Tensor:
        """Unit vertex normals [V, 3]: the area-weighted sum of the normals of the faces around
        each vertex (vertices of no face get a zero vector). On a textured mesh the copies of a
        vertex along a UV seam (same position) share one normal, so shading has no seams."""
        faces, vertices, node = self.faces, self.vertices, None
        if self.uvs is not None:
            unique, node = np.unique(vertices.detach().cpu().numpy(), axis=0, return_inverse=True)
            node = torch.from_numpy(node.reshape(-1)).to(faces.device)
            faces, vertices = node[faces], torch.from_numpy(unique).to(self.vertices.device)
        v = vertices[faces]
        n = torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1)  # length = 2 x area
        out = torch.zeros_like(vertices)
        out.index_add_(0, faces.reshape(-1), n.repeat_interleave(3, dim=0))
        out = torch.nn.functional.normalize(out, dim=-1)
        return out if node is None else out[node]

    def face_normals(self) -> Tensor:
        """Unit face normals [F, 3] (right-hand rule over the face's vertex order)."""
        v = self.vertices[self.faces]
        n = torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1)
        return torch.nn.functional.normalize(n, dim=-1)

    def texture_uint8(self) -> np.ndarray:
        """The texture as an [H, W, 3] uint8 array (rounded), as image files store it."""
        if self.texture is None:
            raise ValueError("this mesh has no texture")
        return _to_uint8(self.texture)

    def to_trimesh(self, material: Optional[Any] = None) -> "trimesh.Trimesh":
        """A ``trimesh.Trimesh`` (no vertex merging or reordering). A textured mesh gets
        ``TextureVisuals`` (UVs and ``material``, by default a ``SimpleMaterial`` holding the
        texture with a white diffuse colour), else vertex colours when present."""
        import trimesh

        colors = None
        if self.vertex_colors is not None and self.texture is None:
            colors = _to_uint8(self.vertex_colors)
        tm = trimesh.Trimesh(
            vertices=self.vertices.detach().cpu().numpy().astype(np.float64),
            faces=self.faces.detach().cpu().numpy(),
            vertex_colors=colors,
            process=False,
        )
        if self.texture is not None:
            if material is None:
                from PIL import Image

                material = trimesh.visual.material.SimpleMaterial(
                    image=Image.fromarray(self.texture_uint8()), diffuse=[255, 255, 255, 255])
            tm.visual = trimesh.visual.TextureVisuals(
                uv=self.uvs.detach().cpu().numpy().astype(np.float64), material=material)
        return tm

    @classmethod
    def from_trimesh(cls, mesh: "trimesh.Trimesh") -> "Mesh":
        """A Mesh from a trimesh mesh: vertex colours, or UVs and the base colour texture of its
        material (a SimpleMaterial's image or a PBRMaterial's baseColorTexture)."""
        colors = uvs = texture = None
        visual = getattr(mesh, "visual", None)
        kind = getattr(visual, "kind", None)
        if kind == "vertex":
            vc = np.asarray(visual.vertex_colors)
            if vc.shape[0] == len(mesh.vertices):
                colors = vc[:, :3].astype(np.float32) / 255.0
        elif kind == "texture" and getattr(visual, "uv", None) is not None:
            material = visual.material
            image = getattr(material, "image", None)
            if image is None:
                image = getattr(material, "baseColorTexture", None)
            if image is not None and len(visual.uv) == len(mesh.vertices):
                uvs = np.asarray(visual.uv, dtype=np.float32)
                texture = np.array(image.convert("RGB"), dtype=np.uint8)  # a writable copy
        if kind == "texture" and texture is None:
            # glTF COLOR_0 beside a material without a texture: trimesh keeps it aside
            vc = getattr(visual, "vertex_attributes", {}).get("color")
            if vc is not None and len(vc) == len(mesh.vertices):
                vc = np.asarray(vc)
                colors = (vc[:, :3].astype(np.float32) / 255.0 if vc.dtype == np.uint8
                          else vc[:, :3].astype(np.float32))
        faces = np.asarray(getattr(mesh, "faces", np.zeros((0, 3))), dtype=np.int64).reshape(-1, 3)
        return cls(np.asarray(mesh.vertices, dtype=np.float32), faces, colors, uvs, texture)


def _to_uint8(colors: Tensor) -> np.ndarray:
    c = colors.detach().cpu().numpy().astype(np.float64)
    return np.clip(np.round(c * 255.0), 0, 255).astype(np.uint8)
