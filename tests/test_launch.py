"""launch.py end to end on a tiny generated scene: run folders, actions, resume, export, errors."""
import json
from pathlib import Path

import pytest
import torch
import trimesh

import launch
from tests.conftest import TINY_SCENE

TINY_RUN = [
    "trainer.max_steps=12", "trainer.val_check_interval=6", "trainer.enable_progress_bar=false",
    "checkpoint.every_n_train_steps=6", "export.resolution=48", "export.texture.size=64", "export.preview.frames=4", "export.preview.size=32", "system.eval_mesh_points=2000",
    "system.train_num_rays=128", "model.grid.resolution=16", "model.grid.warmup_steps=4",
    "model.grid.update_every=4", "dataset.n_predict_views=2",
    "system.test_time_share=null",  # every test view, however short the training (the CPU profiles cap it)
]


def synthetic_overrides(scene_dir: Path):
    return [f"dataset.root_dir={scene_dir}"] + [f"dataset.{k}={v}" for k, v in TINY_SCENE.items()]


def run(tmp_path, *args):
    argv = ["--exp-dir", str(tmp_path / "exp"), "--runs-dir", str(tmp_path / "runs"), *args]
    return launch.main(argv)


def only_run(tmp_path, name):
    runs = sorted((tmp_path / "exp" / name).iterdir())
    return runs


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_scene_dir):
    """One short NeuS training run, shared by the tests that inspect its outputs."""
    tmp = tmp_path_factory.mktemp("trained")
    code = run(tmp, "--config", "configs/neus-synthetic.yaml", "--train", "tag=t",
               *synthetic_overrides(tiny_scene_dir), *TINY_RUN)
    assert code == 0
    (root,) = only_run(tmp, "neus-synthetic")
    return tmp, root


def test_train_leaves_a_complete_run_folder(trained):
    tmp, root = trained
    assert root.name.startswith("t@")
    assert (root / "config" / "parsed.yaml").is_file() and (root / "config" / "raw.yaml").is_file()
    assert "--train" in (root / "config" / "parsed.yaml").read_text().splitlines()[0]
    assert (root / "code" / "launch.py").is_file()
    ckpts = sorted(p.name for p in (root / "ckpt").glob("*.ckpt"))
    assert "last.ckpt" in ckpts and "step0000006.ckpt" in ckpts and "step0000012.ckpt" in ckpts
    assert not list((root / "ckpt").glob("*.tmp"))
    save = root / "save"
    assert len(list((save / "val").glob("step*/*.png"))) >= TINY_SCENE["n_val"]
    assert len(list((save / "test").glob("*.png"))) == TINY_SCENE["n_test"]
    assert (save / "test_step0000012.mp4").stat().st_size > 0
    assert trimesh.load(save / "mesh_step0000012.ply").vertices.shape[0] > 0
    # the textured mesh (glTF, and OBJ with its material and texture) and the turntable preview
    for name in ("textured.glb", "textured.obj", "textured.mtl", "textured.png", "preview.png", "preview.mp4"):
        assert (save / f"mesh_step0000012_{name}").stat().st_size > 0, name
    glb = trimesh.load(save / "mesh_step0000012_textured.glb", force="mesh")
    assert glb.visual.kind == "texture" and glb.visual.uv.shape == (len(glb.vertices), 2)
    metrics = json.loads((save / "test_metrics_step0000012.json").read_text())
    assert set(metrics["mean"]) == {"psnr", "psnr_masked", "ssim"} and "chamfer" in metrics["geometry"]
    events = list((tmp / "runs" / "neus-synthetic" / root.name).glob("events.out.tfevents.*"))
    assert events


def test_parsed_config_can_test_and_export_again(trained, tmp_path):
    _, root = trained
    parsed = root / "config" / "parsed.yaml"
    ckpt = root / "ckpt" / "last.ckpt"
    assert run(tmp_path, "--config", str(parsed), "--export", "--resume", str(ckpt)) == 0
    (export_run,) = only_run(tmp_path, "neus-synthetic")
    exported = trimesh.load(export_run / "save" / "mesh_export.ply", process=False)
    trained_mesh = trimesh.load(root / "save" / "mesh_step0000012.ply", process=False)
    # the same weights give the same mesh as the end of training
    assert exported.vertices.shape == trained_mesh.vertices.shape
    assert abs(exported.vertices - trained_mesh.vertices).max() < 1e-5
    assert run(tmp_path, "--config", str(parsed), "--test", "--resume", str(ckpt)) == 0
    test_runs = only_run(tmp_path, "neus-synthetic")
    assert len(test_runs) == 2  # a new folder; the export run is untouched
    assert list((test_runs[-1] / "save").glob("test_metrics_*.json"))


