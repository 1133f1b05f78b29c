"""Real-capture loaders (dtu, colmap, ngp), undistortion, scene normalization and imgs2poses, on tiny
captures of the analytic scene written by tests/capture_fixtures.py with every camera known."""
import json
import logging
import shutil

import numpy as np
import pytest
import torch

from datasets.base import DatasetError
from datasets.cameras import camera_rays, pixel_directions
from datasets.colmap import ColmapScene
from datasets.dtu import DTUScene, decompose_projection
from datasets.ngp import NgpScene
from datasets.normalization import (
    NormalizationConfig,
    invert_similarity,
    lookat_center,
    normalization_transform,
    transform_points,
    transform_poses,
)
from datasets.synthetic import scene_sdf, sphere_trace
from datasets.undistort import from_colmap
from tests import capture_fixtures as fx
from tests.conftest import SHARED_DATA
from utils.config import parse_component

try:
    import pycolmap
except ImportError:  # the COLMAP tests skip; the others run
    pycolmap = None
needs_pycolmap = pytest.mark.skipif(pycolmap is None, reason="pycolmap is not installed")

SIZE = 24


def load(cls, root, **kw):
    return cls(parse_component(cls.Config, {"root_dir": str(root), **kw}))


@pytest.fixture(scope="module")
def dtu_dir(tmp_path_factory):
    return fx.write_dtu(tmp_path_factory.mktemp("dtu") / "scan", n=4, size=SIZE)


@pytest.fixture(scope="module")
def colmap_dir(tmp_path_factory):
    return fx.write_colmap(tmp_path_factory.mktemp("colmap") / "scene", n=4, size=SIZE, model="OPENCV",
                           shared_camera=False, binary=True, masks=True)


@pytest.fixture(scope="module")
def ngp_dir(tmp_path_factory):
    return fx.write_ngp(tmp_path_factory.mktemp("ngp") / "scene", n=4, size=SIZE, missing=1)


def composite_grey(rgba):
    return rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:]) * 0.1


def scene_to_a(scene, capture):
    """scene -> analytic frame A: the loader's scene_to_world, then the capture's known world -> A."""
    return invert_similarity(capture.a_to_world) @ scene.scene_to_world.double().numpy()


def silhouette_agreement(split, scene_to_a_matrix):
    """Mean alpha where each pixel's ray (scene frame, mapped into A) hits / misses the analytic surface."""
    origins, directions = [], []
    c2w_a = torch.from_numpy(transform_poses(scene_to_a_matrix, split.c2w.double().numpy())).float()
    for i in range(len(split)):
        h, w = split.size(i)
        dirs = pixel_directions(w, h, split.intrinsics[i]).reshape(-1, 3)
        rays_o, rays_d = camera_rays(dirs, c2w_a[i])
        origins.append(rays_o)
        directions.append(rays_d)
    hit, _ = sphere_trace(torch.cat(origins).contiguous(), torch.cat(directions), max_steps=fx.MAX_STEPS)
    alpha = split.pixels_alpha
    return float(alpha[hit].mean()), float(alpha[~hit].mean())


# --------------------------------------------------------------------------- DTU
def test_decompose_projection_recovers_k_and_pose():
    rng = np.random.default_rng(0)
    k = np.array([[300.0, 0.0, 120.0], [0.0, 310.0, 90.0], [0.0, 0.0, 1.0]])
    rot = fx.axis_angle(rng.normal(size=3), 1.1)
    centre = np.array([0.5, -2.0, 3.0])
    p = -2.0 * k @ np.concatenate([rot, (-rot @ centre)[:, None]], 1)  # any non-zero scale, even negative
    k2, c2w = decompose_projection(p)
    assert np.allclose(k2, k, atol=1e-9)
    assert np.allclose(c2w[:, :3], rot.T, atol=1e-9) and np.allclose(c2w[:, 3], centre, atol=1e-9)


