"""Captures whose images differ in size (COLMAP's image_undistorter output, nerfstudio per-frame
w/h, Blender per-frame intrinsics): each image loads at its own size with its own intrinsics, and
training rays go through real pixels of the right image."""
import json
import shutil

import numpy as np
import pytest
import torch

from datasets.base import DatasetError
from datasets.blender import BlenderScene
from datasets.datamodule import ImageRays, RandomRays
from datasets.ngp import NgpScene
from datasets.normalization import transform_points, transform_poses
from tests import capture_fixtures as fx
from utils.config import parse_component

try:
    import pycolmap  # noqa: F401
except ImportError:
    pycolmap = None
needs_pycolmap = pytest.mark.skipif(pycolmap is None, reason="pycolmap is not installed")

# (width, height) of each view: as image_undistorter writes them, a few pixels apart (and one portrait)
SIZES = [(30, 20), (28, 21), (31, 19), (18, 26)]
STEP = 4 / 255  # the coordinate images' encoding (up to 63 px): (x + 0.5) * STEP, (y + 0.5) * STEP


def load(cls, root, **kw):
    return cls(parse_component(cls.Config, {"root_dir": str(root), **kw}))


def coordinate_image(width: int, height: int, index: int) -> np.ndarray:
    """An image [H, W, 3] whose red and green encode each pixel's centre (x + 0.5, y + 0.5) and
    whose blue encodes the image's index: every pixel of every image has its own colour."""
    j, i = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    return np.stack([i * STEP, j * STEP, np.full_like(i, (index + 1) * 40 / 255)], -1)


def decode(rgb: torch.Tensor):
    """(image index [R], pixel centre x [R], y [R]) from the colours of coordinate images."""
    rgb = rgb.double().numpy()
    return np.round(rgb[:, 2] * 255 / 40).astype(int) - 1, rgb[:, 0] / STEP, rgb[:, 1] / STEP


def project_world(capture, index: int, rays_o, rays_d, scene) -> np.ndarray:
    """Where scene-frame rays [R, 3] cross view ``index``'s image, with that view's own (known)
    world pose and lens: pixel positions [R, 2] (corner origin)."""
    s2w = scene.scene_to_world.double().numpy()
    points = transform_points(s2w, (rays_o + rays_d).double().numpy())  # a point on each ray, in the world
    c2w = capture.c2w_world[index]
    cam = (points - c2w[:, 3]) @ c2w[:, :3]
    lens = capture.lenses[index]
    return np.stack([lens.fx * cam[:, 0] / cam[:, 2] + lens.cx, lens.fy * cam[:, 1] / cam[:, 2] + lens.cy], -1)


@pytest.fixture(scope="module")
def mixed_colmap(tmp_path_factory):
    """A COLMAP dense folder: PINHOLE cameras of different sizes, one per image; the images encode
    their pixel coordinates."""
    capture = fx.write_colmap(tmp_path_factory.mktemp("mixed") / "dense", n=len(SIZES), model="PINHOLE", sizes=SIZES)
    for i, (w, h) in enumerate(SIZES):
        fx._png(capture.root / "images" / capture.names[i], coordinate_image(w, h, i))
    return capture


