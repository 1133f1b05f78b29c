"""Masks that are missing, say nothing, or do not fit their images: a mask loss without masks is
refused before a run starts (or switched off where the preset says so), and a mask of the wrong
shape names its file and dataset.use_masks."""
import logging
import shutil

import numpy as np
import pytest

import launch
from datasets.base import DatasetError
from datasets.blender import BlenderScene
from datasets.dtu import DTUScene
from systems.build import build_scene, check_run_data, load_experiment
from tests import capture_fixtures as fx
from utils.config import parse_component

try:
    import pycolmap  # noqa: F401
except ImportError:
    pycolmap = None
needs_pycolmap = pytest.mark.skipif(pycolmap is None, reason="pycolmap is not installed")


def load(cls, root, **kw):
    return cls(parse_component(cls.Config, {"root_dir": str(root), **kw}))


def rewrite_pngs(root, change):
    """Apply ``change`` (uint8 [H, W, C] -> uint8 array) to every PNG under ``root``."""
    import imageio.v3 as iio

    for path in root.rglob("*.png"):
        iio.imwrite(path, change(np.asarray(iio.imread(path))))


@pytest.fixture(scope="module")
def dtu_dir(tmp_path_factory):
    return fx.write_dtu(tmp_path_factory.mktemp("dtu") / "scan", n=3, size=20)


@pytest.mark.parametrize("kind", ["no alpha channel", "fully opaque"])
def test_blender_pngs_without_masks_and_a_mask_loss_are_refused_before_the_run(kind, tiny_scene_dir, tmp_path,
                                                                                capsys):
    """RGB PNGs, or RGBA PNGs whose alpha is all 255, with neus-blender's lambda_mask: one line
    naming system.loss.lambda_mask and the cause, exit status 2, no run folder."""
    root = tmp_path / "rgb"
    shutil.copytree(tiny_scene_dir, root)
    if kind == "no alpha channel":
        rewrite_pngs(root, lambda a: a[..., :3])
    else:
        rewrite_pngs(root, lambda a: np.concatenate([a[..., :3], np.full_like(a[..., :1], 255)], -1))
    split = load(BlenderScene, root).load_split("train")
    assert not split.has_mask and kind.split()[-1] in split.mask_info
    code = launch.main(["--exp-dir", str(tmp_path / "exp"), "--runs-dir", str(tmp_path / "runs"),
                        "--config", "configs/neus-blender.yaml", "--train", f"dataset.root_dir={root}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "system.loss.lambda_mask is 0.1" in err[0] and kind.split()[-1] in err[0] and "transforms_train.json" in err[0]
    assert not (tmp_path / "exp").exists()
    # the same data with the mask loss off is fine
    _, cfg = load_experiment("configs/neus-blender.yaml", [f"dataset.root_dir={root}", "system.loss.lambda_mask=0"])
    check_run_data(cfg, build_scene(cfg), "train")


def test_dtu_mask_loss_applies_only_with_masks(dtu_dir, tmp_path, caplog):
    """neus-dtu: with the scan's 3-channel masks the mask loss stays; without mask/ it is switched
    off for the run with a warning naming the keys."""
    _, cfg = load_experiment("configs/neus-dtu.yaml", [f"dataset.root_dir={dtu_dir.root}"])
    scene = build_scene(cfg)
    check_run_data(cfg, scene, "train")
    assert cfg.system.loss.lambda_mask == 0.1 and scene.split("train").has_mask
    bare = tmp_path / "nomask"
    shutil.copytree(dtu_dir.root, bare, ignore=shutil.ignore_patterns("mask"))
    _, cfg = load_experiment("configs/neus-dtu.yaml", [f"dataset.root_dir={bare}"])
    with caplog.at_level(logging.WARNING):
        check_run_data(cfg, build_scene(cfg), "train")
    assert cfg.system.loss.lambda_mask == 0.0
    assert "system.loss.lambda_mask is 0.1" in caplog.text and "mask_loss_without_masks: off" in caplog.text
    # the same scan with the default policy is refused
    _, cfg = load_experiment("configs/neus-dtu.yaml", [f"dataset.root_dir={bare}",
                                                       "system.loss.mask_loss_without_masks=error"])
    with pytest.raises(DatasetError, match=r"system\.loss\.lambda_mask is 0\.1 .*has no masks"):
        check_run_data(cfg, build_scene(cfg), "train")
    check_run_data(cfg, build_scene(cfg), "test")  # other actions do not train: nothing to refuse


def test_masks_that_say_nothing_are_not_masks(dtu_dir, tmp_path):
    white = tmp_path / "white"
    shutil.copytree(dtu_dir.root, white)
    rewrite_pngs(white / "mask", lambda a: np.full_like(a, 255))
    split = load(DTUScene, white).load_split("train")
    assert not split.has_mask and "all foreground" in split.mask_info
    assert not load(DTUScene, dtu_dir.root, use_masks=False).load_split("train").has_mask


@needs_pycolmap
def test_masks_of_the_wrong_shape_name_the_file_and_key(tmp_path, caplog):
    from datasets.colmap import ColmapScene

    capture = fx.write_colmap(tmp_path / "c", n=3, model="PINHOLE", sizes=[(30, 20), (30, 20), (28, 21)],
                              masks=True)
    good = load(ColmapScene, capture.root).load_split("train")
    assert good.has_mask
    mask = capture.root / "masks" / f"{capture.names[1]}.png"
    original = mask.read_bytes()
    import imageio.v3 as iio

    iio.imwrite(mask, np.asarray(iio.imread(mask)).T)  # a transposed mask (COLMAP's <name>.png)
    with pytest.raises(DatasetError, match=rf"mask '.*{capture.names[1]}\.png' is 20x30 .* 30x20: turned by 90 "
                                           r"degrees.*dataset\.use_masks=false"):
        load(ColmapScene, capture.root).load_split("train")
    assert not load(ColmapScene, capture.root, use_masks=False).load_split("train").has_mask
    # another aspect ratio: refused; the same shape at half the size: resized, one warning
    iio.imwrite(mask, np.zeros((20, 20), np.uint8))
    with pytest.raises(DatasetError, match="of another aspect ratio.*dataset.use_masks"):
        load(ColmapScene, capture.root).load_split("train")
    mask.write_bytes(original)
    half = np.asarray(iio.imread(mask))[::2, ::2]
    iio.imwrite(mask, half)
    with caplog.at_level(logging.WARNING):
        split = load(ColmapScene, capture.root).load_split("train")
    assert split.has_mask and split.mask(1).shape == (20, 30)
    assert sum("masks are resized" in r.getMessage() for r in caplog.records) == 1