def test_dtu_loads_known_cameras_and_masks(dtu_dir):
    scene = load(DTUScene, dtu_dir.root)
    train = scene.load_split("train")
    assert len(train) == 4 and train.common_size == (SIZE, SIZE)
    lens = dtu_dir.lenses[0]
    assert torch.allclose(train.intrinsics, torch.tensor(lens.intrinsics, dtype=torch.float32).expand(4, 4), atol=1e-4)
    # the scene frame is the normalized sphere: the analytic frame A; scene_to_world is the scale_mat
    assert np.allclose(scene.scene_to_world.numpy(), dtu_dir.a_to_world)
    assert np.allclose(train.c2w.numpy(), dtu_dir.c2w_a, atol=1e-5)
    # same rays as the known cameras give
    dirs = pixel_directions(SIZE, SIZE, torch.tensor(lens.intrinsics, dtype=torch.float32)).reshape(-1, 3)
    ref_o, ref_d = camera_rays(dirs, torch.tensor(dtu_dir.c2w_a[2], dtype=torch.float32))
    got_o, got_d = camera_rays(pixel_directions(SIZE, SIZE, train.intrinsics[2]).reshape(-1, 3), train.c2w[2])
    assert torch.allclose(got_o, ref_o, atol=1e-5) and torch.allclose(got_d, ref_d, atol=1e-5)
    # masks (3-channel 000.png beside 000000.png images) are the silhouettes
    assert train.has_mask
    inside, outside = silhouette_agreement(train, np.eye(4))
    assert inside > 0.9 and outside < 0.1


