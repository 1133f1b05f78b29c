"""The options every system has (the ``system`` section of a config) and what a system is told
about its run."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List, Literal, Optional

from torch import Tensor

from systems.losses import Weight
from systems.optim import OptimizerConfig, SchedulerConfig
from utils.experiment import ExportConfig


@dataclasses.dataclass(frozen=True)
class RunContext:
    """What a system needs to know about the run and the data, besides its config and model."""

    save_dir: Path  # the run's save/ folder (only rank zero writes there)
    scene_to_world: Tensor  # [4, 4] scene -> input world coordinates
    gt_mesh_path: Optional[str] = None
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)


@dataclasses.dataclass
class CommonLossConfig:
    """Weights of the terms every system has (see BaseSystem.common_losses)."""

    lambda_rgb_mse: Weight = 0.0
    lambda_rgb_l1: Weight = 0.0
    lambda_mask: Weight = 0.0  # BCE of opacity against the dataset's masks (needs masks)
    # when lambda_mask > 0 but the training data has no masks (none, all opaque or all empty):
    # 'error' refuses the run before it starts; 'off' trains without the mask loss (one warning).
    # Against all-ones alpha the mask loss would make the whole box opaque.
    mask_loss_without_masks: Literal["error", "off"] = "error"
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
