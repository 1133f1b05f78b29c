"""A short fit on a tiny generated scene must actually learn: the training loss falls and the
test-view PSNR rises clearly above what the untrained model renders."""
import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import TINY_SCENE
from tests.test_launch import run, synthetic_overrides

SHORT_FIT = [
    "trainer.val_check_interval=1000", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
    "checkpoint.every_n_train_steps=1000", "export.resolution=32", "export.texture.size=64", "export.preview.frames=4", "export.preview.size=32", "system.eval_mesh_points=1000",
    "system.train_num_rays=512", "system.max_train_num_rays=512", "model.grid.resolution=16",
    "model.grid.warmup_steps=4", "model.grid.update_every=4", "dataset.n_predict_views=1",
    "system.save_video=false", "system.scheduler.args.warmup_steps=5",
]


def fit(tmp_path: Path, preset: str, data, steps: int, extra=()):
    """Train ``steps`` steps (then test) -> (test PSNR, {tag: [(step, value), ...]} of train/loss, train/psnr)."""
    out = tmp_path / f"{preset}-{steps}"
    code = run(out, "--config", f"configs/{preset}.yaml", "--train", f"tag=s{steps}", *data, *SHORT_FIT,
               f"trainer.max_steps={steps}", *extra)
    assert code == 0
    (root,) = [p for name in (out / "exp").iterdir() for p in name.iterdir()]
    (metrics_path,) = (root / "save").glob("test_metrics_step*.json")
    psnr = json.loads(metrics_path.read_text())["mean"]["psnr"]
    curves = {"train/loss": [], "train/psnr": []}
    for events in (out / "runs").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag, curve in curves.items():
            if tag in acc.Tags()["scalars"]:
                curve += [(e.step, e.value) for e in acc.Scalars(tag)]
    return psnr, {tag: sorted(curve) for tag, curve in curves.items()}


def start_and_end(curve):
    """Means of the first and the last three logged values."""
    assert len(curve) >= 10, f"too few logged values: {curve}"
    return sum(v for _, v in curve[:3]) / 3, sum(v for _, v in curve[-3:]) / 3


@pytest.mark.parametrize("preset", ["neus-synthetic", "nerf-blender"])
def test_a_short_fit_lowers_the_loss_and_raises_psnr(preset, tmp_path, tiny_scene_dir):
    if preset == "neus-synthetic":
        data = synthetic_overrides(tiny_scene_dir)
        extra = ["model.geometry.xyz_encoding.inner.update_steps=20"]  # the preset's level schedule, scaled to 100 steps
    else:
        data = [f"dataset.root_dir={tiny_scene_dir}", f"dataset.img_wh=[{TINY_SCENE['resolution']},{TINY_SCENE['resolution']}]"]
        extra = ["export.threshold=0.0"]
    untrained_psnr, _ = fit(tmp_path, preset, data, 1, extra)
    trained_psnr, curves = fit(tmp_path, preset, data, 100, extra)
    first, last = start_and_end(curves["train/loss"])
    assert last < 0.5 * first, f"training loss fell only from {first:.4f} to {last:.4f}"
    first, last = start_and_end(curves["train/psnr"])
    assert last > first + 5.0, f"training PSNR rose only from {first:.2f} to {last:.2f} dB"
    # six training views of 24 px say little about the held-out orbit, but it must improve too
    assert trained_psnr > untrained_psnr + 2.0, f"test PSNR {untrained_psnr:.2f} -> {trained_psnr:.2f} dB"
