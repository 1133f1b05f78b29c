"""Marching cubes and isosurface extraction (one pass and block-wise), checked against analytic
surfaces (spheres), hand-computed cases and each other."""
import math
import sys
import types

import numpy as np
import pytest
import torch

import utils.backends as accelerators
import utils.mesh.backends as backends
from utils.mesh import (
    EmptySurfaceError,
    Mesh,
    NonFiniteFieldError,
    extract_isosurface,
    marching_cubes,
    torchmcubes_available,
)

BOUNDS = ([-1.0, -1.0, -1.0], [1.0, 1.0, 1.0])


def sphere_sdf(center, radius):
    c = torch.tensor(center, dtype=torch.float32)

    def f(p):
        return (p - c.to(p.device)).norm(dim=-1) - radius

    return f


def two_spheres(p):
    a = sphere_sdf([-0.3, -0.3, 0.2], 0.2)(p)
    b = sphere_sdf([0.25, 0.1, 0.0], 0.15)(p)
    return torch.minimum(a, b)


def hand_grid():
    """Only corner (0,0,0) is inside; crossings at 1/(1+3), 1/(1+1), 1/(1+0.25) along x, y, z."""
    v = torch.ones(2, 2, 2)
    v[0, 0, 0], v[1, 0, 0], v[0, 1, 0], v[0, 0, 1] = -1.0, 3.0, 1.0, 0.25
    expected = np.array([[0.25, 0, 0], [0, 0.5, 0], [0, 0, 0.8]])
    return v, expected


def check_hand_case(verts, faces):
    verts, faces = verts.cpu().double().numpy(), faces.cpu().numpy()
    assert faces.shape == (1, 3)
    got = verts[faces[0]]
    # same three points (any order)
    for e in hand_grid()[1]:
        assert np.min(np.linalg.norm(got - e, axis=1)) < 2e-4, (got, e)
    n = np.cross(got[1] - got[0], got[2] - got[0])
    assert np.dot(n, [1, 1, 1]) > 0  # points away from the inside corner


def max_nn_distance(a, b):
    """Symmetric largest nearest-neighbour distance between two vertex sets."""
    from scipy.spatial import cKDTree

    a, b = a.double().numpy(), b.double().numpy()
    return max(cKDTree(b).query(a)[0].max(), cKDTree(a).query(b)[0].max())


def sorted_rows(v):
    v = v.double().numpy()
    return v[np.lexsort(v.T[::-1])]


# ------------------------------------------------------------------------------------------
# marching_cubes
# ------------------------------------------------------------------------------------------
def test_marching_cubes_hand_case_pymcubes():
    v, _ = hand_grid()
    verts, faces = marching_cubes(v, 0.0, backend="pymcubes")
    assert verts.dtype == torch.float32 and faces.dtype == torch.int64
    check_hand_case(verts, faces)


def test_marching_cubes_no_crossing_is_empty():
    verts, faces = marching_cubes(torch.ones(3, 4, 5), 0.0, backend="pymcubes")
    assert verts.shape == (0, 3) and faces.shape == (0, 3)


@pytest.mark.skipif(not torchmcubes_available(), reason="torchmcubes is not installed")
def test_marching_cubes_hand_case_torchmcubes():
    v, _ = hand_grid()
    check_hand_case(*marching_cubes(v, 0.0, backend="torchmcubes"))
    if torch.cuda.is_available():
        check_hand_case(*marching_cubes(v.cuda(), 0.0, backend="torchmcubes"))


@pytest.mark.skipif(not torchmcubes_available(), reason="torchmcubes is not installed")
def test_backends_agree_on_sphere():
    x = torch.linspace(-1, 1, 24)
    grid = torch.stack(torch.meshgrid(x, x, x, indexing="ij"), -1)
    values = sphere_sdf([0.1, -0.2, 0.05], 0.6)(grid)
    outs = [marching_cubes(values, 0.0, backend=b) for b in ("pymcubes", "torchmcubes")]
    (v1, f1), (v2, f2) = outs
    assert v1.shape == v2.shape and f1.shape == f2.shape
    assert max_nn_distance(v1, v2) < 1e-4
    for v, f in outs:
        assert Mesh(v, f).to_trimesh().volume > 0  # outward on both