def test_resume_continues_from_the_saved_step(trained, tmp_path):
    from utils.checkpoint import read_checkpoint

    _, root = trained
    mid = read_checkpoint(root / "ckpt" / "step0000006.ckpt")
    assert mid["global_step"] == 6
    code = run(tmp_path, "--config", str(root / "config" / "parsed.yaml"), "--train",
               "--resume", str(root / "ckpt" / "step0000006.ckpt"), "system.export_mesh_at_test=false")
    assert code == 0
    (resumed,) = only_run(tmp_path, "neus-synthetic")
    final = read_checkpoint(resumed / "ckpt" / "last.ckpt")
    assert final["global_step"] == 12
    # the resumed run started from the saved state: its optimizer had taken 6 steps already
    state = final["optimizer_states"][0]["state"]
    assert max(int(s["step"]) for s in state.values()) == 12
    grid_key = "model.grid.binaries"
    assert final["state_dict"][grid_key].shape == mid["state_dict"][grid_key].shape


def test_resume_weights_only_starts_a_new_run_at_step_zero(trained, tmp_path):
    from utils.checkpoint import read_checkpoint

    _, root = trained
    code = run(tmp_path, "--config", str(root / "config" / "parsed.yaml"), "--train", "--resume-weights-only",
               "--resume", str(root / "ckpt" / "last.ckpt"), "trainer.max_steps=3", "system.export_mesh_at_test=false")
    assert code == 0
    (new,) = only_run(tmp_path, "neus-synthetic")
    assert read_checkpoint(new / "ckpt" / "last.ckpt")["global_step"] == 3


def test_resume_last_finds_newest_checkpoint(trained, tmp_path):
    tmp, root = trained
    code = launch.main(["--exp-dir", str(tmp / "exp"), "--runs-dir", str(tmp_path / "runs"),
                        "--config", str(root / "config" / "parsed.yaml"), "--validate", "--resume", "last"])
    assert code == 0


def test_predict_renders_the_orbit(trained, tmp_path):
    _, root = trained
    assert run(tmp_path, "--config", str(root / "config" / "parsed.yaml"), "--predict",
               "--resume", str(root / "ckpt" / "last.ckpt")) == 0
    (pred,) = only_run(tmp_path, "neus-synthetic")
    assert len(list((pred / "save" / "predict").glob("*.png"))) == 2
    assert list((pred / "save").glob("predict_*.mp4"))


def test_bad_config_stops_before_work_naming_the_key(tmp_path, capsys, tiny_scene_dir):
    code = run(tmp_path, "--config", "configs/neus-synthetic.yaml", "--train",
               *synthetic_overrides(tiny_scene_dir), "model.geometry.feature_dm=3", "trainer.max_steps=ten")
    assert code == 2
    err = capsys.readouterr().err
    assert "model.geometry.feature_dm" in err and "'feature_dim'" in err
    assert "trainer.max_steps: expected an integer" in err
    assert not (tmp_path / "exp").exists()


def test_export_without_checkpoint_is_refused(tmp_path, capsys, tiny_scene_dir):
    assert run(tmp_path, "--config", "configs/neus-synthetic.yaml", "--export",
               *synthetic_overrides(tiny_scene_dir)) == 2
    assert "--resume" in capsys.readouterr().err


def test_checkpoint_of_another_model_is_refused(trained, tmp_path, capsys, tiny_scene_dir):
    _, root = trained
    code = run(tmp_path, "--config", "configs/nerf-blender.yaml", "--test", f"dataset.root_dir={tiny_scene_dir}",
               "--resume", str(root / "ckpt" / "last.ckpt"))
    assert code == 2
    assert "does not fit this model" in capsys.readouterr().err


@pytest.mark.parametrize("preset", ["neus-synthetic", "neus-triplane-sso", "neus-blender", "nerf-blender"])
def test_every_preset_trains_tests_and_exports(preset, tmp_path, tiny_scene_dir):
    if preset.startswith("neus-synthetic") or preset.startswith("neus-triplane"):
        data = synthetic_overrides(tiny_scene_dir)
    else:
        data = [f"dataset.root_dir={tiny_scene_dir}", "dataset.img_wh=[24,24]"]
    extra = ["export.threshold=0.0"] if preset.startswith("nerf") else []
    code = run(tmp_path, "--config", f"configs/{preset}.yaml", "--train", *data, *TINY_RUN,
               "trainer.max_steps=4", "trainer.val_check_interval=2", *extra)
    assert code == 0
    (root,) = [p for name in (tmp_path / "exp").iterdir() for p in name.iterdir()]
    assert (root / "ckpt" / "last.ckpt").is_file()
    assert list((root / "save" / "val").glob("*/*.png"))
    assert list((root / "save").glob("mesh_*.ply"))
