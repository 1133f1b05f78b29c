"""The torch backend against nerfacc 0.5 on CUDA (skipped without CUDA or nerfacc). Written for
nerfacc 0.5.3 (the version the README names); the CPU runs these paths through a stand-in
(tests/test_backends_parity.py)."""
import pytest
import torch

from models.rendering import (
    OccupancyGrid,
    accumulate_along_rays,
    ray_aabb_intersect,
    ray_marching,
    render_transmittance_from_alpha,
    render_weight_from_alpha,
    render_weight_from_density,
)
from utils import backends

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and backends.available("nerfacc")),
    reason=f"needs CUDA and nerfacc 0.5 ({backends.unavailable_reason('nerfacc') or 'no CUDA'})",
)


@pytest.fixture(autouse=True, scope="module")
def nerfacc_kernels():
    """nerfacc builds its CUDA extension on first use (nvcc needed): skip, saying why, if it cannot."""
    reason = backends.kernel_unavailable_reason("nerfacc")
    if reason is not None:
        pytest.skip(reason)

BOX = [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]


def make_grid(resolution, levels, seed):
    grid = OccupancyGrid(BOX, resolution=resolution, levels=levels).cuda()
    g = torch.Generator().manual_seed(seed)
    grid.set_binary((torch.rand(grid.binaries.shape, generator=g) < 0.3).cuda())
    return grid


def make_rays(n, seed):
    g = torch.Generator().manual_seed(seed)
    o = torch.randn(n, 3, generator=g) * 2.5
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g) - 0.3 * o, dim=-1)
    return o.cuda(), d.cuda()


def assert_same_samples(a, b, n_rays, min_fraction=0.99, atol=1e-4):
    """Per-ray sample counts agree on almost all rays (float32 stepping inside nerfacc may move a
    midpoint across a cell or box boundary), and the t values agree on those rays."""
    counts_a = torch.bincount(a[0], minlength=n_rays)
    counts_b = torch.bincount(b[0], minlength=n_rays)
    same = counts_a == counts_b
    assert same.float().mean() >= min_fraction
    assert counts_a.sum() > 2 * n_rays  # the comparison is not vacuous
    mask_a, mask_b = same[a[0]], same[b[0]]
    assert torch.equal(a[0][mask_a], b[0][mask_b])
    assert torch.allclose(a[1][mask_a], b[1][mask_b], atol=atol)
    assert torch.allclose(a[2][mask_a], b[2][mask_b], atol=atol)


@pytest.mark.parametrize("levels,cone", [(1, 0.0), (2, 0.0), (2, 0.02)])
def test_marching_backends_agree(levels, cone):
    grid = make_grid(32, levels, seed=levels)
    o, d = make_rays(2000, seed=3)
    kw = dict(grid=grid, render_step_size=0.01, cone_angle=cone, near_plane=0.05)
    ours = ray_marching(o, d, backend="torch", **kw)
    theirs = ray_marching(o, d, backend="nerfacc", **kw)
    assert_same_samples(ours, theirs, 2000)


def test_marching_matches_nerfacc_estimator():
    """nerfacc's own OccGridEstimator with our binaries, its near plane set to our clipped near."""
    import inspect

    import nerfacc

    if "t_min" not in inspect.signature(nerfacc.OccGridEstimator.sampling).parameters:
        pytest.skip("this nerfacc's OccGridEstimator.sampling has no t_min")
    grid = make_grid(32, 1, seed=5)
    o, d = make_rays(2000, seed=6)
    est = nerfacc.OccGridEstimator(roi_aabb=BOX, resolution=32, levels=1).cuda()
    est.binaries.copy_(grid.binaries)
    t_near, _, _ = ray_aabb_intersect(o, d, BOX)
    theirs = est.sampling(o, d, t_min=t_near, render_step_size=0.01, early_stop_eps=0.0)
    ours = ray_marching(o, d, grid=grid, render_step_size=0.01, backend="torch")
    assert_same_samples(ours, (theirs[0].long(), theirs[1], theirs[2]), 2000)


def packed_cuda(seed, n_rays=300):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 40, (n_rays,), generator=g)
    counts[::7] = 0
    ray_indices = torch.repeat_interleave(torch.arange(n_rays), counts)
    n = ray_indices.numel()
    deltas = torch.rand(n, generator=g) * 0.05 + 0.001
    t_starts = torch.zeros(n)
    starts = torch.cumsum(counts, 0) - counts
    csum = torch.cumsum(deltas, 0)
    t_starts = csum - deltas - (csum - deltas)[starts[ray_indices]] + 0.5  # contiguous per ray
    alphas = torch.rand(n, generator=g) * 0.9
    sigmas = torch.rand(n, generator=g) * 20
    values = torch.rand(n, 3, generator=g)
    return [x.cuda() for x in (ray_indices, alphas, sigmas, t_starts, t_starts + deltas, values)], n_rays


def test_compositing_backends_agree_with_gradients():
    (ray_indices, alphas, sigmas, t0, t1, values), n_rays = packed_cuda(0)
    g = torch.Generator().manual_seed(1)
    c = torch.randn(6, n_rays, 3, generator=g).cuda()

    def run(backend):
        a, s, v = (x.clone().requires_grad_() for x in (alphas, sigmas, values))
        w_a, tr_a = render_weight_from_alpha(a, ray_indices, n_rays, backend=backend)
        tr_only = render_transmittance_from_alpha(a, ray_indices, n_rays, backend=backend)
        w_d, tr_d, al_d = render_weight_from_density(t0, t1, s, ray_indices, n_rays, backend=backend)
        rgb = accumulate_along_rays(w_d, v, ray_indices, n_rays, backend=backend)
        opacity = accumulate_along_rays(w_a, None, ray_indices, n_rays, backend=backend)
        loss = (rgb * c[0]).sum() + (opacity * c[1, :, :1]).sum()
        loss = loss + (tr_only * 0.1).sum()
        outs = (w_a, tr_a, tr_only, w_d, tr_d, al_d, rgb, opacity)
        return outs, torch.autograd.grad(loss, (a, s, v))

    ours, g_ours = run("torch")
    theirs, g_theirs = run("nerfacc")
    for x, y in zip(ours, theirs):
        assert x.shape == y.shape
        assert torch.allclose(x, y, rtol=1e-4, atol=1e-5)
    for x, y in zip(g_ours, g_theirs):
        assert torch.allclose(x, y, rtol=1e-3, atol=1e-4)