def test_torchmcubes_conversion_with_emulated_library(monkeypatch):
    """Emulate torchmcubes' output convention (vol read as [z][y][x], vertices written as
    (x, y, z), one vertex per triangle corner, tables outward in that mirrored frame) with
    PyMCubes, and check the wrapper turns it into PyMCubes' result."""
    import mcubes

    def fake(vol, thr):
        v, f = mcubes.marching_cubes(vol.numpy(), thr)  # index order, winding to lower values
        soup = torch.from_numpy(v[f.astype(np.int64).reshape(-1)][:, ::-1].copy()).float()
        # copies of one vertex made in neighbouring cells differ in their last bits
        soup = soup + 3e-5 * torch.randn(soup.shape, generator=torch.Generator().manual_seed(0))
        faces = torch.arange(soup.shape[0], dtype=torch.int32).reshape(-1, 3)
        return soup, faces

    stand_in = types.ModuleType("torchmcubes")
    stand_in.marching_cubes = fake
    monkeypatch.setitem(sys.modules, "torchmcubes", stand_in)
    accelerators.clear_cache()
    monkeypatch.setattr(accelerators, "_status", {})  # forgotten again when the test ends
    monkeypatch.setattr(accelerators, "_modules", {})
    assert torchmcubes_available()
    x = torch.linspace(-1, 1, 20)
    grid = torch.stack(torch.meshgrid(x, x, x, indexing="ij"), -1)
    values = sphere_sdf([0.1, -0.2, 0.05], 0.6)(grid)
    vt, ft = marching_cubes(values, 0.0, backend="torchmcubes")
    vp, fp = marching_cubes(values, 0.0, backend="pymcubes")
    assert vt.shape == vp.shape and ft.shape == fp.shape  # shared vertices merged
    assert max_nn_distance(vt, vp) < 1e-4
    mt = Mesh(vt, ft).to_trimesh()
    assert mt.is_watertight and mt.volume > 0
    check_hand_case(*marching_cubes(hand_grid()[0], 0.0, backend="torchmcubes"))


def test_outward_fraction_agrees_with_geometry():
    x = torch.linspace(-1, 1, 20)
    grid = torch.stack(torch.meshgrid(x, x, x, indexing="ij"), -1)
    values = sphere_sdf([0.0, 0.0, 0.0], 0.6)(grid)
    v, f = marching_cubes(values, 0.0, backend="pymcubes")
    assert backends._outward_fraction(v.double(), f, values) > 0.99
    assert backends._outward_fraction(v.double(), f[:, [0, 2, 1]], values) < 0.01


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        marching_cubes(torch.ones(2, 2, 2), 0.0, backend="nope")


# ------------------------------------------------------------------------------------------
# extract_isosurface
# ------------------------------------------------------------------------------------------
def test_sphere_accuracy_watertight_and_outward():
    res, radius = 64, 0.55
    spacing = 2.0 / (res - 1)
    mesh = extract_isosurface(sphere_sdf([0.0, 0.0, 0.0], radius), BOUNDS, res)
    assert isinstance(mesh, Mesh)
    assert mesh.vertices.dtype == torch.float32 and mesh.faces.dtype == torch.int64
    err = (mesh.vertices.double().norm(dim=-1) - radius).abs().max().item()
    assert err < 0.1 * spacing
    tm = mesh.to_trimesh()
    assert tm.is_watertight
    assert tm.volume == pytest.approx(4 / 3 * math.pi * radius**3, rel=0.01)
    # normals point outward: mean dot(normal, position) > 0, and so for (nearly) every face
    centres = mesh.vertices[mesh.faces].mean(1)
    dots = (mesh.face_normals() * centres).sum(-1)
    assert dots.mean() > 0 and (dots > 0).float().mean() > 0.999


def test_anisotropic_bounds_and_resolution_map_to_scene():
    center, radius = [0.3, -0.2, 0.1], 0.4
    bounds = ([-0.5, -1.0, -0.5], [1.0, 0.5, 0.8])
    mesh = extract_isosurface(sphere_sdf(center, radius), bounds, (40, 50, 60))
    d = (mesh.vertices.double() - torch.tensor(center).double()).norm(dim=-1)
    assert (d - radius).abs().max() < 0.005
    lo, hi = mesh.vertices.min(0).values, mesh.vertices.max(0).values
    assert torch.allclose(lo, torch.tensor(center) - radius, atol=0.01)
    assert torch.allclose(hi, torch.tensor(center) + radius, atol=0.01)


