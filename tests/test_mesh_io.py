"""Mesh files (PLY/OBJ with vertex colours) and the Mesh container's similarity transforms."""
import os

import numpy as np
import pytest
import torch

from utils.mesh import Mesh, apply_similarity, check_similarity, load_mesh, save_mesh


def tetra_mesh(colors=True, seed=0):
    rng = np.random.default_rng(seed)
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    v = v + 0.01 * rng.standard_normal(v.shape).astype(np.float32) + np.float32(1.2345678)
    f = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])  # outward winding
    c = rng.random((4, 3)).astype(np.float32) if colors else None
    return Mesh(torch.from_numpy(v), torch.from_numpy(f),
                None if c is None else torch.from_numpy(c))


def random_similarity(seed=0, scale=2.5, reflect=False):
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    if reflect:
        q[:, 0] *= -1
    m = np.eye(4)
    m[:3, :3] = scale * q
    m[:3, 3] = rng.standard_normal(3)
    return m


@pytest.mark.parametrize("ext", ["ply", "obj"])
def test_round_trip_with_colours(tmp_path, ext):
    mesh = tetra_mesh()
    path = save_mesh(tmp_path / "deep" / "folder" / f"m.{ext}", mesh)  # parents are created
    assert path.is_file()
    back = load_mesh(path)
    assert torch.equal(back.vertices, mesh.vertices)  # float32 exact in both formats
    assert torch.equal(back.faces, mesh.faces)
    assert back.vertex_colors is not None
    assert (back.vertex_colors - mesh.vertex_colors).abs().max() <= 0.5 / 255 + 1e-6


def test_ply_is_binary_with_uchar_colours(tmp_path):
    path = save_mesh(tmp_path / "m.ply", tetra_mesh())
    data = path.read_bytes()
    header = data[: data.index(b"end_header\n")].decode("ascii")
    assert "format binary_little_endian 1.0" in header
    assert "property uchar red" in header and "element face 4" in header
    # header + 4 vertices x (3 float + 3 uchar) + 4 faces x (1 uchar + 3 int)
    assert len(data) == len(header) + len("end_header\n") + 4 * 15 + 4 * 13


def test_obj_colours_are_extra_floats(tmp_path):
    mesh = tetra_mesh()
    path = save_mesh(tmp_path / "m.obj", mesh)
    v_lines = [ln.split() for ln in path.read_text().splitlines() if ln.startswith("v ")]
    f_lines = [ln.split() for ln in path.read_text().splitlines() if ln.startswith("f ")]
    assert len(v_lines) == 4 and all(len(ln) == 7 for ln in v_lines)
    rgb = np.array([[float(x) for x in ln[4:]] for ln in v_lines])
    assert np.allclose(rgb, mesh.vertex_colors.numpy(), atol=1e-5)
    assert [int(x) for x in f_lines[0][1:]] == (mesh.faces[0] + 1).tolist()  # 1-based


@pytest.mark.parametrize("ext", ["ply", "obj"])
def test_round_trip_without_colours(tmp_path, ext):
    mesh = tetra_mesh(colors=False)
    back = load_mesh(save_mesh(tmp_path / f"m.{ext}", mesh))
    assert back.vertex_colors is None
    assert torch.equal(back.vertices, mesh.vertices) and torch.equal(back.faces, mesh.faces)


def test_unknown_extension_names_path(tmp_path):
    with pytest.raises(ValueError, match=r"m\.xyz.*supported"):
        save_mesh(tmp_path / "m.xyz", tetra_mesh())


