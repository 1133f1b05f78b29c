"""Per-image test metrics written to the run folder (JSON + CSV), the no-ground-truth path, the
validation metrics files, and LPIPS: skipped with a message when unavailable, used when it is."""
import csv
import dataclasses
import json
import logging
import math
import sys
import types
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

import launch
import systems.metrics as metrics
from tests.conftest import TINY_SCENE

QUICK = ["trainer.enable_progress_bar=false", "model.grid.resolution=16", "system.eval_mesh_points=2000",
         "export.resolution=32", "export.texture.size=64", "export.preview.frames=4", "export.preview.size=32", "system.save_video=false", "dataset.n_predict_views=2"]


def tiny(scene_dir):
    return [f"dataset.root_dir={scene_dir}"] + [f"dataset.{k}={v}" for k, v in TINY_SCENE.items()]


def launch_run(tmp_path, scene_dir, action, *extra):
    argv = ["--exp-dir", str(tmp_path / "exp"), "--runs-dir", str(tmp_path / "runs"),
            "--config", "configs/neus-synthetic.yaml", action, *tiny(scene_dir), *QUICK, *extra]
    assert launch.main(argv) == 0
    (root,) = (tmp_path / "exp" / "neus-synthetic").iterdir()
    return root / "save"


@pytest.fixture
def no_lpips(monkeypatch):
    monkeypatch.setattr(metrics, "_lpips_cache", {})
    monkeypatch.setitem(sys.modules, "lpips", None)  # import lpips -> ImportError


@pytest.fixture
def fake_lpips(monkeypatch):
    """An `lpips` module whose LPIPS is the mean absolute difference of the [-1, 1]-scaled images."""

    class LPIPS(torch.nn.Module):
        def __init__(self, net="alex", verbose=True):
            super().__init__()
            self.net = net
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, x, y, normalize=False):
            if normalize:
                x, y = 2 * x - 1, 2 * y - 1
            return ((x - y).abs().mean() * self.w).reshape(1, 1, 1, 1)

    monkeypatch.setattr(metrics, "_lpips_cache", {})
    monkeypatch.setitem(sys.modules, "lpips", types.SimpleNamespace(LPIPS=LPIPS))
    monkeypatch.setattr(metrics, "_backbone_weights_missing", lambda net: None)


# ------------------------------------------------------------------------------------------------
# the pieces
# ------------------------------------------------------------------------------------------------
def test_summary_dedupes_and_averages(tmp_path):
    rows = [{"index": 2, "psnr": 30.0, "ssim": 0.9}, {"index": 0, "psnr": 20.0, "ssim": 0.5},
            {"index": 2, "psnr": 30.0, "ssim": 0.9},  # a distributed sampler's padding repeat
            {"index": 1, "psnr": 25.0, "ssim": 0.7}]
    s = metrics.summarize_image_metrics(rows)
    assert [r["index"] for r in s["per_image"]] == [0, 1, 2] and s["n_images"] == 3
    assert s["mean"] == {"psnr": pytest.approx(25.0), "ssim": pytest.approx(0.7)}
    json_path, csv_path = metrics.write_image_metrics(tmp_path / "m", s, {"note": "x"})
    with open(csv_path) as f:
        table = list(csv.reader(f))
    assert table[0] == ["index", "psnr", "ssim"]
    assert [r[0] for r in table[1:]] == ["0", "1", "2", "mean"]
    assert float(table[2][1]) == 25.0 and float(table[-1][2]) == pytest.approx(0.7)
    data = json.loads(json_path.read_text())
    assert data["note"] == "x" and data["mean"]["psnr"] == pytest.approx(25.0) and len(data["per_image"]) == 3
    # an exact match has PSNR inf: kept per image, written as a string JSON can hold
    s = metrics.summarize_image_metrics([{"index": 0, "psnr": math.inf}, {"index": 1, "psnr": 10.0}])
    json_path, _ = metrics.write_image_metrics(tmp_path / "inf", s)
    data = json.loads(json_path.read_text())
    assert data["mean"]["psnr"] == "inf" and data["per_image"][1]["psnr"] == 10.0
    # no images: JSON with the extra entries only, no CSV
    json_path, csv_path = metrics.write_image_metrics(tmp_path / "none", metrics.summarize_image_metrics([]),
                                                      {"image_metrics": "skipped"})
    assert csv_path is None and not (tmp_path / "none.csv").exists()
    assert json.loads(json_path.read_text()) == {"image_metrics": "skipped"}


