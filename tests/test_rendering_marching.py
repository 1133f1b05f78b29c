"""Ray marching against hand cases and a brute-force per-ray, per-step reference."""

import pytest
import torch

from models.rendering import OccupancyGrid, ray_aabb_intersect, ray_marching

BOX = [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]


def reference_march(rays_o, rays_d, grid, step, cone=0.0, near=0.0, far=1e10, aabb=None):
    """Step every ray one step at a time from its clipped near distance; keep steps whose midpoint
    is in [t_near, t_far) and in an occupied cell (looked up with grid.query)."""
    box = grid.aabbs[-1] if grid is not None else torch.tensor(aabb)
    t_near, t_far, hit = ray_aabb_intersect(rays_o, rays_d, box, near, far)
    if aabb is not None and grid is not None:
        a_near, a_far, _ = ray_aabb_intersect(rays_o, rays_d, torch.tensor(aabb), near, far)
        t_near, t_far = torch.maximum(t_near, a_near), torch.minimum(t_far, a_far)
        hit = t_far > t_near
    rays, starts, ends = [], [], []
    for r in range(rays_o.shape[0]):
        if not hit[r]:
            continue
        lo, hi, t, steps = float(t_near[r]), float(t_far[r]), float(t_near[r]), []
        while True:
            dt = max(t * cone, step)
            if t + dt / 2 >= hi:
                break
            steps.append((t, t + dt))
            t += dt
        if not steps:
            continue
        mids = torch.tensor([(a + b) / 2 for a, b in steps], dtype=torch.float64)
        x = (rays_o[r].double() + mids[:, None] * rays_d[r].double()).float()
        occupied = grid.query(x) if grid is not None else torch.ones(len(steps), dtype=torch.bool)
        for (a, b), occ in zip(steps, occupied.tolist()):
            if occ:
                rays.append(r), starts.append(a), ends.append(b)
    return torch.tensor(rays, dtype=torch.long), torch.tensor(starts), torch.tensor(ends)


