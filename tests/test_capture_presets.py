"""The capture presets end to end on generated captures without masks, images of different sizes
included: they train (with a learned background), write the set-up picture, and render each
image at its own size."""
import json
import logging

import pytest

import launch
from tests import capture_fixtures as fx
from tests.test_launch import TINY_RUN

try:
    import pycolmap  # noqa: F401
except ImportError:
    pycolmap = None

SIZES = [(30, 22), (28, 24), (32, 20), (26, 26), (30, 21)]
# small fields and few samples: the presets' data path, not their learning, is under test
QUICK = [*TINY_RUN, "trainer.max_steps=4", "trainer.val_check_interval=2", "dataset.img_downscale=null",
         "dataset.max_images_test=3", "model.num_samples_per_ray=64", "export.resolution=32"]
SMALL_BACKGROUND = ["model.background.n_samples=4", "model.background.geometry.xyz_encoding.n_levels=4",
                    "model.background.geometry.xyz_encoding.log2_hashmap_size=12"]
SMALL_FIELD = {
    "neus": ["model.geometry.xyz_encoding.inner.n_levels=4", "model.geometry.xyz_encoding.inner.log2_hashmap_size=12",
             "model.geometry.xyz_encoding.inner.start_level=2"],
    "nerf": ["model.geometry.xyz_encoding.n_levels=4", "model.geometry.xyz_encoding.log2_hashmap_size=12",
             "system.export_mesh_at_test=false"],  # 4 steps of density cross no threshold
}


def run(tmp_path, preset, root, *extra):
    return launch.main(["--exp-dir", str(tmp_path / "exp"), "--runs-dir", str(tmp_path / "runs"),
                        "--config", f"configs/{preset}.yaml", "--train", f"dataset.root_dir={root}", *QUICK, *extra])


def the_run(tmp_path):
    (root,) = [p for name in (tmp_path / "exp").iterdir() for p in name.iterdir()]
    return root


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["neus-colmap", "nerf-colmap", "neus-ngp"])
def test_capture_presets_train_on_images_of_different_sizes(preset, tmp_path):
    import imageio.v3 as iio

    if preset.endswith("colmap"):
        if pycolmap is None:
            pytest.skip("pycolmap is not installed")
        capture = fx.write_colmap(tmp_path / "data", n=len(SIZES), model="PINHOLE", sizes=SIZES)
    else:
        capture = fx.write_ngp(tmp_path / "data", n=len(SIZES), missing=0, sizes=SIZES)
    assert run(tmp_path, preset, capture.root, *SMALL_FIELD[preset[:4]], *SMALL_BACKGROUND) == 0
    save = the_run(tmp_path) / "save"
    assert (save / "scene_setup.png").is_file() and (save / "scene_setup.ply").is_file()
    assert list(save.glob("mesh_*.ply")) or preset.startswith("nerf")
    # every test image rendered at its own size (the grid: ground truth | render | depth | ... side by side)
    # (the test views: 3 spread over the 5, i.e. views 0, 2 and 4)
    grids = sorted((save / "test").glob("*.png"))
    assert [iio.imread(p).shape[0] for p in grids] == [SIZES[i][1] for i in (0, 2, 4)]
    assert list(save.glob("test_step*.mp4"))
    metrics = json.loads(next(save.glob("test_metrics_step*.json")).read_text())
    assert "psnr" in metrics["mean"]


@pytest.mark.slow
def test_neus_dtu_trains_without_masks(tmp_path, caplog):
    capture = fx.write_dtu(tmp_path / "scan", n=4, size=24, masks=False)
    with caplog.at_level(logging.WARNING):
        assert run(tmp_path, "neus-dtu", capture.root, "dataset.max_images_val=2", *SMALL_FIELD["neus"]) == 0
    assert "training without the mask loss" in caplog.text
    root = the_run(tmp_path)
    assert (root / "save" / "scene_setup.png").is_file() and (root / "ckpt" / "last.ckpt").is_file()
