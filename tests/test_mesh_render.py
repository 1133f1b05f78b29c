"""CPU rendering from pinhole cameras (checked against analytic silhouettes and colours), the
texture's orientation through files, the turntable preview and the TensorBoard helper."""
import math

import numpy as np
import pytest
import torch
import trimesh

from utils.mesh import (
    Mesh,
    MeshRenderer,
    add_mesh_to_tensorboard,
    bake_texture,
    load_mesh,
    look_at,
    render_mesh,
    save_mesh,
    save_turntable,
)


def sphere(radius=0.5, subdivisions=4, center=(0.0, 0.0, 0.0)):
    tm = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return Mesh(np.asarray(tm.vertices + np.asarray(center), dtype=np.float32), tm.faces)


def color_fn(points, normals=None):
    return (torch.sin(3.0 * points) + 1.0) / 2.0


def camera_rays(c2w, k, width, height):
    """World rays through pixel centres, built here independently of the renderer."""
    fx, fy, cx, cy = k
    i, j = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    d = np.stack([(j - cx) / fx, (i - cy) / fy, np.ones_like(i)], -1) @ np.asarray(c2w)[:3, :3].T
    return np.asarray(c2w)[:3, 3], d  # z-depth t puts the point at o + t * d


def test_silhouette_of_a_sphere_matches_projection():
    r, dist, size = 0.5, 3.0, 96
    c2w = look_at([0.0, -dist, 0.0], [0.0, 0.0, 0.0])
    k = [80.0, 80.0, 40.0, 52.0]  # an off-centre principal point
    out = render_mesh(sphere(r, 5), c2w, k, size, size)
    mask = out.mask.numpy()
    # the silhouette is a disc of radius f r / sqrt(d^2 - r^2) around the principal point
    radius_px = 80.0 * r / math.sqrt(dist**2 - r**2)
    assert mask.sum() == pytest.approx(math.pi * radius_px**2, rel=0.03)
    i, j = np.nonzero(mask)
    assert (j + 0.5).mean() == pytest.approx(40.0, abs=0.1)
    assert (i + 0.5).mean() == pytest.approx(52.0, abs=0.1)
    # z-depth of the centre pixel: the sphere's near point
    assert float(out.depth[52, 40]) == pytest.approx(dist - r, abs=0.01)


def test_unlit_colours_are_the_colours_at_the_hit_points():
    mesh = sphere(0.5, 5)
    coloured = Mesh(mesh.vertices, mesh.faces, color_fn(mesh.vertices))
    c2w, k, w, h = look_at([1.5, -2.0, 1.0], [0.0, 0.0, 0.0]), [90.0, 90.0, 32.0, 32.0], 64, 64
    out = render_mesh(coloured, c2w, k, w, h, background=(1.0, 0.0, 1.0))
    o, d = camera_rays(c2w, k, w, h)
    hit = torch.from_numpy(o + out.depth.numpy()[..., None] * d).float()
    m = out.mask
    assert m.sum() > 500
    assert (out.rgb[m] - color_fn(hit[m])).abs().max() < 0.01
    assert torch.equal(out.rgb[~m], torch.tensor([1.0, 0.0, 1.0]).expand(int((~m).sum()), 3))
    assert (hit[m].norm(dim=-1) - 0.5).abs().max() < 0.002  # hits lie on the sphere


def test_textured_and_vertex_coloured_renders_agree(tmp_path):
    mesh = sphere(0.5, 4)
    baked = bake_texture(mesh, color_fn, texture_size=256)
    coloured = Mesh(mesh.vertices, mesh.faces, color_fn(mesh.vertices))
    renderer = MeshRenderer(baked)
    for eye in ([0.0, -2.0, 0.5], [2.0, 1.0, -1.0]):
        c2w, k = look_at(eye, [0.0, 0.0, 0.0]), [70.0, 70.0, 32.0, 32.0]
        a = renderer.render(c2w, k, 64, 64)
        b = render_mesh(coloured, c2w, k, 64, 64)
        assert torch.equal(a.mask, b.mask)
        diff = (a.rgb - b.rgb)[a.mask].abs()
        assert diff.mean() < 0.005 and diff.max() < 0.05
    # the GLB written and read back renders the same
    back = load_mesh(save_mesh(tmp_path / "baked.glb", baked))
    c = render_mesh(back, c2w, k, 64, 64)
    assert (c.rgb - a.rgb)[a.mask].abs().max() <= 1.0 / 255 + 1e-6


