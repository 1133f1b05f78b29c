"""The Blender loader and the synthetic generator, on tiny generated data."""
import json
from pathlib import Path
import shutil

import numpy as np
import pytest
import torch

from datasets.base import DatasetError
from datasets.blender import BlenderScene
from datasets.synthetic import SyntheticScene, scene_sdf
from tests.conftest import TINY_SCENE
from utils.config import parse_component


def blender(root, **kw):
    return BlenderScene(parse_component(BlenderScene.Config, {"root_dir": str(root), **kw}))


def test_blender_loader_counts_shapes_mask_intrinsics(tiny_scene_dir):
    scene = blender(tiny_scene_dir)
    train = scene.load_split("train")
    r = TINY_SCENE["resolution"]
    assert len(train) == TINY_SCENE["n_train"]
    n = TINY_SCENE["n_train"]
    assert train.common_size == (r, r) and train.sizes.tolist() == [[r, r]] * n
    assert train.pixels_rgb.shape == (n * r * r, 3) and train.pixels_rgb.dtype == torch.float32
    assert train.pixels_alpha.shape == (n * r * r,) and train.has_mask
    assert train.image(2).shape == (r, r, 3) and train.mask(2).shape == (r, r)
    assert 0.0 < float(train.pixels_alpha.mean()) < 1.0  # object and background both present
    meta = json.loads((tiny_scene_dir / "transforms_train.json").read_text())
    focal = 0.5 * r / np.tan(0.5 * meta["camera_angle_x"])
    assert torch.allclose(train.intrinsics[0], torch.tensor([focal, focal, r / 2, r / 2], dtype=torch.float32))
    # OpenGL -> OpenCV: the camera's +z (forward) column is minus the stored one
    stored = torch.tensor(meta["frames"][0]["transform_matrix"])
    assert torch.allclose(train.c2w[0, :, 2], -stored[:3, 2])
    assert len(scene.load_split("val")) == TINY_SCENE["n_val"]
    assert len(scene.load_split("test")) == TINY_SCENE["n_test"]


