"""Shared fixtures: tiny scenes made by the toolkit's own generator."""
import dataclasses
import os
from pathlib import Path

import pytest
import torch

import datasets.registered  # noqa: F401
import models.registered  # noqa: F401
import systems.registered  # noqa: F401

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

# ../shared/data beside the checkout; NSR_SHARED_DATA points elsewhere (e.g. from a git worktree)
SHARED_DATA = Path(os.environ.get("NSR_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")

TINY_SCENE = dict(resolution=24, n_train=6, n_val=2, n_test=3, gt_mesh_resolution=48, seed=3)


@pytest.fixture(scope="session")
def tiny_scene_dir(tmp_path_factory) -> Path:
    """A synthetic scene rendered small (24 px, 6/2/3 views) into the Blender layout."""
    from datasets.synthetic import SyntheticScene
    from utils.config import parse_component

    root = tmp_path_factory.mktemp("scenes") / "tiny"
    cfg = parse_component(SyntheticScene.Config, {**TINY_SCENE, "root_dir": str(root)})
    SyntheticScene(cfg)
    return root
