"""The options every system has (the ``system`` section of a config) and what a system is told
about its run."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, Iterator, List, Literal, Optional, Tuple

from torch import Tensor

from systems.losses import Weight, weight_nonzero
from systems.optim import OptimizerConfig, SchedulerConfig
from utils.config import at_least, checked, length, non_negative, positive, schedule
from utils.experiment import ExportConfig


@dataclasses.dataclass(frozen=True)
class RunContext:
    """What a system needs to know about the run and the data, besides its config and model."""

    save_dir: Path  # the run's save/ folder (only rank zero writes there)
    scene_to_world: Tensor  # [4, 4] scene -> input world coordinates
    gt_mesh_path: Optional[str] = None
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)
    # how val/test images were sized, as the metrics files record it next to the sizes scored:
    # dataset.eval_downscale and, when set, dataset.eval_max_pixels (see scored_resolution)
    eval_sizing: Dict[str, Any] = dataclasses.field(default_factory=lambda: {"eval_downscale": 1.0})
    up: Tuple[float, float, float] = (0.0, 0.0, 1.0)  # the scene's up direction (mesh previews show it up)


# a loss weight: a number >= 0 or a [[step, value], ...] schedule of them (utils/schedules.py)
LOSS_WEIGHT = schedule(non_negative())


@dataclasses.dataclass
class CommonLossConfig:
    """Weights of the terms every system has (see systems.losses.common_loss_terms)."""

    lambda_rgb_mse: Weight = checked(LOSS_WEIGHT, default=0.0)
    lambda_rgb_l1: Weight = checked(LOSS_WEIGHT, default=0.0)
    lambda_mask: Weight = checked(LOSS_WEIGHT, default=0.0)  # BCE of opacity against the dataset's masks (needs masks)
    # when lambda_mask > 0 but the training data has no masks (none, all opaque or all empty):
    # 'error' refuses the run before it starts; 'off' trains without the mask loss (one warning).
    # Against all-ones alpha the mask loss would make the whole box opaque.
    mask_loss_without_masks: Literal["error", "off"] = "error"
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
    # the test right after training renders images for at most this share of the training time
    # (null: every image); the images left when it is spent are neither rendered nor scored, and the
    # metrics files list them. The test visits the views in an order that spreads over the split,
    # so the scored ones come from all around; the first is always rendered.
    test_time_share: Optional[float] = checked(positive(), default=None)

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
