"""What NeuS and NeRF systems share: the model, batches, dynamic ray sampling, validation images,
test metrics and video, predict renders, mesh export, optimizers and schedulers."""
from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

import models
from models.rendering import distortion_loss
from systems.losses import Weight, check_weight, mask_loss, opaque_loss, weight_at, weight_nonzero
from systems.metrics import load_lpips, psnr, ssim, summarize_image_metrics, write_image_metrics
from systems.optim import OptimizerConfig, SchedulerConfig, make_optimizer, make_scheduler
from utils.experiment import ExportConfig
from utils.saving import colorize_scalar, image_row, save_image, save_video, to_uint8

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss or its gradients stayed NaN/inf for system.max_consecutive_bad_steps steps in a row."""


@dataclasses.dataclass
class RunContext:
    """What a system needs to know about the run and the data, besides its config."""

    save_dir: Path
    scene_to_world: Tensor  # [4, 4] scene -> input world coordinates
    gt_mesh_path: Optional[str] = None
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)


@dataclasses.dataclass
class CommonLossConfig:
    """Weights of the terms every system has (see BaseSystem.common_losses)."""

    lambda_rgb_mse: Weight = 0.0
    lambda_rgb_l1: Weight = 0.0
    lambda_mask: Weight = 0.0  # BCE of opacity against the dataset's masks (needs masks)
    lambda_opaque: Weight = 0.0
    lambda_distortion: Weight = 0.0
    # distortion loss of the learned background (model.background), in normalized disparity
    lambda_distortion_bg: Weight = 0.0
    # the fields' own regularizers, e.g. the tri-plane's total variation ('tv') and 'l1'
    lambda_tv: Weight = 0.0
    lambda_l1: Weight = 0.0


@dataclasses.dataclass
class SystemConfig:
    """Options every system shares."""

    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = dataclasses.field(default_factory=SchedulerConfig)
    # rays per training step; with dynamic sampling, adjusted so each step has about
    # target_samples_per_step samples, between train_num_rays_min and max_train_num_rays
    train_num_rays: int = 256
    dynamic_ray_sampling: bool = True
    target_samples_per_step: int = 262144
    max_train_num_rays: int = 8192
    train_num_rays_min: int = 64
    # a step whose loss or gradients are NaN/inf is skipped (no parameter update) and counted
    # (train/skipped_steps); this many in a row stop the run, keeping its last (finite) checkpoint
    max_consecutive_bad_steps: int = 20
    # outputs
    save_video: bool = True
    save_gif: bool = False
    video_fps: int = 20
    export_mesh_at_test: bool = True
    log_val_images: int = 2  # validation image grids sent to TensorBoard
    # geometry metrics against the scene's ground-truth surface at test time, when it has one
    eval_mesh_points: int = 100000
    eval_mesh_threshold: float = 0.01
    # evaluate only inside this region (world units): [xmin, ymin, zmin, xmax, ymax, zmax] (a box) or
    # [cx, cy, cz, r] (a sphere); points of both surfaces outside it are dropped first
    eval_mesh_region: Optional[List[float]] = None
    # LPIPS at test time, when the lpips package and its weights are installed (else skipped with a message)
    eval_lpips: bool = True


class BaseSystem(pl.LightningModule):
    def __init__(self, cfg: Any, model_cfg: Any, context: RunContext) -> None:
        super().__init__()
        self.cfg = cfg
        self.context = context
        self.model = models.make(model_cfg.name, model_cfg, path="model")
        self.n_rays = int(cfg.train_num_rays)
        self.datamodule_ref = None
        for name, w in self.loss_weights().items():
            check_weight(w, f"system.loss.{name}")
        try:
            from utils.mesh import mesh_region

            mesh_region(cfg.eval_mesh_region)
        except ValueError as err:
            raise ValueError(f"system.eval_mesh_region: {err}") from err
        self._val_outputs: List[Dict[str, float]] = []
        self._test_outputs: List[Dict[str, float]] = []
        self._test_frames: List[Tuple[int, np.ndarray]] = []  # (image index, frame) for the video
        self._pending_images: List[Tuple[str, np.ndarray]] = []  # distributed: written by rank 0 at epoch end
        self._gloo_group: Any = None
        self.last_means: Dict[str, Dict[str, float]] = {}  # the latest logged means, by prefix ("val", "test")
        if int(cfg.max_consecutive_bad_steps) < 1:
            raise ValueError(f"system.max_consecutive_bad_steps must be >= 1, got {cfg.max_consecutive_bad_steps}")
        self.skipped_steps = 0  # steps skipped for a NaN/inf loss or gradient, over the whole run
        self.restored_step = 0  # the step of weights loaded outside Lightning (launch.py --test/--export)
        self._bad_in_a_row = 0
        self._loss_bad = False

    # ------------------------------------------------------------------ config helpers
    @property
    def initial_train_num_rays(self) -> int:
        return int(self.cfg.train_num_rays)

    def loss_weights(self) -> Dict[str, Weight]:
        return {k: v for k, v in dataclasses.asdict(self.cfg.loss).items() if k.startswith("lambda_")}

    def w(self, name: str) -> float:
        """Current value of loss weight ``lambda_<name>``."""
        return weight_at(getattr(self.cfg.loss, f"lambda_{name}"), self.global_step)

    # ------------------------------------------------------------------ training
    def setup(self, stage: str) -> None:
        # carving happens before a checkpoint is restored, so a resumed grid wins over a fresh hull
        if stage != "fit" or not getattr(self.model.cfg, "grid_init_from_masks", False):
            return
        dm = self.datamodule_ref or getattr(self.trainer, "datamodule", None)
        train = dm.split("train")
        if not train.has_mask:
            log.warning("model.grid_init_from_masks is set but the training images have no masks: skipped")
            return
        kept = self.model.init_grid_from_masks(train.c2w, train.intrinsics, train.alpha)
        log.info("occupancy grid started from the masks' visual hull: %.1f%% of the box kept", 100 * kept)

    def apply_step_state(self) -> None:
        """Step-dependent model state (NeuS's cosine annealing, the progressive hash grid's levels)
        as after the last training step, so evaluating a checkpoint later renders what evaluating
        at the end of training did. Only in eval mode: then the occupancy grid is left alone."""
        if not self.model.training:
            self.model.update_step(self.current_epoch, max(self.global_step, self.restored_step))

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

    def on_train_start(self) -> None:
        grid = getattr(self.model, "grid", None)
        if grid is not None and self.trainer.world_size > 1:
            grid.sync_fn = self._all_reduce_max  # every rank applies the same grid update

    def on_train_end(self) -> None:
        grid = getattr(self.model, "grid", None)
        if grid is not None:
            grid.sync_fn = None

    @staticmethod
    def _all_reduce_max(values: Tensor) -> Tensor:
        torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.MAX)
        return values

    def _sum_over_ranks(self, *values: float) -> List[float]:
        """Per-step scalars summed over all processes (one small all-reduce; as is on one process)."""
        trainer = self._trainer  # None outside a Trainer (self.trainer would raise)
        if trainer is None or trainer.world_size <= 1 or not torch.distributed.is_initialized():
            return list(values)
        total = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(total)
        return total.tolist()

    def on_train_batch_start(self, batch: Dict[str, Tensor], batch_idx: int) -> None:
        self.model.update_step(self.current_epoch, self.global_step)

    def training_step(self, batch: Dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self.model(batch["rays_o"], batch["rays_d"], batch["background"])
        terms = self.losses(batch, out)
        loss = sum(self.w(name) * value for name, value in terms.items())
        for name, value in terms.items():
            self.log(f"train/loss_{name}", value.detach())
        with torch.no_grad():
            train_psnr = psnr(out["rgb"], batch["rgb"])
        n_samples = float(out["num_samples"])
        n_rays = batch["rays_o"].shape[0]
        self.log("train/loss", loss.detach(), prog_bar=True)
        self.log("train/psnr", train_psnr, prog_bar=True)
        self.log("train/num_rays", float(n_rays), prog_bar=True)
        self.log("train/samples_per_ray", n_samples / max(1, n_rays))
        self.log("train/skipped_steps", float(self.skipped_steps))
        self.log_extra_train_stats()
        # one collective per step in a distributed run: the global sample and ray counts and
        # whether any rank's loss is NaN/inf (then every rank skips the step)
        world = self._trainer.world_size if self._trainer is not None else 1
        all_samples, all_rays, bad_ranks = self._sum_over_ranks(
            n_samples, float(n_rays), float(not bool(torch.isfinite(loss.detach()))))
        self._loss_bad = bad_ranks > 0
        self.adjust_num_rays(all_rays / world, all_samples / world)
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        """Skip the update when the loss or a gradient is NaN/inf (gradients are already reduced
        over the processes here, so every rank decides the same); stop after too many in a row."""
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        finite = bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()) if grads else True
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            finite = True  # mixed precision: the grad scaler skips inf/NaN gradients itself (and rescales)
        if finite and not self._loss_bad:
            self._bad_in_a_row = 0
            return
        for group in optimizer.param_groups:  # the optimizer skips parameters without a gradient
            for p in group["params"]:
                p.grad = None
        self.skipped_steps += 1
        self._bad_in_a_row += 1
        what = "loss" if self._loss_bad else "gradients"
        log.warning("step %d skipped: the %s had NaN/inf values (%d skipped so far, %d in a row)",
                    self.global_step, what, self.skipped_steps, self._bad_in_a_row)
        limit = int(self.cfg.max_consecutive_bad_steps)
        if self._bad_in_a_row >= limit:
            raise TrainingDiverged(
                f"training stopped at step {self.global_step}: the loss or its gradients were NaN/inf in "
                f"{self._bad_in_a_row} steps in a row (system.max_consecutive_bad_steps={limit}); no update "
                "was made from them, so the weights and checkpoints stay finite. Lower the learning rate, "
                "check the data, or set gradient clipping (trainer.gradient_clip_val)"
            )

    def log_extra_train_stats(self) -> None:
        pass

    def losses(self, batch: Dict[str, Tensor], out: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Loss terms (unweighted) by name; a term is computed only when its weight can be non-zero."""
        return self.common_losses(batch, out)

    def common_losses(self, batch: Dict[str, Tensor], out: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """The terms every system has: photometric, mask, opaque, distortion and the fields' regularizers."""
        loss_cfg = self.cfg.loss
        terms: Dict[str, Tensor] = {}
        diff = out["rgb"] - batch["rgb"]
        if weight_nonzero(loss_cfg.lambda_rgb_mse):
            terms["rgb_mse"] = (diff ** 2).mean()
        if weight_nonzero(loss_cfg.lambda_rgb_l1):
            terms["rgb_l1"] = diff.abs().mean()
        opacity = out["opacity"].squeeze(-1)
        if weight_nonzero(loss_cfg.lambda_mask):
            terms["mask"] = mask_loss(opacity, batch["alpha"])
        if weight_nonzero(loss_cfg.lambda_opaque):
            terms["opaque"] = opaque_loss(opacity)
        if weight_nonzero(loss_cfg.lambda_distortion) and out["weights"].shape[0] > 0:
            terms["distortion"] = distortion_loss(
                out["weights"], out["t_starts"], out["t_ends"], out["ray_indices"], opacity.shape[0]
            ).mean()
        if weight_nonzero(loss_cfg.lambda_distortion_bg):
            if "bg_weights" not in out:
                raise ValueError("system.loss.lambda_distortion_bg > 0 needs a learned background (model.background)")
            terms["distortion_bg"] = distortion_loss(
                out["bg_weights"], out["bg_s_starts"], out["bg_s_ends"], out["bg_ray_indices"], opacity.shape[0]
            ).mean()
        regs = self.model.geometry.regularizations()
        for name in ("tv", "l1"):
            if weight_nonzero(getattr(loss_cfg, f"lambda_{name}")) and name in regs:
                terms[name] = regs[name]
        return terms

    def adjust_num_rays(self, n_rays: float, n_samples: float) -> None:
        """Dynamic ray sampling: scale next step's ray count toward the target sample count.

        In a distributed run the arguments are the means over the processes, so every process
        draws the same number of rays and aims at target_samples_per_step samples of its own."""
        if not self.cfg.dynamic_ray_sampling:
            return
        per_ray = max(n_samples / max(n_rays, 1.0), 1.0)
        wanted = int(self.cfg.target_samples_per_step / per_ray)
        # move part way to damp oscillation
        new = round(0.9 * self.n_rays + 0.1 * wanted)
        self.n_rays = max(self.cfg.train_num_rays_min, min(self.cfg.max_train_num_rays, new))
        dm = self.datamodule_ref
        if dm is not None and dm.train_dataset is not None:
            dm.train_dataset.n_rays = self.n_rays

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        checkpoint["train_num_rays"] = self.n_rays
        checkpoint["skipped_steps"] = self.skipped_steps

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        self.n_rays = int(checkpoint.get("train_num_rays", self.n_rays))
        self.skipped_steps = int(checkpoint.get("skipped_steps", 0))
        if self.datamodule_ref is not None and self.datamodule_ref.train_dataset is not None:
            self.datamodule_ref.train_dataset.n_rays = self.n_rays

    # ------------------------------------------------------------------ rendering whole images
    def render_image(self, batch: Dict[str, Tensor]) -> Dict[str, Tensor]:
        out = self.model(batch["rays_o"], batch["rays_d"], batch["background"])
        return out

    def _shape(self, split: str):
        dm = self.datamodule_ref or getattr(self.trainer, "datamodule", None)
        s = dm.split(split)
        return s.height, s.width

    def image_grid(self, batch: Dict[str, Tensor], out: Dict[str, Tensor], h: int, w: int) -> Tensor:
        """ground truth | render | depth | normal | opacity, as one image [H, W_total, 3]."""
        opacity = out["opacity"].reshape(h, w)
        panels = []
        if "rgb" in batch:
            panels.append(batch["rgb"].reshape(h, w, 3))
        panels.append(out["rgb"].reshape(h, w, 3))
        panels.append(colorize_scalar(out["depth"].reshape(h, w), mask=opacity))
        if "normal" in out:
            normal = F.normalize(out["normal"].reshape(h, w, 3), dim=-1)
            panels.append(((normal + 1.0) * 0.5) * opacity[..., None] + (1.0 - opacity[..., None]))
        panels.append(opacity[..., None].expand(h, w, 3))
        return image_row(panels)

    def _metrics(self, batch: Dict[str, Tensor], out: Dict[str, Tensor], h: int, w: int) -> Dict[str, float]:
        if "rgb" not in batch:
            return {}
        pred = out["rgb"].reshape(h, w, 3).clamp(0, 1)
        gt = batch["rgb"].reshape(h, w, 3)
        return {"psnr": float(psnr(pred, gt)), "ssim": float(ssim(pred, gt))}

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: Dict[str, Tensor], batch_idx: int) -> None:
        h, w = self._shape("val")
        out = self.render_image(batch)
        grid = self.image_grid(batch, out, h, w)
        index = int(batch["index"])
        self._save_eval_image(self.context.save_dir / f"val/step{self.global_step:07d}/{index:03d}.png", grid)
        if batch_idx < self.cfg.log_val_images and self.logger is not None and hasattr(self.logger, "experiment"):
            self.logger.experiment.add_image(f"val/{index:03d}", grid.permute(2, 0, 1).clamp(0, 1), self.global_step)
        metrics = self._metrics(batch, out, h, w)
        if metrics:
            self._val_outputs.append({"index": index, **metrics})

    def on_validation_epoch_end(self) -> None:
        self._write_pending()
        self._log_mean(self._val_outputs, "val")
        rows = self._gather_rows(self._val_outputs)
        if rows and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            write_image_metrics(self.context.save_dir / f"val/step{self.global_step:07d}/metrics",
                                summarize_image_metrics(rows))
        self._val_outputs = []

    def _log_mean(self, outputs: List[Dict[str, float]], prefix: str) -> Dict[str, float]:
        """Mean of per-image metrics over all images of all processes (each image once), logged
        as ``<prefix>/<metric>``; every process computes the same values."""
        rows = self._gather_rows(outputs)
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

    # ------------------------------------------------------------------ distributed evaluation
    # Lightning's DistributedSampler gives each process a share of the images, repeating the first
    # ones so all shares have the same length. Rows and frames are gathered and de-duplicated by
    # image index; images, video, metrics files and the mesh are written once, by rank zero.
    def _distributed(self) -> bool:
        trainer = self._trainer  # None outside a Trainer (self.trainer would raise)
        return trainer is not None and trainer.world_size > 1 and torch.distributed.is_initialized()

    def _object_group(self):
        """The process group for gathering Python objects: a CPU (gloo) group beside NCCL, so
        images do not pass through GPU memory."""
        if torch.distributed.get_backend() == "gloo":
            return None
        if self._gloo_group is None:
            self._gloo_group = torch.distributed.new_group(backend="gloo")
        return self._gloo_group

    def _gather_to_zero(self, obj: Any) -> List[Any]:
        """obj of every process, on rank zero (in rank order); [] elsewhere; [obj] on one process."""
        if not self._distributed():
            return [obj]
        zero = self.trainer.is_global_zero
        out: Optional[List[Any]] = [None] * self.trainer.world_size if zero else None
        torch.distributed.gather_object(obj, out, dst=0, group=self._object_group())
        return out if zero else []

    def _save_eval_image(self, path: Path, img: Tensor) -> None:
        if self._distributed():
            self._pending_images.append((str(path), to_uint8(img)))
        else:
            save_image(path, img)

    def _write_pending(self) -> None:
        """Distributed: rank zero writes the images all processes rendered this epoch, each once."""
        if not self._distributed():
            return
        parts = self._gather_to_zero(self._pending_images)
        self._pending_images = []
        written = set()
        for path, img in (item for part in parts for item in part):
            if path not in written:
                written.add(path)
                save_image(path, img)

    def _gather_frames(self, frames: List[Tuple[int, np.ndarray]]) -> List[np.ndarray]:
        """Video frames of all processes in image order, each once (on rank zero; [] elsewhere)."""
        by_index: Dict[int, np.ndarray] = {}
        for part in self._gather_to_zero(frames):
            for index, frame in part:
                by_index.setdefault(index, frame)
        return [by_index[i] for i in sorted(by_index)]

    # ------------------------------------------------------------------ test
    def test_step(self, batch: Dict[str, Tensor], batch_idx: int) -> None:
        h, w = self._shape("test")
        out = self.render_image(batch)
        index = int(batch["index"])
        grid = self.image_grid(batch, out, h, w)
        self._save_eval_image(self.context.save_dir / f"test/{index:03d}.png", grid)
        self._test_frames.append((index, to_uint8(grid)))
        metrics = self._metrics(batch, out, h, w)
        if metrics:
            if self.cfg.eval_lpips:
                lpips_fn, _ = load_lpips()
                if lpips_fn is not None:
                    pred = out["rgb"].reshape(h, w, 3).clamp(0, 1)
                    metrics["lpips"] = float(lpips_fn(pred, batch["rgb"].reshape(h, w, 3)))
            self._test_outputs.append({"index": index, **metrics})

    def _gather_rows(self, rows: List[Dict[str, float]]) -> List[Dict[str, float]]:
        """Per-image metric rows of all processes (each renders its own share of the images), each
        image once (the sampler repeats some to even out the shares), in image order."""
        if not self._distributed():
            return list(rows)
        gathered: List[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, list(rows), group=self._object_group())
        by_index: Dict[Any, Dict[str, float]] = {}
        for row in (row for part in gathered for row in part):
            by_index.setdefault(row.get("index"), row)
        return [by_index[k] for k in sorted(by_index, key=lambda k: (k is None, k if k is not None else 0))]

    def on_test_epoch_end(self) -> None:
        """Per-image and mean image metrics (when the split has ground truth), the video, the mesh
        and its geometry metrics (when the scene has a ground-truth surface), written to
        save/test_metrics_stepN.json and .csv (per image + mean)."""
        self._write_pending()
        frames = self._gather_frames(self._test_frames)
        rows = self._gather_rows(self._test_outputs)
        extra: Dict[str, Any] = {}
        if rows:
            self._log_mean(self._test_outputs, "test")
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
                mesh_paths = self.export_mesh(tag=f"step{self.global_step:07d}")
                geometry = self.evaluate_geometry(mesh_paths)
                if geometry:
                    extra["geometry"] = geometry
            json_path, csv_path = write_image_metrics(
                self.context.save_dir / f"test_metrics_step{self.global_step:07d}", summarize_image_metrics(rows), extra)
            log.info("test metrics: %s%s", json_path, f" and {csv_path.name}" if csv_path else "")
        self._test_outputs = []
        self._test_frames = []

    def _write_video(self, frames: List[np.ndarray], name: str) -> None:
        if not frames or not self.cfg.save_video:
            return
        path = save_video(self.context.save_dir / f"{name}_step{self.global_step:07d}.mp4", frames, self.cfg.video_fps)
        log.info("video: %s", path)
        if self.cfg.save_gif:
            save_video(path.with_suffix(".gif"), frames, self.cfg.video_fps)

    # ------------------------------------------------------------------ predict
    def predict_step(self, batch: Dict[str, Tensor], batch_idx: int) -> None:
        h, w = self._shape("predict")
        out = self.render_image(batch)
        index = int(batch["index"])
        rgb = out["rgb"].reshape(h, w, 3)
        self._save_eval_image(self.context.save_dir / f"predict/{index:03d}.png", rgb)
        self._test_frames.append((index, to_uint8(rgb)))

    def on_predict_epoch_end(self) -> None:
        self._write_pending()
        frames = self._gather_frames(self._test_frames)
        if self.trainer.is_global_zero:
            self._write_video(frames, "predict")
        self._test_frames = []

    # ------------------------------------------------------------------ export
    @torch.no_grad()
    def export_mesh(self, tag: str) -> List[Path]:
        """Marching cubes of the model's surface, coloured, in world coordinates -> saved paths."""
        from utils.mesh import extract_isosurface, save_mesh

        cfg = self.context.export
        was_training = self.model.training
        self.model.eval()
        try:
            r = float(self.model.cfg.radius)
            field, level = self.model.isosurface_field(cfg.threshold)
            skip = self.model.known_empty_fn() if cfg.use_occupancy_grid else None
            bounds = (torch.full((3,), -r, device=self.device), torch.full((3,), r, device=self.device))
            mesh = extract_isosurface(
                field, bounds, cfg.resolution, threshold=level, chunk_size=cfg.chunk_size,
                coarse_to_fine=cfg.coarse_to_fine, skip_fn=skip, device=self.device, backend=cfg.backend, progress=True,
            )
            if cfg.vertex_colors:
                mesh.vertex_colors = self.model.surface_colors(mesh.vertices.to(self.device)).cpu()
            if cfg.world_coordinates:
                mesh = mesh.transformed(self.context.scene_to_world)
        finally:
            self.model.train(was_training)
        paths = []
        for fmt in cfg.formats:
            path = self.context.save_dir / f"mesh_{tag}.{fmt}"
            save_mesh(path, mesh)
            paths.append(path)
            log.info("mesh: %s (%d vertices, %d faces)", path, mesh.vertices.shape[0], mesh.faces.shape[0])
        return paths

    def evaluate_geometry(self, mesh_paths: List[Path]) -> Optional[Dict[str, float]]:
        """Accuracy / completeness / Chamfer / F-score of the exported mesh against the ground truth."""
        if not self.context.gt_mesh_path or not mesh_paths or not self.context.export.world_coordinates:
            return None
        from utils.mesh import evaluate_mesh, mesh_region

        region = mesh_region(self.cfg.eval_mesh_region)
        metrics = evaluate_mesh(
            str(mesh_paths[0]), self.context.gt_mesh_path,
            n_points=self.cfg.eval_mesh_points, threshold=self.cfg.eval_mesh_threshold, region=region,
        )
        for key, value in metrics.items():
            if self.logger is not None and hasattr(self.logger, "experiment"):
                self.logger.experiment.add_scalar(f"test/mesh_{key}", value, self.global_step)
        log.info("mesh vs ground truth: %s", ", ".join(f"{k}={v:.5f}" for k, v in metrics.items()))
        return dict(metrics, threshold=float(self.cfg.eval_mesh_threshold),
                    region=None if region is None else region.to_dict())

    # ------------------------------------------------------------------ optimization
    def configure_optimizers(self):
        optimizer = make_optimizer(self.cfg.optimizer, self.model, "system.optimizer")
        max_steps = self.trainer.max_steps if self.trainer is not None else 0
        scheduler = make_scheduler(self.cfg.scheduler, optimizer, max(1, max_steps), "system.scheduler")
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
