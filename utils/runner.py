"""What launch.py does once the command line is read: config -> run folder -> data + system -> Lightning."""
from __future__ import annotations

import argparse
import logging
import os
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


class RunInterrupted(RunError):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint; ``exit_code`` is 128 + signal."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def load_experiment(config_path: str, overrides: List[str]):
    """(raw DictConfig, parsed ExperimentConfig) after merging bases and overrides and checking every key."""
    import datasets.registered  # noqa: F401  (fills the registries)
    import models.registered  # noqa: F401
    import systems.registered  # noqa: F401

    raw = load_config(config_path, overrides)
    cfg = parse_component(ExperimentConfig, raw)
    return raw, cfg


def resolve_checkpoint(resume: Optional[str], exp_dir: str, cfg: ExperimentConfig) -> Optional[Path]:
    from utils.distributed import ENV_RESUME, started_by_lightning_launcher
    from utils.run_dir import find_last_checkpoint

    if resume is None:
        return None
    if started_by_lightning_launcher() and os.environ.get(ENV_RESUME):
        return Path(os.environ[ENV_RESUME])  # the one rank 0 chose (it may have written newer files since)
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


def build_trainer(cfg: ExperimentConfig, run_paths, action: str, context=None):
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import LearningRateMonitor
    from pytorch_lightning.loggers import TensorBoardLogger

    from utils.callbacks import AtomicModelCheckpoint, ConsoleProgress, DistributedRun, GracefulStop

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
        callbacks.append(GracefulStop(run_paths))  # after the periodic checkpoints (both run last)
    if context is not None:
        callbacks.append(DistributedRun(run_paths, context))
    logger = TensorBoardLogger(
        save_dir=str(run_paths.tb_dir.parent.parent), name=cfg.name, version=run_paths.version, default_hp_metric=False
    )
    if action == "train":
        callbacks.append(LearningRateMonitor(logging_interval="step"))
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
        enable_progress_bar=interactive,  # tqdm in a log file is noise; ConsoleProgress logs instead
        deterministic=t.deterministic,
        callbacks=callbacks,
        logger=logger,
        default_root_dir=str(run_paths.root),
        enable_model_summary=False,
    )
    from pytorch_lightning.strategies import DDPStrategy

    if isinstance(trainer.strategy, DDPStrategy) and hasattr(trainer.strategy, "_ddp_kwargs"):
        # DDP would broadcast rank 0's buffers (the occupancy grid: megabytes) before every forward;
        # the system keeps them equal itself (see BaseSystem.on_train_start)
        import inspect

        from torch.nn.parallel import DistributedDataParallel

        params = inspect.signature(DistributedDataParallel.__init__).parameters
        key = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
        trainer.strategy._ddp_kwargs.setdefault(key, False)
    return trainer


def _newest_checkpoint(ckpt_dir: Path) -> Optional[Path]:
    found = sorted(Path(ckpt_dir).glob("*.ckpt"), key=lambda p: (p.stat().st_mtime, p.name == "last.ckpt"))
    return found[-1] if found else None


def _write_error(err: OSError) -> Optional[str]:
    """A one-line message for an output that could not be written, else None (not a write problem)."""
    from utils.callbacks import WRITE_ERRNOS
    from utils.saving import SaveError

    if isinstance(err, SaveError) or str(err).startswith("cannot "):
        return str(err)
    if err.errno in WRITE_ERRNOS:
        where = f" '{err.filename}'" if err.filename else ""
        return f"cannot write{where}: {err.strerror or os.strerror(err.errno)}"
    return None


def _quote(path) -> str:
    return shlex.quote(str(path))


