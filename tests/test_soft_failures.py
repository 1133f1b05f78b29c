"""What fails after training has started loses nothing: a checkpoint is on disk before the first
validation; a metric or a validation image that cannot be computed is skipped with a warning; a
mesh that cannot be extracted is reported and the other test outputs are still written; running
out of memory while rendering retries with smaller chunks; a run that fails after producing
something keeps its folder, marked FAILED. Each runs a few steps on the tiny generated scene."""
import functools
import json
import logging

import pytest

import launch
import systems.base as base
import systems.evaluation as evaluation
from tests.conftest import TINY_SCENE
from utils.checkpoint import read_checkpoint

FEW_STEPS = ["trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.enable_progress_bar=false",
             "checkpoint.every_n_train_steps=1000", "export.resolution=32", "system.eval_mesh_points=500",
             "system.train_num_rays=64", "system.max_train_num_rays=256", "model.grid.resolution=16",
             "model.num_samples_per_ray=64", "dataset.n_predict_views=2", "system.save_video=false",
             "system.eval_lpips=false", "system.test_time_share=null"]


def synthetic(scene_dir):
    return [f"dataset.root_dir={scene_dir}"] + [f"dataset.{k}={v}" for k, v in TINY_SCENE.items()]


def run(tmp_path, *argv):
    return launch.main(["--exp-dir", str(tmp_path / "exp"), "--runs-dir", str(tmp_path / "runs"), *argv])


def train_neus(tmp_path, scene_dir, *extra):
    return run(tmp_path, "--config", "configs/neus-synthetic.yaml", "--train", *synthetic(scene_dir), *FEW_STEPS, *extra)


def the_run(tmp_path, name="neus-synthetic"):
    (root,) = (tmp_path / "exp" / name).iterdir()
    return root


@pytest.mark.slow
def test_checkpoint_is_written_before_the_first_validation(tmp_path, tiny_scene_dir, monkeypatch):
    seen = []
    original = base.BaseSystem.validation_step

    def validation_step(self, batch, batch_idx):
        if batch_idx == 0:  # what is on disk when validation starts
            seen.append({p.name: read_checkpoint(p)["global_step"] for p in self.context.save_dir.parent.glob("ckpt/*.ckpt")})
        return original(self, batch, batch_idx)

    monkeypatch.setattr(base.BaseSystem, "validation_step", validation_step)
    # validation every 2 steps, periodic checkpoints every 1000: only the safety checkpoint can be there
    assert train_neus(tmp_path, tiny_scene_dir, "trainer.max_steps=4", "system.export_mesh_at_test=false") == 0
    assert seen[0] == {"last.ckpt": 2}
    assert read_checkpoint(the_run(tmp_path) / "ckpt" / "last.ckpt")["global_step"] == 4  # and at the end


@pytest.mark.slow
def test_a_metric_that_cannot_be_computed_is_skipped_with_a_warning(tmp_path, tiny_scene_dir, monkeypatch, caplog):
    # SSIM with a 64-pixel window cannot score the 24-pixel images: ssim raises its ValueError
    monkeypatch.setattr(evaluation, "ssim", functools.partial(evaluation.ssim, window_size=64))
    with caplog.at_level(logging.WARNING):
        assert train_neus(tmp_path, tiny_scene_dir, "system.export_mesh_at_test=false") == 0
    save = the_run(tmp_path) / "save"
    val = json.loads((save / "val" / "step0000002" / "metrics.json").read_text())
    assert set(val["mean"]) == {"psnr", "psnr_masked"} and val["n_images"] == TINY_SCENE["n_val"]
    assert val["ssim"] == "skipped: ssim needs images of at least 64x64 pixels, got 24x24"
    test = json.loads((save / "test_metrics_step0000002.json").read_text())
    assert set(test["mean"]) == {"psnr", "psnr_masked"} and test["ssim"].startswith("skipped: ssim needs images")
    warnings = [r.getMessage() for r in caplog.records if "ssim: skipped" in r.getMessage()]
    assert len(warnings) == 2  # once per pass (validation, test), not once per image
    assert (the_run(tmp_path) / "ckpt" / "last.ckpt").is_file()


