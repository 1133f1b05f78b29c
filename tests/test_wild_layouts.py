"""Capture folders as users bring them: the layouts, file names and image encodings other tools
write (NeuS/IDR, COLMAP, 3DGS / mip-NeRF 360, nerfstudio, Windows machines), loaded as they are.
Fixtures are tiny renders made by tests/capture_fixtures.py."""
from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets.base import DatasetError, read_image
from datasets.captures import read_mask
from datasets.colmap import ColmapScene
from datasets.dtu import DTUScene
from datasets.ngp import NgpScene
from tests import capture_fixtures as fx
from utils.config import parse_component

SIZE = 24


def load(cls, root: Path, **options):
    return cls(parse_component(cls.Config, {"root_dir": str(root), **options}))


def centres(scene) -> np.ndarray:
    """Camera centres [N, 3] of the loaded views, in the capture's world frame."""
    return np.stack([v.c2w[:, 3] for v in scene.views])


def write_png(path: Path, img: np.ndarray) -> None:
    import imageio.v3 as iio

    iio.imwrite(path, img)


# ------------------------------------------------------------------------------------------ DTU
def test_dtu_views_keep_the_camera_and_mask_of_their_number_when_images_were_deleted(tmp_path, caplog):
    cap = fx.write_dtu(tmp_path, n=5, size=SIZE)
    (tmp_path / "image" / "000002.png").unlink()
    with caplog.at_level(logging.WARNING):
        scene = load(DTUScene, tmp_path)
    assert [v.name for v in scene.views] == ["000000.png", "000001.png", "000003.png", "000004.png"]
    np.testing.assert_allclose(centres(scene), cap.c2w_world[[0, 1, 3, 4], :, 3], atol=1e-4)
    assert [v.mask_path.name for v in scene.views] == ["000.png", "001.png", "003.png", "004.png"]
    assert "5 cameras for 4 images" in caplog.text


def test_dtu_unpadded_numbers_are_view_indices_not_name_order(tmp_path):
    cap = fx.write_dtu(tmp_path, n=12, size=SIZE, masks=False)
    for i in range(12):  # 0.png ... 11.png: sorted by name they would run 0, 1, 10, 11, 2, ...
        (tmp_path / "image" / f"{i:06d}.png").rename(tmp_path / "image" / f"{i}.png")
    scene = load(DTUScene, tmp_path)
    assert [v.name for v in scene.views] == [f"{i}.png" for i in range(12)]
    np.testing.assert_allclose(centres(scene), cap.c2w_world[:, :, 3], atol=1e-4)


def test_dtu_image_numbers_that_are_not_camera_indices_fall_back_to_name_order(tmp_path, caplog):
    cap = fx.write_dtu(tmp_path, n=4, size=SIZE, masks=False)
    for i in reversed(range(4)):  # numbered from 1 while the cameras are world_mat_0 .. world_mat_3
        (tmp_path / "image" / f"{i:06d}.png").rename(tmp_path / "image" / f"{i + 1:06d}.png")
    with caplog.at_level(logging.WARNING):
        scene = load(DTUScene, tmp_path)
    assert [v.name for v in scene.views] == [f"{i + 1:06d}.png" for i in range(4)]
    np.testing.assert_allclose(centres(scene), cap.c2w_world[:, :, 3], atol=1e-4)
    assert "not the camera file's view numbers (no world_mat_4" in caplog.text


def test_dtu_plural_folders_large_cameras_upper_case_masks_and_a_stray_image(tmp_path, caplog):
    fx.write_dtu(tmp_path, n=4, size=SIZE)
    (tmp_path / "image").rename(tmp_path / "images")
    (tmp_path / "mask").rename(tmp_path / "masks")
    for p in list((tmp_path / "masks").iterdir()):
        p.rename(p.with_suffix(".PNG"))
    (tmp_path / "cameras_sphere.npz").rename(tmp_path / "cameras_large.npz")
    shutil.copy(tmp_path / "images" / "000000.png", tmp_path / "images" / "preview.png")
    with caplog.at_level(logging.WARNING):
        scene = load(DTUScene, tmp_path)
    assert [v.name for v in scene.views] == [f"{i:06d}.png" for i in range(4)]
    assert [v.mask_path.name for v in scene.views] == [f"{i:03d}.PNG" for i in range(4)]
    assert "preview.png" in caplog.text