def random_rays(n, seed, spread=2.0):
    g = torch.Generator().manual_seed(seed)
    o = torch.randn(n, 3, generator=g) * spread
    d = torch.randn(n, 3, generator=g)
    d[: n // 10, 1] = 0  # some directions with zero components
    d[: n // 20, 2] = 0
    o[: n // 8] *= 0.1  # some rays start inside the box
    return o, d / d.norm(dim=-1, keepdim=True)


def assert_sorted(ray_indices, t_starts):
    assert ray_indices.dtype == torch.int64
    if ray_indices.numel() > 1:
        same = ray_indices[1:] == ray_indices[:-1]
        assert (ray_indices[1:] >= ray_indices[:-1]).all()
        assert (t_starts[1:][same] > t_starts[:-1][same]).all()


# -------------------------------------------------------------------------------------------
# hand cases
# -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("with_grid", [False, True])
def test_hand_case_twenty_steps(with_grid):
    o, d = torch.tensor([[-1.5, 0.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]])
    grid = None
    if with_grid:
        grid = OccupancyGrid(BOX, resolution=4)
        grid.set_binary(torch.ones(4, 4, 4, dtype=torch.bool))
    ray_indices, t_starts, t_ends = ray_marching(o, d, aabb=BOX, grid=grid, render_step_size=0.1)
    assert ray_indices.tolist() == [0] * 20
    expected = 0.5 + 0.1 * torch.arange(20, dtype=torch.float64)
    assert torch.allclose(t_starts.double(), expected, atol=1e-6)
    assert torch.allclose(t_ends.double(), expected + 0.1, atol=1e-6)


def test_steps_start_at_clipped_near_and_keep_midpoints_inside():
    # entry at t = 0.53; far plane cuts at t = 1.0: midpoints 0.58 .. 0.98 -> 5 steps
    o, d = torch.tensor([[-1.53, 0.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]])
    _, t_starts, t_ends = ray_marching(o, d, aabb=BOX, far_plane=1.0, render_step_size=0.1)
    assert torch.allclose(t_starts, 0.53 + 0.1 * torch.arange(5.0), atol=1e-6)
    assert t_ends[-1] == pytest.approx(1.03, abs=1e-6)  # the last step may end past far (< half a step)


def test_empty_grid_gives_no_samples():
    grid = OccupancyGrid(BOX, resolution=8)
    o, d = random_rays(64, 0)
    ray_indices, t_starts, t_ends = ray_marching(o, d, grid=grid, render_step_size=0.01)
    assert ray_indices.numel() == 0 and t_starts.shape == (0,) and t_ends.shape == (0,)


def test_single_occupied_cell():
    grid = OccupancyGrid(BOX, resolution=8)
    mask = torch.zeros(8, 8, 8, dtype=torch.bool)
    mask[5, 2, 3] = True  # x in [0.25, 0.5], y in [-0.5, -0.25], z in [-0.25, 0]
    grid.set_binary(mask)
    g = torch.Generator().manual_seed(0)
    target = torch.tensor([0.375, -0.375, -0.125])
    o = torch.randn(200, 3, generator=g) * 2
    d = target + 0.2 * torch.randn(200, 3, generator=g) - o  # aim near the cell
    d = d / d.norm(dim=-1, keepdim=True)
    ray_indices, t_starts, t_ends = ray_marching(o, d, grid=grid, render_step_size=0.01)
    assert ray_indices.numel() > 100
    x = o[ray_indices] + ((t_starts + t_ends) / 2)[:, None] * d[ray_indices]
    lo, hi = torch.tensor([0.25, -0.5, -0.25]), torch.tensor([0.5, -0.25, 0.0])
    assert ((x >= lo - 1e-5) & (x <= hi + 1e-5)).all()
    ref = reference_march(o, d, grid, 0.01)
    assert torch.equal(ray_indices, ref[0])


# -------------------------------------------------------------------------------------------
# brute-force reference
# -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "resolution,levels,cone",
    [(8, 1, 0.0), ((13, 20, 7), 1, 0.0), (16, 2, 0.0), (16, 3, 0.05), ((5, 9, 33), 2, 0.1), (40, 1, 0.02)],
)
def test_matches_reference(resolution, levels, cone):
    grid = OccupancyGrid([-1.0, -0.5, -1.0, 1.0, 1.5, 0.2], resolution=resolution, levels=levels)
    g = torch.Generator().manual_seed(levels * 10 + int(cone * 100))
    mask = torch.rand(grid.binaries.shape, generator=g) < 0.3
    if levels == 1:
        mask[0, :4, :4, :4] = True  # a fully occupied block (exercises early acceptance)
    grid.set_binary(mask)
    o, d = random_rays(120, seed=int(cone * 100) + levels)
    ray_indices, t_starts, t_ends = ray_marching(o, d, grid=grid, render_step_size=0.03, cone_angle=cone)
    ref_rays, ref_starts, ref_ends = reference_march(o, d, grid, 0.03, cone)
    assert ref_rays.numel() > 50
    assert torch.equal(ray_indices, ref_rays)
    assert torch.allclose(t_starts.double(), ref_starts.double(), atol=1e-5)
    assert torch.allclose(t_ends.double(), ref_ends.double(), atol=1e-5)
    assert_sorted(ray_indices, t_starts)


def test_aabb_and_grid_are_intersected():
    grid = OccupancyGrid(BOX, resolution=8)
    grid.set_binary(torch.rand(8, 8, 8, generator=torch.Generator().manual_seed(4)) < 0.5)
    aabb = [-0.5, -2.0, -2.0, 2.0, 0.5, 2.0]
    o, d = random_rays(100, seed=5)
    out = ray_marching(o, d, grid=grid, aabb=aabb, render_step_size=0.02, near_plane=0.1, far_plane=3.0)
    ref = reference_march(o, d, grid, 0.02, near=0.1, far=3.0, aabb=aabb)
    assert torch.equal(out[0], ref[0])
    assert torch.allclose(out[1].double(), ref[1].double(), atol=1e-5)


# -------------------------------------------------------------------------------------------
# options
# -------------------------------------------------------------------------------------------
def test_cone_angle_grows_steps():
    o, d = torch.tensor([[0.0, 0.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]])
    box = [-1.0, -1.0, -1.0, 100.0, 1.0, 1.0]
    ray_indices, t_starts, t_ends = ray_marching(o, d, aabb=box, render_step_size=0.1, cone_angle=0.05)
    dt = (t_ends - t_starts).double()
    assert torch.allclose(dt, torch.clamp(t_starts.double() * 0.05, min=0.1), rtol=1e-5)
    assert dt[0] == pytest.approx(0.1) and dt[-1] > 4.0
    assert torch.allclose(t_starts[1:], t_ends[:-1])  # contiguous
    # far fewer steps than uniform marching would need (1000)
    assert ray_indices.numel() < 120


def test_stratified_within_bounds_and_deterministic():
    o, d = random_rays(50, seed=6, spread=3.0)
    kwargs = dict(aabb=BOX, render_step_size=0.05, stratified=True)
    a = ray_marching(o, d, generator=torch.Generator().manual_seed(7), **kwargs)
    b = ray_marching(o, d, generator=torch.Generator().manual_seed(7), **kwargs)
    c = ray_marching(o, d, generator=torch.Generator().manual_seed(8), **kwargs)
    plain = ray_marching(o, d, aabb=BOX, render_step_size=0.05)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[1], c[1])
    ray_indices, t_starts, t_ends = a
    t_near, t_far, _ = ray_aabb_intersect(o, d, BOX)
    mids = (t_starts + t_ends) / 2
    assert (mids >= t_near[ray_indices]).all() and (mids < t_far[ray_indices]).all()
    assert torch.allclose(t_ends - t_starts, torch.full_like(t_starts, 0.05))
    first = torch.ones_like(ray_indices, dtype=torch.bool)
    first[1:] = ray_indices[1:] != ray_indices[:-1]
    offset = t_starts[first] - t_near[ray_indices[first]]
    assert (offset >= 0).all() and (offset < 0.05 + 1e-6).all()
    assert offset.std() > 0.005  # really random per ray (without stratification the offset is 0)
    plain_first = torch.ones_like(plain[0], dtype=torch.bool)
    plain_first[1:] = plain[0][1:] != plain[0][:-1]
    assert torch.allclose(plain[1][plain_first], t_near[plain[0][plain_first]])


def test_max_samples_per_ray_keeps_the_first():
    o, d = random_rays(40, seed=9)
    full = ray_marching(o, d, aabb=BOX, render_step_size=0.05)
    capped = ray_marching(o, d, aabb=BOX, render_step_size=0.05, max_samples_per_ray=7)
    counts = torch.bincount(capped[0], minlength=40)
    assert counts.max() == 7 and torch.bincount(full[0], minlength=40).max() > 7
    keep = torch.zeros_like(full[0], dtype=torch.bool)
    for r in range(40):
        keep[torch.nonzero(full[0] == r)[:7, 0]] = True
    assert all(torch.equal(x[keep], y) for x, y in zip(full, capped))


def test_alpha_threshold_filtering_and_early_stop():
    o, d = random_rays(40, seed=10)
    calls = []

    def alpha_fn(t_starts, t_ends, ray_indices):
        assert not torch.is_grad_enabled()
        calls.append(t_starts.numel())
        return torch.sin(7 * (t_starts + t_ends)) ** 2 * 0.5  # in [0, 0.5]

    full = ray_marching(o, d, aabb=BOX, render_step_size=0.05)
    out = ray_marching(o, d, aabb=BOX, render_step_size=0.05, alpha_fn=alpha_fn, alpha_thre=0.2)
    assert calls == [full[0].numel()]
    with torch.no_grad():
        alphas = alpha_fn(full[1], full[2], full[0])
    keep = alphas >= 0.2
    assert 0 < keep.sum() < keep.numel()
    assert all(torch.equal(x[keep], y) for x, y in zip(full, out))
    # early stop: drop samples whose transmittance (from these alphas) is below eps
    out = ray_marching(o, d, aabb=BOX, render_step_size=0.05, alpha_fn=alpha_fn, early_stop_eps=0.05)
    trans = []
    for r in range(40):
        a = alphas[full[0] == r]
        trans.append(torch.cat([torch.ones(1), torch.cumprod(1 - a, 0)[:-1]]) if a.numel() else a)
    keep = torch.cat(trans) >= 0.05
    assert 0 < keep.sum() < keep.numel()
    assert all(torch.equal(x[keep], y) for x, y in zip(full, out))


def test_rays_missing_everything_and_errors():
    o = torch.tensor([[5.0, 5.0, 5.0]])
    d = torch.tensor([[1.0, 0.0, 0.0]])
    out = ray_marching(o, d, aabb=BOX, render_step_size=0.1)
    assert out[0].numel() == 0
    with pytest.raises(ValueError):
        ray_marching(o, d, render_step_size=0.1)  # neither aabb nor grid
    with pytest.raises(ValueError):
        ray_marching(o, d, aabb=BOX, render_step_size=0.0)


@pytest.mark.parametrize("shape", ["shell", "solid"])
def test_many_rays_match_reference(shape):
    """Many rays through a sphere-shell / solid-ball grid (the ball has fully occupied coarse
    cells, which are accepted without refinement): same as the reference on a subset."""
    res = 32
    grid = OccupancyGrid(BOX, resolution=res)
    c = (torch.arange(res) + 0.5) / res * 2 - 1
    r = torch.stack(torch.meshgrid(c, c, c, indexing="ij")).norm(dim=0)
    grid.set_binary((r - 0.6).abs() < 0.1 if shape == "shell" else r < 0.7)
    coarse_all = grid.pyramid()[0][1]
    assert bool(coarse_all.any()) == (shape == "solid")
    g = torch.Generator().manual_seed(11)
    o = torch.nn.functional.normalize(torch.randn(3000, 3, generator=g), dim=-1) * 2.5
    d = torch.nn.functional.normalize(0.4 * torch.randn(3000, 3, generator=g) - o, dim=-1)  # aim at the centre
    out = ray_marching(o, d, grid=grid, render_step_size=0.01)
    assert_sorted(out[0], out[1])
    sub = torch.arange(0, 3000, 100)
    ref = reference_march(o[sub], d[sub], grid, 0.01)
    mine = torch.isin(out[0], sub)
    assert ref[0].numel() > 300
    assert torch.equal(out[0][mine], sub[ref[0]])
    assert torch.allclose(out[1][mine].double(), ref[1].double(), atol=1e-5)
    assert torch.allclose(out[2][mine].double(), ref[2].double(), atol=1e-5)
