"""What NeuS and NeRF systems share: the model, batches, dynamic ray sampling, validation images,
test metrics and video, predict renders, mesh export, optimizers and schedulers."""
from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

import models
from models.rendering import distortion_loss
from systems.losses import Weight, check_weight, mask_loss, opaque_loss, weight_at, weight_nonzero
from systems.metrics import psnr, ssim
from systems.optim import OptimizerConfig, SchedulerConfig, make_optimizer, make_scheduler
from utils.experiment import ExportConfig
from utils.saving import colorize_scalar, image_row, save_image, save_json, save_video, to_uint8

log = logging.getLogger(__name__)


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
    # outputs
    save_video: bool = True
    save_gif: bool = False
    video_fps: int = 20
    export_mesh_at_test: bool = True
    log_val_images: int = 2  # validation image grids sent to TensorBoard
    # geometry metrics against the scene's ground-truth surface at test time, when it has one
    eval_mesh_points: int = 100000
    eval_mesh_threshold: float = 0.01


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
        self._val_outputs: List[Dict[str, float]] = []
        self._test_outputs: List[Dict[str, float]] = []
        self._test_frames: List[np.ndarray] = []

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
        self.log_extra_train_stats()
        self.adjust_num_rays(n_rays, n_samples)
        return loss

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
        regs = self.model.geometry.regularizations()
        for name in ("tv", "l1"):
            if weight_nonzero(getattr(loss_cfg, f"lambda_{name}")) and name in regs:
                terms[name] = regs[name]
        return terms

    def adjust_num_rays(self, n_rays: int, n_samples: float) -> None:
        """Dynamic ray sampling: scale next step's ray count toward the target sample count."""
        if not self.cfg.dynamic_ray_sampling:
            return
        trainer = self._trainer  # None outside a Trainer (self.trainer would raise)
        if trainer is not None and trainer.world_size > 1:
            total = torch.tensor([n_samples, float(n_rays)], device=self.device)
            total = trainer.strategy.reduce(total, reduce_op="sum")
            n_samples, n_rays = float(total[0]) / trainer.world_size, float(total[1]) / trainer.world_size
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

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        self.n_rays = int(checkpoint.get("train_num_rays", self.n_rays))
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
        # each process renders its own share of the images, so each saves what it rendered
        save_image(self.context.save_dir / f"val/step{self.global_step:07d}/{index:03d}.png", grid)
        if batch_idx < self.cfg.log_val_images and self.logger is not None and hasattr(self.logger, "experiment"):
            self.logger.experiment.add_image(f"val/{index:03d}", grid.permute(2, 0, 1).clamp(0, 1), self.global_step)
        metrics = self._metrics(batch, out, h, w)
        self._val_outputs.append(metrics)

    def on_validation_epoch_end(self) -> None:
        self._log_mean(self._val_outputs, "val")
        self._val_outputs = []

    def _log_mean(self, outputs: List[Dict[str, float]], prefix: str) -> Dict[str, float]:
        """Mean of per-image metrics over all images of all processes."""
        keys = sorted({k for o in outputs for k in o if k != "index"})
        means: Dict[str, float] = {}
        for key in keys:
            values = torch.tensor([[sum(o[key] for o in outputs if key in o), float(sum(key in o for o in outputs))]],
                                  dtype=torch.float64, device=self.device)
            if self.trainer.world_size > 1:
                values = self.trainer.strategy.reduce(values, reduce_op="sum")
            total, count = values[0].tolist()
            if count > 0:
                means[key] = total / count
                self.log(f"{prefix}/{key}", means[key], prog_bar=prefix == "val", sync_dist=False, rank_zero_only=True)
        return means

    # ------------------------------------------------------------------ test
    def test_step(self, batch: Dict[str, Tensor], batch_idx: int) -> None:
        h, w = self._shape("test")
        out = self.render_image(batch)
        index = int(batch["index"])
        grid = self.image_grid(batch, out, h, w)
        save_image(self.context.save_dir / f"test/{index:03d}.png", grid)
        self._test_frames.append(to_uint8(grid))
        metrics = self._metrics(batch, out, h, w)
        if metrics:
            self._test_outputs.append({"index": index, **metrics})

    def on_test_epoch_end(self) -> None:
        results: Dict[str, Any] = {}
        if self._test_outputs:
            results["mean"] = self._log_mean(self._test_outputs, "test")
            results["per_image"] = self._test_outputs
        else:
            log.info("the test split has no ground truth: image metrics skipped")
        if self.trainer.is_global_zero:
            self._write_video(self._test_frames, "test")
            if self.cfg.export_mesh_at_test:
                mesh_paths = self.export_mesh(tag=f"step{self.global_step:07d}")
                geometry = self.evaluate_geometry(mesh_paths)
                if geometry:
                    results["geometry"] = geometry
            if results:
                save_json(self.context.save_dir / f"test_metrics_step{self.global_step:07d}.json", results)
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
        save_image(self.context.save_dir / f"predict/{index:03d}.png", rgb)
        self._test_frames.append(to_uint8(rgb))

    def on_predict_epoch_end(self) -> None:
        if self.trainer.is_global_zero:
            self._write_video(self._test_frames, "predict")
        self._test_frames = []

    # ------------------------------------------------------------------ export
    @torch.no_grad()
    def export_mesh(self, tag: str) -> List[Path]:
        """Marching cubes of the model's surface, coloured, in world coordinates -> saved paths."""
        from models.isosurface import extract_isosurface
        from utils.mesh_io import save_mesh

        cfg = self.context.export
        was_training = self.model.training
        self.model.eval()
        try:
            r = float(self.model.cfg.radius)
            field, level = self.model.isosurface_field(cfg.threshold)
            grid = self.model.grid if cfg.use_occupancy_grid else None
            skip = (lambda pts: ~grid.query(pts)) if grid is not None else None
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
        from utils.geometry_metrics import evaluate_mesh

        metrics = evaluate_mesh(
            str(mesh_paths[0]), self.context.gt_mesh_path,
            n_points=self.cfg.eval_mesh_points, threshold=self.cfg.eval_mesh_threshold,
        )
        for key, value in metrics.items():
            if self.logger is not None and hasattr(self.logger, "experiment"):
                self.logger.experiment.add_scalar(f"test/mesh_{key}", value, self.global_step)
        log.info("mesh vs ground truth: %s", ", ".join(f"{k}={v:.5f}" for k, v in metrics.items()))
        return metrics

    # ------------------------------------------------------------------ optimization
    def configure_optimizers(self):
        optimizer = make_optimizer(self.cfg.optimizer, self.model, "system.optimizer")
        max_steps = self.trainer.max_steps if self.trainer is not None else 0
        scheduler = make_scheduler(self.cfg.scheduler, optimizer, max(1, max_steps), "system.scheduler")
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
