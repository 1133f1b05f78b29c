"""What NeuS and NeRF systems share: the Lightning hooks of a run (training, validation, test and
predict steps), the loss terms every method has and their weighting, and the optimizers.

The jobs around them live elsewhere: the ray budget and the NaN/inf step guard are callbacks
(systems/ray_budget.py, utils/callbacks.py), evaluation outputs are recorded by
systems/evaluation.py, meshes come from systems/export.py, and systems/build.py puts it all together.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytorch_lightning as pl
import torch
from torch import Tensor

from models.base import BaseModel
from models.outputs import RenderOutput
from models.rendering import distortion_loss
from systems.evaluation import SplitRecorder, image_grid, image_metrics
from systems.export import export_mesh, score_mesh
from systems.losses import Weight, mask_loss, opaque_loss, weight_at, weight_nonzero
from systems.metrics import load_lpips, psnr, summarize_image_metrics, write_image_metrics
from systems.optim import OptimizerConfig, SchedulerConfig, make_optimizer, make_scheduler
from utils.config import at_least, checked, length, non_negative, positive, schedule
from utils.experiment import ExportConfig
from utils.saving import save_video

log = logging.getLogger(__name__)


# the smallest chunk (rays) render_image falls back to when rendering runs out of memory
MIN_EVAL_CHUNK = 256


def failure_reason(err: BaseException) -> str:
    """An error in one line: its message as it is when written for users (ValueError, OSError),
    else with its type (a bug's message alone rarely says enough)."""
    text = (str(err).splitlines() or [""])[0].strip()
    if text and isinstance(err, (ValueError, OSError)):
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def mesh_failure(err: BaseException) -> str:
    """One line saying why a mesh could not be made or scored, with what to change when it is memory."""
    from utils.memory import is_out_of_memory

    if is_out_of_memory(err):
        return "out of memory (lower export.resolution or export.chunk_size)"
    return failure_reason(err)


@dataclasses.dataclass(frozen=True)
class RunContext:
    """What a system needs to know about the run and the data, besides its config and model."""

    save_dir: Path  # the run's save/ folder (only rank zero writes there)
    scene_to_world: Tensor  # [4, 4] scene -> input world coordinates
    gt_mesh_path: Optional[str] = None
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)


# a loss weight: a number >= 0 or a [[step, value], ...] schedule of them (utils/schedules.py)
LOSS_WEIGHT = schedule(non_negative())


@dataclasses.dataclass
class CommonLossConfig:
    """Weights of the terms every system has (see BaseSystem.common_losses)."""

    lambda_rgb_mse: Weight = checked(LOSS_WEIGHT, default=0.0)
    lambda_rgb_l1: Weight = checked(LOSS_WEIGHT, default=0.0)
    lambda_mask: Weight = checked(LOSS_WEIGHT, default=0.0)  # BCE of opacity against the dataset's masks (needs masks)
    lambda_opaque: Weight = checked(LOSS_WEIGHT, default=0.0)
    lambda_distortion: Weight = checked(LOSS_WEIGHT, default=0.0)
    # distortion loss of the learned background (model.background), in normalized disparity
    lambda_distortion_bg: Weight = checked(LOSS_WEIGHT, default=0.0)
    # the fields' own regularizers, e.g. the tri-plane's total variation ('tv') and 'l1'
    lambda_tv: Weight = checked(LOSS_WEIGHT, default=0.0)
    lambda_l1: Weight = checked(LOSS_WEIGHT, default=0.0)


