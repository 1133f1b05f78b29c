"""Faults during training: SIGTERM and SIGKILL of a training process, NaN/inf losses and
gradients, and a full disk. Each on the tiny generated scene."""
import errno
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import launch
import systems.base as base
from systems.neus import NeuSSystem
from systems.ray_budget import DynamicRayBudget
from tests.test_launch import TINY_RUN, synthetic_overrides
from utils.checkpoint import read_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]
# smaller and cheaper than TINY_RUN: what is tested here is training, not the outputs
SMALL = ["model.geometry.xyz_encoding.inner.log2_hashmap_size=12", "model.num_samples_per_ray=64",
         "system.max_train_num_rays=256", "system.eval_lpips=false", "system.export_mesh_at_test=false",
         "system.save_video=false", "trainer.limit_test_batches=1"]


def dirs(tmp_path):
    return ["--exp-dir", str(tmp_path / "exp"), "--runs-dir", str(tmp_path / "runs")]


def train_args(scene_dir, *extra):
    return ["--config", "configs/neus-synthetic.yaml", "--train", *synthetic_overrides(scene_dir), *TINY_RUN,
            *SMALL, *extra]


def start_child(tmp_path, args, sleep):
    """launch.py (through tests/launch_probe.py, which slows each step) in a child process."""
    env = dict(os.environ, NSR_PROBE_STEP_SLEEP=str(sleep), PYTHONUNBUFFERED="1")
    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE"):
        env.pop(key, None)
    out = open(tmp_path / "child.log", "w")
    proc = subprocess.Popen([sys.executable, str(REPO_ROOT / "tests" / "launch_probe.py"), *dirs(tmp_path), *args],
                            cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return proc, out


def wait_for(pattern, root: Path, proc, timeout=180.0) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(root.glob(pattern))
        if found:
            return found[0]
        if proc.poll() is not None:
            raise AssertionError(f"the child exited ({proc.returncode}) before {pattern} appeared")
        time.sleep(0.05)
    raise AssertionError(f"{pattern} did not appear within {timeout} s")


def signal_child_once(tmp_path, args, sleep, pattern, sig, timeout):
    """Start the child, send it ``sig`` once ``pattern`` (a glob under exp/) appears, wait for it
    to exit -> the finished process (killed if it outlives ``timeout`` seconds)."""
    proc, log_file = start_child(tmp_path, args, sleep=sleep)
    try:
        wait_for(pattern, tmp_path / "exp", proc)
        proc.send_signal(sig)
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
        log_file.close()
    return proc


def finite_weights(ckpt) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in ckpt["state_dict"].values() if v.is_floating_point())


def callback_state(ckpt, name: str) -> dict:
    """The state a callback class (by name) kept in a Lightning checkpoint."""
    (state,) = [v for k, v in ckpt["callbacks"].items() if k == name or k.startswith(name + "{")]
    return state