def test_dtu_camera_file_of_another_name_is_named_with_the_key_to_set(tmp_path):
    fx.write_dtu(tmp_path, n=3, size=SIZE)
    (tmp_path / "cameras_sphere.npz").rename(tmp_path / "my_cameras.npz")
    with pytest.raises(DatasetError, match=r"my_cameras\.npz.*dataset\.cameras_file"):
        load(DTUScene, tmp_path)
    assert len(load(DTUScene, tmp_path, cameras_file="my_cameras.npz").views) == 3


# ------------------------------------------------------------------------------------------ masks and images
def test_masks_stored_as_the_integers_0_and_1_are_foreground_masks(tmp_path):
    fx.write_dtu(tmp_path, n=4, size=SIZE)
    for p in (tmp_path / "mask").iterdir():
        write_png(p, (read_mask(p)[..., 0] > 0.5).astype(np.uint8))  # values 0 and 1
    assert read_mask(tmp_path / "mask" / "000.png").max() == 1.0
    train = load(DTUScene, tmp_path).load_split("train")
    assert train.has_mask
    assert set(np.unique(train.pixels_alpha.numpy()).tolist()) <= {0.0, 1.0}


def test_masks_the_run_does_not_use_leave_the_photos_whole(tmp_path):
    fx.write_dtu(tmp_path, n=4, size=SIZE)
    for p in (tmp_path / "mask").iterdir():  # every mask all background: they say nothing
        write_png(p, np.zeros((SIZE, SIZE), np.uint8))
    train = load(DTUScene, tmp_path).load_split("train")
    assert not train.has_mask and "all background" in train.mask_info
    assert bool((train.pixels_alpha == 1.0).all())  # the targets are the photos, not the background colour


def test_cmyk_jpeg_reads_as_rgb_and_grey_with_alpha_as_rgba(tmp_path):
    from PIL import Image

    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[...] = (200, 60, 20)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "print.jpg", quality=100)
    img = read_image(tmp_path / "print.jpg")
    assert img.shape == (8, 8, 3)
    np.testing.assert_allclose(img.mean(axis=(0, 1)), np.array([200, 60, 20]) / 255, atol=0.03)

    la = np.zeros((8, 8, 2), np.uint8)
    la[..., 0] = 100
    la[4:, :, 1] = 255
    Image.fromarray(la, "LA").save(tmp_path / "grey_alpha.png")
    img = read_image(tmp_path / "grey_alpha.png")
    assert img.shape == (8, 8, 4)
    np.testing.assert_allclose(img[..., :3], 100 / 255, atol=1e-6)
    assert img[:4, :, 3].max() == 0.0 and img[4:, :, 3].min() == 1.0


# ------------------------------------------------------------------------------------------ instant-ngp / nerfstudio
def _edit_json(root: Path, edit) -> None:
    path = root / "transforms.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def test_ngp_file_paths_written_on_other_machines_are_found(tmp_path):
    cap = fx.write_ngp(tmp_path, n=4, size=SIZE, missing=0, distortion=False)
    (tmp_path / "images" / "r_3.png").rename(tmp_path / "images" / "r_3.PNG")

    def spell(meta):
        frames = meta["frames"]
        frames[0]["file_path"] = "images\\r_0.png"  # written on Windows
        frames[1]["file_path"] = "/home/alice/scene/keyframes/images/r_1.png"  # absolute, another machine
        frames[2]["file_path"] = "C:\\Users\\bob\\scene\\images\\r_2.png"
        frames[3]["file_path"] = "./images/r_3.png"  # the file on disk is r_3.PNG

    _edit_json(tmp_path, spell)
    scene = load(NgpScene, tmp_path)
    assert [v.image_path.name for v in scene.views] == ["r_0.png", "r_1.png", "r_2.png", "r_3.PNG"]
    np.testing.assert_allclose(centres(scene), cap.c2w_world[:, :, 3], atol=1e-6)


def test_ngp_w_h_of_another_aspect_ratio_than_the_image_is_refused(tmp_path):
    fx.write_ngp(tmp_path, n=3, size=SIZE, missing=0, distortion=False, sizes=[(32, 24)] * 3)

    def turn(meta):
        meta["frames"][1].update(w=24, h=32)

    _edit_json(tmp_path, turn)
    with pytest.raises(DatasetError, match=r"frame 1 says w=24, h=32 but its image .* is 32x24"):
        load(NgpScene, tmp_path)