class CountingField:
    def __init__(self, fn):
        self.fn, self.n_points, self.max_chunk = fn, 0, 0
        self.max_x = -math.inf

    def __call__(self, p):
        self.n_points += p.shape[0]
        self.max_chunk = max(self.max_chunk, p.shape[0])
        if p.shape[0]:
            self.max_x = max(self.max_x, float(p[:, 0].max()))
        return self.fn(p)


def test_coarse_to_fine_matches_single_full_pass():
    res = 97
    full = CountingField(two_spheres)
    m_full = extract_isosurface(full, BOUNDS, res, coarse_to_fine=False)
    ctf = CountingField(two_spheres)
    m_ctf = extract_isosurface(ctf, BOUNDS, res, coarse_to_fine=True, coarse_resolution=17,
                               margin=1)
    assert full.n_points == res**3
    assert ctf.n_points < 0.5 * res**3  # the box really was smaller than the grid
    assert m_ctf.num_vertices == m_full.num_vertices and m_ctf.num_faces == m_full.num_faces
    assert np.allclose(sorted_rows(m_ctf.vertices), sorted_rows(m_full.vertices), atol=1e-5)


def test_chunking_gives_identical_output():
    kw = dict(bounds=BOUNDS, resolution=40, coarse_to_fine=True, coarse_resolution=12)
    small = CountingField(two_spheres)
    a = extract_isosurface(small, chunk_size=997, **kw)
    b = extract_isosurface(two_spheres, chunk_size=2**20, **kw)
    assert small.max_chunk <= 997
    assert torch.equal(a.vertices, b.vertices) and torch.equal(a.faces, b.faces)


def test_skip_fn_regions_get_no_surface_and_no_queries():
    res = 48
    spacing = 2.0 / (res - 1)
    field = CountingField(two_spheres)
    mesh = extract_isosurface(field, BOUNDS, res, skip_fn=lambda p: p[:, 0] > 0.0)
    assert field.max_x <= 0.0  # the field never saw a skipped point
    assert mesh.vertices[:, 0].max() <= spacing  # the sphere at x > 0 is gone
    # the sphere at x < 0 is still complete and closed
    d = (mesh.vertices.double() - torch.tensor([-0.3, -0.3, 0.2]).double()).norm(dim=-1)
    assert (d - 0.2).abs().max() < 0.1 * spacing
    assert mesh.to_trimesh().is_watertight


def test_empty_surface_reports_min_max_and_threshold():
    res = 32

    def field(p):
        return p.norm(dim=-1) + 1.0  # never below 0

    with pytest.raises(EmptySurfaceError) as info:
        extract_isosurface(field, BOUNDS, res, coarse_to_fine=False)
    msg = str(info.value)
    # grid points closest to/furthest from the origin: (+-1/31, ...) and the corners
    vmin = np.float32(1.0 + math.sqrt(3) / 31)
    vmax = np.float32(1.0 + math.sqrt(3))
    assert f"{float(vmin):.6g}"[:5] in msg and f"{float(vmax):.6g}"[:5] in msg
    assert "threshold 0" in msg and "bounds" in msg
    assert isinstance(info.value, ValueError)


def test_empty_surface_in_coarse_pass_and_all_inside():
    with pytest.raises(EmptySurfaceError, match="all inside"):
        extract_isosurface(lambda p: p.norm(dim=-1) - 5.0, BOUNDS, 80, coarse_resolution=16)
    with pytest.raises(EmptySurfaceError, match="threshold"):
        extract_isosurface(lambda p: p.norm(dim=-1) + 1.0, BOUNDS, 80, coarse_resolution=16)


def test_nan_field_raises_clear_error():
    def field(p):
        out = p.norm(dim=-1) - 0.5
        out[p[:, 0] > 0.5] = float("nan")
        return out

    with pytest.raises(NonFiniteFieldError, match="NaN"):
        extract_isosurface(field, BOUNDS, 24, coarse_to_fine=False)


