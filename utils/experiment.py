"""The top-level config of a run: which dataset, model and system, and how to train and export."""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator, List, Literal, Optional, Tuple, Union

from utils.config import (KeyChange, at_least, checked, component, folder_name, fraction, in_range, length,
                          non_negative, positive, rule)


def _batches_limit(v: Any) -> bool:
    """Lightning's limit_*_batches: a count (int >= 0) or a fraction of the split (float in [0, 1])."""
    return v >= 0 if isinstance(v, int) else 0.0 <= v <= 1.0


def _devices(v: Any) -> bool:
    """Lightning's devices: a count (>= 1, or -1 for all), 'auto', 'N' or 'i,j', or a list of indices."""
    if isinstance(v, int):
        return v >= 1 or v == -1
    if isinstance(v, list):
        return bool(v) and all(i >= 0 for i in v) and len(set(v)) == len(v)
    parts = [x.strip() for x in v.split(",") if x.strip()]
    return v == "auto" or v.strip() == "-1" or (bool(parts) and all(x.isdigit() for x in parts))


# block-wise extraction: cells per block (>= 2), "auto" or null
BLOCK_SIZE = rule(lambda v: v is None or v == "auto" or (not isinstance(v, str) and v >= 2), "must be >= 2, 'auto' or null")
BATCHES_LIMIT = rule(_batches_limit, "must be an image count >= 0 or a fraction in [0, 1]")
DEVICES = rule(_devices, "must be a count >= 1 (or -1: all), 'auto', or device indices")


@dataclasses.dataclass
class TrainerConfig:
    """Options handed to Lightning's Trainer (see launch.py for the command-line flags)."""

    max_steps: int = checked(at_least(1), default=20000)  # the recipe's length (with max_minutes: at most)
    # train for at most this many minutes, every step-based schedule stretched to fit (see
    # systems/schedule.py); null: train max_steps steps
    max_minutes: Optional[float] = checked(positive(), default=None)
    val_check_interval: int = checked(at_least(1), default=5000)  # validate every n training steps
    log_every_n_steps: int = checked(at_least(1), default=50)
    # images (int) or fraction (float) per validation
    limit_val_batches: Optional[Union[int, float]] = checked(BATCHES_LIMIT, default=None)
    limit_test_batches: Optional[Union[int, float]] = checked(BATCHES_LIMIT, default=None)
    num_sanity_val_steps: int = checked(at_least(-1), default=0)  # -1: the whole validation split
    precision: Literal["32-true", "32", "16-mixed", "bf16-mixed", "64-true"] = "32-true"
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: Union[int, str, List[int]] = checked(DEVICES, default="auto")
    num_nodes: int = checked(at_least(1), default=1)
    strategy: str = "auto"
    gradient_clip_val: Optional[float] = checked(non_negative(), default=None)  # 0 or None: no clipping
    enable_progress_bar: bool = True
    deterministic: bool = False


@dataclasses.dataclass
class CheckpointConfig:
    every_n_train_steps: int = checked(at_least(0), default=5000)  # periodic checkpoints (all kept); 0: none
    # or every so many minutes of training instead (e.g. with trainer.max_minutes)
    every_n_minutes: Optional[float] = checked(positive(), default=None)
    save_last: bool = True


@dataclasses.dataclass
class CleanupConfig:
    """Dropping small disconnected pieces (floaters) from the extracted mesh (export.clean)."""

    enabled: bool = True
    # keep every piece with at least min_faces faces or min_fraction of all faces; neither set:
    # keep only the largest piece
    min_faces: Optional[int] = checked(at_least(1), default=None)
    min_fraction: Optional[float] = checked(fraction(), default=None)
    fill_holes: bool = False  # close small holes where the surface allows (trimesh)


@dataclasses.dataclass
class TextureConfig:
    """A UV-textured copy of the mesh (export.texture): decimated to max_faces, unwrapped with
    xatlas, the field's colour (seen along the surface normal) baked into a size x size PNG,
    written as binary glTF (.glb) and OBJ+MTL+PNG."""

    enabled: bool = True
    # decimate to this many faces first (null: as extracted); unwrapping time grows faster than
    # the face count (xatlas: ~3 s at 20k faces, ~15 s at 50k on one core)
    max_faces: Optional[int] = checked(at_least(4), default=20000)
    size: int = checked(in_range(16, 16384), default=1024)  # texture width and height in texels
    formats: List[Literal["glb", "obj"]] = checked(length(at_least=0), factory=lambda: ["glb", "obj"])


