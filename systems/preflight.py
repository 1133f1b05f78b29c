"""Checks of a run that need its data or its machine, made once the scene is built and before the
run folder is made (systems/run.py): are the evaluation images large enough for the metrics, does
the mesh export fit in memory, and does a chunk of whole-image rendering. Each problem is a
one-line ConfigError naming the key that decides it; what can be adapted is, with a warning."""
from __future__ import annotations

import logging
import math
from typing import Any, Optional

import torch

from systems.metrics import SSIM_WINDOW
from utils.config import ConfigError, nearest
from utils.memory import available_memory, format_bytes

log = logging.getLogger("launch")

# memory per marching step of a ray while rendering whole images without gradients. Measured on
# CPU in the worst case (occupancy grid off, nothing pruned), where not every ray crosses every
# step of the box: NeuS (main preset, 256 steps) ~290 KB per ray, NeRF (nerf-blender, 1024 steps)
# ~590 KB per ray; 1 KiB per step covers both
RENDER_BYTES_PER_SAMPLE = 1024
# a chunk of rendering may take at most this share of the memory available when the run starts
RENDER_MEMORY_SHARE = 0.5
# the split each action renders and scores (training: validation; its test comes after training,
# where a metric that cannot be computed is skipped with a warning)
SCORED_SPLIT = {"train": "val", "validate": "val", "test": "test"}
RENDERS_IMAGES = ("train", "validate", "test", "predict")


def run_device(trainer_cfg: Any) -> torch.device:
    """The device a run's model will live on, as Lightning will choose it from trainer.accelerator."""
    accelerator = trainer_cfg.accelerator
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    if accelerator == "mps":
        return torch.device("mps")
    return torch.device("cpu")


def preflight(cfg: Any, action: str, datamodule: Any) -> None:
    """All checks for ``action`` with the experiment ``cfg`` and its ``datamodule`` (whose splits it
    loads: the run would load them first thing anyway)."""
    check_trainer(cfg.trainer)
    check_scored_images(cfg, action, datamodule)
    if exports_mesh(cfg, action):
        check_export_memory(cfg.export.resolution, available_memory("cpu"))
    if action in RENDERS_IMAGES:
        fit_eval_chunk(cfg.model, available_memory(run_device(cfg.trainer)))


def exports_mesh(cfg: Any, action: str) -> bool:
    return action == "export" or (action in ("train", "test") and cfg.system.export_mesh_at_test)


# ------------------------------------------------------------------------------------------ trainer
def check_trainer(trainer_cfg: Any) -> None:
    """What Lightning would refuse only once the run folder exists: an accelerator this machine does
    not have, more GPUs than it has, an unknown strategy."""
    from pytorch_lightning.strategies import StrategyRegistry

    accelerator, devices = trainer_cfg.accelerator, trainer_cfg.devices
    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.accelerator: {accelerator}, but torch finds no CUDA GPU on this machine "
                              "(use --accelerator cpu, or auto)")
        wanted = devices if isinstance(devices, int) else len(devices) if isinstance(devices, list) else None
        present = torch.cuda.device_count()
        indices = devices if isinstance(devices, list) else []
        if (wanted is not None and wanted > present) or any(i >= present for i in indices):
            raise ConfigError(f"trainer.devices: {devices}, but this machine has {present} GPU(s)")
    if accelerator == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError("trainer.accelerator: mps, but this machine has no MPS device (use --accelerator cpu, or auto)")
    strategy = trainer_cfg.strategy
    known = ["auto", *StrategyRegistry.available_strategies()]
    if strategy not in known:
        raise ConfigError(f"trainer.strategy: unknown strategy '{strategy}'.{nearest(strategy, known)} "
                          "(e.g. auto, ddp, ddp_spawn)")


# ------------------------------------------------------------------------------------------- images
def image_size_key(dataset_cfg: Any) -> str:
    """'dataset.<key>=<value>' of the option that sets the loaded image size."""
    for key in ("img_downscale", "img_wh"):
        value = getattr(dataset_cfg, key, None)
        if value is not None:
            return f"dataset.{key}={value}"
    if hasattr(dataset_cfg, "resolution"):  # the generated scene
        return f"dataset.resolution={dataset_cfg.resolution}"
    return f"dataset.root_dir={getattr(dataset_cfg, 'root_dir', '?')}"