def test_field_shape_n1_accepted_and_bad_shape_rejected():
    sdf = sphere_sdf([0.0, 0.0, 0.0], 0.5)
    m = extract_isosurface(lambda p: sdf(p)[:, None], BOUNDS, 24)
    assert m.num_faces > 0
    with pytest.raises(ValueError, match=r"\[N\]"):
        extract_isosurface(lambda p: sdf(p)[:2], BOUNDS, 24)


def test_threshold_level_set():
    # the 0.2 level set of the unit-speed SDF of radius 0.4 is the sphere of radius 0.6
    mesh = extract_isosurface(sphere_sdf([0.0, 0.0, 0.0], 0.4), BOUNDS, 48, threshold=0.2)
    assert (mesh.vertices.double().norm(dim=-1) - 0.6).abs().max() < 0.005


def test_color_fn_and_progress_output(capsys):
    mesh = extract_isosurface(sphere_sdf([0.0, 0.0, 0.0], 0.5), BOUNDS, 24,
                              color_fn=lambda p: (p + 1.0) / 2.0, progress=True)
    assert mesh.vertex_colors is not None and mesh.vertex_colors.shape == (mesh.num_vertices, 3)
    assert torch.allclose(mesh.vertex_colors, (mesh.vertices + 1.0) / 2.0, atol=1e-6)
    assert "isosurface" in capsys.readouterr().err


def test_module_field_and_transformed_mesh():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.radius = torch.nn.Parameter(torch.tensor(0.5))

        def forward(self, p):
            return p.norm(dim=-1) - self.radius

    mesh = extract_isosurface(Net(), BOUNDS, 32)
    assert not mesh.vertices.requires_grad  # evaluated under no_grad
    # scale 2 + translation: a sphere of radius 1 about (1, 2, 3)
    m = torch.eye(4)
    m[:3, :3] *= 2.0
    m[:3, 3] = torch.tensor([1.0, 2.0, 3.0])
    moved = mesh.transformed(m)
    d = (moved.vertices - torch.tensor([1.0, 2.0, 3.0])).norm(dim=-1)
    assert (d - 1.0).abs().max() < 0.01
    assert moved.to_trimesh().volume > 0


# ------------------------------------------------------------------------------------------
# block-wise extraction: the same mesh as one pass over every point
# ------------------------------------------------------------------------------------------
def assert_same_mesh(blocks: Mesh, ref: Mesh, tol=1e-5):
    """Same vertex set (within tol), and the same triangles (same orientation) on it."""
    from scipy.spatial import cKDTree

    assert blocks.num_vertices == ref.num_vertices and blocks.num_faces == ref.num_faces
    dist, match = cKDTree(ref.vertices.double().numpy()).query(blocks.vertices.double().numpy())
    assert dist.max() < tol
    assert len(np.unique(match)) == ref.num_vertices  # a one-to-one match

    def canonical(faces):  # rotate each triangle to start at its smallest index (keeps winding)
        f = np.asarray(faces)
        r = np.argmin(f, axis=1)
        f = np.stack([f[np.arange(len(f)), (r + k) % 3] for k in range(3)], axis=1)
        return f[np.lexsort(f.T[::-1])]

    assert np.array_equal(canonical(match[blocks.faces.numpy()]), canonical(ref.faces.numpy()))


def seam_vertex_count(mesh: Mesh, bounds, res, block):
    """Vertices lying on interior block faces (index coordinate a multiple of ``block``)."""
    lo, hi = (np.asarray(b, dtype=np.float64) for b in bounds)
    idx = (mesh.vertices.double().numpy() - lo) / (hi - lo) * (np.asarray(res) - 1)
    on = np.zeros(len(idx), dtype=bool)
    for a in range(3):
        k = np.round(idx[:, a])
        on |= (np.abs(idx[:, a] - k) < 1e-4) & (k % block == 0) & (k > 0) & (k < res[a] - 1)
    return int(on.sum())


def test_blocks_equal_one_pass_across_seams():
    res, block = 97, 16
    ref = extract_isosurface(two_spheres, BOUNDS, res, block_size=None, coarse_to_fine=False)
    field = CountingField(two_spheres)
    mesh = extract_isosurface(field, BOUNDS, res, block_size=block, coarse_resolution=25)
    assert seam_vertex_count(ref, BOUNDS, (res,) * 3, block) > 100  # the blocks cut the spheres
    assert field.n_points < 0.6 * res**3  # the coarse pass left most blocks out
    assert_same_mesh(mesh, ref)
    tm = mesh.to_trimesh()
    assert tm.is_watertight and len(tm.split(only_watertight=False)) == 2  # no cracks, no dups


