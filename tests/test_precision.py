"""Mixed precision: the same preset runs under Lightning's bf16 autocast on the CPU (16-mixed
needs a GPU) and still produces finite renders, metrics and a mesh."""
import json
import math

from tests.test_launch import TINY_RUN, run, synthetic_overrides


def test_bf16_mixed_precision_trains_tests_and_exports(tmp_path, tiny_scene_dir):
    code = run(tmp_path, "--config", "configs/neus-synthetic.yaml", "--train", *synthetic_overrides(tiny_scene_dir),
               *TINY_RUN, "trainer.max_steps=6", "trainer.val_check_interval=3", "trainer.precision=bf16-mixed")
    assert code == 0
    (root,) = (tmp_path / "exp" / "neus-synthetic").iterdir()
    parsed = (root / "config" / "parsed.yaml").read_text()
    assert "precision: bf16-mixed" in parsed
    (metrics,) = (root / "save").glob("test_metrics_step*.json")
    mean = json.loads(metrics.read_text())["mean"]
    assert all(math.isfinite(v) for v in mean.values()), mean
    assert list((root / "save").glob("mesh_step*.ply"))