def test_ngp_a_frames_own_field_of_view_wins_over_the_files_focal_length(tmp_path):
    fx.write_ngp(tmp_path, n=3, size=SIZE, missing=0, distortion=False)

    def per_frame(meta):
        meta["frames"][0]["camera_angle_x"] = 2.0 * math.atan(0.5 * SIZE / 40.0)  # fx = 40

    _edit_json(tmp_path, per_frame)
    scene = load(NgpScene, tmp_path)
    assert scene.views[0].camera.fx == pytest.approx(40.0)
    assert scene.views[1].camera.fx == pytest.approx(31.0)  # the file's fl_x


def test_ngp_folder_with_split_files_only_points_to_the_blender_layout(tmp_path):
    fx.write_ngp(tmp_path, n=3, size=SIZE, missing=0, distortion=False)
    (tmp_path / "transforms.json").rename(tmp_path / "transforms_train.json")
    with pytest.raises(DatasetError, match=r"dataset\.name=blender"):
        load(NgpScene, tmp_path)


# ------------------------------------------------------------------------------------------ COLMAP
def _cut_text_model(folder: Path, keep_images: int) -> None:
    """Rewrite the text model in ``folder`` with only its first ``keep_images`` images."""
    lines = (folder / "images.txt").read_text().splitlines()
    head = [ln for ln in lines if ln.startswith("#")]
    body = [ln for ln in lines if not ln.startswith("#")]
    (folder / "images.txt").write_text("\n".join(head + body[: 2 * keep_images]) + "\n")


def test_colmap_the_largest_of_several_models_is_used_and_the_others_named(tmp_path, caplog):
    fx.write_colmap(tmp_path, n=5, size=SIZE, model="PINHOLE", binary=False)
    shutil.copytree(tmp_path / "sparse" / "0", tmp_path / "sparse" / "1")
    _cut_text_model(tmp_path / "sparse" / "0", 2)  # the mapper's model 0 is not always its largest
    with caplog.at_level(logging.WARNING):
        scene = load(ColmapScene, tmp_path)
    assert len(scene.views) == 5
    assert "0: 2 images, 1: 5 images" in caplog.text and "sparse/1" in caplog.text
    assert len(load(ColmapScene, tmp_path, sparse_dir="sparse/0").views) == 2


@pytest.mark.parametrize("where", ["sparse/1", "colmap/sparse/0"])
def test_colmap_model_in_another_numbered_or_nerfstudio_folder_is_found(tmp_path, where):
    fx.write_colmap(tmp_path, n=4, size=SIZE, model="PINHOLE")
    (tmp_path / where).parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(tmp_path / "sparse" / "0"), str(tmp_path / where))
    assert len(load(ColmapScene, tmp_path).views) == 4


def test_colmap_model_of_the_distorted_photos_is_named_with_the_keys_to_set(tmp_path):
    fx.write_colmap(tmp_path, n=4, size=SIZE, model="PINHOLE")
    (tmp_path / "distorted" / "sparse").mkdir(parents=True)
    shutil.move(str(tmp_path / "sparse" / "0"), str(tmp_path / "distorted" / "sparse" / "0"))
    with pytest.raises(DatasetError, match=r"dataset\.sparse_dir=distorted/sparse/0 .*dataset\.images_dir"):
        load(ColmapScene, tmp_path)


def test_colmap_image_count_follows_colmaps_reader_at_the_end_of_images_txt(tmp_path):
    from datasets.colmap import registered_count

    fx.write_colmap(tmp_path, n=4, size=SIZE, model="PINHOLE", binary=False)
    model = tmp_path / "sparse" / "0"
    lines = (model / "images.txt").read_text().splitlines()
    (model / "images.txt").write_text("\n".join(lines).rstrip("\n"))  # the last POINTS2D line trimmed away
    assert registered_count(model) == len(load(ColmapScene, tmp_path).views) == 3


def test_colmap_photos_missing_on_disk_are_skipped_with_a_warning(tmp_path, caplog):
    fx.write_colmap(tmp_path, n=5, size=SIZE, model="PINHOLE")
    (tmp_path / "images" / "r_2.png").unlink()
    with caplog.at_level(logging.WARNING):
        scene = load(ColmapScene, tmp_path)
    assert [v.name for v in scene.views] == ["r_0.png", "r_1.png", "r_3.png", "r_4.png"]
    assert "skipped 1 registered image(s) missing" in caplog.text