def test_blender_downscale_scales_intrinsics(tiny_scene_dir):
    full = blender(tiny_scene_dir).load_split("val")
    half = blender(tiny_scene_dir, img_downscale=2.0).load_split("val")
    (h, w) = full.common_size
    assert half.common_size == (h // 2, w // 2) and half.image(0).shape[:2] == (h // 2, w // 2)
    assert torch.allclose(half.intrinsics, full.intrinsics / 2)
    wh = blender(tiny_scene_dir, img_wh=[12, 12]).load_split("val")
    assert torch.allclose(wh.intrinsics, half.intrinsics)


def test_predict_split_is_an_orbit_without_ground_truth(tiny_scene_dir):
    pred = blender(tiny_scene_dir, n_predict_views=5).load_split("predict")
    assert len(pred) == 5 and not pred.has_ground_truth
    train = blender(tiny_scene_dir).load_split("train")
    dist_train = train.c2w[:, :, 3].norm(dim=-1).mean()
    assert torch.allclose(pred.c2w[:, :, 3].norm(dim=-1), dist_train.expand(5), rtol=1e-4)


def test_synthetic_generation_is_deterministic_and_cached(tiny_scene_dir, tmp_path):
    again = tmp_path / "again"
    cfg = parse_component(SyntheticScene.Config, {**TINY_SCENE, "root_dir": str(again)})
    scene = SyntheticScene(cfg)
    for name in ("train/r_0.png", "test/r_2.png", "transforms_train.json"):
        assert (again / name).read_bytes() == (tiny_scene_dir / name).read_bytes(), name
    # reuse: a second construction does not render again
    stamp = (again / "train" / "r_0.png").stat().st_mtime_ns
    SyntheticScene(cfg)
    assert (again / "train" / "r_0.png").stat().st_mtime_ns == stamp
    assert scene.gt_mesh_path == str(again / "gt_mesh.ply")


def test_synthetic_other_options_do_not_reuse_cache(tiny_scene_dir):
    cfg = parse_component(SyntheticScene.Config, {**TINY_SCENE, "root_dir": str(tiny_scene_dir), "seed": 99})
    with pytest.raises(DatasetError, match="seed"):
        SyntheticScene(cfg)


def test_ground_truth_mesh_is_closed_and_on_the_surface(tiny_scene_dir):
    import trimesh

    mesh = trimesh.load(tiny_scene_dir / "gt_mesh.ply", process=False)
    assert mesh.is_watertight
    sdf = scene_sdf(torch.tensor(np.asarray(mesh.vertices), dtype=torch.float64))
    assert float(sdf.abs().max()) < 1e-5
    assert mesh.volume > 0  # outward-facing


def test_images_match_the_analytic_silhouette(tiny_scene_dir):
    """A pixel whose centre ray hits the analytic surface is (mostly) covered in the image."""
    from datasets.cameras import camera_rays, pixel_directions
    from datasets.synthetic import sphere_trace

    split = blender(tiny_scene_dir).load_split("train")
    h, w = split.size(0)
    dirs = pixel_directions(w, h, split.intrinsics[0]).reshape(-1, 3)
    rays_o, rays_d = camera_rays(dirs, split.c2w[0])
    hit, _ = sphere_trace(rays_o, rays_d.double().float())
    alpha = split.mask(0).reshape(-1)
    assert float(alpha[hit].mean()) > 0.9 and float(alpha[~hit].mean()) < 0.1


def test_missing_root_names_layout(tmp_path):
    with pytest.raises(DatasetError) as err:
        blender(tmp_path / "missing")
    assert "missing" in str(err.value) and "transforms_" in str(err.value)


def test_missing_image_is_named(tiny_scene_dir, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(tiny_scene_dir, root)
    (root / "val" / "r_1.png").unlink()
    with pytest.raises(DatasetError, match="r_1"):
        blender(root).load_split("val")


def test_path_outside_the_dataset_folder_is_followed_and_a_missing_one_named(tiny_scene_dir, tmp_path):
    # images kept beside the scene's folder (file_path "../photos/r_0.png") are read from there
    root = tmp_path / "copy"
    shutil.copytree(tiny_scene_dir, root)
    meta = json.loads((root / "transforms_val.json").read_text())
    first = meta["frames"][0]["file_path"]
    (tmp_path / "photos").mkdir()
    original = next((root / first).parent.glob(Path(first).name + ".*"))
    shutil.move(str(original), str(tmp_path / "photos" / original.name))
    meta["frames"][0]["file_path"] = "../photos/" + Path(first).name
    (root / "transforms_val.json").write_text(json.dumps(meta))
    assert blender(root).load_split("val").has_ground_truth
    meta["frames"][0]["file_path"] = "../../nowhere/r_0"
    (root / "transforms_val.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"nowhere/r_0' does not exist"):
        blender(root).load_split("val")


def test_nan_pose_is_refused(tiny_scene_dir, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(tiny_scene_dir, root)
    meta = json.loads((root / "transforms_val.json").read_text())
    meta["frames"][1]["transform_matrix"][0][3] = float("nan")
    (root / "transforms_val.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"index \[1\].*NaN"):
        blender(root).load_split("val")


def test_synthetic_generation_that_loses_a_race_uses_the_winners_scene(tmp_path):
    """Several processes (ranks of one job) may render the same missing scene at once: the one
    that finishes second keeps the first one's folder instead of failing, and leaves no temp folder."""
    from datasets.synthetic import generate

    cfg = parse_component(SyntheticScene.Config, dict(resolution=8, n_train=2, n_val=1, n_test=1,
                                                      gt_mesh_resolution=16, root_dir=str(tmp_path / "s")))
    generate(tmp_path / "s", cfg, progress=lambda *a: None)
    first = (tmp_path / "s" / "train" / "r_0.png").read_bytes()
    generate(tmp_path / "s", cfg, progress=lambda *a: None)
    assert [p.name for p in tmp_path.iterdir()] == ["s"]
    assert (tmp_path / "s" / "train" / "r_0.png").read_bytes() == first
    # a folder in the way that is not a scene is still an error
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "stray.txt").write_text("x")
    with pytest.raises(OSError):
        generate(tmp_path / "other", cfg, progress=lambda *a: None)