@needs_pycolmap
@pytest.mark.parametrize("image_sampling", [False, True])
def test_training_rays_land_in_the_right_pixel_of_each_image(mixed_colmap, image_sampling):
    from datasets.colmap import ColmapScene

    scene = load(ColmapScene, mixed_colmap.root)
    train = scene.load_split("train")
    assert train.common_size is None
    assert train.sizes.tolist() == [[h, w] for w, h in SIZES]
    rays = RandomRays(train, 6000, image_sampling, "white", seed=0)
    generator = torch.Generator().manual_seed(0)
    drawn = []
    for _ in range(3 if image_sampling else 1):
        batch = rays.sample(generator)
        img, x, y = decode(batch["rgb"])
        assert bool((batch["alpha"] == 1).all())
        for i, (w, h) in enumerate(SIZES):
            sel = img == i
            if not sel.any():
                continue
            # the colour says which pixel was drawn: a real one of image i
            assert x[sel].min() > 0 and x[sel].max() < w and y[sel].min() > 0 and y[sel].max() < h
            assert np.allclose(x[sel] % 1, 0.5, atol=1e-4) and np.allclose(y[sel] % 1, 0.5, atol=1e-4)
            # the ray goes through that pixel's centre of view i's own camera
            uv = project_world(mixed_colmap, i, batch["rays_o"][sel], batch["rays_d"][sel], scene)
            assert np.abs(uv - np.stack([x[sel], y[sel]], -1)).max() < 1e-3
        drawn.append(np.bincount(img, minlength=len(SIZES)))
    counts = np.stack(drawn)
    if image_sampling:
        assert ((counts > 0).sum(1) == 1).all()  # each batch from one image
    else:
        # every pixel of every image equally likely: each image's share is its share of the pixels
        share = np.array([w * h for w, h in SIZES], dtype=float)
        assert np.abs(counts[0] / counts[0].sum() - share / share.sum()).max() < 0.03


@needs_pycolmap
def test_whole_images_keep_their_own_size(mixed_colmap):
    from datasets.colmap import ColmapScene

    val = load(ColmapScene, mixed_colmap.root, max_images_val=None).load_split("val")
    for i, (w, h) in enumerate(SIZES):
        item = ImageRays(val, "black")[i]
        assert (item["height"], item["width"]) == (h, w)
        want = fx.iio_read(mixed_colmap.root / "images" / val.names[i]).reshape(-1, 3)
        assert np.abs(item["rgb"].double().numpy() - want).max() < 1e-6
        uv = project_world(mixed_colmap, i, item["rays_o"], item["rays_d"], load(ColmapScene, mixed_colmap.root))
        j, k = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
        assert np.abs(uv - np.stack([k.ravel(), j.ravel()], -1)).max() < 1e-3


def assert_resized_rays_keep_their_colour(capture, scene, split, original_sizes):
    """Each pixel of each resized image is still crossed by its ray where the original image held
    its colour: area averaging keeps a linear coordinate ramp's centre value, so the colour says
    which original position the resized pixel covers, and the view's own camera projects the ray there."""
    for i, (w, h) in enumerate(original_sizes):
        item = ImageRays(split, "black")[i]
        _, x, y = decode(item["rgb"])
        uv = project_world(capture, i, item["rays_o"], item["rays_d"], scene)
        inner = (x > 1) & (x < w - 1) & (y > 1) & (y < h - 1)  # away from the border's clamped ramps
        assert inner.sum() > 20
        assert np.abs(uv - np.stack([x, y], -1))[inner].max() < 0.02


@needs_pycolmap
def test_downscale_applies_per_image(mixed_colmap):
    from datasets.colmap import ColmapScene

    scene = load(ColmapScene, mixed_colmap.root, img_downscale=2.0)
    val = scene.load_split("val")
    assert val.sizes.tolist() == [[int(np.floor(h / 2 + 0.5)), int(np.floor(w / 2 + 0.5))] for w, h in SIZES]
    assert_resized_rays_keep_their_colour(mixed_colmap, scene, val, SIZES)


@needs_pycolmap
def test_img_wh_resizes_every_image_of_one_shape(mixed_colmap, tmp_path):
    """img_wh: every image at that size, each with its own intrinsics, when the aspect ratios agree
    within 2% (COLMAP's undistorted sizes do); else a clear error naming an image and img_downscale."""
    from datasets.colmap import ColmapScene

    with pytest.raises(DatasetError, match=r"img_wh \[15, 10\].*aspect ratio of image '.*r_\d\.png'.*img_downscale"):
        load(ColmapScene, mixed_colmap.root, img_wh=[15, 10])
    close = [(60, 40), (61, 40), (59, 40)]
    capture = fx.write_colmap(tmp_path / "close", n=3, model="PINHOLE", sizes=close)
    for i, (w, h) in enumerate(close):
        fx._png(capture.root / "images" / capture.names[i], coordinate_image(w, h, i))
    scene = load(ColmapScene, capture.root, img_wh=[30, 20])
    train = scene.load_split("train")
    assert train.common_size == (20, 30)
    assert_resized_rays_keep_their_colour(capture, scene, train, close)