def test_lpips_missing_is_skipped_with_one_message(no_lpips, caplog):
    with caplog.at_level(logging.INFO, logger="systems.metrics"):
        fn, reason = metrics.load_lpips()
        assert fn is None and "'lpips' package is not installed" in reason
        assert metrics.load_lpips() == (None, reason)  # cached
    messages = [r.getMessage() for r in caplog.records if "LPIPS skipped" in r.getMessage()]
    assert len(messages) == 1 and "\n" not in messages[0]


def test_lpips_without_backbone_weights_is_skipped(monkeypatch):
    monkeypatch.setattr(metrics, "_lpips_cache", {})
    monkeypatch.setitem(sys.modules, "lpips", types.SimpleNamespace(LPIPS=None))
    fn, reason = metrics.load_lpips("vgg")
    # torchvision is absent here, or present without the cached weights: either way, no download
    assert fn is None and ("torchvision" in reason or "weights" in reason)
    with pytest.raises(ValueError, match="alex"):
        metrics.load_lpips("resnet")


def test_lpips_is_used_when_available(fake_lpips):
    fn, reason = metrics.load_lpips()
    assert reason is None
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(8, 9, 3, generator=g), torch.rand(8, 9, 3, generator=g)
    # the fake is mean |(2a - 1) - (2b - 1)| = 2 mean |a - b|, computed here independently
    assert float(fn(a, b)) == pytest.approx(2 * float(np.abs(a.numpy() - b.numpy()).mean()), rel=1e-6)


# ------------------------------------------------------------------------------------------------
# through launch.py on the tiny scene (untrained weights: the numbers only need to be right)
# ------------------------------------------------------------------------------------------------
def _panels(png: Path, n_panels_before: int, w: int):
    """Panel k of an image grid (panels of width w separated by 2-pixel gaps) as float [H, w, 3]."""
    img = iio.imread(png).astype(np.float64) / 255.0
    x0 = n_panels_before * (w + 2)
    return img[:, x0:x0 + w, :3]


@pytest.mark.slow
def test_test_run_writes_per_image_json_and_csv(tmp_path, tiny_scene_dir, fake_lpips):
    save = launch_run(tmp_path, tiny_scene_dir, "--test", "system.eval_mesh_region=[-2,-2,0,2,2,2]")
    (json_path,) = save.glob("test_metrics_step*.json")
    (csv_path,) = save.glob("test_metrics_step*.csv")
    data = json.loads(json_path.read_text())
    with open(csv_path) as f:
        table = list(csv.DictReader(f))
    n = TINY_SCENE["n_test"]
    assert [r["index"] for r in table] == [str(i) for i in range(n)] + ["mean"]
    assert set(table[0]) == {"index", "psnr", "psnr_masked", "ssim", "lpips"}  # (the scene has masks)
    assert data["n_images"] == n and [r["index"] for r in data["per_image"]] == list(range(n))
    for key in ("psnr", "ssim", "lpips"):
        values = np.array([float(r[key]) for r in table[:n]])
        # the mean row is the mean of the rows, and the JSON agrees with the CSV
        assert float(table[-1][key]) == pytest.approx(values.mean(), rel=1e-9)
        assert data["mean"][key] == pytest.approx(values.mean(), rel=1e-9)
        assert [r[key] for r in data["per_image"]] == pytest.approx(values.tolist(), rel=1e-9)
    # independent check of PSNR and the (fake) LPIPS from the saved grids: ground truth | render
    w = TINY_SCENE["resolution"]
    for i in range(n):
        gt = _panels(save / "test" / f"{i:03d}.png", 0, w)
        pred = _panels(save / "test" / f"{i:03d}.png", 1, w)
        assert float(table[i]["psnr"]) == pytest.approx(10 * np.log10(1 / ((pred - gt) ** 2).mean()), abs=0.05)
        assert float(table[i]["lpips"]) == pytest.approx(2 * np.abs(pred - gt).mean(), abs=0.01)
    # the geometry metrics ride along, with their threshold, restricted to the upper half-space z >= 0
    # (the ground truth is sampled with 2000 points over the whole scene, which extends below z = 0)
    geo = data["geometry"]
    assert geo["chamfer"] > 0 and geo["threshold"] == 0.01
    assert geo["region"] == {"box": [-2.0, -2.0, 0.0, 2.0, 2.0, 2.0]} and 0 < geo["n_gt"] < 2000


