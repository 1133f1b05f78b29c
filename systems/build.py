"""The one way a run is put together, used by launch.py, the scripts and the tests:

    config  ->  scene  ->  model + system  ->  datamodule  ->  callbacks + trainer

``load_experiment`` reads and checks a config; ``build_run`` makes the parts of a run from it
(with optional extra callbacks, e.g. a benchmark's timer). Nothing here trains: ``systems/run.py``
(the command line's actions) or the caller decides what to do with the parts.
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import sys
from typing import List, Sequence, Tuple

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

import datasets
import models
import systems
from datasets.base import DatasetError, Scene
from datasets.datamodule import SceneDataModule
from models.rendering import visual_hull_cells
from systems.base import BaseSystem
from systems.config import RunContext
from systems.evaluation import eval_sizing
from systems.losses import weight_nonzero
from systems.ray_budget import DynamicRayBudget
from systems.schedule import TrainingSchedule
from utils.callbacks import AtomicModelCheckpoint, ConsoleProgress, GracefulStop, NonFiniteStepGuard
from utils.config import ConfigError, load_yaml_with_extends, merge_configs, migrate_keys, parse_overrides
from utils.experiment import KEY_CHANGES, ExperimentConfig
from utils.registry import parse_config
from utils.run_dir import RunPaths

log = logging.getLogger("launch")


PROFILES_KEY = "profiles"


def load_experiment(config_path: str, overrides: Sequence[str] = ()) -> Tuple[DictConfig, ExperimentConfig]:
    """(raw DictConfig, parsed ExperimentConfig) of a preset: its bases, then the profile that
    applies (the preset's ``profiles.cpu`` or ``profiles.gpu``, see ``choose_profile``), then the
    ``key=value`` overrides; renamed keys moved, every key checked (a ConfigError names each one
    at fault; with ``profile: auto`` in every profile, so a GPU profile is checked on a CPU
    machine too)."""
    import datasets.registered  # noqa: F401  (fills the registries)
    import models.registered  # noqa: F401
    import systems.registered  # noqa: F401

    preset = load_yaml_with_extends(config_path)
    cli = parse_overrides(overrides)
    profiles = preset.pop(PROFILES_KEY, None) or {}
    unknown = sorted(set(profiles) - {"cpu", "gpu"})
    if unknown:
        raise ConfigError(f"{PROFILES_KEY}: unknown profile(s) {unknown}; a preset may have 'cpu' and 'gpu'")

    def with_profile(name):
        merged = merge_configs(preset, profiles[name]) if name in profiles else preset
        merged = merge_configs(merged, cli)
        merged.profile = name
        return migrate_keys(merged, KEY_CHANGES)

    requested = merge_configs(preset, cli)
    chosen = choose_profile(requested)
    raw = with_profile(chosen)
    cfg = parse_config(ExperimentConfig, raw)
    # with profile: auto, another machine applies another profile: check that one too
    for other in profiles if str(requested.get("profile", "auto")) == "auto" else ():
        if other != chosen:
            try:
                parse_config(ExperimentConfig, with_profile(other))
            except ConfigError as err:
                raise ConfigError(f"{PROFILES_KEY}.{other} (not the one applied here): {err}") from err
    return raw, cfg


def choose_profile(raw: DictConfig) -> str:
    """'cpu' or 'gpu' for ``profile: auto`` (by trainer.accelerator, or whether CUDA is visible
    when that is 'auto'), else the profile named; 'none' applies no profile."""
    import torch

    name = str(raw.get("profile", "auto"))
    if name != "auto":
        return name
    accelerator = str(OmegaConf.select(raw, "trainer.accelerator", default="auto"))
    if accelerator == "cpu":
        return "cpu"
    if accelerator in ("gpu", "cuda", "mps"):
        return "gpu"
    return "gpu" if torch.cuda.is_available() else "cpu"


@dataclasses.dataclass
class RunParts:
    """Everything a run is made of (see build_run)."""

    cfg: ExperimentConfig
    scene: Scene
    system: BaseSystem
    datamodule: SceneDataModule
    trainer: pl.Trainer


def build_scene(cfg: ExperimentConfig) -> Scene:
    """The dataset's scene, normalized into the model's box (model.radius)."""
    return datasets.make(cfg.dataset.name, cfg.dataset, scene_radius=cfg.model.radius, path="dataset")


def build_datamodule(cfg: ExperimentConfig, scene: Scene) -> SceneDataModule:
    """The datamodule serving ``scene``'s splits (each loaded when first asked for)."""
    return SceneDataModule(scene, cfg.dataset, train_num_rays=cfg.system.train_num_rays, seed=cfg.seed)


def build_system(cfg: ExperimentConfig, context: RunContext) -> BaseSystem:
    model = models.make(cfg.model.name, cfg.model, path="model")
    schedule = TrainingSchedule(cfg.trainer.max_steps, cfg.trainer.max_minutes)
    return systems.make(cfg.system.name, cfg.system, model, context, schedule, path="system")


def check_run_data(cfg: ExperimentConfig, scene: Scene, action: str) -> None:
    """What the config asks of the data that the data cannot give, found before a run starts (call
    it after ``build_scene``, before the run folder is made; it reads the training images once,
    which the run then reuses): a mask loss (system.loss.lambda_mask > 0) without masks is refused
    with a one-line DatasetError naming the key, or, with system.loss.mask_loss_without_masks:
    off, switched off for this run (cfg is changed) with a warning."""
    loss = cfg.system.loss
    if action != "train" or not weight_nonzero(loss.lambda_mask):
        return
    train = scene.split("train")
    if train.has_mask:
        return
    problem = f"system.loss.lambda_mask is {loss.lambda_mask} but the training data has no masks ({train.mask_info})"
    if loss.mask_loss_without_masks == "off":
        log.warning("%s: training without the mask loss (system.loss.mask_loss_without_masks: off)", problem)
        loss.lambda_mask = 0.0
        return
    raise DatasetError(
        f"{problem}: against all-opaque alpha the mask loss makes the whole box opaque; set "
        "system.loss.lambda_mask=0 (captures without masks: add model.background={name: nerf-background}) "
        "or provide masks"
    )


def start_grid_from_masks(system: BaseSystem, datamodule: SceneDataModule) -> None:
    """model.grid.init_from_masks: carve the occupancy grid with the training masks' visual hull."""
    model = system.model
    if not model.cfg.grid.init_from_masks or model.grid is None:
        return
    train = datamodule.split("train")
    if not train.has_mask:
        log.warning("model.grid.init_from_masks is set but the training images have no masks (%s): skipped",
                    train.mask_info or "none")
        return
    # each view's mask at its own size
    kept = model.start_grid_from_hull(visual_hull_cells(model.grid, train.c2w, train.intrinsics, train.masks()))
    if kept <= 0:
        raise DatasetError(
            f"model.grid.init_from_masks: the visual hull of the {len(train)} training masks leaves no cell "
            "of the occupancy grid: the masks are empty, too small or do not overlap (check them, or set "
            "model.grid.init_from_masks=false)")
    log.info("occupancy grid started from the masks' visual hull: %.1f%% of the box kept", 100 * kept)


def build_callbacks(cfg: ExperimentConfig, run_paths: RunPaths, action: str) -> List[pl.Callback]:
    """The toolkit's own callbacks for ``action`` (train: checkpoints, graceful stop, ray budget,
    NaN/inf guard, learning-rate monitor; always: a console progress line when not on a terminal)."""
    from pytorch_lightning.callbacks import LearningRateMonitor

    interactive = cfg.trainer.enable_progress_bar and sys.stderr.isatty()
    callbacks: List[pl.Callback] = [] if interactive else [ConsoleProgress()]
    if action == "train":
        callbacks += [
            DynamicRayBudget.from_config(cfg.system),
            NonFiniteStepGuard(cfg.system.max_consecutive_bad_steps),
            LearningRateMonitor(logging_interval="step"),
            # also before the first validation and at the end of training: a failing validation or
            # test never costs the weights
            periodic_checkpoints(cfg, run_paths),
            GracefulStop(run_paths.ckpt_dir),  # after the periodic checkpoints (both run last)
        ]
    return callbacks


def periodic_checkpoints(cfg: ExperimentConfig, run_paths: RunPaths) -> AtomicModelCheckpoint:
    """Checkpoints every checkpoint.every_n_train_steps steps, or every_n_minutes of training."""
    import datetime

    minutes = cfg.checkpoint.every_n_minutes
    return AtomicModelCheckpoint(
        dirpath=run_paths.ckpt_dir,
        filename="step{step:07d}",
        auto_insert_metric_name=False,
        every_n_train_steps=None if minutes is not None else cfg.checkpoint.every_n_train_steps,
        train_time_interval=None if minutes is None else datetime.timedelta(minutes=minutes),
        save_top_k=-1,
        save_last=cfg.checkpoint.save_last,
    )


def build_trainer(cfg: ExperimentConfig, run_paths: RunPaths, callbacks: Sequence[pl.Callback]) -> pl.Trainer:
    from pytorch_lightning.loggers import TensorBoardLogger
    from pytorch_lightning.strategies import DDPStrategy

    t = cfg.trainer
    logger = TensorBoardLogger(
        save_dir=str(run_paths.tb_dir.parent.parent), name=cfg.name, version=run_paths.version, default_hp_metric=False
    )
    trainer = pl.Trainer(
        max_steps=t.max_steps,
        val_check_interval=t.val_check_interval,
        check_val_every_n_epoch=None,
        log_every_n_steps=t.log_every_n_steps,
        limit_val_batches=t.limit_val_batches,
        limit_test_batches=t.limit_test_batches,
        num_sanity_val_steps=t.num_sanity_val_steps,
        precision=t.precision,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        gradient_clip_val=t.gradient_clip_val,
        enable_progress_bar=t.enable_progress_bar and sys.stderr.isatty(),  # else ConsoleProgress logs
        deterministic=t.deterministic,
        callbacks=list(callbacks),
        logger=logger,
        default_root_dir=str(run_paths.root),
        enable_model_summary=False,
    )
    if isinstance(trainer.strategy, DDPStrategy) and hasattr(trainer.strategy, "_ddp_kwargs"):
        # DDP would broadcast rank 0's buffers (the occupancy grid: megabytes) before every forward;
        # the grid keeps the ranks equal itself (an all-reduce in OccupancyGrid.update)
        from torch.nn.parallel import DistributedDataParallel

        params = inspect.signature(DistributedDataParallel.__init__).parameters
        key = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
        trainer.strategy._ddp_kwargs.setdefault(key, False)
    return trainer


def build_run(cfg: ExperimentConfig, run_paths: RunPaths, action: str = "train", *,
              extra_callbacks: Sequence[pl.Callback] = (), scene: Scene = None,
              datamodule: SceneDataModule = None) -> RunParts:
    """Scene, system (with its model), datamodule and trainer of a run whose outputs go to
    ``run_paths``. ``extra_callbacks`` run after the toolkit's own; ``scene`` and ``datamodule``
    (with the splits it has loaded) skip making them again."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    scene = scene if scene is not None else build_scene(cfg)
    check_run_data(cfg, scene, action)  # (nothing left to do when the caller checked already)
    context = RunContext(save_dir=run_paths.save_dir, scene_to_world=scene.scene_to_world,
                         gt_mesh_path=scene.gt_mesh_path, export=cfg.export,
                         eval_sizing=eval_sizing(cfg.dataset), up=scene.up_direction())
    system = build_system(cfg, context)
    datamodule = datamodule if datamodule is not None else build_datamodule(cfg, scene)
    if action == "train":
        # before a checkpoint is restored (inside fit), so a resumed grid wins over a fresh hull
        start_grid_from_masks(system, datamodule)
    callbacks = build_callbacks(cfg, run_paths, action) + list(extra_callbacks)
    trainer = build_trainer(cfg, run_paths, callbacks)
    return RunParts(cfg=cfg, scene=scene, system=system, datamodule=datamodule, trainer=trainer)
