"""Bad or unusual inputs a new user might give launch.py: config values, command-line flags, files
and data. Each is refused before any work with exit status 2 and one line naming the culprit (no
traceback, no run folder left behind), or gets the documented behaviour. docs/BAD_INPUTS.md lists
what each gets; this file checks that table. Most cases fail while the config is parsed, so they
are cheap; none of them trains."""
import shutil

import imageio.v3 as iio
import pytest
import torch

import launch
from tests.conftest import TINY_SCENE

# keeps any run that got through by mistake short
QUICK = ["trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.enable_progress_bar=false",
         "checkpoint.every_n_train_steps=1000", "export.resolution=32", "system.eval_mesh_points=500",
         "system.train_num_rays=64", "system.max_train_num_rays=256", "model.grid.resolution=16",
         "model.num_samples_per_ray=64", "dataset.n_predict_views=2", "system.save_video=false",
         "system.eval_lpips=false"]


def synthetic(scene_dir):
    return [f"dataset.root_dir={scene_dir}"] + [f"dataset.{k}={v}" for k, v in TINY_SCENE.items()]


def blender(scene_dir):
    return ["--config", "configs/neus-blender.yaml", "--train", f"dataset.root_dir={scene_dir}", *QUICK]


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_scene_dir):
    """Bad files of every kind, made once: checkpoints, configs and a scene with a damaged image."""
    from systems.base import RunContext
    from systems.build import build_system, load_experiment

    root = tmp_path_factory.mktemp("bad_files")
    _, cfg = load_experiment("configs/neus-synthetic.yaml", [*synthetic(tiny_scene_dir), *QUICK])
    system = build_system(cfg, RunContext(save_dir=root, scene_to_world=torch.eye(4)))
    state = system.state_dict()
    torch.save({"state_dict": state, "global_step": 2}, root / "weights_only.ckpt")
    torch.save({"state_dict": state, "global_step": 2, "loops": {}, "lr_schedulers": [{}],
                "optimizer_states": [{"state": {}, "param_groups": [{"params": [0, 1]}]}]}, root / "other_optimizer.ckpt")
    torch.save({"state_dict": {"model.other.weight": torch.zeros(3)}, "global_step": 5}, root / "foreign.ckpt")
    poisoned = dict(state)
    key = next(name for name, _ in system.named_parameters())
    poisoned[key] = torch.full_like(state[key], float("nan"))
    torch.save({"state_dict": poisoned, "global_step": 2}, root / "nan_weights.ckpt")
    torch.save([1, 2, 3], root / "not_lightning.ckpt")
    whole = (root / "weights_only.ckpt").read_bytes()
    (root / "truncated.ckpt").write_bytes(whole[: len(whole) // 2])
    (root / "empty.ckpt").write_bytes(b"")
    (root / "notes.ckpt").write_text("not a checkpoint\n")
    (root / "ckpt_folder").mkdir()
    (root / "bad.yaml").write_text("name: x\nmodel:\n  radius: [1\n  foo: 2\n")
    (root / "list.yaml").write_text("- a\n- b\n")
    (root / "config_folder").mkdir()
    (root / "a_file.txt").write_text("a file, not a folder\n")
    damaged = root / "damaged_scene"
    shutil.copytree(tiny_scene_dir, damaged)
    png = damaged / "train" / "r_1.png"
    png.write_bytes(png.read_bytes()[:60])  # cut short
    maskless = root / "maskless_scene"  # training images whose alpha (the mask) is zero everywhere
    shutil.copytree(tiny_scene_dir, maskless)
    for png in (maskless / "train").glob("*.png"):
        rgba = iio.imread(png)
        rgba[..., 3] = 0
        iio.imwrite(png, rgba)
    return root


def run(tmp_path, argv):
    return launch.main(["--exp-dir", str(tmp_path / "exp"), "--runs-dir", str(tmp_path / "runs"), *argv])


def expand(args, scene, files):
    return [fill(a, scene, files) for a in args]


def fill(text, scene="", files=""):
    return text.replace("{scene}", str(scene)).replace("{files}", str(files))


# (id, arguments after the preset's --train and the tiny scene ({files}: the bad files), text the
# error line must hold). Each is refused with exit status 2 before any run folder is left.
CONFIG_VALUES = [
    ("max-steps-negative", ["trainer.max_steps=-5"], "trainer.max_steps: must be >= 1, got -5"),
    ("max-steps-zero", ["trainer.max_steps=0"], "trainer.max_steps: must be >= 1"),
    ("max-steps-not-a-number", ["trainer.max_steps=ten"], "trainer.max_steps: expected an integer"),
    ("val-interval-zero", ["trainer.val_check_interval=0"], "trainer.val_check_interval: must be >= 1"),
    ("log-every-zero", ["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps: must be >= 1"),
    ("limit-val-negative", ["trainer.limit_val_batches=-1"], "trainer.limit_val_batches: must be an image count"),
    ("limit-test-fraction-above-1", ["trainer.limit_test_batches=1.5"], "trainer.limit_test_batches:"),
    ("gradient-clip-negative", ["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val: must be >= 0"),
    ("precision-unknown", ["trainer.precision=8"], "trainer.precision: 8 is not one of the choices"),
    ("strategy-unknown", ["trainer.strategy=dpp"], "trainer.strategy: unknown strategy 'dpp'. Did you mean 'ddp'"),
    ("checkpoint-every-negative", ["checkpoint.every_n_train_steps=-1"], "checkpoint.every_n_train_steps: must be >= 0"),
    ("seed-negative", ["seed=-1"], "seed: must be in [0, 4294967295], got -1"),
    ("tag-with-slash", ["tag=a/b"], "tag: must be a single folder name"),
    ("name-empty", ["name=''"], "name: must be a single folder name"),
    ("export-resolution-zero", ["export.resolution=0"], "export.resolution: must be >= 2, got 0"),
    ("export-resolution-absurd", ["export.resolution=1000000"], "export.resolution: 1000000 needs about"),
    ("export-chunk-zero", ["export.chunk_size=0"], "export.chunk_size: must be >= 1"),
    ("export-no-format", ["export.formats=[]"], "export.formats: must not be empty"),
    ("export-format-unknown", ["export.formats=[stl]"], "export.formats[0]: 'stl' is not one of the choices"),
    ("region-two-numbers", ["system.eval_mesh_region=[1,2]"], "system.eval_mesh_region: must have 4 or 6 items"),
    ("region-empty-box", ["system.eval_mesh_region=[0,0,0,0,1,1]"], "system.eval_mesh_region: a box needs min < max"),
    ("region-negative-radius", ["system.eval_mesh_region=[0,0,0,-1]"], "system.eval_mesh_region: a sphere needs a positive radius"),
    ("mesh-threshold-zero", ["system.eval_mesh_threshold=0"], "system.eval_mesh_threshold: must be > 0"),
    ("mesh-points-zero", ["system.eval_mesh_points=0"], "system.eval_mesh_points: must be >= 1"),
    ("lr-negative", ["system.optimizer.lr=-1"], "system.optimizer.lr: must be > 0, got -1.0"),
    ("module-lr-zero", ["system.optimizer.params.geometry.lr=0"], "system.optimizer.params.geometry.lr: must be > 0"),
    ("optimizer-unknown", ["system.optimizer.name=Adamm"], "system.optimizer.name: torch.optim has no optimizer 'Adamm'"),
    ("optimizer-module-unknown", ["system.optimizer.params={geometri: {lr: 0.01}}"],
     "system.optimizer.params.geometri: the model has no module 'geometri'"),
    ("optimizer-betas-refused", ["system.optimizer.args.betas=[2.0,0.9]"], "system.optimizer: cannot build torch.optim.Adam"),
    ("scheduler-unknown", ["system.scheduler.name=NoSuchLR"], "system.scheduler.name: unknown scheduler 'NoSuchLR'"),
    ("scheduler-decay-zero", ["system.scheduler.args.decay_to=0"], "system.scheduler.args.decay_to: must be > 0"),
    ("loss-weight-negative", ["system.loss.lambda_mask=-1"], "system.loss.lambda_mask: must be a number or a list"),
    ("loss-schedule-malformed", ["system.loss.lambda_eikonal=[[0,1,2]]"], "system.loss.lambda_eikonal:"),
    ("background-loss-without-background", ["system.loss.lambda_distortion_bg=0.1"],
     "system.loss.lambda_distortion_bg: > 0 needs a learned background (model.background)"),
    ("curvature-without-laplace", ["system.loss.lambda_curvature=0.1"],
     "system.loss.lambda_curvature: > 0 needs model.compute_laplace: true"),
    ("rays-zero", ["system.train_num_rays=0"], "system.train_num_rays: must be >= 1"),
    ("rays-min-above-max", ["system.train_num_rays_min=100000"], "system.train_num_rays_min: must be <= max_train_num_rays"),
    ("bad-steps-zero", ["system.max_consecutive_bad_steps=0"], "system.max_consecutive_bad_steps: must be >= 1"),
    ("video-fps-zero", ["system.video_fps=0"], "system.video_fps: must be >= 1"),
    ("radius-zero", ["model.radius=0"], "model.radius: must be > 0, got 0.0"),
    ("samples-zero", ["model.num_samples_per_ray=0"], "model.num_samples_per_ray: must be >= 1"),
    ("eval-chunk-zero", ["model.eval_chunk_size=0"], "model.eval_chunk_size: must be >= 1"),
    ("far-before-near", ["model.near_plane=2", "model.far_plane=1"], "model.far_plane: must be > near_plane"),
    ("alpha-threshold-one", ["model.alpha_thre=1"], "model.alpha_thre: must be in [0, 1)"),
    ("grid-resolution-zero", ["model.grid.resolution=0"], "model.grid.resolution: must be >= 1"),
    ("grid-threshold-above-one", ["model.grid.occ_thre=2"], "model.grid.occ_thre: must be in [0, 1]"),
    ("grid-decay-above-one", ["model.grid.ema_decay=1.5"], "model.grid.ema_decay: must be in [0, 1]"),
    ("hash-levels-zero", ["model.geometry.xyz_encoding.inner.n_levels=0"],
     "model.geometry.xyz_encoding.inner.n_levels: must be >= 1"),
    ("hash-table-huge", ["model.geometry.xyz_encoding.inner.log2_hashmap_size=40"],
     "model.geometry.xyz_encoding.inner.log2_hashmap_size: must be in [1, 30]"),
    ("hash-table-over-int32", ["model.geometry.xyz_encoding.inner.log2_hashmap_size=30",
                               "model.geometry.xyz_encoding.inner.n_levels=16", "model.geometry.xyz_encoding.inner.per_level_scale=2"],
     "hash grid table too large"),
    ("hash-scale-below-one", ["model.geometry.xyz_encoding.inner.per_level_scale=0.5"],
     "model.geometry.xyz_encoding.inner.per_level_scale: must be >= 1"),
    ("mlp-no-neurons", ["model.geometry.mlp_network.n_neurons=0"], "model.geometry.mlp_network.n_neurons: must be >= 1"),
    ("sh-degree-zero", ["model.texture.dir_encoding.degree=0"], "model.texture.dir_encoding.degree: must be in [1, 8]"),
    ("neus-with-density", ["model.geometry.name=volume-density"], "model.geometry.name: NeuS needs an SDF geometry"),
    ("nerf-model-for-neus-system", ["model.name=nerf"], "model.name: neus-system needs a NeuS model"),
    ("min-inv-s-negative", ["model.variance.min_inv_s=-1"], "model.variance.min_inv_s: must be a number"),
    ("anneal-negative", ["model.cos_anneal_end=-5"], "model.cos_anneal_end: must be >= 0"),
    ("resolution-zero", ["dataset.resolution=0"], "dataset.resolution: must be >= 1"),
    ("downscale-zero", ["dataset.img_downscale=0"], "dataset.img_downscale: must be > 0"),
    ("img-wh-zero", ["dataset.img_wh=[0,24]"], "dataset.img_wh[0]: must be >= 1, got 0"),
    ("img-wh-one-number", ["dataset.img_wh=[24]"], "dataset.img_wh: must have 2 items"),
    ("img-wh-and-downscale", ["dataset.img_wh=[24,24]", "dataset.img_downscale=2"],
     "dataset.img_downscale: set either dataset.img_wh or dataset.img_downscale, not both (set the other to null"),
    ("predict-views-zero", ["dataset.n_predict_views=0"], "dataset.n_predict_views: must be >= 1"),
    ("max-val-images-zero", ["dataset.max_images_val=0"], "dataset.max_images_val: must be >= 1"),
    ("workers-negative", ["dataset.num_workers=-1"], "dataset.num_workers: must be >= 0"),
    ("unknown-key", ["trainer.max_step=5"], "trainer.max_step: unknown key 'max_step'. Did you mean 'max_steps'"),
    ("override-not-key-value", ["trainer.max_steps"], "is not of the form key=value"),
    ("override-unbalanced", ["trainer.devices=[0"], "command-line override 'trainer.devices=[0': cannot parse it"),
]

FLAGS_AND_FILES = [
    ("devices-zero", ["--devices", "0"], "trainer.devices: must be a count >= 1"),
    ("devices-words", ["--devices", "two"], "trainer.devices: must be a count >= 1"),
    ("num-nodes-zero", ["--num-nodes", "0"], "trainer.num_nodes: must be >= 1"),
    ("seed-flag-negative", ["--seed", "-3"], "seed: must be in [0, 4294967295]"),
    ("resume-missing", ["--resume", "{files}/nowhere.ckpt"], "checkpoint '{files}/nowhere.ckpt' does not exist"),
    ("resume-folder", ["--resume", "{files}/ckpt_folder"], "is a folder, not a checkpoint file"),
    ("resume-empty", ["--resume", "{files}/empty.ckpt"], "checkpoint '{files}/empty.ckpt' is empty (0 bytes)"),
    ("resume-truncated", ["--resume", "{files}/truncated.ckpt"], "checkpoint '{files}/truncated.ckpt' is truncated or damaged"),
    ("resume-text-file", ["--resume", "{files}/notes.ckpt"], "'{files}/notes.ckpt' is not a checkpoint"),
    ("resume-not-lightning", ["--resume", "{files}/not_lightning.ckpt"], "is not a Lightning checkpoint of this toolkit"),
    ("resume-other-model", ["--resume", "{files}/foreign.ckpt"], "does not fit this model (was it made with another config?)"),
    ("resume-weights-only-file", ["--resume", "{files}/weights_only.ckpt"],
     "holds weights only, no optimizer state to resume; --resume-weights-only starts a new run"),
    ("resume-other-optimizer", ["--resume", "{files}/other_optimizer.ckpt"], "was trained with other optimizer parameter groups"),
    ("resume-last-none", ["--resume", "last"], "--resume last: no checkpoint found"),
    ("root-dir-is-a-file", ["dataset.root_dir={files}/a_file.txt"], "dataset.root_dir: '{files}/a_file.txt' is a file, not a folder"),
]

DATA = [  # (id, whole argument list, culprit)
    ("blender-root-missing", ["--config", "configs/neus-blender.yaml", "--train", "dataset.root_dir={files}/nowhere"],
     "dataset folder '{files}/nowhere' does not exist (expected the NeRF-synthetic layout"),
    ("blender-root-is-a-file", ["--config", "configs/neus-blender.yaml", "--train", "dataset.root_dir={files}/a_file.txt"],
     "dataset.root_dir: '{files}/a_file.txt' is a file, not a folder"),
    ("downscale-too-small-for-ssim", [*blender("{scene}"), "dataset.img_wh=null", "dataset.img_downscale=4"],
     "dataset.img_downscale: 4.0 leaves the val images 6x6 pixels, smaller than the 11x11 window SSIM needs"),
    ("img-wh-too-small-for-ssim", [*blender("{scene}"), "dataset.img_wh=[8,8]"],
     "dataset.img_wh: [8, 8] leaves the val images 8x8 pixels"),
    ("test-images-too-small", ["--config", "configs/neus-blender.yaml", "--test", "dataset.root_dir={scene}",
                               "dataset.img_wh=null", "dataset.img_downscale=3"], "leaves the test images 8x8 pixels"),
    ("damaged-train-image", blender("{files}/damaged_scene"), "cannot read image '{files}/damaged_scene/train/r_1.png'"),
    ("holdout-every-one", ["--config", "configs/neus-dtu.yaml", "--train", "dataset.holdout_every=1"],
     "dataset.holdout_every: must be 0 (none) or >= 2"),
    ("empty-training-masks", ["--config", "configs/neus-synthetic.yaml", "--train", *synthetic("{files}/maskless_scene"),
                              *QUICK], "system.loss.lambda_mask is 0.1 but the training data has no masks"),
    ("config-missing", ["--config", "{files}/nowhere.yaml", "--train"], "config file '{files}/nowhere.yaml' does not exist"),
    ("config-is-a-folder", ["--config", "{files}/config_folder", "--train"], "is a folder (give a YAML file"),
    ("config-bad-yaml", ["--config", "{files}/bad.yaml", "--train"],
     "cannot read config file '{files}/bad.yaml': line 4, column 6: did not find expected ',' or ']'"),
    ("config-not-a-mapping", ["--config", "{files}/list.yaml", "--train"], "must hold a mapping at the top level"),
    ("export-without-weights", ["--config", "configs/neus-synthetic.yaml", "--export", *synthetic("{scene}")],
     "--export needs weights: add --resume CKPT"),
    ("weights-only-flag-with-test", ["--config", "configs/neus-synthetic.yaml", "--test", "--resume-weights-only",
                                     "--resume", "{files}/weights_only.ckpt", *synthetic("{scene}")],
     "--resume-weights-only only applies to --train"),
    ("test-with-other-model", ["--config", "configs/neus-synthetic.yaml", "--test", "--resume", "{files}/foreign.ckpt",
                               *synthetic("{scene}"), *QUICK], "does not fit this model"),
    ("test-with-nan-weights", ["--config", "configs/neus-synthetic.yaml", "--test", "--resume", "{files}/nan_weights.ckpt",
                               *synthetic("{scene}"), *QUICK], "holds NaN/inf weights"),
    ("export-truncated", ["--config", "configs/neus-synthetic.yaml", "--export", "--resume", "{files}/truncated.ckpt",
                          *synthetic("{scene}")], "is truncated or damaged"),
]


def assert_refused(tmp_path, capsys, argv, culprit):
    code = run(tmp_path, argv)
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last.startswith("error: ") and culprit in last, last
    assert not (tmp_path / "exp").exists() and not (tmp_path / "runs").exists()  # nothing left behind


@pytest.mark.parametrize("args, culprit", [c[1:] for c in CONFIG_VALUES + FLAGS_AND_FILES],
                         ids=[c[0] for c in CONFIG_VALUES + FLAGS_AND_FILES])
def test_bad_value_or_file_is_refused_before_work(args, culprit, tmp_path, capsys, tiny_scene_dir, files):
    argv = ["--config", "configs/neus-synthetic.yaml", "--train", *synthetic(tiny_scene_dir), *QUICK,
            *expand(args, tiny_scene_dir, files)]
    assert_refused(tmp_path, capsys, argv, fill(culprit, files=files))


@pytest.mark.parametrize("args, culprit", [c[1:] for c in DATA], ids=[c[0] for c in DATA])
def test_bad_data_or_command_is_refused_before_work(args, culprit, tmp_path, capsys, tiny_scene_dir, files):
    assert_refused(tmp_path, capsys, expand(args, tiny_scene_dir, files), fill(culprit, files=files))


def test_there_are_enough_cases():
    assert len(CONFIG_VALUES) + len(FLAGS_AND_FILES) + len(DATA) >= 40


@pytest.mark.parametrize("argv, culprit", [
    (["--gpu", "x"], "argument --gpu: expected GPU indices"),
    (["--frobnicate"], "unknown option(s) ['--frobnicate']"),
    (["--train", "--test"], "not allowed with argument"),
])
def test_bad_flags_stop_the_parser(argv, culprit, tmp_path, capsys):
    base = ["--config", "configs/neus-synthetic.yaml"] + ([] if "--train" in argv else ["--train"])
    with pytest.raises(SystemExit) as exit_:
        run(tmp_path, [*base, *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert culprit in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_accelerator_without_gpu_is_refused(tmp_path, capsys, tiny_scene_dir):
    argv = ["--config", "configs/neus-synthetic.yaml", "--train", *synthetic(tiny_scene_dir), *QUICK, "--accelerator", "gpu"]
    assert_refused(tmp_path, capsys, argv, "trainer.accelerator: gpu, but torch finds no CUDA GPU")


def test_resume_last_that_picks_a_damaged_file_says_so(tmp_path, capsys, tiny_scene_dir, files):
    ckpt_dir = tmp_path / "exp" / "neus-synthetic" / "t@20260101-000000" / "ckpt"
    ckpt_dir.mkdir(parents=True)
    shutil.copy(files / "truncated.ckpt", ckpt_dir / "last.ckpt")
    before = sorted((tmp_path / "exp" / "neus-synthetic").iterdir())
    code = run(tmp_path, ["--config", "configs/neus-synthetic.yaml", "--train", *synthetic(tiny_scene_dir), *QUICK,
                          "tag=t", "--resume", "last"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert f"checkpoint '{ckpt_dir / 'last.ckpt'}' is truncated or damaged" in last
    assert "--resume last picked it" in last
    assert sorted((tmp_path / "exp" / "neus-synthetic").iterdir()) == before
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------------
# memory estimates (with the memory available given, so the outcome does not depend on the machine)
# ------------------------------------------------------------------------------------------------
def test_export_resolution_is_checked_against_the_memory_available(caplog):
    from systems.preflight import check_export_memory
    from utils.config import ConfigError
    from utils.mesh.extract import mesh_memory_estimate

    gib = 2**30
    check_export_memory(512, 8 * gib)  # ~0.6 GiB: fine, silent
    assert not caplog.records
    with pytest.raises(ConfigError, match=r"export.resolution: 8192 needs about 32\.\d GiB .* more than the 8\.0 GiB "
                                          r"available \(about 4\d\d\d fits"):
        check_export_memory(8192, 8 * gib)
    check_export_memory(4096, 12 * gib)  # 8 GiB of 12: allowed, with a warning
    assert "more than half" in caplog.text
    # the mesh grows with the surface (4 faces per resolution^2 at 128 B), plus a value grid of at
    # most 256^3 float32
    assert mesh_memory_estimate(4096) == 4 * 4096**2 * 128 + 4 * 256**3
    assert mesh_memory_estimate(100) == 4 * 100**2 * 128 + 4 * 100**3


def test_eval_chunk_is_lowered_to_fit_the_memory_available(caplog):
    from types import SimpleNamespace

    from systems.preflight import RENDER_BYTES_PER_SAMPLE, fit_eval_chunk

    model = SimpleNamespace(num_samples_per_ray=256, max_samples_per_ray=None, background=None, eval_chunk_size=16384)
    fit_eval_chunk(model, 16 * 2**30)  # 16384 x 256 x 1 KiB = 4 GiB <= half of 16 GiB: kept
    assert model.eval_chunk_size == 16384 and not caplog.records
    fit_eval_chunk(model, 2**30)  # half of 1 GiB holds 2048 rays of 256 KiB
    assert model.eval_chunk_size == 2**29 // (256 * RENDER_BYTES_PER_SAMPLE) == 2048
    assert "model.eval_chunk_size: 16384 rays per chunk" in caplog.text and "chunks of 2048 rays" in caplog.text