@dataclasses.dataclass
class PreviewConfig:
    """A turntable of the exported mesh (export.preview): a PNG grid and an MP4 beside the mesh,
    and the mesh in TensorBoard's mesh plugin."""

    enabled: bool = True
    frames: int = checked(at_least(1), default=36)  # turntable frames (the video); the PNG shows up to 8
    size: int = checked(in_range(8, 4096), default=256)  # pixels per frame
    tensorboard: bool = True


@dataclasses.dataclass
class ExportConfig:
    """Mesh export by marching cubes, then clean-up, decimation, texture and preview."""

    # grid points per axis over the scene box (the memory this needs is checked before a run starts)
    resolution: int = checked(at_least(2), default=512)
    threshold: float = 0.0  # level set of the SDF (NeuS) or density threshold (NeRF, set e.g. 10)
    chunk_size: int = checked(at_least(1), default=262144)  # field queries per chunk
    coarse_to_fine: bool = True
    # cells per block of block-wise extraction (memory bound by the block); "auto": one pass up
    # to 256^3, blocks above; null: always one pass
    block_size: Optional[Union[int, Literal["auto"]]] = checked(BLOCK_SIZE, default="auto")
    # the full mesh, vertex-coloured
    formats: List[Literal["ply", "obj", "glb"]] = checked(length(at_least=1), factory=lambda: ["ply"])
    vertex_colors: bool = True
    max_faces: Optional[int] = checked(at_least(4), default=None)  # decimate the full mesh too (null: keep every face)
    backend: Literal["auto", "pymcubes", "torchmcubes"] = "auto"
    # map vertices back into the input's world frame (the inverse of the scene normalization)
    world_coordinates: bool = True
    # skip cells the occupancy grid knows are empty (a NeuS "shell" grid: those outside the visual hull)
    use_occupancy_grid: bool = True
    clean: CleanupConfig = dataclasses.field(default_factory=CleanupConfig)
    texture: TextureConfig = dataclasses.field(default_factory=TextureConfig)
    preview: PreviewConfig = dataclasses.field(default_factory=PreviewConfig)


@dataclasses.dataclass
class ExperimentConfig:
    name: str = checked(folder_name(), default="???")
    tag: str = checked(folder_name(allow_empty=True), default="")
    seed: int = checked(in_range(0, 2**32 - 1), default=42)
    # which of the preset's `profiles` applies: 'auto' picks 'gpu' when training on a GPU
    # (trainer.accelerator, or a visible CUDA device when it is 'auto'), else 'cpu'; the run's
    # saved config records the one applied (see systems/build.py)
    profile: Literal["auto", "cpu", "gpu", "none"] = "auto"
    dataset: Any = component("dataset")
    model: Any = component("model")
    system: Any = component("system")
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)

    def __post_init__(self) -> None:
        for key in ("dataset", "model", "system"):
            if getattr(self, key) is None:
                raise ValueError(f"'{key}' is missing: every config needs a {key} section with a name")

    def check(self) -> Iterator[Tuple[str, str]]:
        """What the parts ask of each other: a component's config may define ``check_in(experiment)``
        yielding (key from the config's root, message) for what it needs of the others."""
        for part in (self.dataset, self.model, self.system):
            check_in = getattr(part, "check_in", None)
            if callable(check_in):
                yield from check_in(self)


# keys of earlier versions: moved ones are used at their new place (with a warning), derived ones
# are dropped when consistent (see utils.config.migrate_keys)
_GRID_KEYS = ("resolution", "update_every", "warmup_steps", "occ_thre", "ema_decay", "init_from_masks",
              "hull_hold_steps", "mode")
KEY_CHANGES = (
    KeyChange("model.grid_prune", new="model.grid.enabled"),
    *(KeyChange(f"model.grid_{key}", new=f"model.grid.{key}") for key in _GRID_KEYS),
    KeyChange("model.geometry.radius", derived_from="model.radius", note="the geometry uses model.radius"),
    KeyChange("model.texture.input_feature_dim", derived_from="model.geometry.feature_dim",
              note="the texture takes the geometry's feature_dim"),
    KeyChange("model.background.geometry.radius", note="the background works in contracted coordinates"),
    KeyChange("model.background.texture.input_feature_dim", derived_from="model.background.geometry.feature_dim",
              note="the texture takes the geometry's feature_dim"),
    KeyChange("dataset.normalization.radius", derived_from="model.radius",
              note="captures are normalized into the model's box, model.radius"),
)
