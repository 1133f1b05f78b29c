"""launch.py with test hooks, for tests that run training in a child process.

Lightning's DDP launcher runs this same script again for the other ranks, so the hooks apply on
every rank. Set by environment variables:

  NSR_PROBE_STEP_SLEEP  seconds to sleep in each training step (a run slow enough to interrupt)
  NSR_PROBE_DUMP        a folder: each rank writes rank<r>.pt at the end of training (its occupancy
                        grid, ray counts, first batch, seed, save_dir, validation means) and
                        rank<r>_test.pt after testing (its test means)
"""
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

import systems.base as base  # noqa: E402

SLEEP = float(os.environ.get("NSR_PROBE_STEP_SLEEP", "0") or 0)
DUMP = os.environ.get("NSR_PROBE_DUMP")

_training_step = base.BaseSystem.training_step
_on_train_end = base.BaseSystem.on_train_end
_on_test_epoch_end = base.BaseSystem.on_test_epoch_end


def training_step(self, batch, batch_idx):
    if SLEEP:
        time.sleep(SLEEP)
    if DUMP:
        rec = self.__dict__.setdefault("_probe", {"n_rays": []})
        rec.setdefault("first_rays_o", batch["rays_o"].detach().clone())
        rec["n_rays"].append(int(batch["rays_o"].shape[0]))  # as the ray budget set it
    return _training_step(self, batch, batch_idx)


def on_train_end(self):
    if DUMP:
        grid = self.model.grid
        torch.save({
            "rank": self.trainer.global_rank,
            "world_size": self.trainer.world_size,
            "occs": grid.occs.detach().cpu().clone(),
            "binaries": grid.binaries.detach().cpu().clone(),
            "n_rays": list(self._probe["n_rays"]),
            "first_rays_o": self._probe["first_rays_o"].cpu(),
            "initial_seed": torch.initial_seed(),
            "save_dir": str(self.context.save_dir),
            "val": dict(self.last_means.get("val", {})),
            "params": {k: v.detach().cpu().clone() for k, v in self.named_parameters()},
        }, Path(DUMP) / f"rank{self.trainer.global_rank}.pt")
    _on_train_end(self)


def on_test_epoch_end(self):
    _on_test_epoch_end(self)
    if DUMP:
        torch.save({"test": dict(self.last_means.get("test", {}))}, Path(DUMP) / f"rank{self.trainer.global_rank}_test.pt")


base.BaseSystem.training_step = training_step
base.BaseSystem.on_train_end = on_train_end
base.BaseSystem.on_test_epoch_end = on_test_epoch_end

if __name__ == "__main__":
    import launch

    sys.exit(launch.main(sys.argv[1:]))
