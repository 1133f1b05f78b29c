"""Decimation: face budget met, shape and vertex colours kept."""
import math

import numpy as np
import pytest
import torch
import trimesh

from utils.mesh import Mesh, decimate


def coloured_sphere(radius=0.8, subdivisions=5):
    """An icosphere (20 480 faces) coloured by an affine function of position."""
    tm = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    v = torch.as_tensor(np.asarray(tm.vertices), dtype=torch.float32)
    return Mesh(v, tm.faces, color_of(v))


def color_of(points):
    return (points / 0.8 + 1.0) / 2.0


@pytest.mark.parametrize("target", [5000, 1000, 200])
def test_target_face_count_shape_and_colours(target):
    mesh = coloured_sphere()
    out = decimate(mesh, target_faces=target)
    assert target - max(2, 0.01 * target) <= out.num_faces <= target
    tm = out.to_trimesh()
    assert tm.is_watertight
    # still the sphere: radius and volume (a coarse polyhedron inscribed in it: a little less)
    r = out.vertices.double().norm(dim=-1)
    assert (r - 0.8).abs().max() < 0.03
    assert 0.97 < tm.volume / (4 / 3 * math.pi * 0.8**3) <= 1.0
    # colours came from the nearest input vertex: close to the colour function at the new vertex
    assert out.vertex_colors.shape == (out.num_vertices, 3)
    err = (out.vertex_colors - color_of(out.vertices)).abs().max()
    spacing = 0.8 * 0.06  # edge length of the input sphere: the colour moves by at most that
    assert err < spacing / 0.8


def test_ratio_and_no_colours():
    mesh = coloured_sphere(subdivisions=4)  # 5120 faces
    out = decimate(Mesh(mesh.vertices, mesh.faces), ratio=0.25)
    assert 1270 <= out.num_faces <= 1280 and out.vertex_colors is None


def test_bad_targets():
    mesh = coloured_sphere(subdivisions=2)  # 320 faces
    with pytest.raises(ValueError, match="target_faces=400 is more than the mesh's 320"):
        decimate(mesh, target_faces=400)
    with pytest.raises(ValueError, match="target_faces.*0"):
        decimate(mesh, target_faces=0)
    with pytest.raises(ValueError, match="ratio.*1.5"):
        decimate(mesh, ratio=1.5)
    with pytest.raises(ValueError, match="exactly one"):
        decimate(mesh)
    with pytest.raises(ValueError, match="empty mesh"):
        decimate(Mesh(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.long)), target_faces=1)
    textured = Mesh(mesh.vertices, mesh.faces, uvs=torch.zeros(mesh.num_vertices, 2),
                    texture=torch.zeros(2, 2, 3))
    with pytest.raises(ValueError, match="before UV unwrapping"):
        decimate(textured, ratio=0.5)


def test_large_meshes_are_decimated_piece_by_piece(monkeypatch):
    import fast_simplification

    mesh = coloured_sphere()  # 20 480 faces
    calls = []
    real = fast_simplification.simplify

    def counting(points, faces, **kw):
        calls.append(len(faces))
        return real(points, faces, **kw)

    monkeypatch.setattr(fast_simplification, "simplify", counting)
    out = decimate(mesh, target_faces=1000, max_faces_per_call=6000)
    # 4 pieces of 5120 faces, then one call on the joined pieces (about twice the target)
    assert calls[:4] == [5120] * 4 and len(calls) == 5 and calls[4] < 6000
    assert 990 <= out.num_faces <= 1000
    assert out.to_trimesh().is_watertight  # the pieces were welded back along their cuts
    assert (out.vertices.double().norm(dim=-1) - 0.8).abs().max() < 0.03
    assert (out.vertex_colors - color_of(out.vertices)).abs().max() < 0.06
