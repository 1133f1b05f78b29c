"""Mesh export of a model (systems/export.py): the full mesh with its vertex colours, clean-up,
decimation, the textured mesh and the preview, in the world frame, from an analytic stand-in
model whose surface and colours are known."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from systems.export import export_mesh
from utils.experiment import ExportConfig
from utils.mesh import load_mesh, sample_texture
from utils.registry import parse_config


class SphereModel(torch.nn.Module):
    """What export needs of a model: a sphere of radius 0.5 (an SDF) plus a floater, coloured by
    position, rgb = (p + 1) / 2 in the scene frame."""

    def __init__(self):
        super().__init__()
        self.cfg = SimpleNamespace(radius=1.0)
        self.register_buffer("aabb", torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]))
        self.colour_calls = []

    def isosurface_field(self, threshold):
        def sdf(p):
            sphere = p.norm(dim=-1) - 0.5
            floater = (p - torch.tensor([0.8, 0.8, 0.8])).norm(dim=-1) - 0.08
            return torch.minimum(sphere, floater)

        return sdf, threshold

    def known_empty_fn(self):
        return None

    def surface_colors(self, points, normals=None):
        self.colour_calls.append(normals is not None)
        return (points + 1.0) / 2.0


def export_config(**raw):
    return parse_config(ExportConfig, {"resolution": 48, "texture": {"size": 128, "max_faces": 1000},
                                       "preview": {"frames": 4, "size": 32}, **raw})


# a similarity: scale 2, a turn of 90 degrees about z, a shift
SCENE_TO_WORLD = torch.tensor([[0.0, -2.0, 0.0, 1.0], [2.0, 0.0, 0.0, 2.0], [0.0, 0.0, 2.0, 3.0], [0.0, 0.0, 0.0, 1.0]])


def to_scene(points):
    inverse = torch.linalg.inv(SCENE_TO_WORLD)
    return points @ inverse[:3, :3].T + inverse[:3, 3]


def test_export_writes_a_clean_coloured_mesh_a_textured_one_and_a_preview(tmp_path):
    model = SphereModel()
    out = export_mesh(model, export_config(), SCENE_TO_WORLD, tmp_path, "t")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["mesh_t.ply", "mesh_t_preview.mp4", "mesh_t_preview.png", "mesh_t_textured.glb",
                     "mesh_t_textured.mtl", "mesh_t_textured.obj", "mesh_t_textured.png"]
    assert [p.name for p in out.mesh_paths] == ["mesh_t.ply"] and out.preview_paths
    full = load_mesh(tmp_path / "mesh_t.ply")
    # the floater is gone; the sphere is in the world frame (radius 0.5 x 2 around the shift)
    scene = to_scene(full.vertices)
    radius = scene.norm(dim=-1)
    assert float((radius - 0.5).abs().max()) < 0.03
    assert float((full.vertices - torch.tensor([1.0, 2.0, 3.0])).norm(dim=-1).mean()) == pytest.approx(1.0, abs=0.03)
    # vertex colours are the model's colour at each vertex's scene position (PLY: 8 bits)
    assert torch.allclose(full.vertex_colors, (scene + 1.0) / 2.0, atol=1.5 / 255)
    # the textured mesh: at most texture.max_faces faces, UVs in [0, 1], and its texture holds the
    # colour of the surface where each vertex is
    textured = load_mesh(tmp_path / "mesh_t_textured.glb")
    assert 0 < textured.num_faces <= 1000
    assert float(textured.uvs.min()) >= 0.0 and float(textured.uvs.max()) <= 1.0
    sampled = sample_texture(textured.texture, textured.uvs)
    expected = (to_scene(textured.vertices) + 1.0) / 2.0
    assert float((sampled - expected).abs().mean()) < 0.01
    # colours were asked for with the mesh's normals (no gradient pass)
    assert model.colour_calls and all(model.colour_calls)


def test_export_options_turn_parts_off_and_keep_floaters(tmp_path):
    model = SphereModel()
    cfg = export_config(clean={"enabled": False}, texture={"enabled": False}, preview={"enabled": False},
                        formats=["ply", "obj"], world_coordinates=False)
    out = export_mesh(model, cfg, SCENE_TO_WORLD, tmp_path, "t")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mesh_t.obj", "mesh_t.ply"]
    assert not out.textured_paths and not out.preview_paths
    mesh = load_mesh(tmp_path / "mesh_t.ply")
    far = (mesh.vertices - torch.tensor([0.8, 0.8, 0.8])).norm(dim=-1) < 0.1
    assert bool(far.any())  # the floater stays without clean-up
    assert float((mesh.vertices[~far].norm(dim=-1) - 0.5).abs().max()) < 0.03  # in the scene frame


def test_export_decimates_the_full_mesh_when_asked(tmp_path):
    out = export_mesh(SphereModel(), export_config(max_faces=500, texture={"enabled": False},
                                                   preview={"enabled": False}), SCENE_TO_WORLD, tmp_path, "t")
    assert 0 < out.faces <= 500 and load_mesh(out.mesh_paths[0]).num_faces == out.faces


def test_preview_shows_the_scenes_up_direction_up(tmp_path, monkeypatch):
    import utils.mesh

    seen = {}

    def spy(mesh, up=(0.0, 0.0, 1.0), **kw):
        seen["up"] = tuple(up)
        return []

    monkeypatch.setattr(utils.mesh, "save_turntable", spy)
    export_mesh(SphereModel(), export_config(texture={"enabled": False}), SCENE_TO_WORLD, tmp_path, "t",
                up=(0.0, -1.0, 0.0))
    assert seen["up"] == (0.0, -1.0, 0.0)
