"""Mixed precision: the same preset runs under Lightning's bf16 autocast on the CPU (16-mixed
needs a GPU) and still produces finite renders, metrics and a mesh."""
import json
import math

import torch

from models.networks.mlp import MLP
from systems.base import BaseSystem
from tests.test_launch import TINY_RUN, run, synthetic_overrides


def test_bf16_mixed_precision_trains_tests_and_exports(tmp_path, tiny_scene_dir, monkeypatch):
    seen, in_step = [], []
    forward, training_step = MLP.forward, BaseSystem.training_step

    def spy(self, h):
        out = forward(self, h)
        if in_step:
            seen.append((torch.is_autocast_enabled("cpu"), out.dtype))
        return out

    def step(self, batch, batch_idx):
        in_step.append(True)
        try:
            return training_step(self, batch, batch_idx)
        finally:
            in_step.pop()

    monkeypatch.setattr(MLP, "forward", spy)
    monkeypatch.setattr(BaseSystem, "training_step", step)
    code = run(tmp_path, "--config", "configs/neus-synthetic.yaml", "--train", *synthetic_overrides(tiny_scene_dir),
               *TINY_RUN, "trainer.max_steps=6", "trainer.val_check_interval=3", "trainer.precision=bf16-mixed")
    assert code == 0
    # the training steps really ran the networks under bf16 autocast
    assert seen and all(enabled for enabled, _ in seen)
    assert any(dtype == torch.bfloat16 for _, dtype in seen)
    (root,) = (tmp_path / "exp" / "neus-synthetic").iterdir()
    (metrics,) = (root / "save").glob("test_metrics_step*.json")
    mean = json.loads(metrics.read_text())["mean"]
    assert all(math.isfinite(v) for v in mean.values()), mean
    assert list((root / "save").glob("mesh_step*.ply"))
