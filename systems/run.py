"""What launch.py does once the command line is read: config -> run folder -> the run's parts
(systems/build.py) -> Lightning, and errors turned into one-line messages."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shlex
from pathlib import Path
from typing import Any, List, Optional, Sequence

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
    return Path(resume)  # (read_resume_checkpoint says what is wrong with it, if anything)


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


def read_resume_checkpoint(checkpoint: Optional[Path], resume: Optional[str]) -> Optional[dict]:
    """The checkpoint dict (read once, checked to be a readable checkpoint), or None without one."""
    from utils.checkpoint import CheckpointError, read_checkpoint

    if checkpoint is None:
        return None
    try:
        return read_checkpoint(checkpoint)
    except CheckpointError as err:
        picked = " (--resume last picked it: the newest checkpoint of this name and tag; give another with --resume PATH)"
        raise RunError(str(err) + (picked if resume == "last" else "")) from err


@dataclasses.dataclass
class _Progress:
    """How far a run got, to decide what to do with its folder when it fails."""

    trainer: Any = None
    start_step: int = 0

    def trained(self) -> bool:
        return self.trainer is not None and self.trainer.global_step > self.start_step


def run(action: str, args: argparse.Namespace, overrides: List[str], repo_root: Path,
        extra_callbacks: Sequence = ()) -> int:
    """Do ``action`` (train, validate, test, predict, export) with the config and options of the
    command line ``args`` and the ``key=value`` overrides; ``extra_callbacks`` join the run's.

    Everything that can be checked before work is, before the run folder is made: the config's
    values, the checkpoint file, the data, the memory the mesh and the rendering need. A run that
    fails after that but before it produced anything leaves no folder behind; one that produced
    something (checkpoints, images) keeps its folder with a FAILED file saying why."""
    from datasets.base import DatasetError
    from systems.build import build_datamodule
    from systems.preflight import preflight
    from utils.distributed import launch_rank

    raw, cfg = load_experiment(args.config, overrides)
    if action == "export" and args.resume is None:
        raise RunError("--export needs weights: add --resume CKPT (or --resume last)")
    if args.resume_weights_only and action != "train":
        raise RunError("--resume-weights-only only applies to --train")
    checkpoint = resolve_checkpoint(args.resume, args.exp_dir, cfg)
    ckpt = read_resume_checkpoint(checkpoint, args.resume)
    if checkpoint is None and action in ("validate", "test", "predict"):
        log.warning("no --resume given: %s runs with untrained weights", action)
    try:
        scene = build_scene(cfg)  # bad data stops the run before any folder is made
        check_run_data(cfg, scene, action)
        datamodule = build_datamodule(cfg, scene)
        preflight(cfg, action, datamodule)
    except DatasetError as err:
        raise RunError(str(err)) from err

    rank_zero = launch_rank() == 0
    run_paths, made = make_run_folder(raw, cfg, args, scene, repo_root)
    progress = _Progress()
    try:
        parts = build_parts(cfg, run_paths, action, scene, datamodule, extra_callbacks)
        progress.trainer = parts.trainer
        full_resume = action == "train" and checkpoint is not None and not args.resume_weights_only
        optimizer = check_optimization(cfg, parts.system) if action == "train" else None
        load_checkpoint(parts, checkpoint, ckpt, optimizer if full_resume else None, cfg.system.scheduler.name != "none")
        if full_resume:
            progress.start_step = int(ckpt.get("global_step", 0))
        execute(action, cfg, parts, run_paths, checkpoint, full_resume, rank_zero)
    except BaseException as err:
        if rank_zero:
            settle_failed_run(run_paths, made, err, progress.trained())
        raise
    if rank_zero:
        log.info("outputs are in %s", run_paths.save_dir)
    return 0


def make_run_folder(raw, cfg: ExperimentConfig, args: argparse.Namespace, scene, repo_root: Path):
    """(RunPaths, the parent folders made for it) on rank 0: the run folder with its config, code
    snapshot and scene transform; on other ranks, rank 0's folder (or a placeholder nothing writes to)."""
    from datasets.normalization import write_scene_transform
    from datasets.scene_setup import write_scene_setup
    from utils.distributed import ENV_RUN_DIR, ENV_TB_DIR, launch_rank, started_by_lightning_launcher
    from utils.run_dir import RunFolderError, RunPaths, create_run, discard_run, run_folder_name, snapshot_code

    if launch_rank() == 0:
        parents = [Path(args.exp_dir), Path(args.exp_dir) / cfg.name, Path(args.runs_dir), Path(args.runs_dir) / cfg.name]
        made = [p for p in parents if not p.exists()]
        run_paths = None
        try:
            run_paths = create_run(args.exp_dir, args.runs_dir, cfg.name, cfg.tag)
            save_configs(raw, run_paths, ["python", "launch.py", *getattr(args, "argv", [])])
            snapshot_code(repo_root, run_paths.code_dir)
            info = {"dataset": cfg.dataset.name, **({"root_dir": str(cfg.dataset.root_dir)}
                                                    if hasattr(cfg.dataset, "root_dir") else {})}
            write_scene_transform(run_paths.save_dir / "scene_to_world.json", scene.scene_to_world.numpy(), **info)
            write_scene_setup(scene, run_paths.save_dir)  # save/scene_setup.png: cameras, points, box
        except (RunFolderError, OSError) as err:
            if run_paths is not None:
                discard_run(run_paths, made)
            raise RunError(str(err)) from err
        log.info("run folder: %s (TensorBoard: %s)", run_paths.root, run_paths.tb_dir)
        return run_paths, made
    if started_by_lightning_launcher():
        return RunPaths(root=Path(os.environ[ENV_RUN_DIR]), tb_dir=Path(os.environ[ENV_TB_DIR])), []
    # started by torchrun/SLURM: only rank 0 writes files (Lightning tells the others its
    # checkpoint folder), so the other ranks' outputs point to a placeholder nothing writes to
    placeholder = run_folder_name(cfg.tag)
    return RunPaths(root=Path(args.exp_dir) / cfg.name / placeholder,
                    tb_dir=Path(args.runs_dir) / cfg.name / placeholder), []


