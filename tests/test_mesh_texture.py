"""UV unwrapping and texture baking: UVs in the unit square, baked colours that read back (by
bilinear lookup at surface points) as the colour function there, normals handed to it outward."""
import numpy as np
import pytest
import torch
import trimesh

from utils.mesh import (
    Mesh,
    bake_texture,
    dilate_texture,
    rasterize_uv,
    sample_texture,
    unwrap_uv,
)


def sphere(radius=0.7, subdivisions=3):
    tm = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)  # 1280 faces
    return Mesh(np.asarray(tm.vertices, dtype=np.float32), tm.faces)


def smooth_color(points, normals=None):
    return (torch.sin(3.0 * points) + 1.0) / 2.0


def surface_points_with_uv(mesh: Mesh, n: int, seed: int = 0):
    """Area-uniform points on a textured mesh: (points [N, 3], uvs [N, 2]) with the same
    barycentric weights (the reference is built here, not by the baker)."""
    rng = np.random.default_rng(seed)
    v, f = mesh.vertices.double().numpy(), mesh.faces.numpy()
    tri = v[f]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    face = rng.choice(len(f), size=n, p=area / area.sum())
    s, r2 = np.sqrt(rng.random(n)), rng.random(n)
    w = np.stack([1 - s, s * (1 - r2), s * r2], axis=1)
    pts = (tri[face] * w[..., None]).sum(1)
    uv = (mesh.uvs.double().numpy()[f[face]] * w[..., None]).sum(1)
    return torch.from_numpy(pts).float(), torch.from_numpy(uv).float()


def test_unwrap_uvs_in_unit_square_and_faces_kept():
    mesh = sphere()
    atlas = unwrap_uv(mesh, texture_size=256, padding=2)
    assert atlas.uvs.min() >= 0.0 and atlas.uvs.max() <= 1.0
    assert atlas.faces.shape == (mesh.num_faces, 3)
    assert len(atlas.vertex_map) >= mesh.num_vertices  # seams repeat vertices
    # the same triangles, by position
    v = mesh.vertices.numpy()
    assert np.array_equal(v[atlas.vertex_map][atlas.faces], v[mesh.faces.numpy()])


def test_baked_texture_reads_back_as_the_colour_function():
    mesh = sphere()
    baked = bake_texture(mesh, smooth_color, texture_size=256, padding=4)
    assert baked.texture.shape == (256, 256, 3) and baked.uvs.shape == (baked.num_vertices, 2)
    assert baked.uvs.min() >= 0.0 and baked.uvs.max() <= 1.0
    assert baked.vertex_colors is None and baked.num_faces == mesh.num_faces
    pts, uv = surface_points_with_uv(baked, 5000)
    got = sample_texture(baked.texture, uv)
    err = (got - smooth_color(pts)).abs().max(dim=1).values
    # a texel is ~1/256 of the atlas, i.e. ~0.01 scene units; the colour's slope is <= 1.5
    assert err.mean() < 0.005 and torch.quantile(err, 0.99) < 0.02 and err.max() < 0.05
    # a texture of another function (or a v flip) would be far off
    flipped = sample_texture(baked.texture, torch.stack([uv[:, 0], 1 - uv[:, 1]], -1))
    assert (flipped - smooth_color(pts)).abs().max(dim=1).values.mean() > 0.1


def test_colour_fn_gets_outward_unit_normals():
    mesh = sphere(subdivisions=4)
    baked = bake_texture(mesh, lambda p, n: (n + 1.0) / 2.0, texture_size=256)
    pts, uv = surface_points_with_uv(baked, 3000, seed=1)
    normal = 2.0 * sample_texture(baked.texture, uv) - 1.0
    expected = pts / pts.norm(dim=-1, keepdim=True)  # a sphere's outward normal
    assert (normal - expected).norm(dim=-1).mean() < 0.02


