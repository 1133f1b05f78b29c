"""Dynamic ray sampling: each training step should hold about ``target_samples_per_step`` samples,
so the number of rays per batch follows the samples per ray (which fall as the occupancy grid
learns where space is empty). This callback owns the ray count: it reads each step's sample and
ray counts from the system's training_step output and sets the datamodule's next batch size.
"""
from __future__ import annotations

from typing import Any, Dict

from pytorch_lightning.callbacks import Callback

from utils.distributed import sum_over_ranks


class DynamicRayBudget(Callback):
    """Moves the rays per batch toward ``target_samples_per_step`` / (samples per ray), between
    ``min_rays`` and ``max_rays``. In a distributed run the counts are averaged over the
    processes, so every process draws the same number of rays and aims at the target of its own."""

    def __init__(self, initial_rays: int, target_samples_per_step: int, min_rays: int, max_rays: int,
                 enabled: bool = True) -> None:
        self.n_rays = int(initial_rays)
        self.target = int(target_samples_per_step)
        self.min_rays, self.max_rays = int(min_rays), int(max_rays)
        self.enabled = enabled

    @classmethod
    def from_config(cls, cfg: Any) -> "DynamicRayBudget":
        """From a system config (train_num_rays, target_samples_per_step, train_num_rays_min,
        max_train_num_rays, dynamic_ray_sampling)."""
        return cls(cfg.train_num_rays, cfg.target_samples_per_step, cfg.train_num_rays_min, cfg.max_train_num_rays,
                   enabled=cfg.dynamic_ray_sampling)

    def update(self, n_rays: float, n_samples: float) -> int:
        """The next ray count after a step of ``n_rays`` rays holding ``n_samples`` samples."""
        if self.enabled:
            per_ray = max(n_samples / max(n_rays, 1.0), 1.0)
            wanted = int(self.target / per_ray)
            new = round(0.9 * self.n_rays + 0.1 * wanted)  # part way, to damp oscillation
            self.n_rays = max(self.min_rays, min(self.max_rays, new))
        return self.n_rays

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.datamodule is not None:  # (a resumed count, restored after the data was set up)
            trainer.datamodule.set_train_rays(self.n_rays)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not isinstance(outputs, dict) or "num_samples" not in outputs:
            return
        all_samples, all_rays = sum_over_ranks(float(outputs["num_samples"]), float(outputs["num_rays"]))
        world = trainer.world_size
        self.update(all_rays / world, all_samples / world)
        if trainer.datamodule is not None:
            trainer.datamodule.set_train_rays(self.n_rays)

    def state_dict(self) -> Dict[str, Any]:
        return {"n_rays": self.n_rays}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.n_rays = int(state_dict.get("n_rays", self.n_rays))
