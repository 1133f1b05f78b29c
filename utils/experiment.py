"""The top-level config of a run: which dataset, model and system, and how to train and export."""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator, List, Literal, Optional, Tuple, Union

from utils.config import (KeyChange, at_least, checked, component, folder_name, in_range, length, non_negative,
                          rule)


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


BATCHES_LIMIT = rule(_batches_limit, "must be an image count >= 0 or a fraction in [0, 1]")
DEVICES = rule(_devices, "must be a count >= 1 (or -1: all), 'auto', or device indices")


@dataclasses.dataclass
class TrainerConfig:
    """Options handed to Lightning's Trainer (see launch.py for the command-line flags)."""

    max_steps: int = checked(at_least(1), default=20000)
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
    save_last: bool = True


@dataclasses.dataclass
class ExportConfig:
    """Mesh export by marching cubes."""

    # grid points per axis over the scene box (the memory this needs is checked before a run starts)
    resolution: int = checked(at_least(2), default=512)
    threshold: float = 0.0  # level set of the SDF (NeuS) or density threshold (NeRF, set e.g. 10)
    chunk_size: int = checked(at_least(1), default=262144)  # field queries per chunk
    coarse_to_fine: bool = True
    formats: List[Literal["ply", "obj"]] = checked(length(at_least=1), factory=lambda: ["ply"])
    vertex_colors: bool = True
    backend: Literal["auto", "pymcubes", "torchmcubes"] = "auto"
    # map vertices back into the input's world frame (the inverse of the scene normalization)
    world_coordinates: bool = True
    # skip cells the occupancy grid knows are empty (a NeuS "shell" grid: those outside the visual hull)
    use_occupancy_grid: bool = True


@dataclasses.dataclass
class ExperimentConfig:
    name: str = checked(folder_name(), default="???")
    tag: str = checked(folder_name(allow_empty=True), default="")
    seed: int = checked(in_range(0, 2**32 - 1), default=42)
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
