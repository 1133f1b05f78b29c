"""Sparse points triangulated from images with known poses (captures without points), and the
support plane (floor / wall) that bounds the object's box."""
import json
import logging

import numpy as np

from datasets.normalization import (
    NormalizationConfig,
    camera_centres,
    camera_up,
    frame_scene,
    normalization_transform,
    support_plane,
    transform_points,
)
from datasets.triangulation import neighbour_pairs, triangulate_points
from datasets.undistort import LensCamera
from tests import capture_fixtures as fx

W, H, F = 160, 120, 140.0


def textured_plane_views(tmp_path, n=6):
    """Photos [H, W] of the plane z = 0, textured with random blobs over [-1.5, 1.5]^2, from ``n``
    cameras 3 units away looking down at 45-65 degrees -> (paths, lenses, c2w [n, 3, 4])."""
    import cv2
    import torch

    from datasets.cameras import look_at

    rng = np.random.default_rng(7)
    texture = cv2.resize(rng.uniform(0, 1, (48, 48)).astype(np.float32), (1024, 1024), interpolation=cv2.INTER_CUBIC)
    lens = LensCamera(W, H, F, F, W / 2, H / 2)
    paths, c2ws = [], []
    for i in range(n):
        az, el = 2 * np.pi * i / n * 0.35, np.radians(45 + 4 * i)
        eye = 3.0 * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        c2w = look_at(torch.tensor(eye, dtype=torch.float32), torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))
        c2w = c2w.double().numpy()
        jj, ii = np.meshgrid(np.arange(H) + 0.5, np.arange(W) + 0.5, indexing="ij")
        dirs = np.stack([(ii - lens.cx) / F, (jj - lens.cy) / F, np.ones_like(ii)], -1) @ c2w[:, :3].T
        t = -c2w[2, 3] / dirs[..., 2]
        hit = c2w[:, 3] + t[..., None] * dirs
        u = ((hit[..., 0] + 1.5) / 3.0 * 1024 - 0.5).astype(np.float32)
        v = ((hit[..., 1] + 1.5) / 3.0 * 1024 - 0.5).astype(np.float32)
        img = cv2.remap(texture, u, v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.5)
        path = tmp_path / f"images/{i:03d}.png"
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), (img.clip(0, 1) * 255).astype(np.uint8))
        paths.append(path)
        c2ws.append(c2w)
    return paths, [lens] * n, np.stack(c2ws)


def write_transforms(root, paths, c2w):
    """transforms.json (instant-ngp, OpenGL poses, no points) for the photos of textured_plane_views."""
    frames = []
    for path, pose in zip(paths, c2w):
        opengl = np.eye(4)
        opengl[:3] = pose
        opengl[:3, 1:3] *= -1
        frames.append({"file_path": f"images/{path.name}", "transform_matrix": opengl.tolist()})
    (root / "transforms.json").write_text(json.dumps(
        {"fl_x": F, "fl_y": F, "cx": W / 2, "cy": H / 2, "w": W, "h": H, "frames": frames}))


def test_points_triangulated_with_the_known_poses_lie_on_the_photographed_plane(tmp_path):
    paths, lenses, c2w = textured_plane_views(tmp_path)
    points, rgb = triangulate_points(paths, lenses, c2w, n_neighbours=2)
    assert len(points) > 200 and rgb.shape == (len(points), 3) and rgb.dtype == np.uint8
    # on the plane z = 0, inside the textured square: no bias (a half-pixel slip in the pixel
    # conventions moves the median by 0.01-0.03), and 95% within 0.03 (1.4 px at 3 units)
    assert abs(np.median(points[:, 2])) < 0.004
    assert np.percentile(np.abs(points[:, 2]), 95) < 0.03
    assert (np.abs(points[:, :2]) < 1.6).all()
    # poses 3 degrees off: the matches either miss the epipolar lines (dropped) or land off the
    # plane: the check above can tell right poses from wrong ones
    rng = np.random.default_rng(0)
    off = c2w.copy()
    for i in range(len(off)):
        off[i, :, :3] = fx.axis_angle(rng.normal(size=3), np.radians(3.0)) @ off[i, :, :3]
    wrong, _ = triangulate_points(paths, lenses, off, n_neighbours=2)
    assert len(wrong) < 0.2 * len(points) or np.median(np.abs(wrong[:, 2])) > 0.05