def check_scored_images(cfg: Any, action: str, datamodule: Any) -> None:
    """The images an action scores must be at least SSIM's window on each side."""
    split_name = SCORED_SPLIT.get(action)
    limit = cfg.trainer.limit_val_batches if action != "test" else cfg.trainer.limit_test_batches
    if split_name is None or limit == 0:
        return
    split = datamodule.split(split_name)
    if len(split) == 0:
        return
    height, width = (int(v) for v in split.sizes.min(dim=0).values)  # the smallest image (sizes may differ)
    if min(width, height) >= SSIM_WINDOW:
        return
    key = image_size_key(cfg.dataset)
    hint = ("set dataset.img_wh to load them larger" if key.startswith("dataset.root_dir")
            else f"choose {key.split('=')[0]} so that the images keep at least {SSIM_WINDOW} pixels a side")
    name, value = key.split("=", 1)
    raise ConfigError(f"{name}: {value} leaves the {split_name} images {width}x{height} pixels, "
                      f"smaller than the {SSIM_WINDOW}x{SSIM_WINDOW} window SSIM needs ({hint})")


# ------------------------------------------------------------------------------------------- memory
def check_export_memory(resolution: int, available: Optional[int]) -> None:
    """Refuse an export.resolution whose mesh would not fit in the memory available; warn when it
    would take more than half of it."""
    from utils.mesh.extract import MESH_BYTES_PER_FACE, MESH_FACES_PER_RES2, mesh_memory_estimate

    if available is None:
        return
    need = mesh_memory_estimate(resolution)
    if need <= available / 2:
        return
    faces = MESH_FACES_PER_RES2 * resolution**2
    what = (f"export.resolution: {resolution} needs about {format_bytes(need)} of memory for the mesh (about "
            f"{faces:.2g} faces at ~{MESH_BYTES_PER_FACE} B, estimated for a surface of some detail)")
    if need > available:
        fits = int(math.sqrt(max(available - mesh_memory_estimate(0), 0) / (MESH_FACES_PER_RES2 * MESH_BYTES_PER_FACE)))
        raise ConfigError(f"{what}, more than the {format_bytes(available)} available (about {fits} fits; "
                          "lower export.resolution)")
    log.warning("%s: more than half of the %s available", what, format_bytes(available))


def render_bytes_per_ray(model_cfg: Any) -> int:
    """Worst-case memory of one ray when rendering whole images: every marching step of the box
    evaluated (as before the occupancy grid has learned anything), plus the background's samples."""
    samples = model_cfg.num_samples_per_ray
    if model_cfg.max_samples_per_ray is not None:
        samples = min(samples, model_cfg.max_samples_per_ray)
    if getattr(model_cfg, "background", None) is not None:
        samples += model_cfg.background.n_samples
    return samples * RENDER_BYTES_PER_SAMPLE


def fit_eval_chunk(model_cfg: Any, available: Optional[int]) -> None:
    """Lower model.eval_chunk_size (a power of two, with a warning) when a chunk of whole-image
    rendering could take more than RENDER_MEMORY_SHARE of the memory available."""
    if available is None:
        return
    per_ray = render_bytes_per_ray(model_cfg)
    budget = available * RENDER_MEMORY_SHARE
    chunk = model_cfg.eval_chunk_size
    if chunk * per_ray <= budget:
        return
    fitted = 2 ** int(math.floor(math.log2(max(budget / per_ray, 1.0))))
    log.warning("model.eval_chunk_size: %d rays per chunk could take up to %s while rendering whole images "
                "(%d samples per ray at ~%d B), more than %d%% of the %s available; rendering in chunks of %d rays "
                "(set model.eval_chunk_size to choose)", chunk, format_bytes(chunk * per_ray),
                per_ray // RENDER_BYTES_PER_SAMPLE, RENDER_BYTES_PER_SAMPLE, int(100 * RENDER_MEMORY_SHARE),
                format_bytes(available), fitted)
    model_cfg.eval_chunk_size = fitted
