"""Shared fixtures: tiny scenes made by the toolkit's own generator; the stand-ins for the optional
CUDA libraries (tests/stand_ins)."""
import os
from pathlib import Path

import torch

if not torch.cuda.is_available():
    # without a GPU, Triton kernels run under Triton's interpreter. It is read when @triton.jit
    # decorates, also Triton's own library functions (tl.zeros, tl.sum), so it must be set before
    # anything imports triton (pytorch_lightning does)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import datasets.registered  # noqa: F401, E402
import models.registered  # noqa: F401, E402
import systems.registered  # noqa: F401, E402
from tests import stand_ins as _stand_ins  # noqa: E402
from utils import backends  # noqa: E402

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


@pytest.fixture
def stand_ins(monkeypatch):
    """PyTorch stand-ins for tinycudann and nerfacc in sys.modules, triton hidden, CUDA reported
    as available (see tests/stand_ins)."""
    installed = _stand_ins.install(monkeypatch)
    yield installed
    backends.clear_cache()


@pytest.fixture
def make_stand_ins(monkeypatch):
    """``make(tcnn=..., nerfacc=..., triton=..., nerfacc_kernels_built=...)`` -> StandIns."""
    yield lambda **kw: _stand_ins.install(monkeypatch, **kw)
    backends.clear_cache()
