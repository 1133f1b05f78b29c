import math

import torch

from datasets.cameras import (
    camera_rays, intrinsics_from_fov, look_at, opengl_to_opencv, orbit_poses, pixel_directions, scale_intrinsics,
)


def test_pixel_directions_hand_computed():
    # 4x2 image, fx=2, fy=4, cx=2, cy=1: pixel (i, j) centre is (i + .5, j + .5)
    k = torch.tensor([2.0, 4.0, 2.0, 1.0])
    d = pixel_directions(4, 2, k)
    assert d.shape == (2, 4, 3)
    assert torch.allclose(d[0, 0], torch.tensor([(0.5 - 2) / 2, (0.5 - 1) / 4, 1.0]))
    assert torch.allclose(d[1, 3], torch.tensor([(3.5 - 2) / 2, (1.5 - 1) / 4, 1.0]))


def test_rays_in_world_follow_pose():
    # camera at (0, 0, 5) looking at the origin: its centre ray points along -z
    c2w = look_at(torch.tensor([0.0, 0.0, 5.0]), torch.zeros(3), torch.tensor([0.0, 1.0, 0.0]))
    k = intrinsics_from_fov(3, 3, math.radians(60))
    dirs = pixel_directions(3, 3, k)
    rays_o, rays_d = camera_rays(dirs, c2w)
    assert torch.allclose(rays_o[1, 1], torch.tensor([0.0, 0.0, 5.0]))
    assert torch.allclose(rays_d[1, 1], torch.tensor([0.0, 0.0, -1.0]), atol=1e-6)
    assert torch.allclose(rays_d.norm(dim=-1), torch.ones(3, 3))
    # OpenCV: image row 0 is up in the world (y down in the camera, world up is +y)
    assert rays_d[0, 1, 1] > 0 and rays_d[2, 1, 1] < 0


def test_opengl_to_opencv_flips_y_and_z():
    c2w = torch.eye(4)
    out = opengl_to_opencv(c2w)
    assert torch.equal(out[:3, :3], torch.diag(torch.tensor([1.0, -1.0, -1.0])))
    assert torch.equal(c2w, torch.eye(4))  # input untouched


def test_intrinsics_fov_and_scaling():
    k = intrinsics_from_fov(100, 50, 2 * math.atan(0.5))
    assert torch.allclose(k, torch.tensor([100.0, 100.0, 50.0, 25.0]))
    assert torch.allclose(scale_intrinsics(k, 0.5, 0.5), torch.tensor([50.0, 50.0, 25.0, 12.5]))


def test_orbit_looks_at_centre_at_radius():
    poses = orbit_poses(8, radius=3.0, elevation_deg=20.0, center=(0.1, 0.2, 0.3))
    centre = torch.tensor([0.1, 0.2, 0.3])
    eye = poses[:, :, 3]
    assert torch.allclose((eye - centre).norm(dim=-1), torch.full((8,), 3.0), atol=1e-5)
    forward = poses[:, :, 2]
    assert torch.allclose(forward, torch.nn.functional.normalize(centre - eye, dim=-1), atol=1e-5)
    rot = poses[:, :, :3]
    assert torch.allclose(rot.transpose(1, 2) @ rot, torch.eye(3).expand(8, 3, 3), atol=1e-5)
    assert torch.allclose(torch.det(rot), torch.ones(8), atol=1e-5)
    # constant elevation above the centre along z
    assert torch.allclose(eye[:, 2] - 0.3, torch.full((8,), 3.0 * math.sin(math.radians(20))), atol=1e-5)