@dataclasses.dataclass
class SystemConfig:
    """Options every system shares."""

    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = dataclasses.field(default_factory=SchedulerConfig)
    # rays per training step; with dynamic sampling, adjusted so each step has about
    # target_samples_per_step samples, between train_num_rays_min and max_train_num_rays
    train_num_rays: int = checked(at_least(1), default=256)
    dynamic_ray_sampling: bool = True
    target_samples_per_step: int = checked(at_least(1), default=262144)
    max_train_num_rays: int = checked(at_least(1), default=8192)
    train_num_rays_min: int = checked(at_least(1), default=64)
    # a step whose loss or gradients are NaN/inf is skipped (no parameter update) and counted
    # (train/skipped_steps); this many in a row stop the run, keeping its last (finite) checkpoint
    max_consecutive_bad_steps: int = checked(at_least(1), default=20)
    # outputs
    save_video: bool = True
    save_gif: bool = False
    video_fps: int = checked(at_least(1), default=20)
    export_mesh_at_test: bool = True
    log_val_images: int = checked(at_least(0), default=2)  # validation image grids sent to TensorBoard
    # geometry metrics against the scene's ground-truth surface at test time, when it has one
    eval_mesh_points: int = checked(at_least(1), default=100000)
    eval_mesh_threshold: float = checked(positive(), default=0.01)
    # evaluate only inside this region (world units): [xmin, ymin, zmin, xmax, ymax, zmax] (a box) or
    # [cx, cy, cz, r] (a sphere); points of both surfaces outside it are dropped first
    eval_mesh_region: Optional[List[float]] = checked(length(4, 6), default=None)
    # LPIPS at test time, when the lpips package and its weights are installed (else skipped with a message)
    eval_lpips: bool = True

    def check(self) -> Iterator[Tuple[str, str]]:
        if self.dynamic_ray_sampling and self.train_num_rays_min > self.max_train_num_rays:
            yield "train_num_rays_min", (f"must be <= max_train_num_rays ({self.max_train_num_rays}), "
                                         f"got {self.train_num_rays_min}")
        if self.eval_mesh_region is not None:
            from utils.mesh.metrics import mesh_region

            try:
                mesh_region(self.eval_mesh_region)
            except ValueError as err:
                yield "eval_mesh_region", str(err)

    def check_in(self, experiment: Any) -> Iterator[Tuple[str, str]]:
        """What the system needs of the rest of the experiment (keys from the config's root)."""
        yield from self.model_problems(experiment.model)

    def model_problems(self, model_cfg: Any) -> Iterator[Tuple[str, str]]:
        """(key, message) for what this system needs of the model config ``model_cfg``."""
        if weight_nonzero(self.loss.lambda_distortion_bg) and getattr(model_cfg, "background", None) is None:
            yield "system.loss.lambda_distortion_bg", "> 0 needs a learned background (model.background)"