def test_unwritable_path_error_names_path(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    target = blocker / "sub" / "mesh.ply"
    with pytest.raises(OSError) as info:
        save_mesh(target, tetra_mesh())
    assert str(target) in str(info.value)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root ignores directory permissions")
def test_read_only_folder_error_names_path(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OSError) as info:
            save_mesh(ro / "mesh.obj", tetra_mesh())
        assert str(ro / "mesh.obj") in str(info.value)
    finally:
        ro.chmod(0o700)


def test_load_missing_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.ply"):
        load_mesh(tmp_path / "nothing.ply")


def test_similarity_round_trip_and_distances():
    rng = np.random.default_rng(1)
    pts = rng.standard_normal((50, 3))
    m = random_similarity(seed=2, scale=2.5)
    out = apply_similarity(pts, m)
    # distances scale by s, and the inverse maps back
    d0 = np.linalg.norm(pts[1:] - pts[:-1], axis=1)
    d1 = np.linalg.norm(out[1:] - out[:-1], axis=1)
    assert np.allclose(d1, 2.5 * d0)
    assert np.allclose(apply_similarity(out, np.linalg.inv(m)), pts, atol=1e-12)
    # the translation goes where a homogeneous product says
    assert np.allclose(out[0], (m @ np.append(pts[0], 1.0))[:3])
    # tensors in, tensors out (dtype kept)
    t = apply_similarity(torch.from_numpy(pts).float(), torch.from_numpy(m))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    assert np.allclose(t.numpy(), out, atol=1e-5)
    assert check_similarity(m) == pytest.approx(2.5)


def test_mesh_transformed_round_trip_and_reflection():
    mesh = tetra_mesh()
    m = random_similarity(seed=3, scale=0.7)
    moved = mesh.transformed(m)
    assert mesh.vertices.data_ptr() != moved.vertices.data_ptr()  # a new mesh
    back = moved.transformed(np.linalg.inv(m))
    assert torch.allclose(back.vertices, mesh.vertices, atol=1e-5)
    assert torch.equal(back.faces, mesh.faces)
    assert torch.equal(back.vertex_colors, mesh.vertex_colors)
    vol = mesh.to_trimesh().volume
    assert vol > 0
    assert moved.to_trimesh().volume == pytest.approx(0.7**3 * vol, rel=1e-4)
    # a mirror keeps the normals outward by reversing the winding
    mirrored = mesh.transformed(random_similarity(seed=3, scale=1.0, reflect=True))
    assert mirrored.to_trimesh().volume == pytest.approx(vol, rel=1e-4)


def test_non_similarity_rejected():
    m = np.diag([1.0, 2.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="similarity"):
        apply_similarity(np.zeros((2, 3)), m)
    with pytest.raises(ValueError, match="last row"):
        apply_similarity(np.zeros((2, 3)), random_similarity().T)  # a transposed matrix
    assert np.allclose(apply_similarity(np.ones((1, 3)), m, check=False), [[1.0, 2.0, 1.0]])


# ------------------------------------------------------------------------------------------
# textured meshes: OBJ + MTL + PNG and binary glTF
# ------------------------------------------------------------------------------------------
def textured_tetra(seed=0):
    """A tetrahedron with its own UVs per vertex and a 6x5 texture (not square: rows and columns
    cannot be swapped unnoticed)."""
    rng = np.random.default_rng(seed)
    mesh = tetra_mesh(colors=False, seed=seed)
    uvs = rng.uniform(0.05, 0.95, size=(4, 2)).astype(np.float32)
    texture = rng.integers(0, 256, size=(5, 6, 3), dtype=np.uint8)
    return Mesh(mesh.vertices, mesh.faces, uvs=uvs, texture=texture)


def glb_json_and_bin(path):
    import json
    import struct

    data = path.read_bytes()
    assert data[:4] == b"glTF"
    n_json = struct.unpack("<I", data[12:16])[0]
    tree = json.loads(data[20:20 + n_json])
    offset = 20 + n_json
    n_bin = struct.unpack("<I", data[offset:offset + 4])[0]
    return tree, data[offset + 8:offset + 8 + n_bin]


def glb_accessor(tree, blob, index):
    acc = tree["accessors"][index]
    view = tree["bufferViews"][acc["bufferView"]]
    start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    width = {"VEC2": 2, "VEC3": 3, "VEC4": 4, "SCALAR": 1}[acc["type"]]
    dtype = {5126: np.float32, 5125: np.uint32, 5123: np.uint16, 5121: np.uint8}[
        acc["componentType"]]
    return np.frombuffer(blob, dtype=dtype, count=acc["count"] * width, offset=start).reshape(
        acc["count"], width)


def test_glb_with_texture_round_trip_and_gltf_v_axis(tmp_path):
    import trimesh

    mesh = textured_tetra()
    path = save_mesh(tmp_path / "m.glb", mesh)
    # trimesh reads it back as a textured mesh: same geometry, UVs and texture
    scene = trimesh.load(str(path), process=False)
    (tm,) = scene.geometry.values()
    assert tm.visual.kind == "texture"
    image = tm.visual.material.baseColorTexture
    assert image.size == (6, 5)
    assert np.array_equal(np.asarray(image.convert("RGB")), mesh.texture_uint8())
    assert np.allclose(tm.visual.uv, mesh.uvs.numpy(), atol=1e-6)
    back = load_mesh(path)
    assert torch.equal(back.vertices, mesh.vertices) and torch.equal(back.faces, mesh.faces)
    assert torch.allclose(back.uvs, mesh.uvs, atol=1e-6)
    # the file itself holds glTF's convention: v measured down from the image's top
    tree, blob = glb_json_and_bin(path)
    prim = tree["meshes"][0]["primitives"][0]
    uv_file = glb_accessor(tree, blob, prim["attributes"]["TEXCOORD_0"])
    assert np.allclose(uv_file[:, 0], mesh.uvs[:, 0].numpy(), atol=1e-6)
    assert np.allclose(uv_file[:, 1], 1.0 - mesh.uvs[:, 1].numpy(), atol=1e-6)
    material = tree["materials"][prim["material"]]
    assert material["pbrMetallicRoughness"]["metallicFactor"] == 0.0
    assert "KHR_materials_unlit" in material["extensions"]
    assert "KHR_materials_unlit" in tree["extensionsUsed"]


def test_glb_with_vertex_colours(tmp_path):
    mesh = tetra_mesh()
    path = save_mesh(tmp_path / "m.glb", mesh)
    tree, blob = glb_json_and_bin(path)
    prim = tree["meshes"][0]["primitives"][0]
    assert "COLOR_0" in prim["attributes"] and "TEXCOORD_0" not in prim["attributes"]
    back = load_mesh(path)
    assert back.vertex_colors is not None
    assert (back.vertex_colors - mesh.vertex_colors).abs().max() <= 0.5 / 255 + 1e-6
    plain = save_mesh(tmp_path / "lit.glb", mesh, unlit=False)
    assert "extensionsUsed" not in glb_json_and_bin(plain)[0]


def test_obj_mtl_png_with_texture(tmp_path):
    import imageio.v3 as iio
    import trimesh

    mesh = textured_tetra(seed=1)
    path = save_mesh(tmp_path / "out" / "scan.obj", mesh)
    assert sorted(p.name for p in path.parent.iterdir()) == ["scan.mtl", "scan.obj", "scan.png"]
    assert np.array_equal(iio.imread(path.parent / "scan.png")[..., :3], mesh.texture_uint8())
    mtl = (path.parent / "scan.mtl").read_text()
    assert "map_Kd scan.png" in mtl and "Kd 1.0" in mtl
    lines = path.read_text().splitlines()
    assert "mtllib scan.mtl" in lines
    # OBJ's v points up like ours: vt lines are the UVs as they are
    vt = np.array([[float(x) for x in ln.split()[1:3]] for ln in lines if ln.startswith("vt ")])
    assert np.allclose(vt, mesh.uvs.numpy(), atol=1e-6)
    f = [ln.split()[1:] for ln in lines if ln.startswith("f ")]
    assert f[0] == [f"{i + 1}/{i + 1}" for i in mesh.faces[0].tolist()]
    tm = trimesh.load(str(path), process=False, maintain_order=True)
    assert tm.visual.kind == "texture" and tm.visual.material.image.size == (6, 5)
    back = load_mesh(path)
    assert torch.allclose(back.vertices, mesh.vertices, atol=1e-6)
    assert torch.allclose(back.uvs, mesh.uvs, atol=1e-6)
    assert np.array_equal(back.texture_uint8(), mesh.texture_uint8())


def test_textured_mesh_checks():
    mesh = tetra_mesh(colors=False)
    with pytest.raises(ValueError, match="come together"):
        Mesh(mesh.vertices, mesh.faces, uvs=torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"uvs must be \[V, 2\] with V=4"):
        Mesh(mesh.vertices, mesh.faces, uvs=torch.zeros(3, 2), texture=torch.zeros(2, 2, 3))
    with pytest.raises(ValueError, match="texture must be an"):
        Mesh(mesh.vertices, mesh.faces, uvs=torch.zeros(4, 2), texture=torch.zeros(2, 2))
