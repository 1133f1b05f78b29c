"""The scene box fitted to the object from the sparse points and the cameras ('object'
normalization), robust to the surroundings and to stray points."""
import logging

import numpy as np
import pytest

from datasets.base import DatasetError
from datasets.normalization import (
    NormalizationConfig,
    normalization_transform,
    transform_points,
    transform_poses,
    view_fraction,
)
from tests import capture_fixtures as fx

W, H, F = 64, 48, 40.0  # the cameras' images: about 77 degrees wide


def cameras(n=16):
    c2w_a = fx.poses_a(n, distance=3.0, seed=5)  # around A's origin, looking at it, z up
    intrinsics = np.tile([F, F, W / 2, H / 2], (n, 1))
    sizes = np.tile([H, W], (n, 1))
    return c2w_a, intrinsics, sizes


def capture_points(rng):
    """(object points, the surroundings' points, far strays) in frame A: an object in the box
    [-0.4, 0.4] x [-0.3, 0.3] x [-0.25, 0.35]; walls beyond the cameras; points 8-30 units away."""
    obj = rng.uniform([-0.4, -0.3, -0.25], [0.4, 0.3, 0.35], size=(2000, 3))
    az = rng.uniform(0, 2 * np.pi, 300)
    r = rng.uniform(4.0, 6.0, 300)
    walls = np.stack([r * np.cos(az), r * np.sin(az), rng.uniform(-1.0, 2.0, 300)], -1)
    d = rng.normal(size=(60, 3))
    far = d / np.linalg.norm(d, axis=1, keepdims=True) * rng.uniform(8, 30, (60, 1))
    return obj, walls, far


OBJECT = NormalizationConfig(center="object", up="cameras", scale="object")


def test_the_box_holds_the_object_and_leaves_out_the_surroundings():
    rng = np.random.default_rng(0)
    c2w_a, k, sizes = cameras()
    obj, walls, far = capture_points(rng)
    near_strays = rng.uniform(-2.0, 2.0, size=(25, 3))  # 1% of the points: floaters around the object
    pts_a = np.concatenate([obj, walls, far, near_strays])
    to_world = fx.A_TO_WORLD
    m = normalization_transform(transform_poses(to_world, c2w_a), transform_points(to_world, pts_a), OBJECT,
                                "test", radius=1.0, intrinsics=k, sizes=sizes)
    a_to_scene = m @ to_world

    def in_box(p):
        return (np.abs(transform_points(a_to_scene, p)) <= 1.0).all(-1)

    assert in_box(obj).all()  # every object point, though 1% of all points are floaters
    assert not in_box(walls).any() and not in_box(far).any()
    # and tightly: the object spans most of the box along its longest side (+-0.4 of A)
    assert np.abs(transform_points(a_to_scene, obj)).max() > 0.8
    # the cameras stay outside
    assert not in_box(c2w_a[:, :, 3]).any()
    # a sphere through the 90th percentile of the points' distances (scale: points) takes the
    # walls in and leaves the object a speck: the data can tell the methods apart
    old = normalization_transform(transform_poses(to_world, c2w_a), transform_points(to_world, pts_a),
                                  NormalizationConfig(center="points", scale="points"), "test", radius=1.0)
    assert (np.abs(transform_points(old @ to_world, walls)) <= 1.0).all(-1).any()
    assert np.abs(transform_points(old @ to_world, obj)).max() < 0.2


def test_view_fraction_counts_the_frustums_that_hold_a_point():
    c2w_a, k, sizes = cameras(8)
    frac = view_fraction(np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 50.0]]), c2w_a, k, sizes)
    assert frac[0] == 1.0  # the point every camera looks at
    assert frac[1] == 0.0  # straight above: outside every view
    # a point just behind one camera is in none of that camera's view, but in the opposite cameras'
    behind = c2w_a[0, :, 3] * 1.05
    cam = (behind - c2w_a[0, :, 3]) @ c2w_a[0, :, :3]
    assert cam[2] < 0 and view_fraction(behind[None], c2w_a[:1], k[:1], sizes[:1])[0] == 0.0


def test_too_few_object_points_fall_back_to_the_cameras(caplog):
    c2w_a, k, sizes = cameras()
    c2w_w = transform_poses(fx.A_TO_WORLD, c2w_a)
    far = transform_points(fx.A_TO_WORLD, np.random.default_rng(1).normal(size=(50, 3)) * 20 + 40)
    with caplog.at_level(logging.WARNING):
        m = normalization_transform(c2w_w, far, OBJECT, "sparse/0", radius=1.0, intrinsics=k, sizes=sizes)
        none = normalization_transform(c2w_w, None, OBJECT, "transforms.json", radius=1.0)
    assert "object_min_view_fraction" in caplog.text and "transforms.json has no sparse points" in caplog.text
    cams = NormalizationConfig(center="lookat", up="cameras", scale="cameras")
    assert np.allclose(m, normalization_transform(c2w_w, far, cams, "x", radius=1.0))
    assert np.allclose(none, m)
    with pytest.raises(DatasetError, match="object_percentile"):
        normalization_transform(c2w_w, far, NormalizationConfig(center="object", object_percentile=40), "x")