def test_mesh_region_from_config_values():
    from systems.base import BaseSystem  # noqa: F401  (the system checks it when built)
    from utils.mesh import Box, Sphere, mesh_region

    assert mesh_region([0, 0, 0, 1, 1, 1]) == Box((0, 0, 0), (1, 1, 1))
    assert mesh_region([0, 0, 0, 2]) == Sphere((0, 0, 0), 2.0)
    assert mesh_region(None) is None
    with pytest.raises(ValueError, match="6 numbers"):
        mesh_region([1, 2, 3])


def test_bad_mesh_region_is_refused_before_work(tmp_path, tiny_scene_dir):
    from systems.build import load_experiment
    from utils.config import ConfigError

    # refused with the config, before the scene or the model is built
    with pytest.raises(ConfigError, match="system.eval_mesh_region: a box needs min < max"):
        load_experiment("configs/neus-synthetic.yaml", [*tiny(tiny_scene_dir), "system.eval_mesh_region=[0,0,0,0,1,1]"])


@pytest.mark.slow
def test_test_run_without_lpips_says_why(tmp_path, tiny_scene_dir, no_lpips, caplog):
    with caplog.at_level(logging.INFO):
        save = launch_run(tmp_path, tiny_scene_dir, "--test", "system.export_mesh_at_test=false")
    (json_path,) = save.glob("test_metrics_step*.json")
    data = json.loads(json_path.read_text())
    assert set(data["mean"]) == {"psnr", "psnr_masked", "ssim"}
    assert data["lpips"].startswith("skipped: the 'lpips' package is not installed")
    assert sum("LPIPS skipped" in r.getMessage() for r in caplog.records) == 1
    assert "geometry" not in data


@pytest.mark.slow
def test_test_split_without_ground_truth_is_skipped_not_faked(tmp_path, tiny_scene_dir, monkeypatch):
    from datasets.datamodule import SceneDataModule

    original = SceneDataModule.split

    def split(self, name):
        s = original(self, name)
        return dataclasses.replace(s, pixels_rgb=None, pixels_alpha=None) if name == "test" else s

    monkeypatch.setattr(SceneDataModule, "split", split)
    save = launch_run(tmp_path, tiny_scene_dir, "--test", "system.export_mesh_at_test=false")
    (json_path,) = save.glob("test_metrics_step*.json")
    data = json.loads(json_path.read_text())
    assert data == {"image_metrics": "skipped: the test split has no ground truth"}
    assert not list(save.glob("test_metrics_step*.csv"))
    assert len(list((save / "test").glob("*.png"))) == TINY_SCENE["n_test"]  # still rendered


@pytest.mark.slow
def test_validation_writes_per_image_metrics(tmp_path, tiny_scene_dir):
    save = launch_run(tmp_path, tiny_scene_dir, "--validate")
    (folder,) = (save / "val").iterdir()
    with open(folder / "metrics.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["index"] for r in table] == [str(i) for i in range(TINY_SCENE["n_val"])] + ["mean"]
    data = json.loads((folder / "metrics.json").read_text())
    assert data["mean"]["psnr"] == pytest.approx(np.mean([float(r["psnr"]) for r in table[:-1]]), rel=1e-9)
