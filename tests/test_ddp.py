"""Distributed training: a 2-process CPU fit (gloo) through launch.py, and the occupancy grid's
distributed update rule."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import launch
from models.rendering import OccupancyGrid
from tests.conftest import TINY_SCENE
from tests.test_launch import TINY_RUN, synthetic_overrides

REPO_ROOT = Path(__file__).resolve().parents[1]


def _ddp_unavailable() -> str:
    if not torch.distributed.is_available():
        return "torch was built without torch.distributed"
    if not torch.distributed.is_gloo_available():
        return "torch.distributed has no gloo backend"
    if sys.platform == "win32":
        return "Lightning's DDP launcher is not supported on Windows here"
    return ""


def test_grid_sync_makes_the_update_of_all_evaluations(monkeypatch):
    """Two 'ranks' probe different points; with the grid's all-reduce (here: an elementwise max
    of both ranks' new values, as all-reduce(max) returns) both end with the grid one process
    would get from the union of the probes, and a cell only one rank probed still decays like in
    a single update."""
    import models.rendering.occupancy_grid as occupancy_grid

    res, step, decay = 4, 300, 0.5  # past warm-up: random subsets of cells

    def field(x):
        return (x.norm(dim=-1) < 0.6).float() * (1.0 + x[:, 0])

    def fresh():
        g = OccupancyGrid([-1, -1, -1, 1, 1, 1], resolution=res)
        g.occs.fill_(0.8)
        g._binarize(0.01)
        return g

    ranks = [fresh(), fresh()]
    news = []
    for r, g in enumerate(ranks):  # each rank's own probe values (-inf where not probed)
        captured = {}
        monkeypatch.setattr(occupancy_grid, "max_over_ranks", lambda new, c=captured: c.setdefault("new", new.clone()))
        g.update(step, field, ema_decay=decay, warmup_steps=0, generator=torch.Generator().manual_seed(10 + r))
        news.append(captured["new"])
    merged = torch.maximum(news[0], news[1])
    assert ((news[0] > -math.inf) != (news[1] > -math.inf)).any(), "the ranks should probe different cells"

    for r, g in enumerate(ranks):
        g.occs.fill_(0.8)
        g._binarize(0.01)
        monkeypatch.setattr(occupancy_grid, "max_over_ranks", lambda new: torch.maximum(new, merged))
        g.update(step, field, ema_decay=decay, warmup_steps=0, generator=torch.Generator().manual_seed(10 + r))
    # independent reference: one EMA update from the union of probes
    probed = merged > -math.inf
    expected = torch.where(probed, torch.maximum(torch.full_like(merged, 0.8 * decay), merged), torch.full_like(merged, 0.8))
    for g in ranks:
        assert torch.allclose(g.occs, expected)
    assert torch.equal(ranks[0].binaries, ranks[1].binaries)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, tiny_scene_dir):
    reason = _ddp_unavailable()
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("ddp")
    dump = tmp / "dump"
    dump.mkdir()
    env = dict(os.environ, NSR_PROBE_DUMP=str(dump), PYTHONUNBUFFERED="1")
    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [
        sys.executable, str(REPO_ROOT / "tests" / "launch_probe.py"),
        "--exp-dir", str(tmp / "exp"), "--runs-dir", str(tmp / "runs"),
        "--config", "configs/neus-synthetic.yaml", "--train", "--accelerator", "cpu", "--devices", "2",
        "trainer.strategy=ddp", "tag=ddp", *synthetic_overrides(tiny_scene_dir), *TINY_RUN,
        "trainer.max_steps=4", "trainer.val_check_interval=2", "checkpoint.every_n_train_steps=2",
        "model.geometry.xyz_encoding.inner.log2_hashmap_size=12", "model.num_samples_per_ray=64",
        "system.max_train_num_rays=256", "export.resolution=32", "export.texture.size=64", "export.preview.frames=4", "export.preview.size=32",
        "system.eval_mesh_points=500", "system.eval_lpips=false",
    ]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and ("gloo" in proc.stderr.lower() and "connect" in proc.stderr.lower()):
        pytest.skip("gloo cannot connect processes on this machine: " + proc.stderr.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stderr[-4000:]
    return tmp, dump, proc


def test_ddp_writes_one_run_folder_and_each_file_once(ddp_run):
    tmp, _, _ = ddp_run
    (root,) = list((tmp / "exp" / "neus-synthetic").iterdir())  # not one folder per rank
    assert len(list((tmp / "runs" / "neus-synthetic").iterdir())) == 1
    assert (root / "config" / "parsed.yaml").is_file() and (root / "code" / "launch.py").is_file()
    assert sorted(p.name for p in (root / "ckpt").iterdir()) == ["last.ckpt", "step0000002.ckpt", "step0000004.ckpt"]
    save = root / "save"
    # 3 test images on 2 ranks: the sampler gives image 0 to both; it is still written (and counted) once
    assert sorted(p.name for p in (save / "test").iterdir()) == ["000.png", "001.png", "002.png"]
    for step in ("step0000002", "step0000004"):
        assert sorted(p.name for p in (save / "val" / step).glob("*.png")) == ["000.png", "001.png"]
    assert sorted(p.name for p in save.glob("*.mp4")) == ["mesh_step0000004_preview.mp4", "test_step0000004.mp4"]
    meshes = sorted(p.name for p in save.glob("mesh_*"))
    assert meshes == sorted(f"mesh_step0000004{end}" for end in (
        ".ply", "_textured.glb", "_textured.obj", "_textured.mtl", "_textured.png", "_preview.png", "_preview.mp4"))
    import imageio.v3 as iio

    frames = iio.imread(save / "test_step0000004.mp4", index=None)
    assert frames.shape[0] == TINY_SCENE["n_test"]


def test_ddp_ranks_agree_on_grid_rays_and_metrics(ddp_run):
    tmp, dump, _ = ddp_run
    r0, r1 = (torch.load(dump / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert (r0["rank"], r1["rank"], r0["world_size"]) == (0, 1, 2)
    # the same weights and occupancy grid everywhere (DDP does not broadcast buffers here: the grid
    # update is all-reduced), the same ray count at every step, but different rays and random streams
    for name in r0["params"]:
        assert torch.equal(r0["params"][name], r1["params"][name]), name
    assert torch.equal(r0["occs"], r1["occs"]) and torch.equal(r0["binaries"], r1["binaries"])
    assert r0["n_rays"] == r1["n_rays"] and len(r0["n_rays"]) == 4
    assert not torch.equal(r0["first_rays_o"], r1["first_rays_o"])
    assert r0["initial_seed"] != r1["initial_seed"]
    assert r0["save_dir"] == r1["save_dir"]
    # metrics: every rank logs the mean over all images, and it is the mean of the written per-image rows
    assert r0["val"] and r0["val"] == r1["val"]
    t0, t1 = (torch.load(dump / f"rank{r}_test.pt", weights_only=True)["test"] for r in (0, 1))
    assert t0 and t0 == t1
    (root,) = list((tmp / "exp" / "neus-synthetic").iterdir())
    metrics = json.loads((root / "save" / "test_metrics_step0000004.json").read_text())
    rows = metrics["per_image"]
    assert sorted(r["index"] for r in rows) == list(range(TINY_SCENE["n_test"]))
    for key in ("psnr", "ssim"):
        assert t0[key] == pytest.approx(sum(r[key] for r in rows) / len(rows), rel=1e-9)


def test_ddp_test_metrics_match_one_process(ddp_run, tmp_path):
    """The gathered metrics are the ones a single process computes from the same checkpoint."""
    tmp, _, _ = ddp_run
    (root,) = list((tmp / "exp" / "neus-synthetic").iterdir())
    code = launch.main(["--exp-dir", str(tmp_path / "exp"), "--runs-dir", str(tmp_path / "runs"),
                        "--config", str(root / "config" / "parsed.yaml"), "--test", "--accelerator", "cpu",
                        "--devices", "1", "trainer.strategy=auto", "--resume", str(root / "ckpt" / "last.ckpt"),
                        "system.export_mesh_at_test=false", "system.save_video=false"])
    assert code == 0
    (single,) = list((tmp_path / "exp" / "neus-synthetic").iterdir())
    one = json.loads(next((single / "save").glob("test_metrics_*.json")).read_text())["per_image"]
    two = json.loads((root / "save" / "test_metrics_step0000004.json").read_text())["per_image"]
    assert [r["index"] for r in one] == [r["index"] for r in two]
    for a, b in zip(one, two):
        assert a["psnr"] == pytest.approx(b["psnr"], abs=1e-4) and a["ssim"] == pytest.approx(b["ssim"], abs=1e-5)


@pytest.mark.parametrize("env, rank", [
    ({}, 0),
    ({"RANK": "3", "LOCAL_RANK": "1"}, 3),  # torchrun
    ({"RANK": "0", "LOCAL_RANK": "0"}, 0),
    ({"LOCAL_RANK": "1", "NODE_RANK": "0"}, 1),  # a rank Lightning's launcher started
    ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, 1000),  # first process of the second node
    ({"SLURM_PROCID": "2", "SLURM_NTASKS": "4"}, 2),  # srun
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, 0),  # a one-task SLURM job
])
def test_launch_rank_from_the_launchers_environment(env, rank):
    from utils.distributed import launch_rank

    assert launch_rank(env) == rank
