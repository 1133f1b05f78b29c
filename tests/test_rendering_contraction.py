"""Contraction into the unit cube and background sampling beyond the scene box."""
import pytest
import torch

from models.rendering import contract, ray_aabb_intersect, sample_background

AABB = [-1.0, -2.0, 0.0, 3.0, 2.0, 1.0]


def test_aabb_contraction_is_the_affine_map_onto_the_unit_cube():
    g = torch.Generator().manual_seed(0)
    lo, hi = torch.tensor(AABB[:3]), torch.tensor(AABB[3:])
    x = lo + torch.rand(500, 3, generator=g) * (hi - lo)
    u = contract(x, AABB, "aabb")
    assert ((u >= 0) & (u <= 1)).all()
    assert torch.allclose(contract(lo[None], AABB), torch.zeros(1, 3))
    assert torch.allclose(contract(hi[None], AABB), torch.ones(1, 3))
    # affine: midpoints map to midpoints
    assert torch.allclose(contract((x[:250] + x[250:]) / 2, AABB), (u[:250] + u[250:]) / 2, atol=1e-6)


def test_unbounded_sphere_contraction():
    g = torch.Generator().manual_seed(1)
    box = [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]
    far = torch.randn(1000, 3, generator=g) * torch.logspace(-2, 6, 1000)[:, None]
    u = contract(far, box, "un_bounded_sphere")
    assert ((u >= 0) & (u <= 1)).all() and torch.isfinite(u).all()
    # inside the unit ball the map is affine: u = x / 4 + 1/2
    inner = torch.randn(200, 3, generator=g)
    inner = inner / inner.norm(dim=-1, keepdim=True) * torch.rand(200, 1, generator=g) * 0.99
    assert torch.allclose(contract(inner, box, "un_bounded_sphere"), inner / 4 + 0.5, atol=1e-6)
    # outside: radius 2 - 1/|x| (then /4), direction preserved
    y = torch.tensor([[4.0, 0.0, 0.0], [0.0, -2.0, 0.0]])
    assert torch.allclose(contract(y, box, "un_bounded_sphere"), torch.tensor([[(2 - 0.25) / 4 + 0.5, 0.5, 0.5], [0.5, 0.5 - 1.5 / 4, 0.5]]))
    # gradients stay finite at the origin and on the sphere
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [3.0, 4.0, 0.0]], requires_grad=True)
    contract(x, box, "un_bounded_sphere").sum().backward()
    assert torch.isfinite(x.grad).all()
    with pytest.raises(ValueError):
        contract(x, box, "cube")


def test_sample_background_beyond_box_exit_and_below_far():
    g = torch.Generator().manual_seed(2)
    box = [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]
    o = torch.randn(64, 3, generator=g) * 0.5  # inside the box
    o[:16] = o[:16] * 8  # some outside, which may hit or miss
    d = torch.randn(64, 3, generator=g)
    d = d / d.norm(dim=-1, keepdim=True)
    n = 16
    ray_indices, t0, t1 = sample_background(o, d, box, far_plane=100.0, n_samples=n)
    assert torch.equal(ray_indices, torch.arange(64).repeat_interleave(n))
    _, t_exit, hit = ray_aabb_intersect(o, d, box)
    assert (t0[hit[ray_indices]] >= t_exit[ray_indices][hit[ray_indices]] - 1e-5).all()
    assert (t1 <= 100.0 + 1e-3).all() and (t1 > t0).all()
    t0, t1 = t0.view(64, n), t1.view(64, n)
    assert torch.allclose(t0[:, 1:], t1[:, :-1])  # contiguous
    assert torch.allclose(t1[:, -1], torch.full((64,), 100.0))
    # uniform in disparity: equal steps of 1/t
    edges = torch.cat([t0, t1[:, -1:]], dim=1)
    steps = (1 / edges).diff(dim=1)
    assert torch.allclose(steps, steps[:, :1].expand_as(steps), rtol=1e-3)


def test_sample_background_stratified():
    o = torch.zeros(8, 3)
    d = torch.nn.functional.normalize(torch.randn(8, 3, generator=torch.Generator().manual_seed(3)), dim=-1)
    box = [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]
    kw = dict(far_plane=50.0, n_samples=8, stratified=True)
    a = sample_background(o, d, box, generator=torch.Generator().manual_seed(4), **kw)
    b = sample_background(o, d, box, generator=torch.Generator().manual_seed(4), **kw)
    plain = sample_background(o, d, box, far_plane=50.0, n_samples=8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.allclose(a[1], plain[1])
    assert torch.allclose(a[1].view(8, 8)[:, 0], plain[1].view(8, 8)[:, 0])  # the start is fixed
    assert (a[2] > a[1]).all()
    # each inner edge stays between the midpoints (in disparity) of its neighbouring bins
    s_edges = 1 / torch.cat([a[1].view(8, 8), a[2].view(8, 8)[:, -1:]], dim=1)
    p_edges = 1 / torch.cat([plain[1].view(8, 8), plain[2].view(8, 8)[:, -1:]], dim=1)
    mids = (p_edges[:, 1:] + p_edges[:, :-1]) / 2
    inner = s_edges[:, 1:-1]
    assert ((inner <= mids[:, :-1] + 1e-6) & (inner >= mids[:, 1:] - 1e-6)).all()
