"""The evaluation hooks every system shares: validation, test and predict passes render whole
images, score them, and write their grids, metrics files and videos; the test also exports and
scores the mesh (systems/export.py). What each image gets is computed in systems/evaluation.py;
this mixin holds the Lightning hooks that call it, so systems/base.py keeps training only.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Dict, List, Optional

from models.outputs import RenderOutput
from systems.evaluation import (failure_reason, image_grid, image_metrics, render_whole_image, scored_resolution,
                                write_video)
from systems.export import export_and_score
from systems.metrics import load_lpips, summarize_image_metrics, write_image_metrics

log = logging.getLogger(__name__)


class TestBudget:
    """How long the test after training may render (system.test_time_share x the training time):
    the first image always renders; later ones only while time is left. Without a share, or with
    no training in this run (a --test of a checkpoint), every image renders."""

    def __init__(self, share: Optional[float], trained_s: float, clock=time.monotonic) -> None:
        self.share, self.trained_s, self._clock = share, float(trained_s), clock
        self.seconds = share * self.trained_s if share is not None and self.trained_s > 0 else None
        self.deadline = None if self.seconds is None else clock() + self.seconds
        self.rendered = 0  # images rendered in this pass (on this process)

    def allows_another(self) -> bool:
        return self.deadline is None or self.rendered == 0 or self._clock() < self.deadline

    def reason(self) -> str:
        """Why images were left out, for the metrics file and the log."""
        return (f"the test's time budget (system.test_time_share={self.share} of {self.trained_s:.0f} s of "
                f"training: {self.seconds or 0:.0f} s) was spent before they were rendered")


class EvaluationHooks:
    """Mixed into BaseSystem (a LightningModule with ``cfg``, ``model``, ``context`` and a
    SplitRecorder ``recorder``)."""

    test_budget = TestBudget(None, 0.0)

    def on_predict_start(self) -> None:
        self.apply_step_state()

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
        resolution = scored_resolution(self.recorder.gathered_sizes(), self.context.eval_sizing)
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
        trained_s = self.schedule.training_seconds() if self.schedule is not None else 0.0
        self.test_budget = TestBudget(self.cfg.test_time_share, trained_s)

    def test_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        if not self.test_budget.allows_another():
            self.recorder.leave_out(int(batch["index"]))
            return
        index, grid, _ = self._evaluate_image(batch, "test/{index:03d}.png", with_lpips=self.cfg.eval_lpips)
        self.recorder.add_frame(index, grid)
        self.test_budget.rendered += 1

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
            reason = self.test_budget.reason()
            extra["images_not_scored"] = {"indices": left_out, "reason": reason}
            if self.trainer.is_global_zero:
                log.warning("test: %d image(s) neither rendered nor scored: %s", len(left_out), reason)
        if rows:
            extra["resolution"] = scored_resolution(self.recorder.gathered_sizes(), self.context.eval_sizing)
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