def run(action: str, args: argparse.Namespace, overrides: List[str], repo_root: Path) -> int:
    import pytorch_lightning as pl

    import datasets
    import systems
    from datasets.base import DatasetError
    from datasets.datamodule import SceneDataModule
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from systems.base import RunContext, TrainingDiverged
    from utils.callbacks import NonFiniteWeightsError, TrainingInterrupted
    from utils.checkpoint import CheckpointError, load_weights
    from utils.distributed import ENV_RESUME, ENV_RUN_DIR, ENV_TB_DIR, launch_rank, started_by_lightning_launcher
    from utils.run_dir import RunFolderError, RunPaths, create_run, run_folder_name, snapshot_code

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

    rank_zero = launch_rank() == 0
    if rank_zero:
        try:
            run_paths = create_run(args.exp_dir, args.runs_dir, cfg.name, cfg.tag)
            save_configs(raw, run_paths, ["python", "launch.py", *getattr(args, "argv", [])])
            snapshot_code(repo_root, run_paths.code_dir)
        except (RunFolderError, OSError) as err:
            raise RunError(str(err)) from err
        log.info("run folder: %s (TensorBoard: %s)", run_paths.root, run_paths.tb_dir)
    elif started_by_lightning_launcher():
        run_paths = RunPaths(root=Path(os.environ[ENV_RUN_DIR]), tb_dir=Path(os.environ[ENV_TB_DIR]))
    else:
        # started by torchrun/SLURM: rank 0's folder is learned once the process group is up
        # (DistributedRun); until then a placeholder path that nothing writes to
        placeholder = run_folder_name(cfg.tag)
        run_paths = RunPaths(root=Path(args.exp_dir) / cfg.name / placeholder,
                             tb_dir=Path(args.runs_dir) / cfg.name / placeholder)

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
            ckpt = load_weights(system, checkpoint)
        except CheckpointError as err:
            raise RunError(str(err)) from err
        if action != "train":
            # evaluate with the step-dependent state of the checkpoint's step (BaseSystem.apply_step_state)
            system.restored_step = int(ckpt.get("global_step", 0))
            was_training = system.training
            system.eval()
            system.apply_step_state()  # (for --export, which runs outside Lightning)
            system.train(was_training)
        log.info("loaded weights from %s", checkpoint)

    trainer = build_trainer(cfg, run_paths, action, context)
    handoff = {}
    if rank_zero and trainer.world_size > 1:
        # the ranks Lightning's launcher starts from this process (inside fit/test) inherit these
        handoff = {ENV_RUN_DIR: str(run_paths.root), ENV_TB_DIR: str(run_paths.tb_dir),
                   ENV_RESUME: str(checkpoint) if checkpoint is not None else ""}
    previous_env = {key: os.environ.get(key) for key in handoff}
    os.environ.update(handoff)
    try:
        if action == "train":
            trainer.fit(system, datamodule=datamodule, ckpt_path=str(checkpoint) if full_resume else None)
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
    except TrainingInterrupted as err:
        name = signal_name(err.signum)
        if err.path is None:
            raise RunInterrupted(f"{name} at step {err.step}: stopped without a checkpoint", err.exit_code) from err
        resume = (f"python launch.py --config {_quote(run_paths.config_dir / 'parsed.yaml')} --train "
                  f"--resume {_quote(err.path)}")
        raise RunInterrupted(f"{name}: stopped at step {err.step}, checkpoint saved to {err.path}; "
                             f"resume with: {resume}", err.exit_code) from err
    except SIGTERMException as err:  # Lightning's own handling, outside training (e.g. while testing)
        last = _newest_checkpoint(run_paths.ckpt_dir)
        kept = f"; the newest checkpoint is {last}" if last else ""
        raise RunInterrupted(f"SIGTERM: stopped while running {action}{kept}", 143) from err
    except (TrainingDiverged, NonFiniteWeightsError) as err:
        last = _newest_checkpoint(run_paths.ckpt_dir)
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been written yet"
        raise RunError(f"{err}; {kept}") from err
    except OSError as err:
        message = _write_error(err)
        if message is None:
            raise
        raise RunError(message) from err
    finally:
        for key, value in previous_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    if rank_zero:
        log.info("outputs are in %s", run_paths.save_dir)
    return 0


def signal_name(signum: int) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
