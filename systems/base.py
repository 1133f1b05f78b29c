"""What NeuS and NeRF systems share: the Lightning hooks of a run (training, validation, test and
predict steps), the weighting of the loss terms, and the optimizers.

The jobs around them live elsewhere: the ray budget and the NaN/inf step guard are callbacks
(systems/ray_budget.py, utils/callbacks.py), evaluation outputs are recorded by
systems/evaluation.py, meshes come from systems/export.py, and systems/build.py puts it all together.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Dict, List, Optional

import pytorch_lightning as pl
import torch
from torch import Tensor

from models.base import BaseModel
from models.outputs import RenderOutput
from systems.config import RunContext
from systems.evaluation import (SplitRecorder, failure_reason, image_grid, image_metrics, render_whole_image,
                                scored_resolution, write_video)
from systems.export import export_and_score
from systems.losses import Weight, common_loss_terms, weight_at
from systems.metrics import load_lpips, psnr, summarize_image_metrics, write_image_metrics
from systems.optim import make_optimizer, make_scheduler
from systems.schedule import TrainingSchedule

log = logging.getLogger(__name__)


class BaseSystem(pl.LightningModule):
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
        self.test_deadline: Optional[float] = None  # time.monotonic() when the test's budget is spent
        self.test_budget_s = 0.0  # seconds the test may render for (system.test_time_share)
        self.test_rendered = 0  # test images rendered in this pass (on this process)
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

    def on_predict_start(self) -> None:
        self.apply_step_state()

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

    # ------------------------------------------------------------------ evaluation
    def render_image(self, batch: Dict[str, Any]) -> RenderOutput:
        """The rays of one whole image, rendered in chunks (see systems.evaluation.render_whole_image)."""
        return render_whole_image(self.model, batch)

    def _evaluate_image(self, batch: Dict[str, Any], grid_path: str, with_lpips: bool = False):
        """Render one whole image, save its grid (at ``grid_path`` under save/) -> (index, grid, metrics)."""
        h, w, index = int(batch["height"]), int(batch["width"]), int(batch["index"])
        out = self.render_image(batch)
        grid = image_grid(batch, out, h, w)
        self.recorder.add_image(self.context.save_dir, grid_path.format(index=index), grid)
        metrics = image_metrics(batch, out, h, w, with_lpips=with_lpips, on_skip=self.recorder.skip)
        self.recorder.add_row(index, metrics, size=(h, w))
        return index, grid, out

    def validation_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        if self.skip_validation:
            return
        try:
            index, grid, _ = self._evaluate_image(batch, f"val/step{self.global_step:07d}/{{index:03d}}.png")
        except Exception as err:  # noqa: BLE001
            # while training, an image that cannot be validated is skipped (said once per pass):
            # the run goes on; a full disk (OSError) or a --validate run still stop
            if isinstance(err, OSError) or self.trainer.state.fn != "fit":
                raise
            self.recorder.skip("rendering", failure_reason(err))
            return
        if batch_idx < self.cfg.log_val_images and self._tensorboard() is not None:
            self._tensorboard().add_image(f"val/{index:03d}", grid.permute(2, 0, 1).clamp(0, 1), self.global_step)

    def on_validation_epoch_end(self) -> None:
        if self.skip_validation:
            return
        self.recorder.write_images(self.context.save_dir)
        rows = self.recorder.gathered_rows()
        skipped = self.skipped_metrics("validation")
        resolution = scored_resolution(self.recorder.gathered_sizes(), self.context.eval_downscale)
        self.log_means(rows, "val")
        if (rows or skipped) and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            write_image_metrics(self.context.save_dir / f"val/step{self.global_step:07d}/metrics",
                                summarize_image_metrics(rows), {**skipped, **({"resolution": resolution} if rows else {})})
        self.recorder.reset()

    def skipped_metrics(self, split: str) -> Dict[str, str]:
        """{metric: "skipped: <reason>"} for the metrics this pass could not compute, each said once
        in the log (the metrics files record them the same way)."""
        skipped = self.recorder.gathered_skips()
        if self.trainer.is_global_zero:
            for metric, reason in skipped.items():
                log.warning("%s: skipped for the %s images at step %d: %s", metric, split, self.global_step, reason)
        return {metric: f"skipped: {reason}" for metric, reason in skipped.items()}

    def on_test_start(self) -> None:
        self.apply_step_state()
        self.test_deadline = None
        self.test_rendered = 0
        share = self.cfg.test_time_share
        trained_s = self.schedule.training_seconds() if self.schedule is not None else 0.0
        if share is not None and trained_s > 0:  # (a test without training in this run: every image)
            self.test_budget_s = share * trained_s
            self.test_deadline = time.monotonic() + self.test_budget_s

    def test_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        if self.test_deadline is not None and self.test_rendered > 0 and time.monotonic() >= self.test_deadline:
            self.recorder.leave_out(int(batch["index"]))  # (the first image is always rendered)
            return
        index, grid, _ = self._evaluate_image(batch, "test/{index:03d}.png", with_lpips=self.cfg.eval_lpips)
        self.recorder.add_frame(index, grid)
        self.test_rendered += 1

    def on_test_epoch_end(self) -> None:
        """Per-image and mean image metrics (when the split has ground truth), the video, the mesh
        and its geometry metrics (when the scene has a ground-truth surface), written to
        save/test_metrics_stepN.json and .csv (per image + mean)."""
        self.recorder.write_images(self.context.save_dir)
        frames = self.recorder.gathered_frames()
        rows = self.recorder.gathered_rows()
        extra: Dict[str, Any] = dict(self.skipped_metrics("test"))
        left_out = self.recorder.gathered_left_out()
        if left_out:
            reason = (f"the test's time budget (system.test_time_share={self.cfg.test_time_share} of "
                      f"{self.schedule.training_seconds():.0f} s of training: {self.test_budget_s:.0f} s) was spent "
                      "before they were rendered")
            extra["images_not_scored"] = {"indices": left_out, "reason": reason}
            if self.trainer.is_global_zero:
                log.warning("test: %d image(s) neither rendered nor scored: %s", len(left_out), reason)
        if rows:
            extra["resolution"] = scored_resolution(self.recorder.gathered_sizes(), self.context.eval_downscale)
            self.log_means(rows, "test")
            if self.cfg.eval_lpips:
                _, reason = load_lpips()
                if reason is not None:
                    extra["lpips"] = f"skipped: {reason}"  # (load_lpips says so once in the log)
        else:
            extra["image_metrics"] = "skipped: the test split has no ground truth"
            log.info("the test split has no ground truth: image metrics skipped")
        if self.trainer.is_global_zero:
            self._write_video(frames, "test")
            if self.cfg.export_mesh_at_test:
                extra.update(export_and_score(self.model, self.context, self.cfg, self._tensorboard(), self.global_step))
            json_path, csv_path = write_image_metrics(
                self.context.save_dir / f"test_metrics_step{self.global_step:07d}", summarize_image_metrics(rows), extra)
            log.info("test metrics: %s%s", json_path, f" and {csv_path.name}" if csv_path else "")
        self.recorder.reset()

    def predict_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        h, w, index = int(batch["height"]), int(batch["width"]), int(batch["index"])
        rgb = self.render_image(batch).rgb.reshape(h, w, 3)
        self.recorder.add_image(self.context.save_dir, f"predict/{index:03d}.png", rgb)
        self.recorder.add_frame(index, rgb)

    def on_predict_epoch_end(self) -> None:
        self.recorder.write_images(self.context.save_dir)
        frames = self.recorder.gathered_frames()
        if self.trainer.is_global_zero:
            self._write_video(frames, "predict")
        self.recorder.reset()

    def log_means(self, rows: List[Dict[str, float]], prefix: str) -> Dict[str, float]:
        """Mean of per-image metric rows (each image once, gathered from every process), logged
        as ``<prefix>/<metric>``; every process logs the same values."""
        keys = sorted({k for o in rows for k in o if k != "index"})
        means: Dict[str, float] = {}
        for key in keys:
            values = [float(o[key]) for o in rows if key in o]
            if values:
                means[key] = sum(values) / len(values)
                # equal on all ranks already: a max over them keeps the value exact (and Lightning quiet)
                self.log(f"{prefix}/{key}", means[key], prog_bar=prefix == "val", sync_dist=True, reduce_fx="max")
        self.last_means[prefix] = means
        return means

    def _write_video(self, frames: list, name: str) -> None:
        if frames and self.cfg.save_video:
            write_video(frames, self.context.save_dir / f"{name}_step{self.global_step:07d}.mp4", self.cfg.video_fps,
                        self.cfg.save_gif)

    def _tensorboard(self):
        """The TensorBoard SummaryWriter of the run's logger, or None."""
        return self.logger.experiment if self.logger is not None and hasattr(self.logger, "experiment") else None

    # ------------------------------------------------------------------ optimization
    def configure_optimizers(self):
        optimizer = make_optimizer(self.cfg.optimizer, self.model, "system.optimizer")
        max_steps = self.trainer.max_steps if self.trainer is not None else 0
        scheduler = make_scheduler(self.cfg.scheduler, optimizer, max(1, max_steps), "system.scheduler")
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
