"""What launch.py does once the command line is read: config -> run folder -> data + system -> Lightning."""
from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path
from typing import List, Optional

from omegaconf import OmegaConf

from utils.config import ConfigError, load_config, parse_component, to_plain
from utils.experiment import ExperimentConfig

log = logging.getLogger("launch")


class RunError(RuntimeError):
    """A problem that stops a run before or while it starts; printed without a traceback."""


def load_experiment(config_path: str, overrides: List[str]):
    """(raw DictConfig, parsed ExperimentConfig) after merging bases and overrides and checking every key."""
    import datasets.registered  # noqa: F401  (fills the registries)
    import models.registered  # noqa: F401
    import systems.registered  # noqa: F401

    raw = load_config(config_path, overrides)
    cfg = parse_component(ExperimentConfig, raw)
    return raw, cfg


def resolve_checkpoint(resume: Optional[str], exp_dir: str, cfg: ExperimentConfig) -> Optional[Path]:
    from utils.run_dir import find_last_checkpoint

    if resume is None:
        return None
    if resume == "last":
        try:
            return find_last_checkpoint(exp_dir, cfg.name, cfg.tag)
        except FileNotFoundError as err:
            raise RunError(str(err)) from err
    path = Path(resume)
    if not path.is_file():
        raise RunError(f"checkpoint '{path}' does not exist")
    return path


def save_configs(raw, run_paths, argv: List[str]) -> None:
    """config/raw.yaml as merged (interpolations kept) and config/parsed.yaml resolved, with the command line."""
    command = " ".join(shlex.quote(a) for a in argv)
    (run_paths.config_dir / "raw.yaml").write_text(f"# command: {command}\n" + OmegaConf.to_yaml(raw))
    resolved = OmegaConf.create(to_plain(raw))
    (run_paths.config_dir / "parsed.yaml").write_text(
        f"# command: {command}\n# resolved; hand back to --config with --resume to test or export this run\n"
        + OmegaConf.to_yaml(resolved)
    )


def build_trainer(cfg: ExperimentConfig, run_paths, action: str):
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import LearningRateMonitor
    from pytorch_lightning.loggers import TensorBoardLogger

    from utils.callbacks import AtomicModelCheckpoint, ConsoleProgress

    t = cfg.trainer
    interactive = t.enable_progress_bar and sys.stderr.isatty()
    callbacks = [] if interactive else [ConsoleProgress()]
    if action == "train":
        callbacks.append(
            AtomicModelCheckpoint(
                dirpath=run_paths.ckpt_dir,
                filename="step{step:07d}",
                auto_insert_metric_name=False,
                every_n_train_steps=cfg.checkpoint.every_n_train_steps,
                save_top_k=-1,
                save_last=cfg.checkpoint.save_last,
            )
        )
    logger = TensorBoardLogger(
        save_dir=str(run_paths.tb_dir.parent.parent), name=cfg.name, version=run_paths.version, default_hp_metric=False
    )
    if action == "train":
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    return pl.Trainer(
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
        enable_progress_bar=interactive,  # tqdm in a log file is noise; ConsoleProgress logs instead
        deterministic=t.deterministic,
        callbacks=callbacks,
        logger=logger,
        default_root_dir=str(run_paths.root),
        enable_model_summary=False,
    )


def run(action: str, args: argparse.Namespace, overrides: List[str], repo_root: Path) -> int:
    import pytorch_lightning as pl

    import datasets
    import systems
    from datasets.base import DatasetError
    from datasets.datamodule import SceneDataModule
    from systems.base import RunContext
    from utils.checkpoint import CheckpointError, load_weights
    from utils.run_dir import RunFolderError, create_run, snapshot_code

    raw, cfg = load_experiment(args.config, overrides)
    checkpoint = resolve_checkpoint(args.resume, args.exp_dir, cfg)
    if action == "export" and checkpoint is None:
        raise RunError("--export needs weights: add --resume CKPT (or --resume last)")
    if args.resume_weights_only and action != "train":
        raise RunError("--resume-weights-only only applies to --train")
    if checkpoint is None and action in ("validate", "test", "predict"):
        log.warning("no --resume given: %s runs with untrained weights", action)

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    try:
        scene = datasets.make(cfg.dataset.name, cfg.dataset, path="dataset")
    except DatasetError as err:
        raise RunError(str(err)) from err

    try:
        run_paths = create_run(args.exp_dir, args.runs_dir, cfg.name, cfg.tag)
        save_configs(raw, run_paths, ["python", "launch.py", *getattr(args, "argv", [])])
        snapshot_code(repo_root, run_paths.code_dir)
    except (RunFolderError, OSError) as err:
        raise RunError(str(err)) from err
    log.info("run folder: %s (TensorBoard: %s)", run_paths.root, run_paths.tb_dir)

    context = RunContext(
        save_dir=run_paths.save_dir,
        scene_to_world=scene.scene_to_world,
        gt_mesh_path=scene.gt_mesh_path,
        export=cfg.export,
    )
    system = systems.make(cfg.system.name, cfg.system, cfg.model, context, path="system")
    datamodule = SceneDataModule(scene, cfg.dataset, train_num_rays=system.initial_train_num_rays, seed=cfg.seed)
    system.datamodule_ref = datamodule

    full_resume = action == "train" and checkpoint is not None and not args.resume_weights_only
    if checkpoint is not None and not full_resume:
        try:
            load_weights(system, checkpoint)
        except CheckpointError as err:
            raise RunError(str(err)) from err
        log.info("loaded weights from %s", checkpoint)

    trainer = build_trainer(cfg, run_paths, action)
    try:
        if action == "train":
            trainer.fit(system, datamodule=datamodule, ckpt_path=str(checkpoint) if full_resume else None)
            if trainer.interrupted:
                log.warning("training was interrupted; checkpoints are in %s", run_paths.ckpt_dir)
                return 130
            trainer.test(system, datamodule=datamodule)
        elif action == "validate":
            trainer.validate(system, datamodule=datamodule)
        elif action == "test":
            trainer.test(system, datamodule=datamodule)
        elif action == "predict":
            trainer.predict(system, datamodule=datamodule, return_predictions=False)
        elif action == "export":
            system.export_mesh(tag="export")
    except (DatasetError, CheckpointError) as err:
        raise RunError(str(err)) from err
    log.info("outputs are in %s", run_paths.save_dir)
    return 0