def test_neighbour_pairs_join_near_cameras_that_look_the_same_way():
    c2w = fx.poses_a(8, distance=3.0, seed=1)
    pairs = neighbour_pairs(c2w, 2)
    assert pairs and all(i < j for i, j in pairs)
    eyes = camera_centres(c2w)
    for i, j in pairs:  # each pair is among the nearest few and no two views look apart by > 60 degrees
        assert c2w[i, :, 2] @ c2w[j, :, 2] > np.cos(np.radians(60))
        assert np.linalg.norm(eyes[i] - eyes[j]) <= np.sort(np.linalg.norm(eyes - eyes[i], axis=1))[3] + 1e-9
    assert np.allclose(LensCamera(20, 20, 10, 11, 5, 6).opencv_matrix(), [[10, 0, 4.5], [0, 11, 5.5], [0, 0, 1]])


# ------------------------------------------------------------------------------ support plane
def cameras_in_front(n=20, seed=0, up=(0.0, 0.0, 1.0), turn=np.eye(3)):
    """Cameras [n, 3, 4] in the half-space x > 0 (turned by ``turn`` [3, 3]), 2.5-3.5 units from
    the origin, looking at it with ``up`` as their up direction."""
    import torch

    from datasets.cameras import look_at

    rng = np.random.default_rng(seed)
    az = rng.uniform(-1.2, 1.2, n)
    el = rng.uniform(-0.6, 0.6, n)
    r = rng.uniform(2.5, 3.5, n)
    eyes = r[:, None] * np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], -1) @ turn.T
    return np.stack([look_at(torch.tensor(e, dtype=torch.float32), torch.zeros(3),
                             torch.tensor(up, dtype=torch.float32)).double().numpy() for e in eyes])


def wall_scene(rng, n_wall=3000, n_obj=1200):
    """Points on a wall x = -0.5 (|y|, |z| < 2) and of a head hanging from it (x in [-0.45, 0.5],
    |y| < 0.35, |z| < 0.4); a few flat things on the wall (x within 0.05 of it, wide)."""
    wall = np.stack([np.full(n_wall, -0.5) + rng.normal(0, 0.004, n_wall), rng.uniform(-2, 2, n_wall),
                     rng.uniform(-2, 2, n_wall)], -1)
    obj = rng.uniform([-0.45, -0.35, -0.4], [0.5, 0.35, 0.4], (n_obj, 3))
    frames = np.stack([rng.uniform(-0.49, -0.46, 200), rng.uniform(-1.5, 1.5, 200), rng.uniform(-1.5, 1.5, 200)], -1)
    return wall, obj, frames


OBJECT = NormalizationConfig(center="object", up="cameras", scale="object")


def test_a_wall_the_object_hangs_from_stays_out_of_the_box(caplog):
    rng = np.random.default_rng(2)
    c2w = cameras_in_front()
    wall, obj, frames = wall_scene(rng)
    pts = np.concatenate([wall, obj, frames])
    with caplog.at_level(logging.INFO):
        m = normalization_transform(c2w, pts, OBJECT, "transforms.json", radius=1.0)
    assert "hangs on a wall" in caplog.text and "cut_at_plane" in caplog.text
    inside = lambda p: (np.abs(transform_points(m, p)) <= 1.0).all(-1)  # noqa: E731
    assert not inside(wall).any()
    # the object beyond the plane's noise band (support_plane's gap, here 0.04) is in the box
    gap = support_plane(pts, camera_centres(c2w), camera_up(c2w)).gap
    assert 0.0 < gap < 0.1
    assert inside(obj[obj[:, 0] > -0.5 + gap]).mean() > 0.97
    assert inside(c2w[:, :, 3]).sum() == 0
    # the box is tight on the object (its largest side, 0.95 units, fills most of the box) and its
    # back face is just in front of the wall: the wall's normal is a box axis
    scene_obj = transform_points(m, obj)
    assert np.ptp(scene_obj, axis=0).max() > 1.4
    wall_scene_x = transform_points(m, np.array([[-0.5, 0.0, 0.0], [-0.5, 1.0, 0.3]]))
    axis = int(np.argmax(np.abs(wall_scene_x[0] - transform_points(m, np.array([[0.5, 0.0, 0.0]])))[0]))
    assert np.isclose(wall_scene_x[0, axis], wall_scene_x[1, axis], atol=2e-3)  # (up to the fit's noise)
    assert -1.3 < wall_scene_x[0, axis] < -1.0  # behind the box face by the gap (0.04 x the scale)
    # without the cut, the same points put the wall inside the box
    legacy = NormalizationConfig(center="object", up="cameras", scale="object", cut_at_plane=False)
    m_old = normalization_transform(c2w, pts, legacy, "transforms.json", radius=1.0)
    assert (np.abs(transform_points(m_old, wall)) <= 1.0).all(-1).any()


