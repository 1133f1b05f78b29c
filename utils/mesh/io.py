"""Mesh files: PLY/OBJ with vertex colours, OBJ+MTL+PNG and GLB with a UV texture, and
reading anything trimesh reads.

``save_mesh`` picks the format from the file extension:

- ``.ply``: binary little-endian PLY; ``float x y z`` per vertex, plus ``uchar red green blue``
  when the mesh has vertex colours; faces as ``list uchar int vertex_indices``.
- ``.obj``: text OBJ; vertex colours as three extra floats in [0, 1] on each ``v`` line
  (``v x y z r g b``), which MeshLab and trimesh read; 1-based ``f a b c`` faces. A textured
  mesh instead gets ``vt`` lines and a material file and PNG next to the OBJ.
- ``.glb``: binary glTF with the texture (or vertex colours).

``load_mesh`` reads whatever trimesh reads (PLY, OBJ, STL, OFF, GLB, ...), vertex order kept,
with vertex colours or UVs and the base colour texture.
Vertex colours are stored as float32 in [0, 1]; PLY files keep them as 8-bit values, so a round
trip is exact to 1/255 (loading goes through trimesh, which also keeps 8 bits for OBJ colours).

Axis names in shapes: V vertices, F faces.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

import numpy as np
from torch import Tensor

from utils.mesh.mesh import Mesh

if TYPE_CHECKING:  # pragma: no cover
    import trimesh

PathLike = Union[str, os.PathLike]

SUPPORTED_SAVE_EXTENSIONS = (".ply", ".obj", ".glb")


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


def save_mesh(path: PathLike, mesh: Union[Mesh, "trimesh.Trimesh"], unlit: bool = True) -> Path:
    """Write ``mesh`` to ``path``; the format follows the extension:

    - ``.ply``: binary PLY with vertex colours when the mesh has them (a texture is not written).
    - ``.obj``: a textured mesh writes OBJ (``vt`` per vertex, ``f a/a b/b c/c``) + ``<stem>.mtl``
      + ``<stem>.png`` next to it (``map_Kd``, white ``Kd``, no specular); otherwise a single OBJ
      with vertex colours as extra ``v`` floats.
    - ``.glb``: binary glTF 2.0 (written by trimesh): a textured mesh as ``TEXCOORD_0`` + a PNG
      ``baseColorTexture`` (v flipped to glTF's v-down), else ``COLOR_0`` vertex colours when
      present. With ``unlit`` (default) the material carries ``KHR_materials_unlit``: baked
      colours are what the scene looked like, so viewers should show them without lighting
      them again (viewers without the extension fall back to metallic 0, roughness 1).

    Parent folders are created. Each file is written to a temporary name next to ``path`` and
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

    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise NotADirectoryError(
            f"cannot write mesh to '{path}': '{ancestor}' is a file, not a folder")
    if ext == ".glb":
        files = {path: _glb_bytes(mesh, unlit)}
    elif ext == ".obj" and mesh.texture is not None:
        files = _textured_obj_files(path, mesh)
    elif ext == ".ply":
        c8 = None if colors is None else _colors_uint8(colors)
        files = {path: lambda f: _write_ply(f, vertices, faces, c8)}
    else:
        c = None if colors is None else colors.detach().cpu().numpy().clip(0.0, 1.0)
        files = {path: lambda f: _write_obj(f, vertices, faces, c)}
    for target, content in files.items():
        _write_atomically(target, content, path)
    return path


def _write_atomically(target: Path, content, reported: Path) -> None:
    """Write ``content`` (bytes, or a function writing to a binary file) to ``target`` through a
    temporary file; errors name ``reported`` (the path the caller asked for)."""
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            if isinstance(content, bytes):
                f.write(content)
            else:
                content(f)
        os.replace(tmp, target)
    except OSError as e:
        try:
            if tmp.exists():
                tmp.unlink()
        except OSError:
            pass
        reason = e.strerror or str(e)
        where = "" if target == reported else f" ('{target.name}')"
        raise OSError(f"cannot write mesh to '{reported}'{where}: {reason}") from e


def _textured_obj_files(path: Path, mesh: Mesh) -> dict:
    """{path: OBJ text, <stem>.mtl: material, <stem>.png: texture}, written by trimesh's OBJ
    exporter (one ``vt`` per vertex, faces ``a/a``)."""
    import trimesh
    from PIL import Image
    from trimesh.exchange.obj import export_obj

    # white diffuse, no ambient or specular term: viewers multiply Kd into the texture
    material = trimesh.visual.material.SimpleMaterial(
        image=Image.fromarray(mesh.texture_uint8()), diffuse=[255, 255, 255, 255],
        ambient=[0, 0, 0, 255], specular=[0, 0, 0, 255], name=path.stem)
    text, files = export_obj(mesh.to_trimesh(material=material), include_normals=False,
                             include_color=False, include_texture=True, return_texture=True,
                             mtl_name=f"{path.stem}.mtl",
                             header="neural surface reconstruction toolkit")
    out = {path.with_name(name): data for name, data in files.items()}
    out[path] = text.encode("utf-8")  # last, so the OBJ appears only once its files exist
    return out


def _glb_bytes(mesh: Mesh, unlit: bool) -> bytes:
    import trimesh
    from PIL import Image
    from trimesh.exchange.gltf import export_glb

    material = None
    if mesh.texture is not None:
        material = trimesh.visual.material.PBRMaterial(
            name="baked", baseColorTexture=Image.fromarray(mesh.texture_uint8()),
            metallicFactor=0.0, roughnessFactor=1.0)
    tm = mesh.to_trimesh(material=material)

    def add_unlit(tree: dict) -> None:
        if not unlit:
            return
        if not tree.get("materials"):  # vertex colours: trimesh writes no material
            tree["materials"] = [{"name": "vertex_colors", "pbrMetallicRoughness": {
                "metallicFactor": 0.0, "roughnessFactor": 1.0}}]
            for m in tree.get("meshes", []):
                for prim in m["primitives"]:
                    prim["material"] = 0
        for mat in tree["materials"]:
            mat.setdefault("extensions", {})["KHR_materials_unlit"] = {}
        used = tree.setdefault("extensionsUsed", [])
        if "KHR_materials_unlit" not in used:
            used.append("KHR_materials_unlit")

    return export_glb(trimesh.Scene(tm), include_normals=False, tree_postprocessor=add_unlit)


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
