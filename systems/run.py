"""What launch.py does once the command line is read: config -> run folder -> the run's parts
(systems/build.py) -> Lightning, and errors turned into one-line messages."""
from __future__ import annotations

import argparse
import logging
import os
import shlex
from pathlib import Path
from typing import List, Optional, Sequence

from omegaconf import OmegaConf

from systems.build import build_run, build_scene, check_run_data, load_experiment
from utils.config import to_plain
from utils.experiment import ExperimentConfig

log = logging.getLogger("launch")


class RunError(RuntimeError):
    """A problem that stops a run before or while it starts; printed without a traceback."""


class RunInterrupted(RunError):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint; ``exit_code`` is 128 + signal."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


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


def run(action: str, args: argparse.Namespace, overrides: List[str], repo_root: Path,
        extra_callbacks: Sequence = ()) -> int:
    """Do ``action`` (train, validate, test, predict, export) with the config and options of the
    command line ``args`` and the ``key=value`` overrides; ``extra_callbacks`` join the run's."""
    from datasets.base import DatasetError
    from datasets.normalization import write_scene_transform
    from datasets.scene_setup import write_scene_setup
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from systems.export import export_mesh
    from utils.callbacks import NonFiniteWeightsError, TrainingDiverged, TrainingInterrupted
    from utils.checkpoint import CheckpointError, check_checkpoint, restore_weights
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

    try:
        scene = build_scene(cfg)  # bad data stops the run before any folder is made
        check_run_data(cfg, scene, action)
    except DatasetError as err:
        raise RunError(str(err)) from err

    rank_zero = launch_rank() == 0
    if rank_zero:
        try:
            run_paths = create_run(args.exp_dir, args.runs_dir, cfg.name, cfg.tag)
            save_configs(raw, run_paths, ["python", "launch.py", *getattr(args, "argv", [])])
            snapshot_code(repo_root, run_paths.code_dir)
            info = {"dataset": cfg.dataset.name, **({"root_dir": str(cfg.dataset.root_dir)}
                                                    if hasattr(cfg.dataset, "root_dir") else {})}
            write_scene_transform(run_paths.save_dir / "scene_to_world.json", scene.scene_to_world.numpy(), **info)
            write_scene_setup(scene, run_paths.save_dir)  # save/scene_setup.png: cameras, points, box
        except (RunFolderError, OSError) as err:
            raise RunError(str(err)) from err
        log.info("run folder: %s (TensorBoard: %s)", run_paths.root, run_paths.tb_dir)
    elif started_by_lightning_launcher():
        run_paths = RunPaths(root=Path(os.environ[ENV_RUN_DIR]), tb_dir=Path(os.environ[ENV_TB_DIR]))
    else:
        # started by torchrun/SLURM: only rank 0 writes files (Lightning tells the others its
        # checkpoint folder), so the other ranks' outputs point to a placeholder nothing writes to
        placeholder = run_folder_name(cfg.tag)
        run_paths = RunPaths(root=Path(args.exp_dir) / cfg.name / placeholder,
                             tb_dir=Path(args.runs_dir) / cfg.name / placeholder)

    parts = build_run(cfg, run_paths, action, scene=scene, extra_callbacks=extra_callbacks)
    system, datamodule, trainer = parts.system, parts.datamodule, parts.trainer
    full_resume = action == "train" and checkpoint is not None and not args.resume_weights_only
    try:
        if full_resume:
            check_checkpoint(system, checkpoint)  # Lightning restores it; first make sure it fits
        elif checkpoint is not None:
            restore_weights(system, checkpoint)
            log.info("loaded weights from %s", checkpoint)
    except CheckpointError as err:
        raise RunError(str(err)) from err

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
            system.model.eval()
            system.apply_step_state()  # (outside Lightning: the checkpoint's step-dependent state)
            export_mesh(system.model, cfg.export, scene.scene_to_world, run_paths.save_dir, tag="export")
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