class BaseSystem(pl.LightningModule):
    def __init__(self, cfg: Any, model: BaseModel, context: RunContext) -> None:
        super().__init__()
        self.cfg = cfg
        self.context = context
        self.model = model
        for key, msg in cfg.model_problems(model.cfg):  # (parsing an experiment reports these up front)
            raise ValueError(f"{key}: {msg}")
        self.recorder = SplitRecorder()
        self.last_means: Dict[str, Dict[str, float]] = {}  # the latest logged means, by prefix ("val", "test")
        self.trained_steps = 0  # the step of the weights a checkpoint brought (see on_load_checkpoint)

    # ------------------------------------------------------------------ loss weights
    def loss_weights(self) -> Dict[str, Weight]:
        return {k: v for k, v in dataclasses.asdict(self.cfg.loss).items() if k.startswith("lambda_")}

    def loss_weight(self, name: str) -> float:
        """The value of loss weight ``lambda_<name>`` at the current step."""
        return weight_at(getattr(self.cfg.loss, f"lambda_{name}"), self.global_step)

    # ------------------------------------------------------------------ step-dependent state
    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        self.trained_steps = int(checkpoint.get("global_step", 0))

    def apply_step_state(self) -> None:
        """Step-dependent model state (NeuS's cosine annealing, the progressive hash grid's levels)
        as after the last training step, so evaluating a checkpoint later renders what evaluating
        at the end of training did. Only in eval mode: then the occupancy grid is left alone."""
        if not self.model.training:
            self.model.update_step(self.current_epoch, max(self.global_step, self.trained_steps))

    def on_validation_start(self) -> None:
        self.apply_step_state()

    def on_test_start(self) -> None:
        self.apply_step_state()

    def on_predict_start(self) -> None:
        self.apply_step_state()

    def on_fit_start(self) -> None:
        if self.trainer.world_size > 1:
            # the weights are the same everywhere (DDP broadcasts rank 0's); the random streams
            # (stratified samples, occupancy-grid probes) differ per rank, so ranks add information
            torch.manual_seed(torch.initial_seed() + self.trainer.global_rank)

    # ------------------------------------------------------------------ training
    def on_train_batch_start(self, batch: Dict[str, Tensor], batch_idx: int) -> None:
        self.model.update_step(self.current_epoch, self.global_step)

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
        return {"loss": loss, "num_samples": n_samples, "num_rays": n_rays}

    def losses(self, batch: Dict[str, Tensor], out: RenderOutput) -> Dict[str, Tensor]:
        """Loss terms (unweighted) by name; a term is computed only when its weight can be non-zero."""
        return self.common_losses(batch, out)

    def common_losses(self, batch: Dict[str, Tensor], out: RenderOutput) -> Dict[str, Tensor]:
        """The terms every system has: photometric, mask, opaque, distortion and the fields' regularizers."""
        loss_cfg = self.cfg.loss
        terms: Dict[str, Tensor] = {}
        diff = out.rgb - batch["rgb"]
        if weight_nonzero(loss_cfg.lambda_rgb_mse):
            terms["rgb_mse"] = (diff ** 2).mean()
        if weight_nonzero(loss_cfg.lambda_rgb_l1):
            terms["rgb_l1"] = diff.abs().mean()
        opacity = out.opacity.squeeze(-1)
        if weight_nonzero(loss_cfg.lambda_mask):
            terms["mask"] = mask_loss(opacity, batch["alpha"])
        if weight_nonzero(loss_cfg.lambda_opaque):
            terms["opaque"] = opaque_loss(opacity)
        samples = out.samples
        if weight_nonzero(loss_cfg.lambda_distortion) and samples is not None and len(samples) > 0:
            terms["distortion"] = distortion_loss(
                samples.weights, samples.t_starts, samples.t_ends, samples.ray_indices, samples.n_rays,
                backend=self.model.cfg.backend,
            ).mean()
        bg = out.background
        if weight_nonzero(loss_cfg.lambda_distortion_bg) and bg is not None and bg.samples is not None:
            terms["distortion_bg"] = distortion_loss(
                bg.samples.weights, bg.s_starts, bg.s_ends, bg.samples.ray_indices, bg.samples.n_rays,
                backend=self.model.cfg.backend,
            ).mean()
        regs = self.model.field_regularizations()
        for name in ("tv", "l1"):
            if weight_nonzero(getattr(loss_cfg, f"lambda_{name}")) and name in regs:
                terms[name] = regs[name]
        return terms

    # ------------------------------------------------------------------ evaluation
    def render_image(self, batch: Dict[str, Any]) -> RenderOutput:
        """The rays of one whole image rendered in chunks of model.eval_chunk_size rays; a chunk that
        runs out of memory is tried again at half the size (with a warning), down to MIN_EVAL_CHUNK."""
        from utils.memory import is_out_of_memory

        model_cfg = self.model.cfg
        while True:
            try:
                return self.model(batch["rays_o"], batch["rays_d"], batch["background"])
            except (RuntimeError, MemoryError) as err:
                if not is_out_of_memory(err) or model_cfg.eval_chunk_size <= MIN_EVAL_CHUNK:
                    raise
                smaller = max(MIN_EVAL_CHUNK, model_cfg.eval_chunk_size // 2)
                log.warning("out of memory rendering a %sx%s image in chunks of %d rays (model.eval_chunk_size): "
                            "trying %d", batch.get("width"), batch.get("height"), model_cfg.eval_chunk_size, smaller)
                model_cfg.eval_chunk_size = smaller
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()

    def _evaluate_image(self, batch: Dict[str, Any], grid_path: str, with_lpips: bool = False):
        """Render one whole image, save its grid (at ``grid_path`` under save/) -> (index, grid, metrics)."""
        h, w, index = int(batch["height"]), int(batch["width"]), int(batch["index"])
        out = self.render_image(batch)
        grid = image_grid(batch, out, h, w)
        self.recorder.add_image(self.context.save_dir, grid_path.format(index=index), grid)
        metrics = image_metrics(batch, out, h, w, with_lpips=with_lpips, on_skip=self.recorder.skip)
        self.recorder.add_row(index, metrics)
        return index, grid, out

    def validation_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        try:
            index, grid, _ = self._evaluate_image(batch, f"val/step{self.global_step:07d}/{{index:03d}}.png")
        except Exception as err:  # noqa: BLE001
            # while training, an image that cannot be validated is skipped (said once per pass):
            # the run goes on; a full disk (OSError) or a --validate run still stop
            if isinstance(err, OSError) or self.trainer.state.fn != "fit":
                raise
            self.recorder.skip("rendering", failure_reason(err))
            return
        if batch_idx < self.cfg.log_val_images and self.logger is not None and hasattr(self.logger, "experiment"):
            self.logger.experiment.add_image(f"val/{index:03d}", grid.permute(2, 0, 1).clamp(0, 1), self.global_step)

    def on_validation_epoch_end(self) -> None:
        self.recorder.write_images(self.context.save_dir)
        rows = self.recorder.gathered_rows()
        skipped = self.skipped_metrics("validation")
        self.log_means(rows, "val")
        if (rows or skipped) and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            write_image_metrics(self.context.save_dir / f"val/step{self.global_step:07d}/metrics",
                                summarize_image_metrics(rows), skipped)
        self.recorder.reset()

    def skipped_metrics(self, split: str) -> Dict[str, str]:
        """{metric: "skipped: <reason>"} for the metrics this pass could not compute, each said once
        in the log (the metrics files record them the same way)."""
        skipped = self.recorder.gathered_skips()
        if self.trainer.is_global_zero:
            for metric, reason in skipped.items():
                log.warning("%s: skipped for the %s images at step %d: %s", metric, split, self.global_step, reason)
        return {metric: f"skipped: {reason}" for metric, reason in skipped.items()}

    def test_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        index, grid, _ = self._evaluate_image(batch, "test/{index:03d}.png", with_lpips=self.cfg.eval_lpips)
        self.recorder.add_frame(index, grid)

    def on_test_epoch_end(self) -> None:
        """Per-image and mean image metrics (when the split has ground truth), the video, the mesh
        and its geometry metrics (when the scene has a ground-truth surface), written to
        save/test_metrics_stepN.json and .csv (per image + mean)."""
        self.recorder.write_images(self.context.save_dir)
        frames = self.recorder.gathered_frames()
        rows = self.recorder.gathered_rows()
        extra: Dict[str, Any] = dict(self.skipped_metrics("test"))
        if rows:
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
                extra.update(self._export_and_score(f"step{self.global_step:07d}"))
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
        if not frames or not self.cfg.save_video:
            return
        path = save_video(self.context.save_dir / f"{name}_step{self.global_step:07d}.mp4", frames, self.cfg.video_fps)
        log.info("video: %s", path)
        if self.cfg.save_gif:
            save_video(path.with_suffix(".gif"), frames, self.cfg.video_fps)

    def _export_and_score(self, tag: str) -> Dict[str, Any]:
        """Export the mesh; score it against the scene's ground-truth surface when there is one ->
        entries for the test metrics: {"geometry": scores}, or "mesh" / "geometry": "skipped: <reason>"
        when the mesh cannot be extracted or written, or not scored (the other test outputs are
        written all the same)."""
        ctx = self.context
        try:
            paths = export_mesh(self.model, ctx.export, ctx.scene_to_world, ctx.save_dir, tag)
        except Exception as err:  # noqa: BLE001 (an empty surface, too little memory, a full disk...)
            reason = mesh_failure(err)
            log.error("mesh export failed: %s; the other test outputs are written", reason)
            return {"mesh": f"skipped: {reason}"}
        if not ctx.gt_mesh_path or not paths or not ctx.export.world_coordinates:
            return {}
        try:
            scores = score_mesh(paths[0], ctx.gt_mesh_path, self.cfg.eval_mesh_points, self.cfg.eval_mesh_threshold,
                                self.cfg.eval_mesh_region)
        except Exception as err:  # noqa: BLE001 (e.g. an unreadable ground truth, or no points in the region)
            reason = mesh_failure(err)
            log.error("mesh scoring failed: %s", reason)
            return {"geometry": f"skipped: {reason}"}
        if self.logger is not None and hasattr(self.logger, "experiment"):
            for key, value in scores.items():
                if isinstance(value, float) and key != "threshold":
                    self.logger.experiment.add_scalar(f"test/mesh_{key}", value, self.global_step)
        return {"geometry": scores}

    # ------------------------------------------------------------------ optimization
    def configure_optimizers(self):
        optimizer = make_optimizer(self.cfg.optimizer, self.model, "system.optimizer")
        max_steps = self.trainer.max_steps if self.trainer is not None else 0
        scheduler = make_scheduler(self.cfg.scheduler, optimizer, max(1, max_steps), "system.scheduler")
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