def optimizer_steps(ckpt) -> int:
    return max(int(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values())


def test_sigterm_saves_last_checkpoint_and_resume_last_finishes(tmp_path, tiny_scene_dir, capsys):
    args = train_args(tiny_scene_dir, "tag=sig", "trainer.max_steps=1000", "trainer.val_check_interval=1000",
                      "checkpoint.every_n_train_steps=3")
    proc = signal_child_once(tmp_path, args, 0.1, "neus-synthetic/sig@*/ckpt/step0000003.ckpt", signal.SIGTERM, 120)
    output = (tmp_path / "child.log").read_text()
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    lines = [line for line in output.splitlines() if line.startswith("interrupted:")]
    assert len(lines) == 1, output[-3000:]
    match = re.search(r"stopped at step (\d+), checkpoint saved to (\S+); resume with: python launch\.py .*--resume", lines[0])
    assert match, lines[0]
    step, last = int(match.group(1)), Path(match.group(2))
    assert last.name == "last.ckpt" and not list(last.parent.glob("*.tmp"))
    saved = read_checkpoint(last)
    assert saved["global_step"] == step >= 3 and finite_weights(saved)
    assert optimizer_steps(saved) == step  # the state of a finished step, not a half-done one

    code = launch.main([*dirs(tmp_path), *train_args(tiny_scene_dir, "tag=sig", f"trainer.max_steps={step + 2}",
                                                      "trainer.val_check_interval=1000", "checkpoint.every_n_train_steps=3"),
                        "--resume", "last"])
    assert code == 0
    resumed = [p for p in (tmp_path / "exp" / "neus-synthetic").iterdir() if p != last.parent.parent]
    (new_run,) = resumed
    final = read_checkpoint(new_run / "ckpt" / "last.ckpt")
    assert final["global_step"] == step + 2
    assert optimizer_steps(final) == step + 2  # continued from the interrupted optimizer state


def test_sigkill_leaves_intact_checkpoints_and_resume_continues_the_schedule(tmp_path, tiny_scene_dir, monkeypatch):
    total = 12
    args = train_args(tiny_scene_dir, "tag=kill", f"trainer.max_steps={total}", "trainer.val_check_interval=1000",
                      "checkpoint.every_n_train_steps=3")
    pattern = "neus-synthetic/kill@*/ckpt/step0000006.ckpt"
    proc = signal_child_once(tmp_path, args, 0.3, pattern, signal.SIGKILL, 60)
    (ckpt_dir,) = {p.parent for p in (tmp_path / "exp").glob(pattern)}
    assert proc.returncode == -signal.SIGKILL
    # every file under a final name is a whole checkpoint; a write cut short stays a .tmp
    intact = {p: read_checkpoint(p) for p in ckpt_dir.glob("*.ckpt")}
    newest_step = max(c["global_step"] for c in intact.values())
    assert 6 <= newest_step < total
    (ckpt_dir / "step9999999.ckpt.tmp").write_bytes(b"\x50\x4b\x03\x04 cut short")  # as if killed mid-write

    seen = {}
    original = base.BaseSystem.on_train_start

    def on_train_start(self):
        original(self)
        budget = next(cb for cb in self.trainer.callbacks if isinstance(cb, DynamicRayBudget))
        seen.update(step=self.global_step, n_rays=budget.n_rays, occs=self.model.grid.occs.clone(),
                    lr=[g["lr"] for g in self.trainer.optimizers[0].param_groups])

    monkeypatch.setattr(base.BaseSystem, "on_train_start", on_train_start)
    code = launch.main([*dirs(tmp_path), *train_args(tiny_scene_dir, "tag=kill", f"trainer.max_steps={total}",
                                                      "trainer.val_check_interval=1000", "checkpoint.every_n_train_steps=3"),
                        "--resume", "last"])
    assert code == 0
    source = max(intact.values(), key=lambda c: c["global_step"])
    # the resumed run started where the newest intact checkpoint left off: step, occupancy grid,
    # dynamic ray count and learning-rate schedule
    assert seen["step"] == newest_step
    assert torch.equal(seen["occs"], source["state_dict"]["model.grid.occs"])
    assert seen["n_rays"] == callback_state(source, "DynamicRayBudget")["n_rays"]
    assert seen["lr"] == pytest.approx(source["lr_schedulers"][0]["_last_lr"])
    runs = sorted((tmp_path / "exp" / "neus-synthetic").iterdir())
    (new_run,) = [r for r in runs if r != ckpt_dir.parent]
    final = read_checkpoint(new_run / "ckpt" / "last.ckpt")
    assert final["global_step"] == total and optimizer_steps(final) == total
    assert final["lr_schedulers"][0]["last_epoch"] == total


class _NanGradient(torch.autograd.Function):
    """Identity forward; NaN gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def poison_losses(monkeypatch, nan_loss_at, nan_grad_steps=()):
    """NeuS losses with a NaN loss at the steps where nan_loss_at(step), a NaN gradient (finite loss) at nan_grad_steps."""
    original = NeuSSystem.losses

    def losses(self, batch, out):
        terms = original(self, batch, out)
        if nan_loss_at(self.global_step):
            terms["rgb_l1"] = terms["rgb_l1"] * float("nan")
        if self.global_step in nan_grad_steps:
            terms["rgb_l1"] = _NanGradient.apply(terms["rgb_l1"])
        return terms

    monkeypatch.setattr(NeuSSystem, "losses", losses)


def test_nan_steps_are_skipped_and_counted(tmp_path, tiny_scene_dir, monkeypatch):
    poison_losses(monkeypatch, nan_loss_at=lambda step: step in (2, 3), nan_grad_steps={5})
    snapshots = {}
    original = base.BaseSystem.on_train_batch_start

    def on_train_batch_start(self, batch, batch_idx):
        if self.global_step in (2, 4):
            snapshots[self.global_step] = {k: v.detach().clone() for k, v in self.named_parameters()}
        return original(self, batch, batch_idx)

    monkeypatch.setattr(base.BaseSystem, "on_train_batch_start", on_train_batch_start)
    code = launch.main([*dirs(tmp_path), *train_args(tiny_scene_dir, "trainer.max_steps=8",
                                                      "trainer.val_check_interval=1000", "trainer.log_every_n_steps=1")])
    assert code == 0
    (run,) = (tmp_path / "exp" / "neus-synthetic").iterdir()
    final = read_checkpoint(run / "ckpt" / "last.ckpt")
    assert final["global_step"] == 8 and callback_state(final, "NonFiniteStepGuard")["skipped_steps"] == 3
    assert finite_weights(final)
    assert optimizer_steps(final) == 8 - 3  # no update from the NaN loss (2, 3) or NaN gradient (5) steps
    for name, before in snapshots[2].items():  # steps 2 and 3 left the weights as they were
        assert torch.equal(before, snapshots[4][name]), name
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "runs" / "neus-synthetic" / run.name)).Reload()
    logged = {e.step: e.value for e in events.Scalars("train/skipped_steps")}
    assert max(logged.values()) == 3 and logged[min(logged)] == 0


def test_persistent_nan_stops_the_run_keeping_a_finite_checkpoint(tmp_path, tiny_scene_dir, monkeypatch, capsys):
    poison_losses(monkeypatch, nan_loss_at=lambda step: step >= 4)
    code = launch.main([*dirs(tmp_path), *train_args(tiny_scene_dir, "trainer.max_steps=40",
                                                      "trainer.val_check_interval=1000", "checkpoint.every_n_train_steps=2",
                                                      "system.max_consecutive_bad_steps=3")])
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert "training stopped at step 6" in line and "system.max_consecutive_bad_steps=3" in line
    match = re.search(r"the last good checkpoint is (\S+)$", line)
    assert match, line
    kept = read_checkpoint(match.group(1))
    assert finite_weights(kept)
    (run,) = (tmp_path / "exp" / "neus-synthetic").iterdir()
    for path in run.glob("ckpt/*.ckpt"):
        ckpt = read_checkpoint(path)
        assert finite_weights(ckpt) and ckpt["global_step"] <= 6
    assert not (run / "save" / "test").exists()  # stopped: no test after training


def test_disk_full_while_saving_a_checkpoint_is_a_clear_error(tmp_path, tiny_scene_dir, monkeypatch, capsys):
    import lightning_fabric.plugins.io.torch_io as torch_io

    def full_disk(checkpoint, filepath):
        with open(filepath, "wb") as f:
            f.write(b"PK\x03\x04 partial")  # some bytes made it before the disk filled up
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filepath))

    monkeypatch.setattr(torch_io, "_atomic_save", full_disk)
    code = launch.main([*dirs(tmp_path), *train_args(tiny_scene_dir, "trainer.max_steps=4",
                                                      "trainer.val_check_interval=1000", "checkpoint.every_n_train_steps=2")])
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (run,) = (tmp_path / "exp" / "neus-synthetic").iterdir()
    target = run / "ckpt" / "step0000002.ckpt"
    assert f"error: cannot write checkpoint '{target}': No space left on device" in err.splitlines()
    assert list((run / "ckpt").iterdir()) == []  # neither a partial checkpoint nor its temporary file


def test_disk_full_while_saving_an_image_is_a_clear_error(tmp_path, tiny_scene_dir, monkeypatch, capsys):
    import imageio.v3 as iio

    def full_disk(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(iio, "imwrite", full_disk)
    code = launch.main([*dirs(tmp_path), *train_args(tiny_scene_dir, "trainer.max_steps=4",
                                                      "trainer.val_check_interval=2")])
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (run,) = (tmp_path / "exp" / "neus-synthetic").iterdir()
    image = run / "save" / "val" / "step0000002" / "000.png"
    assert f"error: cannot write image '{image}': No space left on device" in err.splitlines()


def test_weights_with_nan_are_never_checkpointed():
    from utils.callbacks import NonFiniteWeightsError, check_finite_weights

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    check_finite_weights(model)  # finite: fine
    with torch.no_grad():
        model[1].bias[0] = float("inf")
    with pytest.raises(NonFiniteWeightsError, match=r"1\.bias"):
        check_finite_weights(model)