def test_bilinear_lookup_matches_opencv():
    import cv2

    rng = np.random.default_rng(0)
    tex = rng.random((13, 17, 3)).astype(np.float32)
    uv = rng.uniform(0.05, 0.95, size=(500, 2)).astype(np.float32)
    got = sample_texture(torch.from_numpy(tex), torch.from_numpy(uv)).numpy()
    # OpenCV's remap: pixel x = u W - 0.5, y = (1 - v) H - 0.5 (texel centres at integers)
    mx = (uv[:, 0] * 17 - 0.5).reshape(1, -1)
    my = ((1 - uv[:, 1]) * 13 - 0.5).reshape(1, -1)
    ref = cv2.remap(tex, mx, my, cv2.INTER_LINEAR)[0]
    assert np.abs(got - ref).max() < 1.5 / 32  # OpenCV quantises weights to 1/32
    # at a texel centre the lookup is exact
    centre = torch.tensor([[(5 + 0.5) / 17, 1 - (7 + 0.5) / 13]])
    assert torch.allclose(sample_texture(torch.from_numpy(tex), centre)[0],
                          torch.from_numpy(tex[7, 5]), atol=1e-6)


def test_rasterize_uv_against_brute_force():
    rng = np.random.default_rng(3)
    uvs = torch.from_numpy(rng.random((30, 2)))
    faces = torch.from_numpy(rng.integers(0, 30, size=(12, 3)))
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2])
                  & (faces[:, 0] != faces[:, 2])]
    w, h = 23, 19
    face, bary, inside = rasterize_uv(uvs, faces, w, h, ring=0.0)
    # brute force: is each texel centre on the inner side of all three edges of a triangle?
    u = uvs.numpy()
    px = np.stack([u[:, 0] * w, (1 - u[:, 1]) * h], -1)
    jj, ii = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    p = np.stack([jj, ii], -1).reshape(-1, 2)
    covered = np.zeros(len(p), dtype=bool)
    for a, b, c in px[faces.numpy()]:
        def side(u, v):
            return (v[0] - u[0]) * (p[:, 1] - u[1]) - (v[1] - u[1]) * (p[:, 0] - u[0])
        s1, s2, s3 = side(a, b), side(b, c), side(c, a)
        covered |= ((s1 >= 0) & (s2 >= 0) & (s3 >= 0)) | ((s1 <= 0) & (s2 <= 0) & (s3 <= 0))
    assert np.array_equal(inside.numpy().reshape(-1), covered)
    assert np.array_equal((face >= 0).numpy().reshape(-1), covered)
    # barycentric coordinates reproduce the texel centre
    k = np.nonzero(covered)[0]
    f = face.reshape(-1)[k].numpy()
    recon = (px[faces.numpy()[f]] * bary.reshape(-1, 3)[k].numpy()[..., None]).sum(1)
    assert np.abs(recon - p[k]).max() < 1e-4


def test_dilation_spreads_colours_and_fills_the_rest():
    img = np.zeros((9, 9, 3), dtype=np.float32)
    mask = np.zeros((9, 9), dtype=bool)
    img[4, 4], mask[4, 4] = [1.0, 0.5, 0.25], True
    img[4, 6], mask[4, 6] = [0.0, 0.5, 0.75], True
    out = dilate_texture(img, mask, texels=1)
    assert np.allclose(out[4, 5], [0.5, 0.5, 0.5])  # between the two: their mean
    assert np.allclose(out[3, 3], [1.0, 0.5, 0.25])  # next to the first only
    assert np.allclose(out[0, 0], [0.5, 0.5, 0.5])  # beyond the band: the mean colour
    assert np.allclose(out[4, 4], img[4, 4]) and np.allclose(out[4, 6], img[4, 6])


def test_bad_input():
    mesh = sphere(subdivisions=1)
    for bad in (0, -4, 12.5, "big"):
        with pytest.raises(ValueError, match=f"texture_size.*{bad!r}"):
            bake_texture(mesh, smooth_color, texture_size=bad)
    with pytest.raises(ValueError, match="empty mesh"):
        bake_texture(Mesh(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.long)), smooth_color)
    with pytest.raises(ValueError, match=r"rgb \[N, 3\]"):
        bake_texture(mesh, lambda p, n: p[:, :2], texture_size=32)