def test_dtu_downscale_and_no_masks(dtu_dir, tmp_path, caplog):
    half = load(DTUScene, dtu_dir.root, img_downscale=2.0).load_split("val")
    assert half.image(0).shape[:2] == (SIZE // 2, SIZE // 2) and half.common_size == (SIZE // 2, SIZE // 2)
    assert torch.allclose(half.intrinsics[0], torch.tensor(dtu_dir.lenses[0].intrinsics, dtype=torch.float32) / 2)
    root = tmp_path / "nomask"
    shutil.copytree(dtu_dir.root, root, ignore=shutil.ignore_patterns("mask"))
    with caplog.at_level(logging.WARNING):
        split = load(DTUScene, root).load_split("train")
    assert not split.has_mask and bool((split.pixels_alpha == 1).all())
    assert "no masks" in caplog.text


def test_dtu_bad_inputs_name_file_and_key(dtu_dir, tmp_path):
    with pytest.raises(DatasetError, match="missing.*DTU layout"):
        load(DTUScene, tmp_path / "missing")
    root = tmp_path / "bad"
    shutil.copytree(dtu_dir.root, root)
    cams = dict(np.load(root / "cameras_sphere.npz"))
    del cams["world_mat_2"]
    np.savez(root / "cameras_sphere.npz", **cams)
    with pytest.raises(DatasetError, match=r"cameras_sphere\.npz.*'world_mat_2'"):
        load(DTUScene, root)
    cams = {k: v for k, v in cams.items() if not k.startswith("scale_mat")}
    np.savez(root / "cameras_sphere.npz", **cams)
    with pytest.raises(DatasetError, match=r"cameras_sphere\.npz.*'scale_mat_0'"):
        load(DTUScene, root)
    cams = dict(np.load(dtu_dir.root / "cameras_sphere.npz"))
    cams["world_mat_1"][0, 3] = np.nan
    np.savez(root / "cameras_sphere.npz", **cams)
    with pytest.raises(DatasetError, match=r"'world_mat_1'.*index \[1\].*NaN"):
        load(DTUScene, root)


# --------------------------------------------------------------------------- COLMAP
@needs_pycolmap
def test_colmap_text_and_binary_give_the_known_rays(colmap_dir, tmp_path):
    text = tmp_path / "text"
    shutil.copytree(colmap_dir.root / "images", text / "images")
    (text / "sparse" / "0").mkdir(parents=True)
    pycolmap.Reconstruction(str(colmap_dir.root / "sparse" / "0")).write_text(str(text / "sparse" / "0"))
    assert (text / "sparse" / "0" / "cameras.txt").is_file()
    a = load(ColmapScene, colmap_dir.root, use_masks=False)
    b = load(ColmapScene, text)
    ta, tb = a.load_split("train"), b.load_split("train")
    assert ta.names == tb.names == colmap_dir.names
    assert torch.allclose(ta.c2w, tb.c2w, atol=1e-6) and torch.allclose(ta.intrinsics, tb.intrinsics)
    assert torch.allclose(ta.pixels_rgb, tb.pixels_rgb)
    # poses: mapped back through scene_to_world they are the written world poses
    back = transform_poses(a.scene_to_world.numpy(), ta.c2w.double().numpy())
    assert np.allclose(back, colmap_dir.c2w_world, atol=1e-5)
    # intrinsics: the pinhole part of each (per-image) OPENCV camera
    for i, lens in enumerate(colmap_dir.lenses):
        assert np.allclose(ta.intrinsics[i].numpy(), lens.intrinsics, atol=1e-4)


def ray_coordinate_image(cam, lens):
    """A distorted image [H, W, 3] whose colour encodes each pixel's undistorted ray (x, y, 1):
    (0.5 + 0.5 x, 0.5 + 0.5 y, 0.5), the ray found by COLMAP's own unprojection (cam_from_img)."""
    j, i = np.meshgrid(np.arange(lens.height) + 0.5, np.arange(lens.width) + 0.5, indexing="ij")
    xy = np.asarray(cam.cam_from_img(np.stack([i.ravel(), j.ravel()], -1))).reshape(lens.height, lens.width, 2)
    return np.concatenate([0.5 + 0.5 * xy, np.full(xy.shape[:2] + (1,), 0.5)], -1)


def expected_pinhole_coordinates(split, index):
    """What a pinhole image's pixels of split view ``index`` should hold: (0.5 + 0.5 x, 0.5 + 0.5 y)."""
    fx_, fy_, cx, cy = split.intrinsics[index].double().tolist()
    height, width = split.size(index)
    j, i = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    x, y = (i - cx) / fx_, (j - cy) / fy_
    return np.stack([0.5 + 0.5 * x, 0.5 + 0.5 * y], -1), np.hypot(x, y)


@needs_pycolmap
def test_colmap_images_are_undistorted(colmap_dir, tmp_path):
    """Undistortion on load: images whose colours encode each pixel's ray come out as a pinhole
    camera's (linear in the pixel); the analytic renders match pinhole renders of the same rays."""
    root = tmp_path / "coords"
    shutil.copytree(colmap_dir.root, root)
    recon = pycolmap.Reconstruction(str(root / "sparse" / "0"))
    for image in recon.images.values():
        cam = recon.cameras[image.camera_id]
        fx._png(root / "images" / image.name, ray_coordinate_image(cam, from_colmap(cam, "fixture")))
    coords = load(ColmapScene, root, use_masks=False).load_split("train")
    for i in range(len(coords)):
        want, radius = expected_pinhole_coordinates(coords, i)
        inner = radius < 0.45  # away from the corners that fall outside the distorted image
        err = np.abs(coords.image(i)[..., :2].numpy() - want)[inner].max()
        raw = np.abs(fx.iio_read(root / "images" / coords.names[i])[..., :2] - want)[inner].max()
        assert err < 0.005 and raw > 2.5 * err, (err, raw)  # 8-bit PNGs: 0.002 steps

    scene = load(ColmapScene, colmap_dir.root)
    train = scene.load_split("train")
    c2w_a = transform_poses(scene_to_a(scene, colmap_dir), train.c2w[:2].double().numpy())
    lenses = [fx.LensCamera(SIZE, SIZE, *train.intrinsics[i].double().tolist()) for i in range(2)]
    for i, ref in enumerate(fx.render_views(c2w_a, lenses)):
        assert float(np.abs(composite_grey(ref) - train.image(i).numpy()).mean()) < 0.02
    # masks (COLMAP's <name>.png convention) undistorted with the images
    assert train.has_mask
    inside, outside = silhouette_agreement(train, scene_to_a(scene, colmap_dir))
    assert inside > 0.9 and outside < 0.1


MODELS = ["SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE",
          "OPENCV_FISHEYE", "SIMPLE_FISHEYE", "FISHEYE", "FOV", "THIN_PRISM_FISHEYE", "DIVISION"]


@needs_pycolmap
@pytest.mark.parametrize("model", MODELS)
def test_undistort_maps_match_projection(model):
    """Each undistorted pixel samples where the distorted camera projects its ray: OpenCV's own
    projectPoints (cv2.fisheye for fisheyes) and COLMAP's projection agree with the map."""
    import cv2

    if model not in pycolmap.CameraModelId.__members__:
        pytest.skip(f"this pycolmap has no {model}")
    cam, lens = fx.colmap_camera(model, size=32)
    map_x, map_y = lens.undistort_maps()
    rng = np.random.default_rng(1)
    px = rng.integers(0, 32, size=(40, 2))
    rays = np.stack([(px[:, 0] + 0.5 - lens.cx) / lens.fx, (px[:, 1] + 0.5 - lens.cy) / lens.fy, np.ones(40)], -1)
    got = np.stack([map_x[px[:, 1], px[:, 0]], map_y[px[:, 1], px[:, 0]]], -1)
    colmap_ref = np.asarray(cam.img_from_cam(rays)) - 0.5  # COLMAP's corner origin -> OpenCV's centres
    assert np.allclose(got, colmap_ref, atol=2e-3)
    k = np.array([[lens.fx, 0, lens.cx - 0.5], [0, lens.fy, lens.cy - 0.5], [0, 0, 1.0]])
    if lens.kind == "opencv":
        ref, _ = cv2.projectPoints(rays[:, None], np.zeros(3), np.zeros(3), k, lens.dist)
    elif lens.kind == "fisheye":
        ref, _ = cv2.fisheye.projectPoints(rays[:, None], np.zeros(3), np.zeros(3), k, lens.dist.reshape(4, 1))
    else:
        return  # not an OpenCV model: COLMAP's projection is the reference
    assert np.allclose(got, ref[:, 0], atol=2e-3)


def test_missing_pycolmap_is_a_clear_error(monkeypatch):
    import sys

    from datasets.colmap import import_pycolmap

    monkeypatch.setitem(sys.modules, "pycolmap", None)  # import fails as if not installed
    with pytest.raises(DatasetError, match="needs pycolmap.*pip install pycolmap"):
        import_pycolmap()


@needs_pycolmap
def test_colmap_bad_inputs(colmap_dir, tmp_path):
    with pytest.raises(DatasetError, match="missing.*COLMAP layout"):
        load(ColmapScene, tmp_path / "missing")
    root = tmp_path / "nosparse"
    shutil.copytree(colmap_dir.root / "images", root / "images")
    with pytest.raises(DatasetError, match=r"sparse/0.*cameras, images and points3D"):
        load(ColmapScene, root)
    spherical = pycolmap.Camera.create_from_model_name(1, "EQUIRECTANGULAR", 10.0, 32, 16) \
        if "EQUIRECTANGULAR" in pycolmap.CameraModelId.__members__ else None
    if spherical is not None:
        with pytest.raises(DatasetError, match="spherical"):
            from_colmap(spherical, "cameras.bin")


# --------------------------------------------------------------------------- instant-ngp
def test_ngp_skips_missing_frames_with_one_warning(ngp_dir, caplog):
    with caplog.at_level(logging.WARNING):
        scene = load(NgpScene, ngp_dir.root)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "skipped 1 of 5 frames" in warnings[0].getMessage()
    train = scene.load_split("train")
    assert len(train) == 4 and train.names == ngp_dir.names
    # OpenGL poses converted: mapped back to world they are the known OpenCV poses
    back = transform_poses(scene.scene_to_world.numpy(), train.c2w.double().numpy())
    assert np.allclose(back, ngp_dir.c2w_world, atol=1e-5)
    assert np.allclose(train.intrinsics[0].numpy(), ngp_dir.lenses[0].intrinsics, atol=1e-4)
    # distortion (k1 k2 p1 p2) removed: the images match pinhole renders of the same rays
    c2w_a = transform_poses(scene_to_a(scene, ngp_dir), train.c2w.double().numpy())
    refs = fx.render_views(c2w_a[:2], [fx.LensCamera(SIZE, SIZE, *train.intrinsics[0].double().tolist())] * 2)
    for i, r in enumerate(refs):
        assert float(np.abs(composite_grey(r) - train.image(i).numpy()).mean()) < 0.02


def test_ngp_camera_angle_fallback_and_errors(ngp_dir, tmp_path):
    root = tmp_path / "ngp"
    shutil.copytree(ngp_dir.root, root)
    meta = json.loads((root / "transforms.json").read_text())
    for key in ("fl_x", "fl_y", "cx", "cy", "k1", "k2", "p1", "p2"):
        meta.pop(key)
    meta["camera_angle_x"] = 2 * np.arctan(0.5 * SIZE / 30.0)
    (root / "transforms.json").write_text(json.dumps(meta))
    val = load(NgpScene, root).load_split("val")
    assert torch.allclose(val.intrinsics[0], torch.tensor([30.0, 30.0, SIZE / 2, SIZE / 2]), atol=1e-4)

    meta.pop("camera_angle_x")
    (root / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"transforms\.json.*no intrinsics.*fl_x"):
        load(NgpScene, root)
    meta["fl_x"] = 30.0
    meta["frames"][2]["transform_matrix"][1][3] = float("nan")
    (root / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"transforms\.json.*frame 2.*NaN"):
        load(NgpScene, root)
    for frame in meta["frames"]:
        frame["file_path"] = "nowhere/" + frame["file_path"]
    meta["frames"][2]["transform_matrix"][1][3] = 0.0
    (root / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="none of the 5 frames' images exist"):
        load(NgpScene, root)
    with pytest.raises(DatasetError, match="missing.*transforms.json"):
        load(NgpScene, tmp_path / "missing")


# --------------------------------------------------------------------------- normalization
def test_normalization_round_trip_and_bounds():
    rng = np.random.default_rng(4)
    c2w_a = fx.poses_a(12, distance=3.0, seed=4)
    pts_a = rng.normal(size=(300, 3)) * 0.3
    pts_a[:, 2] = np.where(rng.random(300) < 0.6, -0.5, pts_a[:, 2])  # a ground plane at z = -0.5
    c2w_w = transform_poses(fx.A_TO_WORLD, c2w_a)
    pts_w = transform_points(fx.A_TO_WORLD, pts_a)
    # the look-at point of cameras aimed at A's origin is A's origin
    centre, cond = lookat_center(c2w_w)
    assert cond > 1e-3 and np.allclose(centre, fx.A_TO_WORLD[:3, 3], atol=1e-6)
    for up in ("cameras", "points"):
        cfg = NormalizationConfig(center="lookat", up=up, scale="cameras", camera_distance=2.5)
        m = normalization_transform(c2w_w, pts_w, cfg, "test", radius=0.8)
        # apply then invert: identity
        assert np.allclose(invert_similarity(m) @ m, np.eye(4), atol=1e-9)
        back = transform_poses(invert_similarity(m), transform_poses(m, c2w_w))
        assert np.allclose(back, c2w_w, atol=1e-9)
        cams = transform_poses(m, c2w_w)[:, :, 3]
        assert np.isclose(np.median(np.linalg.norm(cams, axis=-1)), 2.5 * 0.8)
        # A's up (+z) becomes the scene's +z (the cameras' ups average to it; the ground plane's normal is it)
        up_scene = m[:3, :3] @ fx.A_TO_WORLD[:3, :3] @ np.array([0.0, 0.0, 1.0])
        assert np.allclose(up_scene / np.linalg.norm(up_scene), [0, 0, 1], atol=0.05 if up == "cameras" else 1e-3)
    cfg = NormalizationConfig(center="points", up="none", scale="points", points_percentile=90)
    m = normalization_transform(c2w_w, pts_w, cfg, "test", radius=1.0)
    r = np.linalg.norm(transform_points(m, pts_w), axis=-1)
    assert np.isclose(np.percentile(r, 90), 1.0)
    with pytest.raises(DatasetError, match="normalization.center.*sparse points"):
        normalization_transform(c2w_w, None, NormalizationConfig(center="points"), "transforms.json")


@needs_pycolmap
def test_exported_mesh_lands_on_the_world_sparse_points(colmap_dir, tmp_path):
    """A surface in scene coordinates, exported the way systems do (Mesh.transformed(scene_to_world)),
    lies on the capture's sparse points in COLMAP's world frame; the scene cameras see it where the
    images do; the normalized object sits inside the bounds."""
    from utils.mesh import extract_isosurface

    scene = load(ColmapScene, colmap_dir.root, normalization={"camera_distance": 2.5})
    to_a = scene_to_a(scene, colmap_dir)
    # the scene cameras, mapped into A, see the analytic object where the masks are
    inside, outside = silhouette_agreement(scene.load_split("train"), to_a)
    assert inside > 0.9 and outside < 0.1
    # the analytic surface expressed in scene coordinates (what an ideal model learns)
    scale = abs(np.linalg.det(to_a[:3, :3])) ** (1 / 3)
    to_a_t = torch.from_numpy(to_a).float()

    def sdf_scene(x):
        return scene_sdf(x @ to_a_t[:3, :3].T + to_a_t[:3, 3]) / scale

    mesh = extract_isosurface(sdf_scene, (torch.full((3,), -1.0), torch.full((3,), 1.0)), 48)
    assert mesh.vertices.shape[0] > 100
    assert float(mesh.vertices.norm(dim=-1).max()) < 1.0  # inside the model's bounds
    world = mesh.transformed(scene.scene_to_world)
    pts = torch.from_numpy(colmap_dir.points_world).float()
    nearest = torch.cdist(pts, world.vertices.float()).min(dim=1).values
    world_scale = abs(np.linalg.det(colmap_dir.a_to_world[:3, :3])) ** (1 / 3)
    assert float(nearest.max()) < 0.05 * world_scale  # within a marching-cubes cell
    # and the sparse points, normalized, sit on the scene-frame surface
    assert float(sdf_scene(torch.from_numpy(scene.points_scene).float()).abs().max()) < 1e-2


@needs_pycolmap
def test_scene_transform_is_saved_as_json(colmap_dir, tmp_path):
    from datasets.datamodule import SceneDataModule
    from datasets.normalization import write_scene_transform

    scene = load(ColmapScene, colmap_dir.root)
    dm = SceneDataModule(scene, scene.cfg)
    # as a run does when it makes its folder (systems/run.py)
    path = write_scene_transform(tmp_path / "save" / "scene_to_world.json", scene.scene_to_world.numpy(),
                                 dataset="colmap")
    saved = json.loads(path.read_text())
    assert np.allclose(saved["scene_to_world"], scene.scene_to_world.numpy())
    assert np.allclose(np.array(saved["world_to_scene"]) @ np.array(saved["scene_to_world"]), np.eye(4), atol=1e-6)  # stored from float32 tensors
    assert saved["dataset"] == "colmap"
    assert dm.state_dict()["scene_to_world"] == scene.scene_to_world.tolist()


@needs_pycolmap
def test_predict_orbit_and_holdout(colmap_dir):
    scene = load(ColmapScene, colmap_dir.root, holdout_every=2, n_predict_views=3)
    assert scene.load_split("train").names == colmap_dir.names[1::2]
    assert scene.load_split("test").names == colmap_dir.names[0::2]
    pred = scene.load_split("predict")
    assert len(pred) == 3 and not pred.has_ground_truth
    # around the scene centre at the cameras' distance, looking at it
    eye = pred.c2w[:, :, 3]
    assert torch.allclose(eye.norm(dim=-1), torch.full((3,), 2.5), atol=0.3)
    assert float((pred.c2w[:, :, 2] * -torch.nn.functional.normalize(eye, dim=-1)).sum(-1).min()) > 0.99


def test_up_direction_is_what_the_mesh_preview_shows_up(dtu_dir, colmap_dir):
    # DTU keeps the scan's frame (here frame A, whose up is +z, seen through the cameras' up vectors)
    scene = load(DTUScene, dtu_dir.root)
    dtu_up = np.asarray(scene.up_direction())
    cameras_up = -scene.load_split("train").c2w[:, :, 1].sum(0).double().numpy()  # OpenCV: up is -y
    assert np.allclose(dtu_up, cameras_up / np.linalg.norm(cameras_up), atol=1e-5)
    assert dtu_up @ np.array([0.0, 0.0, 1.0]) > 0.95
    # a normalized capture is turned so that up is +z
    assert np.allclose(load(ColmapScene, colmap_dir.root).up_direction(), (0.0, 0.0, 1.0))


# --------------------------------------------------------------------------- imgs2poses
def test_imgs2poses_checks_arguments(tmp_path):
    from scripts.imgs2poses import SfMError, main, run_sfm

    with pytest.raises(SfMError, match="does not exist"):
        run_sfm(tmp_path / "none", tmp_path / "out")
    (tmp_path / "two").mkdir()
    for i in range(2):
        fx._png(tmp_path / "two" / f"{i}.png", np.zeros((8, 8, 3)))
    with pytest.raises(SfMError, match="holds 2 image"):
        run_sfm(tmp_path / "two", tmp_path / "out")
    assert main([str(tmp_path / "none")]) == 2


@needs_pycolmap
def test_imgs2poses_reports_too_few_registered(tmp_path, capsys):
    from scripts.imgs2poses import main

    photos = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for i in range(3):  # unrelated noise: nothing matches
        fx._png(photos / f"{i}.png", rng.random((64, 64, 3)))
    code = main([str(photos), "--out", str(tmp_path / "scene")])
    err = capsys.readouterr()
    assert code == 2 and "too few images registered: 0 of 3" in err.err
    assert "1/3" in err.out and "3/3" in err.out  # a progress line per stage
    assert not (tmp_path / "scene" / "sparse").exists()


# --------------------------------------------------------------------------- the shared captures
def shared(name):
    path = SHARED_DATA / name
    return pytest.mark.skipif(not path.is_dir(), reason=f"shared data not present at {path}")


@shared("dtu_scan24")
def test_shared_dtu_scan24_loads():
    scene = load(DTUScene, SHARED_DATA / "dtu_scan24", img_downscale=4.0)
    assert len(scene.views) == 49
    train = scene.load_split("val")
    assert len(train) == 4 and train.common_size == (75, 100) and train.has_mask
    assert 0.05 < float(train.pixels_alpha.mean()) < 0.95
    # cameras around the unit sphere, looking at it
    eye = train.c2w[:, :, 3]
    assert float(eye.norm(dim=-1).min()) > 1.5
    assert float((train.c2w[:, :, 2] * -torch.nn.functional.normalize(eye, dim=-1)).sum(-1).min()) > 0.8


@shared("beer_colmap")
@needs_pycolmap
def test_shared_beer_colmap_projects_its_sparse_points():
    """The loaded (undistorted, normalized) cameras project the sparse points onto COLMAP's own
    (undistorted) keypoint observations."""
    import cv2

    scene = load(ColmapScene, SHARED_DATA / "beer_colmap", img_downscale=8.0, max_images_val=2)
    assert len(scene.views) == 71 and scene.points_world.shape == (4414, 3)
    recon = pycolmap.Reconstruction(str(SHARED_DATA / "beer_colmap" / "sparse" / "0"))
    image = recon.images[sorted(recon.images.keys())[5]]
    view = [i for i, v in enumerate(scene.views) if v.name == image.name][0]
    obs = [(p.xy, p.point3D_id) for p in image.points2D if p.has_point3D()]
    xy = np.array([o[0] for o in obs])
    pts = transform_points(scene.world_to_scene, np.array([recon.points3D[o[1]].xyz for o in obs]))
    lens = scene.views[view].camera
    k = np.array([[lens.fx, 0, lens.cx - 0.5], [0, lens.fy, lens.cy - 0.5], [0, 0, 1.0]])
    und = cv2.undistortPoints(xy.reshape(-1, 1, 2) - 0.5, k, lens.dist, P=k)[:, 0] + 0.5
    c2w = scene.c2w_scene[view]
    cam = (pts - c2w[:, 3]) @ c2w[:, :3]
    proj = cam[:, :2] / cam[:, 2:] * [lens.fx, lens.fy] + [lens.cx, lens.cy]
    assert np.median(np.linalg.norm(proj - und, axis=-1)) < 1.5
    val = scene.load_split("val")
    assert len(val) == 2 and val.common_size == (160, 90)


@shared("fox")
def test_shared_fox_skips_missing_images(caplog):
    with caplog.at_level(logging.WARNING):
        scene = load(NgpScene, SHARED_DATA / "fox", img_downscale=8.0, max_images_val=2)
    assert len(scene.views) == 50
    assert sum("skipped 17 of 67 frames" in r.getMessage() for r in caplog.records) == 1
    val = scene.load_split("val")
    assert len(val) == 2 and val.common_size == (240, 135)
