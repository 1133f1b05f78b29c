"""Ray / box intersection on hand-worked cases."""
import math

import torch

from models.rendering import ray_aabb_intersect

BOX = [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]


def test_ray_through_box():
    t0, t1, hit = ray_aabb_intersect(torch.tensor([[-3.0, 0.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]]), BOX)
    assert hit.tolist() == [True] and t0.tolist() == [2.0] and t1.tolist() == [4.0]


def test_diagonal_ray_and_unnormalized_direction():
    o = torch.tensor([[-2.0, -2.0, -2.0], [-3.0, 0.0, 0.0]])
    d = torch.tensor([[1.0, 1.0, 1.0], [2.0, 0.0, 0.0]])  # t in units of |d|
    t0, t1, hit = ray_aabb_intersect(o, d, BOX)
    assert hit.all()
    assert torch.allclose(t0, torch.tensor([1.0, 1.0])) and torch.allclose(t1, torch.tensor([3.0, 2.0]))


def test_ray_missing_the_box():
    o = torch.tensor([[-3.0, 2.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    d = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # parallel outside; pointing away
    t0, t1, hit = ray_aabb_intersect(o, d, BOX)
    assert hit.tolist() == [False, False, False]
    assert torch.equal(t0, t1)  # misses give an empty interval
    assert torch.isfinite(t0).all()


def test_ray_starting_inside_is_clipped_to_near_plane():
    o = torch.tensor([[0.5, 0.0, 0.0], [0.5, 0.0, 0.0]])
    d = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    t0, t1, hit = ray_aabb_intersect(o, d, BOX, near_plane=0.1)
    assert hit.all()
    assert torch.allclose(t0, torch.tensor([0.1, 0.1])) and torch.allclose(t1, torch.tensor([0.5, 1.5]))


def test_far_plane_clips_and_can_empty_the_interval():
    o = torch.tensor([[-3.0, 0.0, 0.0], [-3.0, 0.0, 0.0]])
    d = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    t0, t1, hit = ray_aabb_intersect(o, d, BOX, near_plane=0.0, far_plane=3.0)
    assert hit[0] and t0[0] == 2.0 and t1[0] == 3.0
    t0, t1, hit = ray_aabb_intersect(o[:1], d[:1], BOX, far_plane=1.5)
    assert not hit[0]


def test_axis_parallel_with_zero_components():
    # along z with x, y inside the slabs (zero x and y direction components; no NaNs from 0/0)
    o = torch.tensor([[0.0, 0.0, -5.0], [1.0, -1.0, -5.0], [1.5, 0.0, -5.0], [0.3, 0.2, 0.0]])
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
    t0, t1, hit = ray_aabb_intersect(o, d, BOX)
    # ray 1 lies on the box's edge (boundary counts as inside); ray 2 is parallel and outside
    assert hit.tolist() == [True, True, False, True]
    assert t0[:2].tolist() == [4.0, 4.0] and t1[:2].tolist() == [6.0, 6.0]
    assert t0[3] == 0.0 and math.isclose(float(t1[3]), 1.2, rel_tol=1e-6)
    assert not torch.isnan(torch.cat([t0, t1])).any()