@pytest.mark.parametrize("ext", ["glb", "obj"])
def test_texture_orientation_survives_files(tmp_path, ext):
    """A square whose texture is red on the top half of the image (v > 0.5) and blue below,
    with v growing along +y: seen from above with +y up in the image, red is at the top."""
    v = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], dtype=np.float32)
    f = np.array([[0, 1, 2], [0, 2, 3]])
    uv = (v[:, :2] + 1.0) / 2.0
    tex = np.zeros((8, 8, 3), dtype=np.uint8)
    tex[:4] = [255, 0, 0]  # image rows 0-3: the top, v in (0.5, 1]
    tex[4:] = [0, 0, 255]
    quad = Mesh(v, f, uvs=uv, texture=tex)
    back = load_mesh(save_mesh(tmp_path / f"quad.{ext}", quad))
    c2w = look_at([0.0, 0.0, 3.0], [0.0, 0.0, 0.0], up=[0.0, 1.0, 0.0])
    for m in (quad, back):
        img = render_mesh(m, c2w, [40.0, 40.0, 32.0, 32.0], 64, 64).rgb
        assert torch.allclose(img[22, 32], torch.tensor([1.0, 0.0, 0.0]))  # above the centre
        assert torch.allclose(img[42, 32], torch.tensor([0.0, 0.0, 1.0]))  # below it


def test_lambert_shading_is_brightest_facing_the_camera():
    c2w, k = look_at([0.0, -3.0, 0.0], [0.0, 0.0, 0.0]), [60.0, 60.0, 32.0, 32.0]
    out = render_mesh(sphere(0.8, 4), c2w, k, 64, 64, shading="lambert")
    grey = out.rgb[..., 0]
    assert grey[32, 32] > 0.78 and grey[32, 32] > grey[32, 32 + 14] > grey[32, 32 + 16]


def test_render_errors():
    m = sphere(0.5, 1)
    c2w, k = look_at([0.0, -3.0, 0.0], [0.0, 0.0, 0.0]), [60.0, 60.0, 32.0, 32.0]
    with pytest.raises(ValueError, match="width.*0"):
        render_mesh(m, c2w, k, 0, 64)
    with pytest.raises(ValueError, match="intrinsics"):
        render_mesh(m, c2w, [60.0, 32.0, 32.0], 64, 64)
    with pytest.raises(ValueError, match="shading.*'phong'"):
        render_mesh(m, c2w, k, 64, 64, shading="phong")
    with pytest.raises(ValueError, match="empty mesh"):
        MeshRenderer(Mesh(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.long)))


def test_turntable_png_and_mp4(tmp_path):
    import imageio.v3 as iio

    two = trimesh.util.concatenate([trimesh.creation.icosphere(3, 0.4),
                                    trimesh.creation.box([0.3, 0.3, 0.3]).apply_translation(
                                        [0.8, 0.0, 0.0])])
    mesh = Mesh.from_trimesh(two)
    frames = save_turntable(mesh, tmp_path / "t.png", tmp_path / "t.mp4", n_frames=8,
                            grid_views=4, columns=2, size=48)
    assert len(frames) == 8 and frames[0].shape == (48, 48, 3)
    grid = iio.imread(tmp_path / "t.png")
    assert grid.shape[:2] == (2 * 48 + 2, 2 * 48 + 2)
    assert (tmp_path / "t.mp4").stat().st_size > 1000
    # the object is in every frame, framed inside the image (white border all around)
    for f in frames:
        dark = (f < 200).any(-1)
        assert dark.sum() > 100
        assert not dark[0].any() and not dark[-1].any() and not dark[:, 0].any()
    # the views differ (the box goes around the sphere)
    assert np.abs(frames[0].astype(int) - frames[2].astype(int)).mean() > 5


class RecordingWriter:
    def __init__(self):
        self.calls = []

    def add_mesh(self, tag, vertices, colors=None, faces=None, global_step=None, **kw):
        self.calls.append(dict(tag=tag, vertices=vertices, colors=colors, faces=faces,
                               step=global_step))


def test_tensorboard_mesh_logging(tmp_path):
    mesh = sphere(0.5, 4)  # 5120 faces
    coloured = Mesh(mesh.vertices, mesh.faces, color_fn(mesh.vertices))
    writer = RecordingWriter()
    add_mesh_to_tensorboard(writer, "mesh/full", coloured, global_step=3)
    add_mesh_to_tensorboard(writer, "mesh/small", coloured, max_faces=1000)
    full, small = writer.calls
    assert full["vertices"].shape == (1, mesh.num_vertices, 3) and full["step"] == 3
    assert full["colors"].dtype == torch.uint8 and full["faces"].shape == (1, 5120, 3)
    assert torch.equal(full["colors"][0], (color_fn(mesh.vertices) * 255 + 0.5).to(torch.uint8))
    assert 990 <= small["faces"].shape[1] <= 1000 and small["colors"].shape[1] == \
        small["vertices"].shape[1]
    # a textured mesh logs the texture's colours at the vertices
    baked = bake_texture(Mesh(mesh.vertices, mesh.faces), color_fn, texture_size=128)
    logged = add_mesh_to_tensorboard(writer, "mesh/baked", baked)
    assert (logged.vertex_colors - color_fn(logged.vertices)).abs().max() < 0.03
    # and a real SummaryWriter takes it
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(tmp_path / "tb") as tb:
        add_mesh_to_tensorboard(tb, "mesh", coloured, global_step=0, max_faces=500)
    assert any((tmp_path / "tb").iterdir())