def test_the_framing_reports_the_plane_it_cut_at_in_the_scene_frame():
    rng = np.random.default_rng(2)
    c2w = cameras_in_front()
    wall, obj, frames = wall_scene(rng)
    framing = frame_scene(c2w, np.concatenate([wall, obj, frames]), OBJECT, "transforms.json", radius=1.0)
    plane = framing.plane
    assert plane is not None and plane.kind == "wall" and np.isclose(np.linalg.norm(plane.normal), 1.0)
    wall_scene_pts = transform_points(framing.world_to_scene, wall)
    assert np.percentile(np.abs(wall_scene_pts @ plane.normal - plane.offset), 95) < 0.03  # the wall is on it
    cameras = transform_points(framing.world_to_scene, c2w[:, :, 3])
    assert (cameras @ plane.normal - plane.offset > plane.gap).all()  # the cameras face it
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=float)
    assert (corners @ plane.normal - plane.offset >= plane.gap - 1e-6).all()  # the box is in front of it
    # no cut, no plane: a box fitted to the cameras, or the cut switched off
    assert frame_scene(c2w, np.concatenate([wall, obj]), NormalizationConfig(), "x").plane is None
    uncut = NormalizationConfig(center="object", up="cameras", scale="object", cut_at_plane=False)
    assert frame_scene(c2w, np.concatenate([wall, obj]), uncut, "x").plane is None


def test_a_floor_turns_up_onto_its_normal_and_bounds_the_box_from_below():
    rng = np.random.default_rng(3)
    turn = fx.axis_angle([0.0, 1.0, 0.0], -np.pi / 2)  # x -> z: the wall scene becomes a floor z = -0.5
    tilt = fx.axis_angle([1.0, 0.0, 0.0], np.radians(12))  # the cameras' up is 12 degrees off the floor's normal
    c2w = cameras_in_front(up=tuple(tilt @ [0.0, 0.0, 1.0]), turn=turn)
    floor_pts, obj, _ = wall_scene(rng)
    floor_pts, obj = floor_pts @ turn.T, obj @ turn.T
    up = camera_up(c2w)
    assert np.degrees(np.arccos(up @ [0.0, 0.0, 1.0])) > 8
    plane = support_plane(np.concatenate([floor_pts, obj]), camera_centres(c2w), up)
    assert plane is not None and plane.kind == "floor"
    assert np.allclose(plane.normal, [0.0, 0.0, 1.0], atol=0.02)
    m = normalization_transform(c2w, np.concatenate([floor_pts, obj]), OBJECT, "sparse/0", radius=1.0)
    # the scene's up (+z) is the floor's normal, not the cameras' tilted up; the floor is below the box
    assert np.allclose(m[:3, :3] @ [0.0, 0.0, 1.0] / np.linalg.norm(m[:3, :3] @ [0.0, 0.0, 1.0]), [0, 0, 1], atol=0.02)
    floor_scene = transform_points(m, floor_pts)
    assert (floor_scene[:, 2] < -1.0).all()
    above_gap = obj[obj[:, 2] > -0.5 + plane.gap]
    assert (np.abs(transform_points(m, above_gap)) <= 1.0).all(-1).mean() > 0.97


def test_no_support_plane_when_the_cameras_surround_it_or_it_is_all_there_is():
    rng = np.random.default_rng(4)
    up = np.array([0.0, 0.0, 1.0])
    card = np.stack([rng.uniform(-1, 1, 2000), rng.uniform(-1, 1, 2000), rng.normal(0, 0.003, 2000)], -1)
    bump = rng.uniform([-0.3, -0.3, 0.05], [0.3, 0.3, 0.6], (600, 3))
    d = rng.normal(size=(30, 3))
    around = 3.0 * d / np.linalg.norm(d, axis=1, keepdims=True)  # above and below the card
    above = np.abs(around) + [0.0, 0.0, 0.5]  # all well above it
    assert support_plane(np.concatenate([card, bump]), above, up) is not None  # the control: a floor
    assert support_plane(np.concatenate([card, bump]), around, up) is None
    assert support_plane(card, above, up) is None  # a painting on its own is the object, not a wall
    assert support_plane(rng.normal(0, 0.3, (1500, 3)), above, up) is None  # no plane at all


