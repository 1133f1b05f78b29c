"""The COLMAP layout (what COLMAP's mapper or ``scripts/imgs2poses.py`` writes).

```
root/
  images/...               the photos, named as in the reconstruction (sub-folders allowed)
  sparse/0/                cameras, images, points3D as .bin or .txt (``sparse/`` itself also works)
  masks/...                optional foreground masks: <image name>.png (COLMAP's convention) or the
                           image's name with .png instead of its extension
```
Read with pycolmap (every camera model COLMAP writes; one camera per image or shared). Distorted
images are undistorted with OpenCV onto pinhole cameras (``datasets.undistort``). The scene is
normalized from the cameras and the sparse points (``dataset.normalization``,
``datasets.normalization``); ``scene_to_world`` maps it back onto COLMAP's world frame.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

import numpy as np

from datasets import register
from datasets.base import DatasetError
from datasets.captures import CaptureConfig, CaptureScene, CaptureView
from datasets.normalization import NormalizationConfig
from datasets.undistort import from_colmap

LAYOUT = "the COLMAP layout: images/ and sparse/0/ with cameras, images, points3D (.bin or .txt)"
MODEL_FILES = ("cameras", "images", "points3D")


def import_pycolmap():
    """pycolmap, or a clear error saying how to install it."""
    try:
        import pycolmap
    except ImportError as err:
        raise DatasetError(
            "reading COLMAP models needs pycolmap: install it with `.venv/bin/pip install pycolmap` "
            f"(or `bash scripts/setup.sh`): {err}"
        ) from err
    return pycolmap


def find_model_dir(root: Path, sparse_dir: str) -> Path:
    """The folder holding cameras/images/points3D (.bin or .txt): ``root/sparse_dir``, or ``root/sparse``."""
    candidates = [root / sparse_dir]
    if sparse_dir == "sparse/0":
        candidates.append(root / "sparse")
    for folder in candidates:
        if all((folder / f"{n}.bin").is_file() for n in MODEL_FILES) or all(
            (folder / f"{n}.txt").is_file() for n in MODEL_FILES
        ):
            return folder
    tried = " or ".join(f"'{c}'" for c in candidates)
    raise DatasetError(
        f"no COLMAP model in {tried}: expected cameras, images and points3D as .bin or .txt ({LAYOUT})"
    )


def read_reconstruction(folder: Path) -> Any:
    """A pycolmap.Reconstruction read from ``folder`` (binary or text)."""
    pycolmap = import_pycolmap()
    try:
        return pycolmap.Reconstruction(str(folder))
    except Exception as err:
        raise DatasetError(f"cannot read the COLMAP model in '{folder}': {err}") from err


def cam_from_world_matrix(image: Any) -> np.ndarray:
    """The world -> camera [3, 4] of a pycolmap.Image (a method in pycolmap >= 3.12, a property before)."""
    pose = image.cam_from_world
    if callable(pose):
        pose = pose()
    return np.asarray(pose.matrix(), dtype=np.float64)


def image_has_pose(image: Any) -> bool:
    flag = getattr(image, "has_pose", None)
    if flag is None:
        flag = getattr(image, "registered", True)
    return bool(flag() if callable(flag) else flag)


@register("colmap")
class ColmapScene(CaptureScene):
    @dataclasses.dataclass
    class Config(CaptureConfig):
        images_dir: str = "images"
        sparse_dir: str = "sparse/0"
        masks_dir: str = "masks"
        normalization: NormalizationConfig = dataclasses.field(default_factory=NormalizationConfig)

    layout = LAYOUT

    def __init__(self, cfg: "ColmapScene.Config", scene_radius: float = 1.0) -> None:
        super().__init__(cfg, scene_radius)
        root = self.root
        images_dir = root / cfg.images_dir
        if not images_dir.is_dir():
            raise DatasetError(f"'{images_dir}' does not exist (expected {LAYOUT})")
        model_dir = find_model_dir(root, cfg.sparse_dir)
        source = str(model_dir)
        recon = read_reconstruction(model_dir)
        masks_dir = root / cfg.masks_dir
        use_masks = cfg.use_masks and masks_dir.is_dir()

        lenses = {}
        missing, no_mask = [], []
        for image_id in sorted(recon.images.keys()):
            image = recon.images[image_id]
            if not image_has_pose(image):
                continue
            if image.camera_id not in lenses:
                if image.camera_id not in recon.cameras:
                    raise DatasetError(f"{source}: image '{image.name}' names camera {image.camera_id}, which is missing")
                lenses[image.camera_id] = from_colmap(recon.cameras[image.camera_id], source)
            w2c = cam_from_world_matrix(image)
            c2w = np.concatenate([w2c[:, :3].T, (-w2c[:, :3].T @ w2c[:, 3])[:, None]], axis=1)
            path = images_dir / image.name
            if not path.is_file():
                missing.append(image.name)
                continue
            mask_path = self._mask_path(masks_dir, image.name) if use_masks else None
            if use_masks and mask_path is None:
                no_mask.append(image.name)
            self.views.append(CaptureView(image.name, path, c2w, lenses[image.camera_id], mask_path))
        if missing:
            raise DatasetError(
                f"{source} lists {len(missing)} image(s) not found in '{images_dir}', e.g. {missing[:3]}"
            )
        if no_mask:
            raise DatasetError(f"'{masks_dir}' has no mask for {len(no_mask)} image(s), e.g. {no_mask[:3]}")
        if not self.views:
            raise DatasetError(f"{source} has no registered images")
        self.views.sort(key=lambda v: v.name)
        points = list(recon.points3D.values())
        self.points_world = np.asarray([p.xyz for p in points], dtype=np.float64).reshape(-1, 3) if points else None
        self.points_rgb = np.asarray([p.color for p in points], dtype=np.uint8).reshape(-1, 3) if points else None
        c2w = np.stack([v.c2w for v in self.views])
        if not np.all(np.isfinite(c2w)):
            bad = np.nonzero(~np.isfinite(c2w.reshape(len(c2w), -1)).all(1))[0].tolist()
            raise DatasetError(f"{source}: camera pose(s) at index {bad[:10]} contain NaN or inf")
        self._normalize(cfg.normalization, source)  # an empty points3D (known poses) gets triangulated points
        self._finish_setup(source)

    @staticmethod
    def _mask_path(masks_dir: Path, name: str) -> Optional[Path]:
        for candidate in (masks_dir / f"{name}.png", (masks_dir / name).with_suffix(".png"), masks_dir / name):
            if candidate.is_file():
                return candidate
        return None