def test_blocks_uneven_grid_partial_blocks():
    bounds = ([-0.5, -1.0, -0.5], [1.0, 0.5, 0.8])
    res = (41, 57, 66)  # 40, 56, 65 cells: the last block along each axis is cut short
    sdf = sphere_sdf([0.3, -0.2, 0.1], 0.4)
    ref = extract_isosurface(sdf, bounds, res, block_size=None, coarse_to_fine=False)
    mesh = extract_isosurface(sdf, bounds, res, block_size=12, coarse_to_fine=False)
    assert seam_vertex_count(ref, bounds, res, 12) > 50
    assert_same_mesh(mesh, ref)
    assert mesh.to_trimesh().is_watertight


def test_blocks_with_skip_fn():
    res = 65
    ref = extract_isosurface(two_spheres, BOUNDS, res, block_size=None, coarse_to_fine=False,
                             skip_fn=lambda p: p[:, 0] > 0.0)
    field = CountingField(two_spheres)
    mesh = extract_isosurface(field, BOUNDS, res, block_size=8, coarse_resolution=17,
                              skip_fn=lambda p: p[:, 0] > 0.0)
    assert field.max_x <= 0.0  # skipped points never reach the field
    assert_same_mesh(mesh, ref)
    d = (mesh.vertices.double() - torch.tensor([-0.3, -0.3, 0.2]).double()).norm(dim=-1)
    assert (d - 0.2).abs().max() < 0.005  # only the sphere at x < 0 is left, and it is closed
    assert mesh.to_trimesh().is_watertight


def test_blocks_weld_copies_that_differ_in_the_last_bits():
    """A field whose value at a point depends (slightly) on the batch it comes in, as batched
    networks do: the two blocks that share a face compute its vertices from slightly different
    samples; welding by grid edge still closes the seam."""
    def batch_dependent(p):
        return two_spheres(p) + 2e-6 * (p.shape[0] % 3)

    res = 73
    ref = extract_isosurface(two_spheres, BOUNDS, res, block_size=None, coarse_to_fine=False)
    mesh = extract_isosurface(batch_dependent, BOUNDS, res, block_size=8, coarse_to_fine=False,
                              chunk_size=1000)
    assert mesh.num_faces == ref.num_faces and mesh.num_vertices == ref.num_vertices
    assert max_nn_distance(mesh.vertices, ref.vertices) < 1e-3
    assert mesh.to_trimesh().is_watertight


def test_blocks_empty_surface_and_bad_block_size():
    with pytest.raises(EmptySurfaceError, match="threshold"):
        extract_isosurface(lambda p: p.norm(dim=-1) + 1.0, BOUNDS, 65, block_size=16)
    with pytest.raises(EmptySurfaceError):
        extract_isosurface(lambda p: p.norm(dim=-1) + 1.0, BOUNDS, 33, block_size=8,
                           coarse_to_fine=False)
    for bad in (1, 0, 2.5, "big", True):
        with pytest.raises(ValueError, match=f"block_size.*{bad!r}"):
            extract_isosurface(two_spheres, BOUNDS, 33, block_size=bad)


def test_auto_block_size_and_progress(monkeypatch, caplog, capsys):
    import logging

    import utils.mesh.extract as extract

    monkeypatch.setattr(extract, "AUTO_ONE_PASS_POINTS", 40**3)
    monkeypatch.setattr(extract, "DEFAULT_BLOCK_SIZE", 16)
    with caplog.at_level(logging.INFO, logger="utils.mesh.extract"):
        small = extract_isosurface(two_spheres, BOUNDS, 40)
        assert "one pass" in caplog.text and "blocks of" not in caplog.text
        caplog.clear()
        big = extract_isosurface(two_spheres, BOUNDS, 41, progress=True)
        assert "blocks of 16^3 cells" in caplog.text and "MiB" in caplog.text
    assert "isosurface blocks" in capsys.readouterr().err
    assert small.to_trimesh().is_watertight and big.to_trimesh().is_watertight