def build_parts(cfg: ExperimentConfig, run_paths, action: str, scene, datamodule, extra_callbacks):
    """systems.build.build_run, with what a component refuses (its constructor's ValueError, the
    data a step of the build reads, Lightning's trainer options) as one-line RunErrors."""
    from datasets.base import DatasetError
    from pytorch_lightning.utilities.exceptions import MisconfigurationException

    from utils.config import ConfigError
    from utils.memory import is_out_of_memory

    try:
        return build_run(cfg, run_paths, action, scene=scene, datamodule=datamodule, extra_callbacks=extra_callbacks)
    except ConfigError:
        raise
    except MisconfigurationException as err:
        raise RunError(f"trainer: {err}") from err
    except (DatasetError, ValueError) as err:  # constructors refuse their options with ValueError
        raise RunError(str(err)) from err
    except (RuntimeError, MemoryError) as err:
        if not is_out_of_memory(err):
            raise
        raise RunError("out of memory building the model (its tables are too large for this machine: lower e.g. "
                       "model.geometry.xyz_encoding.inner.log2_hashmap_size or n_levels)") from err


def check_optimization(cfg: ExperimentConfig, system) -> Any:
    """The run's optimizer and schedule built once before training, as configure_optimizers will
    build them inside fit, so that a system.optimizer / system.scheduler the model cannot take
    (a module path it does not have, an option torch refuses) stops the run before its first step."""
    from systems.optim import make_optimizer, make_scheduler

    optimizer = make_optimizer(cfg.system.optimizer, system.model, "system.optimizer")
    make_scheduler(cfg.system.scheduler, optimizer, cfg.trainer.max_steps, "system.scheduler")
    return optimizer


def load_checkpoint(parts, checkpoint: Optional[Path], ckpt: Optional[dict], resume_optimizer: Any,
                    has_scheduler: bool) -> None:
    """The one way a command takes a checkpoint: its weights must fit the model; for
    ``--train --resume`` (``resume_optimizer``: the run's optimizer; Lightning restores the
    checkpoint inside fit) its trainer state must fit that optimizer and the schedule; otherwise
    the weights are loaded here."""
    from utils.checkpoint import CheckpointError, check_checkpoint, check_resumable, restore_weights

    if checkpoint is None:
        return
    try:
        if resume_optimizer is not None:
            check_checkpoint(parts.system, checkpoint, ckpt)
            check_resumable(ckpt, checkpoint, resume_optimizer, has_scheduler)
        else:
            restore_weights(parts.system, checkpoint, ckpt)
            log.info("loaded weights from %s", checkpoint)
    except CheckpointError as err:
        raise RunError(str(err)) from err


def execute(action: str, cfg: ExperimentConfig, parts, run_paths, checkpoint: Optional[Path], full_resume: bool,
            rank_zero: bool) -> None:
    """Run ``action`` with the built ``parts``; errors become one-line RunErrors (or RunInterrupted)."""
    from datasets.base import DatasetError
    from pytorch_lightning.utilities.exceptions import MisconfigurationException, SIGTERMException

    from systems.export import export_mesh, mesh_failure
    from utils.callbacks import NonFiniteWeightsError, TrainingDiverged, TrainingInterrupted
    from utils.checkpoint import CheckpointError
    from utils.distributed import ENV_RESUME, ENV_RUN_DIR, ENV_TB_DIR

    system, datamodule, trainer = parts.system, parts.datamodule, parts.trainer
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
            try:
                export_mesh(system.model, cfg.export, parts.scene.scene_to_world, run_paths.save_dir, tag="export",
                            up=parts.scene.up_direction())
            except (ValueError, RuntimeError, MemoryError) as err:  # an empty surface, too little memory...
                raise RunError(f"export: {mesh_failure(err)}") from err
    except (DatasetError, CheckpointError) as err:
        raise RunError(str(err)) from err
    except MisconfigurationException as err:
        raise RunError(f"trainer: {err}") from err
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


def settle_failed_run(run_paths, made, err: BaseException, trained: bool) -> None:
    """After a failure: remove the run folder when the run produced nothing (it failed before its
    first training step, or a --test/--export before writing anything); else keep it, with a
    FAILED file saying why (not for an interruption, which a --resume continues)."""
    from utils.run_dir import discard_run, mark_failed, wrote_outputs

    if not (trained or wrote_outputs(run_paths)):
        discard_run(run_paths, made)
        log.info("removed the run folder %s: the run stopped before it produced anything", run_paths.root)
        return
    if isinstance(err, (RunInterrupted, KeyboardInterrupt)):
        return
    text = str(err) if isinstance(err, RunError) else f"{type(err).__name__}: {err}"
    marker = mark_failed(run_paths, text.splitlines()[0] if text else type(err).__name__)
    if marker is not None:
        log.info("the run folder %s is kept; %s says why the run failed", run_paths.root, marker.name)


def signal_name(signum: int) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
