"""Mesh clean-up: small pieces dropped (counted against pieces built separately), holes filled."""
import numpy as np
import pytest
import torch
import trimesh

from utils.mesh import Mesh, clean_mesh, component_labels, remove_small_components
from utils.mesh.cleanup import fill_small_holes


def icosphere(center, radius, subdivisions):
    tm = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return Mesh(np.asarray(tm.vertices + np.asarray(center), dtype=np.float32), tm.faces)


def concat(*meshes, colors=True):
    """One Mesh holding the given pieces; vertex colour = the piece's index / 10 (red)."""
    v, f, c, offset = [], [], [], 0
    for k, m in enumerate(meshes):
        v.append(m.vertices)
        f.append(m.faces + offset)
        c.append(torch.tensor([k / 10, 0.5, 0.5]).expand(m.num_vertices, 3))
        offset += m.num_vertices
    return Mesh(torch.cat(v), torch.cat(f), torch.cat(c) if colors else None)


@pytest.fixture
def pieces():
    big = icosphere([0, 0, 0], 1.0, 3)  # 1280 faces
    mid = icosphere([3, 0, 0], 0.5, 2)  # 320 faces
    tiny = [icosphere([0, 3 + k, 0], 0.05, 0) for k in range(3)]  # 20 faces each
    # shuffle the order so "largest" cannot mean "first"
    return concat(tiny[0], mid, tiny[1], big, tiny[2]), big, mid


def test_keep_largest_piece(pieces):
    mesh, big, _ = pieces
    out, report = remove_small_components(mesh)
    assert report.components == 5 and report.components_removed == 4
    assert report.faces_removed == mesh.num_faces - big.num_faces == 320 + 60
    assert report.vertices_removed == mesh.num_vertices - big.num_vertices
    assert out.num_faces == big.num_faces and out.num_vertices == big.num_vertices
    # the kept piece is the big sphere: same vertices (order kept), its colour, and closed
    assert torch.equal(out.vertices, big.vertices)
    assert torch.allclose(out.vertex_colors[:, 0], torch.full((big.num_vertices,), 0.3))
    assert out.to_trimesh().is_watertight
    assert "removed 4 of 5 pieces" in str(report)


def test_keep_pieces_above_a_size(pieces):
    mesh, big, mid = pieces
    out, report = remove_small_components(mesh, min_faces=100)
    assert report.components_removed == 3 and out.num_faces == big.num_faces + mid.num_faces
    labels, n = component_labels(out)
    assert n == 2 and sorted(np.bincount(labels).tolist()) == [320, 1280]
    # 20 / 1700 = 1.2% of the faces: a 1% floor keeps the tiny ones, 2% does not
    assert remove_small_components(mesh, min_fraction=0.01)[1].components_removed == 0
    assert remove_small_components(mesh, min_fraction=0.02)[1].components_removed == 3
    # a size no piece reaches still keeps the largest
    out, report = remove_small_components(mesh, min_faces=10**6)
    assert out.num_faces == big.num_faces and report.components_removed == 4


def test_textured_pieces_connect_across_uv_seams():
    # split every vertex of a sphere per face (as UV seams do, maximally): still one piece
    sphere = icosphere([0, 0, 0], 1.0, 2)
    v = sphere.vertices[sphere.faces.reshape(-1)]
    f = torch.arange(len(v)).reshape(-1, 3)
    split = Mesh(v, f, uvs=torch.rand(len(v), 2), texture=torch.rand(4, 4, 3))
    assert component_labels(split)[1] == 1
    assert component_labels(Mesh(v, f))[1] == sphere.num_faces  # without UVs: one per face


def test_fill_small_holes():
    sphere = icosphere([0, 0, 0], 1.0, 2)
    keep = torch.ones(sphere.num_faces, dtype=torch.bool)
    keep[0] = False  # a triangular hole
    holed = sphere.select_faces(keep)
    assert not holed.to_trimesh().is_watertight
    filled, added, open_edges = fill_small_holes(holed)
    assert added == 1 and open_edges == 0
    tm = filled.to_trimesh()
    assert tm.is_watertight and tm.volume == pytest.approx(sphere.to_trimesh().volume, rel=1e-9)
    out, report = clean_mesh(holed, fill_holes=True)
    assert report.hole_faces_added == 1 and report.open_edges_left == 0


def test_bad_input():
    sphere = icosphere([0, 0, 0], 1.0, 1)
    with pytest.raises(ValueError, match="empty mesh"):
        remove_small_components(Mesh(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.long)))
    with pytest.raises(ValueError, match="min_faces.*-3"):
        remove_small_components(sphere, min_faces=-3)
    with pytest.raises(ValueError, match="min_fraction.*1.5"):
        remove_small_components(sphere, min_fraction=1.5)