def test_ngp_per_frame_sizes_and_intrinsics(tmp_path):
    sizes = [(26, 22), (24, 24), (22, 27)]
    capture = fx.write_ngp(tmp_path / "ngp", n=3, missing=0, sizes=sizes)
    scene = load(NgpScene, capture.root)
    train = scene.load_split("train")
    assert train.sizes.tolist() == [[h, w] for w, h in sizes]
    for i in range(3):
        assert np.allclose(train.intrinsics[i].numpy(), capture.lenses[i].intrinsics, atol=1e-4)
    # undistorted, each image matches a pinhole render of its own camera
    to_a = np.linalg.inv(capture.a_to_world) @ scene.scene_to_world.double().numpy()
    c2w_a = transform_poses(to_a, train.c2w.double().numpy())
    lenses = [fx.LensCamera(w, h, *train.intrinsics[i].double().tolist()) for i, (w, h) in enumerate(sizes)]
    for i, ref in enumerate(fx.render_views(c2w_a, lenses)):
        grey = ref[..., :3] * ref[..., 3:] + (1 - ref[..., 3:]) * 0.1
        assert float(np.abs(grey - train.image(i).numpy()).mean()) < 0.02


def test_blender_frames_of_different_sizes(tiny_scene_dir, tmp_path):
    """NeRF-synthetic layout with per-frame w/h/fl_x/cx/cy: two frames cropped (as an undistorter
    crops), their principal points moved with the crop; the alpha still matches the analytic
    silhouette through each frame's own camera."""
    import imageio.v3 as iio

    from datasets.cameras import camera_rays, pixel_directions
    from datasets.synthetic import sphere_trace

    root = tmp_path / "blender"
    shutil.copytree(tiny_scene_dir, root)
    meta = json.loads((root / "transforms_val.json").read_text())
    r = 24
    focal = 0.5 * r / np.tan(0.5 * meta["camera_angle_x"])
    crops = [(2, 1, 20, 22), (0, 3, 24, 18)]  # (left, top, width, height)
    for frame, (left, top, w, h) in zip(meta["frames"], crops):
        path = root / (frame["file_path"] + ".png")
        iio.imwrite(path, iio.imread(path)[top:top + h, left:left + w])
        frame.update({"fl_x": focal, "fl_y": focal, "cx": r / 2 - left, "cy": r / 2 - top, "w": w, "h": h})
    (root / "transforms_val.json").write_text(json.dumps(meta))
    val = load(BlenderScene, root).load_split("val")
    assert val.sizes.tolist() == [[22, 20], [18, 24]]
    for i in range(2):
        h, w = val.size(i)
        rays_o, rays_d = camera_rays(pixel_directions(w, h, val.intrinsics[i]).reshape(-1, 3), val.c2w[i])
        hit, _ = sphere_trace(rays_o, rays_d)
        alpha = val.mask(i).reshape(-1)
        assert float(alpha[hit].mean()) > 0.9 and float(alpha[~hit].mean()) < 0.1


def test_video_frames_of_different_sizes_are_centred_on_one_canvas():
    from utils.saving import pad_to_common_size

    a = np.zeros((4, 6, 3), np.uint8)
    b = np.full((6, 2, 3), 7, np.uint8)
    out = pad_to_common_size([a, b])
    assert [f.shape for f in out] == [(6, 6, 3), (6, 6, 3)]
    assert (out[0][1:5] == 0).all() and (out[0][0] == 255).all() and (out[0][5] == 255).all()
    assert (out[1][:, 2:4] == 7).all() and (out[1][:, :2] == 255).all() and (out[1][:, 4:] == 255).all()
    assert pad_to_common_size([a, a])[1] is a  # one size: untouched
