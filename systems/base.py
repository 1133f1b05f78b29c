"""What NeuS and NeRF systems share in training: the Lightning hooks of a training step, the
time budget's clock, the weighting of the loss terms, and the optimizers.

The jobs around them live elsewhere: the validation, test and predict hooks are a mixin
(systems/evaluation_hooks.py) over systems/evaluation.py's helpers; the ray budget and the NaN/inf
step guard are callbacks (systems/ray_budget.py, utils/callbacks.py); meshes come from
systems/export.py, and systems/build.py puts it all together.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, Optional

import pytorch_lightning as pl
import torch
from torch import Tensor

from models.base import BaseModel
from models.outputs import RenderOutput
from systems.config import RunContext
from systems.evaluation import SplitRecorder
from systems.evaluation_hooks import EvaluationHooks
from systems.losses import Weight, common_loss_terms, weight_at
from systems.metrics import psnr
from systems.optim import make_optimizer, make_scheduler
from systems.schedule import TrainingSchedule

log = logging.getLogger(__name__)


class BaseSystem(EvaluationHooks, pl.LightningModule):
    """``schedule`` says which recipe step each training step stands for (systems/schedule.py);
    every step-based schedule (learning rate, loss weights, the model's) follows it."""

    def __init__(self, cfg: Any, model: BaseModel, context: RunContext,
                 schedule: Optional[TrainingSchedule] = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.context = context
        self.model = model
        self.schedule = schedule
        for key, msg in cfg.model_problems(model.cfg):  # (parsing an experiment reports these up front)
            raise ValueError(f"{key}: {msg}")
        self.recorder = SplitRecorder()
        self.last_means: Dict[str, Dict[str, float]] = {}  # the latest logged means, by prefix ("val", "test")
        self.trained_steps = 0  # the schedule step of the weights a checkpoint brought (on_load_checkpoint)
        self.schedule_step = 0  # the recipe step of the current training step
        self.stopped_by_budget = False  # a timed schedule (trainer.max_minutes) ended training
        self.skip_validation = False  # this validation pass renders nothing (see on_validation_start)

    # ------------------------------------------------------------------ loss weights
    def loss_weights(self) -> Dict[str, Weight]:
        return {k: v for k, v in dataclasses.asdict(self.cfg.loss).items() if k.startswith("lambda_")}

    def loss_weight(self, name: str) -> float:
        """The value of loss weight ``lambda_<name>`` at the current (schedule) step."""
        return weight_at(getattr(self.cfg.loss, f"lambda_{name}"), self.schedule_step)

    # ------------------------------------------------------------------ step-dependent state
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        checkpoint["schedule_step"] = self.schedule_step
        if self.schedule is not None:
            checkpoint["training_schedule"] = self.schedule.state_dict()

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        self.trained_steps = int(checkpoint.get("schedule_step", checkpoint.get("global_step", 0)))
        if self.schedule is not None and "training_schedule" in checkpoint:
            self.schedule.load_state_dict(checkpoint["training_schedule"])

    def apply_step_state(self) -> None:
        """Step-dependent model state (NeuS's cosine annealing, the progressive hash grid's levels)
        as after the last training step, so evaluating a checkpoint later renders what evaluating
        at the end of training did. Only in eval mode: then the occupancy grid is left alone."""
        if not self.model.training:
            self.model.update_step(self.current_epoch, max(self.schedule_step, self.trained_steps))

    def on_validation_start(self) -> None:
        if self.schedule is not None:
            self.schedule.pause()  # validation time is not training time
        # Lightning validates once more when a run stops early (the time budget); the test that
        # follows every --train renders the same views, so that pass is skipped unless it was due
        every = self.trainer.val_check_batch
        due = every not in (None, float("inf")) and self.global_step % int(every) == 0
        self.skip_validation = self.trainer.state.fn == "fit" and self.stopped_by_budget and not due
        if self.skip_validation:
            log.info("training stopped on its time budget at step %d: no extra validation (the test follows)",
                     self.global_step)
        self.apply_step_state()

    def on_validation_end(self) -> None:
        self.skip_validation = False
        if self.schedule is not None and self.trainer.training:
            self.schedule.start()

    def on_fit_start(self) -> None:
        if self.trainer.world_size > 1:
            # the weights are the same everywhere (DDP broadcasts rank 0's); the random streams
            # (stratified samples, occupancy-grid probes) differ per rank, so ranks add information
            torch.manual_seed(torch.initial_seed() + self.trainer.global_rank)

    # ------------------------------------------------------------------ training
    def on_train_start(self) -> None:
        if self.schedule is not None:
            self.schedule.start()

    def on_train_end(self) -> None:
        if self.schedule is not None:
            self.schedule.pause()

    def on_train_batch_start(self, batch: Dict[str, Tensor], batch_idx: int) -> None:
        step = self.global_step
        self.schedule_step = self.schedule.schedule_step(step) if self.schedule is not None else step
        self.model.update_step(self.current_epoch, self.schedule_step)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.schedule is not None and self.schedule.timed and self.schedule.finished(self.global_step):
            # the time budget is spent (or the recipe done): the weights stand for the recipe's end
            self.schedule_step = self.schedule.schedule_step(self.global_step)
            self.trainer.should_stop = True
            self.stopped_by_budget = True

    def lr_scheduler_step(self, scheduler, metric) -> None:
        """Once per optimizer step; with a time budget, up to the schedule step of now (Lightning
        calls this after the optimizer step, with global_step already counting it)."""
        if self.schedule is None or not self.schedule.timed:
            scheduler.step()
            return
        target = self.schedule.schedule_step(self.global_step)
        while scheduler.last_epoch < target:
            scheduler.step()

    def training_step(self, batch: Dict[str, Tensor], batch_idx: int) -> Dict[str, Any]:
        """One batch of rays -> the weighted loss, plus the step's sample and ray counts (which
        the ray budget callback reads)."""
        out = self.model(batch["rays_o"], batch["rays_d"], batch["background"])
        terms = self.losses(batch, out)
        loss = sum(self.loss_weight(name) * value for name, value in terms.items())
        for name, value in terms.items():
            self.log(f"train/loss_{name}", value.detach())
        with torch.no_grad():
            train_psnr = psnr(out.rgb, batch["rgb"])
        n_samples = float(out.num_samples)
        n_rays = batch["rays_o"].shape[0]
        self.log("train/loss", loss.detach(), prog_bar=True)
        self.log("train/psnr", train_psnr, prog_bar=True)
        self.log("train/num_rays", float(n_rays), prog_bar=True)
        self.log("train/samples_per_ray", n_samples / max(1, n_rays))
        for name, value in self.model.train_stats().items():
            self.log(f"train/{name}", value, prog_bar=name == "inv_s")
        if self.schedule is not None and self.schedule.timed:
            self.log("train/schedule_step", float(self.schedule_step))
        return {"loss": loss, "num_samples": n_samples, "num_rays": n_rays}

    def losses(self, batch: Dict[str, Tensor], out: RenderOutput) -> Dict[str, Tensor]:
        """Loss terms (unweighted) by name; a term is computed only when its weight can be non-zero.
        These are the terms every system has (systems/losses.py); NeuS adds its SDF's."""
        return common_loss_terms(self.cfg.loss, batch, out, self.model)

    # ------------------------------------------------------------------ optimization
    def configure_optimizers(self):
        optimizer = make_optimizer(self.cfg.optimizer, self.model, "system.optimizer")
        max_steps = self.trainer.max_steps if self.trainer is not None else 0
        scheduler = make_scheduler(self.cfg.scheduler, optimizer, max(1, max_steps), "system.scheduler")
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
