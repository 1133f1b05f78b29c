"""What every scene loader returns, and the checks and image reading they share.

A loader (registered in ``datasets``) turns a folder on disk into ``SceneSplit``s in the
toolkit's conventions (see ``datasets.cameras``): OpenCV poses in *scene* coordinates (the
normalized frame the model works in) plus ``scene_to_world``, the similarity transform that maps
scene coordinates back to the input's own world frame (identity when the input is used as is).
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import List, Literal, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

Split = Literal["train", "val", "test", "predict"]


class DatasetError(ValueError):
    """Input data that cannot be used; the message names the file or key at fault."""


@dataclasses.dataclass
class SceneSplit:
    """The images and cameras of one split.

    rgb [N, H, W, 3] float in [0, 1] (colour where alpha > 0; None when there is no ground truth),
    alpha [N, H, W] float in [0, 1] (foreground coverage; ones when the data has no masks),
    intrinsics [N, 4] (fx, fy, cx, cy), c2w [N, 3, 4] OpenCV, in scene coordinates.
    """

    c2w: Tensor
    intrinsics: Tensor
    width: int
    height: int
    rgb: Optional[Tensor] = None
    alpha: Optional[Tensor] = None
    has_mask: bool = False
    names: List[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        n = self.c2w.shape[0]
        if self.intrinsics.shape != (n, 4):
            raise DatasetError(f"intrinsics must be [{n}, 4], got {tuple(self.intrinsics.shape)}")
        if self.rgb is not None and self.rgb.shape != (n, self.height, self.width, 3):
            raise DatasetError(f"images must be [{n}, {self.height}, {self.width}, 3], got {tuple(self.rgb.shape)}")
        if self.alpha is not None and self.alpha.shape != (n, self.height, self.width):
            raise DatasetError(f"masks must be [{n}, {self.height}, {self.width}], got {tuple(self.alpha.shape)}")

    def __len__(self) -> int:
        return int(self.c2w.shape[0])

    @property
    def has_ground_truth(self) -> bool:
        return self.rgb is not None


class Scene:
    """Base of all loaders: ``load_split(split)`` plus what export and evaluation need."""

    #: similarity transform [4, 4] mapping scene coordinates to the input's world coordinates
    scene_to_world: Tensor
    #: path of a ground-truth surface (mesh) in world coordinates, when the data has one
    gt_mesh_path: Optional[str] = None

    def __init__(self, cfg, scene_radius: float = 1.0) -> None:
        self.cfg = cfg
        #: the model's scene box is [-scene_radius, scene_radius]^3 (model.radius): loaders that
        #: normalize the input fit the object into it
        self.scene_radius = float(scene_radius)
        self.scene_to_world = torch.eye(4)

    def load_split(self, split: Split) -> SceneSplit:
        raise NotImplementedError


# --------------------------------------------------------------------------- shared checks
def check_poses(c2w: Tensor, source: str) -> Tensor:
    """Reject NaN/inf in camera poses, naming the file and the first bad index."""
    bad = ~torch.isfinite(c2w.reshape(c2w.shape[0], -1)).all(dim=1)
    if bad.any():
        idx = torch.nonzero(bad).flatten().tolist()
        raise DatasetError(f"{source}: camera pose(s) at index {idx[:10]} contain NaN or inf")
    return c2w


def require_folder(root: str | Path, layout: str) -> Path:
    """The dataset root, or a clear error saying which layout was expected there."""
    root = Path(root)
    if root.is_file():
        raise DatasetError(f"dataset.root_dir: '{root}' is a file, not a folder (expected {layout})")
    if not root.is_dir():
        raise DatasetError(f"dataset folder '{root}' does not exist (expected {layout})")
    return root


def resolve_inside(root: Path, relative: str, source: str) -> Path:
    """``root / relative``, refusing paths that point outside the dataset folder."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise DatasetError(f"{source}: path '{relative}' points outside the dataset folder '{root}'")
    return path


def read_image(path: Path) -> np.ndarray:
    """An image file as float32 [H, W, C] in [0, 1] (C = 1, 3 or 4, RGB order)."""
    import imageio.v3 as iio

    if not path.is_file():
        raise DatasetError(f"image file '{path}' does not exist")
    try:
        img = np.asarray(iio.imread(path))
    except Exception as err:  # noqa: BLE001 (each reader has its own exceptions)
        raise DatasetError(f"cannot read image '{path}': {image_error_reason(path, err)}") from err
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3:
        raise DatasetError(f"image '{path}' has an unexpected shape {img.shape}")
    scale = 65535.0 if img.dtype == np.uint16 else 255.0 if img.dtype == np.uint8 else 1.0
    return img.astype(np.float32) / scale


def image_error_reason(path: Path, err: BaseException) -> str:
    """Why an image reader refused ``path``, in one line (imageio ends its "no backend" error
    with install hints for plugins that would not help with a damaged file)."""
    try:
        if path.stat().st_size == 0:
            return "the file is empty (0 bytes)"
    except OSError as stat_err:
        return stat_err.strerror or str(stat_err)
    text = str(err)
    if "Could not find a backend" in text:
        return "not an image in a format this toolkit reads (damaged, or not an image at all)"
    first = (text.splitlines() or [""])[0].strip() or type(err).__name__
    return f"{first} (damaged or cut short?)"


def resize_image(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize [H, W, C] float to (height, width) with area averaging when shrinking."""
    import cv2

    if img.shape[1] == width and img.shape[0] == height:
        return img
    shrinking = width < img.shape[1]
    out = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return out if out.ndim == 3 else out[..., None]


def target_size(width: int, height: int, img_wh: Optional[Sequence[int]], img_downscale: Optional[float], source: str):
    """The (w, h) to load at, from either ``img_wh`` or ``img_downscale`` (not both)."""
    if img_wh is not None and img_downscale is not None:
        raise DatasetError(f"{source}: set either dataset.img_wh or dataset.img_downscale, not both")
    if img_wh is not None:
        w, h = int(img_wh[0]), int(img_wh[1])
        if w <= 0 or h <= 0:
            raise DatasetError(f"dataset.img_wh must be positive, got {list(img_wh)}")
        if abs(w / width - h / height) > 0.02:
            raise DatasetError(
                f"dataset.img_wh {[w, h]} changes the aspect ratio of {source}'s {width}x{height} images"
            )
        return w, h
    if img_downscale is not None:
        if img_downscale <= 0:
            raise DatasetError(f"dataset.img_downscale must be positive, got {img_downscale}")
        return max(1, int(math.floor(width / img_downscale + 0.5))), max(1, int(math.floor(height / img_downscale + 0.5)))
    return width, height