@pytest.mark.slow
def test_a_validation_that_fails_is_skipped_and_training_goes_on(tmp_path, tiny_scene_dir, monkeypatch):
    original = base.BaseSystem.render_image

    def render_image(self, batch):
        if self.trainer.validating:
            raise RuntimeError("the renderer tripped")
        return original(self, batch)

    monkeypatch.setattr(base.BaseSystem, "render_image", render_image)
    assert train_neus(tmp_path, tiny_scene_dir, "trainer.max_steps=4", "system.export_mesh_at_test=false") == 0
    root = the_run(tmp_path)
    assert read_checkpoint(root / "ckpt" / "last.ckpt")["global_step"] == 4  # trained to the end
    for step in ("step0000002", "step0000004"):  # each validation says why it has no images
        metrics = json.loads((root / "save" / "val" / step / "metrics.json").read_text())
        assert metrics == {"rendering": "skipped: RuntimeError: the renderer tripped"}
    test = json.loads(next((root / "save").glob("test_metrics_step*.json")).read_text())
    assert test["n_images"] == TINY_SCENE["n_test"]  # the test after training still ran


@pytest.mark.slow
def test_empty_surface_after_a_short_nerf_run_still_writes_the_test_outputs(tmp_path, tiny_scene_dir, capsys):
    # after 2 steps the density is nowhere near the preset's export threshold (10): no surface
    code = run(tmp_path, "--config", "configs/nerf-blender.yaml", "--train", f"dataset.root_dir={tiny_scene_dir}",
               "dataset.img_wh=[24,24]", *FEW_STEPS)
    assert code == 0
    (root,) = [p for name in (tmp_path / "exp").iterdir() for p in name.iterdir()]
    save = root / "save"
    metrics = json.loads(next(save.glob("test_metrics_step*.json")).read_text())
    assert metrics["mesh"].startswith("skipped: no surface to extract")
    assert set(metrics["mean"]) == {"psnr", "psnr_masked", "ssim"} and metrics["n_images"] == TINY_SCENE["n_test"]
    assert next(save.glob("test_metrics_step*.csv")).is_file()
    assert len(list((save / "test").glob("*.png"))) == TINY_SCENE["n_test"]
    assert not list(save.glob("mesh_*"))
    assert read_checkpoint(root / "ckpt" / "last.ckpt")["global_step"] == 2

    # --export of the same weights: a clear error, and no run folder left behind
    capsys.readouterr()
    other = tmp_path / "again"
    code = run(other, "--config", str(root / "config" / "parsed.yaml"), "--export", "--resume", str(root / "ckpt" / "last.ckpt"))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: export: no surface to extract")
    assert not (other / "exp").exists() and not (other / "runs").exists()


@pytest.mark.slow
def test_a_failure_after_training_keeps_the_run_marked_failed(tmp_path, tiny_scene_dir, monkeypatch):
    def test_step(self, batch, batch_idx):
        raise RuntimeError("a bug in testing")

    monkeypatch.setattr(base.BaseSystem, "test_step", test_step)
    with pytest.raises(RuntimeError, match="a bug in testing"):
        train_neus(tmp_path, tiny_scene_dir, "system.export_mesh_at_test=false")
    root = the_run(tmp_path)
    assert read_checkpoint(root / "ckpt" / "last.ckpt")["global_step"] == 2  # the weights are safe
    assert (root / "FAILED").read_text() == "RuntimeError: a bug in testing\n"


@pytest.mark.slow
def test_out_of_memory_while_rendering_retries_in_smaller_chunks(tmp_path, tiny_scene_dir, monkeypatch, caplog):
    from models.base import BaseModel

    sizes = []
    original = BaseModel.render

    def render(self, rays_o, rays_d, background):
        sizes.append(rays_o.shape[0])
        if not self.training and rays_o.shape[0] > 300:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, rays_o, rays_d, background)

    monkeypatch.setattr(BaseModel, "render", render)
    with caplog.at_level(logging.WARNING):
        code = run(tmp_path, "--config", "configs/neus-synthetic.yaml", "--validate", *synthetic(tiny_scene_dir),
                   *FEW_STEPS, "model.eval_chunk_size=1024")
    assert code == 0
    # a 24x24 image is 576 rays: 1024 and 512 fail, 256 fits (and stays for the next image)
    assert sizes[:2] == [576, 512] and set(sizes[2:]) <= {256, 64}
    assert "out of memory rendering a 24x24 image in chunks of 1024 rays (model.eval_chunk_size): trying 512" in caplog.text
    metrics = json.loads(next((the_run(tmp_path) / "save" / "val").glob("*/metrics.json")).read_text())
    assert metrics["n_images"] == TINY_SCENE["n_val"]