def test_colmap_says_how_many_photos_a_text_model_without_points2d_lines_registers(tmp_path, caplog):
    fx.write_colmap(tmp_path, n=6, size=SIZE, model="PINHOLE", binary=False)
    images_txt = tmp_path / "sparse" / "0" / "images.txt"
    lines = images_txt.read_text().splitlines()
    images_txt.write_text("\n".join(ln for ln in lines if ln.strip()) + "\n")  # pose lines only
    with caplog.at_level(logging.WARNING):
        scene = load(ColmapScene, tmp_path)
    assert len(scene.views) == 3  # COLMAP's reader takes every second pose line for a POINTS2D line
    assert "registers 3 of the 6 photos" in caplog.text and "POINTS2D" in caplog.text


def test_colmap_downscaled_copies_of_the_photos_get_rescaled_cameras(tmp_path):
    import cv2

    cap = fx.write_colmap(tmp_path, n=4, size=SIZE, model="PINHOLE")
    (tmp_path / "images_2").mkdir()
    for name in cap.names:
        img = cv2.imread(str(tmp_path / "images" / name))
        cv2.imwrite(str(tmp_path / "images_2" / name), cv2.resize(img, (SIZE // 2, SIZE // 2), interpolation=cv2.INTER_AREA))
    scene = load(ColmapScene, tmp_path, images_dir="images_2")
    for view, lens in zip(scene.views, cap.lenses):
        assert (view.camera.width, view.camera.height) == (SIZE // 2, SIZE // 2)
        np.testing.assert_allclose(view.camera.intrinsics, np.asarray(lens.intrinsics) / 2, rtol=1e-6)
    assert scene.load_split("train").image(0).shape == (SIZE // 2, SIZE // 2, 3)

    img = cv2.imread(str(tmp_path / "images_2" / cap.names[0]))
    cv2.imwrite(str(tmp_path / "images_2" / cap.names[0]), img[:, : SIZE // 4])  # cropped: another shape
    with pytest.raises(DatasetError, match=r"another aspect ratio"):
        load(ColmapScene, tmp_path, images_dir="images_2")


# ------------------------------------------------------------------------------------------ nerfstudio masks
def _ngp_with_ignore_masks(root: Path, n: int = 3) -> np.ndarray:
    """An ngp capture whose frames name masks (nerfstudio's mask_path) that are white but for a
    black box over rows 4-9, columns 6-13 (say, a passer-by); returns that box [SIZE, SIZE] bool."""
    fx.write_ngp(root, n=n, size=SIZE, missing=0, distortion=False)
    box = np.zeros((SIZE, SIZE), bool)
    box[4:10, 6:14] = True
    (root / "masks").mkdir()
    for i in range(n):
        write_png(root / "masks" / f"r_{i}.png", np.where(box, 0, 255).astype(np.uint8))

    def name_masks(meta):
        for i, frame in enumerate(meta["frames"]):
            frame["mask_path"] = f"masks/r_{i}.png"

    _edit_json(root, name_masks)
    return box


@pytest.mark.parametrize("image_sampling", [False, True])
def test_nerfstudio_masks_leave_their_black_pixels_out_of_training(tmp_path, image_sampling):
    from datasets.datamodule import RandomRays

    box = _ngp_with_ignore_masks(tmp_path)
    train = load(NgpScene, tmp_path).load_split("train")
    assert not train.has_mask and bool((train.pixels_alpha == 1.0).all())  # the photos stay whole
    assert train.pixels_keep is not None
    np.testing.assert_array_equal(train.pixels_keep[: SIZE * SIZE].view(SIZE, SIZE).numpy(), ~box)
    rays = RandomRays(train, n_rays=4096, image_sampling=image_sampling, background="white", seed=0)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        img, x, y, row = rays.draw_pixels(generator)
        assert not bool(box[y.numpy(), x.numpy()].any())  # never inside the box
        assert bool(train.pixels_keep[row].all())
        np.testing.assert_array_equal(row.numpy(), (train.offsets[img] + y * SIZE + x).numpy())
    assert len(set(img.tolist())) == (1 if image_sampling else len(train))
    # kept through the split's other forms
    assert bool((train.take(torch.tensor([1])).pixels_keep.view(SIZE, SIZE) == torch.from_numpy(~box)).all())
    half = train.downscaled(2.0).pixels_keep[: (SIZE // 2) ** 2].view(SIZE // 2, SIZE // 2).numpy()
    assert not half[2:5, 3:7].any() and half[8:, :].all()


def test_nerfstudio_masks_can_be_read_as_foreground_masks(tmp_path):
    box = _ngp_with_ignore_masks(tmp_path)
    train = load(NgpScene, tmp_path, mask_meaning="foreground").load_split("train")
    assert train.has_mask and train.pixels_keep is None
    np.testing.assert_array_equal(train.mask(0).numpy() > 0.5, ~box)
