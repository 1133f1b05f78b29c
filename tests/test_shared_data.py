"""Loaders on the real captures in ../shared/data (skipped when that folder is absent)."""
import pytest
import torch

from datasets.blender import BlenderScene
from tests.conftest import SHARED_DATA
from utils.config import parse_component

LEGO = SHARED_DATA / "lego"


@pytest.mark.skipif(not LEGO.is_dir(), reason=f"shared data not present at {LEGO}")
def test_lego_blender_layout_loads():
    cfg = parse_component(BlenderScene.Config, {"root_dir": str(LEGO), "img_downscale": 4.0})
    scene = BlenderScene(cfg)
    val = scene.load_split("val")
    assert len(val) == 10 and val.common_size == (100, 100)
    assert val.has_mask and 0.05 < float(val.pixels_alpha.mean()) < 0.9
    # cameras sit on a sphere around the origin looking inward
    eye = val.c2w[:, :, 3]
    forward = val.c2w[:, :, 2]
    assert float((forward * -torch.nn.functional.normalize(eye, dim=-1)).sum(-1).min()) > 0.9
