"""The top-level config of a run: which dataset, model and system, and how to train and export."""
from __future__ import annotations

import dataclasses
from typing import Any, List, Literal, Optional, Union

from utils.config import KeyChange, component


@dataclasses.dataclass
class TrainerConfig:
    """Options handed to Lightning's Trainer (see launch.py for the command-line flags)."""

    max_steps: int = 20000  # the recipe's length (with max_minutes: at most this many steps)
    # train for at most this many minutes, every step-based schedule stretched to fit (see
    # systems/schedule.py); null: train max_steps steps
    max_minutes: Optional[float] = None
    val_check_interval: int = 5000  # validate every n training steps
    log_every_n_steps: int = 50
    limit_val_batches: Optional[Union[int, float]] = None  # images (int) or fraction (float) per validation
    limit_test_batches: Optional[Union[int, float]] = None
    num_sanity_val_steps: int = 0
    precision: Literal["32-true", "32", "16-mixed", "bf16-mixed", "64-true"] = "32-true"
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: Union[int, str, List[int]] = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    gradient_clip_val: Optional[float] = None
    enable_progress_bar: bool = True
    deterministic: bool = False


@dataclasses.dataclass
class CheckpointConfig:
    every_n_train_steps: int = 5000  # periodic checkpoints (all kept) besides last.ckpt
    # or every so many minutes of training instead (e.g. with trainer.max_minutes)
    every_n_minutes: Optional[float] = None
    save_last: bool = True


@dataclasses.dataclass
class CleanupConfig:
    """Dropping small disconnected pieces (floaters) from the extracted mesh (export.clean)."""

    enabled: bool = True
    # keep every piece with at least min_faces faces or min_fraction of all faces; neither set:
    # keep only the largest piece
    min_faces: Optional[int] = None
    min_fraction: Optional[float] = None
    fill_holes: bool = False  # close small holes where the surface allows (trimesh)


@dataclasses.dataclass
class TextureConfig:
    """A UV-textured copy of the mesh (export.texture): decimated to max_faces, unwrapped with
    xatlas, the field's colour (seen along the surface normal) baked into a size x size PNG,
    written as binary glTF (.glb) and OBJ+MTL+PNG."""

    enabled: bool = True
    # decimate to this many faces first (null: as extracted); unwrapping time grows faster than
    # the face count (xatlas: ~3 s at 20k faces, ~15 s at 50k on one core)
    max_faces: Optional[int] = 20000
    size: int = 1024  # texture width and height in texels
    formats: List[Literal["glb", "obj"]] = dataclasses.field(default_factory=lambda: ["glb", "obj"])


@dataclasses.dataclass
class PreviewConfig:
    """A turntable of the exported mesh (export.preview): a PNG grid and an MP4 beside the mesh,
    and the mesh in TensorBoard's mesh plugin."""

    enabled: bool = True
    frames: int = 36  # turntable frames (the video); the PNG shows 8 of them
    size: int = 256  # pixels per frame
    tensorboard: bool = True


@dataclasses.dataclass
class ExportConfig:
    """Mesh export by marching cubes, then clean-up, decimation, texture and preview."""

    resolution: int = 512
    threshold: float = 0.0  # level set of the SDF (NeuS) or density threshold (NeRF, set e.g. 10)
    chunk_size: int = 262144  # field queries per chunk
    coarse_to_fine: bool = True
    # cells per block of block-wise extraction (memory bound by the block); "auto": one pass up
    # to 256^3, blocks above; null: always one pass
    block_size: Optional[Union[int, Literal["auto"]]] = "auto"
    # the full mesh, vertex-coloured
    formats: List[Literal["ply", "obj", "glb"]] = dataclasses.field(default_factory=lambda: ["ply"])
    vertex_colors: bool = True
    max_faces: Optional[int] = None  # decimate the full mesh too (null: keep every face)
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
    name: str = "???"
    tag: str = ""
    seed: int = 42
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