def test_an_ngp_capture_gets_triangulated_points_when_its_box_is_fitted_to_the_object(tmp_path, caplog):
    paths, lenses, c2w = textured_plane_views(tmp_path)
    write_transforms(tmp_path, paths, c2w)
    from datasets.ngp import NgpScene

    framed = NgpScene(NgpScene.Config(root_dir=str(tmp_path), normalization=OBJECT))
    assert framed.points_world is not None and len(framed.points_world) > 200
    assert np.percentile(np.abs(framed.points_world[:, 2]), 95) < 0.03
    with caplog.at_level(logging.WARNING):
        off = NgpScene(NgpScene.Config(root_dir=str(tmp_path), normalization=NormalizationConfig(
            center="object", scale="object", triangulate=False)))
    assert off.points_world is None and "has no sparse points" in caplog.text
    cams = NgpScene(NgpScene.Config(root_dir=str(tmp_path)))  # the cameras frame it: nothing to triangulate
    assert cams.points_world is None


def test_many_views_are_thinned_to_max_views(tmp_path, caplog):
    paths, lenses, c2w = textured_plane_views(tmp_path)
    with caplog.at_level(logging.INFO):
        points, _ = triangulate_points(paths, lenses, c2w, n_neighbours=2, max_views=3)
    assert "SIFT on 3 views" in caplog.text
    assert len(points) > 50 and abs(np.median(points[:, 2])) < 0.004


def test_one_view_triangulates_nothing(tmp_path):
    paths, lenses, c2w = textured_plane_views(tmp_path, n=2)
    points, rgb = triangulate_points(paths[:1], lenses[:1], c2w[:1])
    assert points.shape == (0, 3) and rgb.shape == (0, 3)


def test_photos_without_features_fall_back_to_the_cameras_with_a_warning(tmp_path, caplog):
    import cv2

    paths, _, c2w = textured_plane_views(tmp_path)
    for path in paths:  # blank walls: nothing to match
        cv2.imwrite(str(path), np.full((H, W), 128, np.uint8))
    write_transforms(tmp_path, paths, c2w)
    from datasets.ngp import NgpScene

    with caplog.at_level(logging.WARNING):
        scene = NgpScene(NgpScene.Config(root_dir=str(tmp_path), normalization=OBJECT))
    assert scene.points_world is None
    assert "none could be triangulated" in caplog.text and "uses the cameras instead" in caplog.text
    cams = NgpScene(NgpScene.Config(root_dir=str(tmp_path), normalization=NormalizationConfig(
        center="lookat", scale="cameras")))
    assert np.allclose(scene.world_to_scene, cams.world_to_scene)


def test_a_colmap_model_with_an_empty_points3d_gets_triangulated_points(tmp_path):
    """COLMAP models made from known poses (e.g. point_triangulator's input) often have no points."""
    import pycolmap

    from datasets.colmap import ColmapScene

    paths, lenses, c2w = textured_plane_views(tmp_path)
    recon = pycolmap.Reconstruction()
    cam = pycolmap.Camera.create_from_model_name(1, "PINHOLE", F, W, H)
    cam.params = [F, F, W / 2, H / 2]  # COLMAP's principal point is measured from the corner, as ours
    fx.add_colmap_camera(recon, cam)
    for i, (path, pose) in enumerate(zip(paths, c2w)):
        fx.add_colmap_image(recon, path.name, 1, i + 1, pose)
    (tmp_path / "sparse/0").mkdir(parents=True)
    recon.write_text(str(tmp_path / "sparse/0"))
    scene = ColmapScene(ColmapScene.Config(root_dir=str(tmp_path), normalization=OBJECT))
    assert scene.points_world is not None and len(scene.points_world) > 200
    assert abs(np.median(scene.points_world[:, 2])) < 0.004  # on the photographed plane z = 0
