"""The NeuS / IDR DTU layout.

```
root/
  image/000000.png ...     the views (PNG or JPEG; also images/). A name that is a number is the
                           view's index i (000012.png, 12.png); names that are not numbers are
                           indexed in name order
  mask/000.png ...         optional foreground masks (grey or 3-channel; also masks/), named like
                           the image or by the index (000.png, 000000.png, 12.png)
  cameras_sphere.npz       world_mat_i: 4x4 projection P = K [R | t] (world -> pixels, the top-left
  (or cameras.npz,         pixel corner at (0, 0)); scale_mat_i: the normalized sphere -> world
   cameras_large.npz)
```
A folder from which some images were deleted keeps the right camera for the others: view i
always takes ``world_mat_i`` and mask i.
Each ``world_mat_i @ scale_mat_i`` is decomposed (RQ) into per-image intrinsics and a pose in the
normalized frame, where the object lies inside the unit sphere. That frame is the scene frame, so
``scene_to_world = scale_mat`` and exported meshes land in DTU's world (millimetres).
"""
from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np

from datasets import register
from datasets.base import DatasetError, ListedFiles, image_size
from datasets.captures import CaptureConfig, CaptureScene, CaptureView
from datasets.normalization import invert_similarity, transform_poses
from datasets.undistort import LensCamera
from utils.config import checked, non_negative
from utils.mesh import check_similarity

log = logging.getLogger(__name__)

LAYOUT = "the NeuS/IDR DTU layout: image/, optional mask/, and cameras_sphere.npz or cameras.npz"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")  # compared in lower case
CAMERA_FILES = ("cameras_sphere.npz", "cameras.npz", "cameras_large.npz")  # tried in this order


def decompose_projection(p: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """P [3, 4] = K [R | t] (up to scale) -> (K [3, 3] with K[2, 2] = 1 and a positive diagonal,
    c2w [3, 4] OpenCV camera-to-world). RQ decomposition of P's left 3x3 block."""
    p = np.asarray(p, dtype=np.float64)[:3, :4]
    m = p[:, :3]
    if abs(np.linalg.det(m)) < 1e-300:
        raise DatasetError("singular projection matrix")
    # RQ via QR of the row-reversed, transposed matrix: m = K @ R with K upper triangular
    flip = np.eye(3)[::-1]
    q, r = np.linalg.qr((flip @ m).T)
    k = flip @ r.T @ flip
    rot = flip @ q.T
    # make K's diagonal positive (K @ D @ D @ R with D = diag(+-1))
    d = np.diag(np.sign(np.diag(k)))
    k, rot = k @ d, d @ rot
    scale = k[2, 2]
    k = k / scale
    if np.linalg.det(rot) < 0:  # P was given with a negative overall scale
        rot = -rot
        scale = -scale
    t = np.linalg.solve(k, p[:, 3] / scale)  # P / scale = K [R | t]
    c2w = np.concatenate([rot.T, (-rot.T @ t)[:, None]], axis=1)
    return k, c2w


def _list_images(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def indexed_images(folder: Path, has_camera: Callable[[int], bool]) -> List[Tuple[int, Path]]:
    """The images of ``folder`` with their view index i (the one of world_mat_i), in index order.
    When most names are numbers (000012.png, 12.png) and each has its camera (``has_camera``),
    the number is the index: a folder from which images were deleted keeps its pairing, and
    images named otherwise beside them (a stray preview.png) are left out with a warning. Else
    the position in name order."""
    images = _list_images(folder)
    numbered = [(int(p.stem), p) for p in images if re.fullmatch(r"[0-9]+", p.stem)]
    numbers = [i for i, _ in numbered]
    if 2 * len(numbered) > len(images) and len(set(numbers)) == len(numbers):
        if all(has_camera(i) for i in numbers):
            others = [p.name for p in images if not re.fullmatch(r"[0-9]+", p.stem)]
            if others:
                log.warning("'%s': left out %d image(s) whose name is not a view number, e.g. %s",
                            folder, len(others), others[:3])
            return sorted(numbered)
        log.warning("'%s': the image numbers are not the camera file's view numbers (no world_mat_%d for '%s'): "
                    "images take the cameras in name order", folder,
                    next(i for i in numbers if not has_camera(i)), next(p.name for i, p in numbered if not has_camera(i)))
    return list(enumerate(images))


def _first_folder(root: Path, configured: Optional[str], defaults: Tuple[str, ...]) -> Path:
    """root/configured, or the first of root/defaults that exists (the first when none does)."""
    if configured:
        return root / configured
    for name in defaults:
        if (root / name).is_dir():
            return root / name
    return root / defaults[0]


@register("dtu")
class DTUScene(CaptureScene):
    @dataclasses.dataclass
    class Config(CaptureConfig):
        # None: the first of cameras_sphere.npz, cameras.npz, cameras_large.npz that exists
        cameras_file: Optional[str] = None
        image_dir: Optional[str] = None  # None: image/, else images/
        mask_dir: Optional[str] = None  # None: mask/, else masks/
        # refuse intrinsics whose skew exceeds this fraction of fx (it is dropped)
        max_skew: float = checked(non_negative(), default=0.01)

    layout = LAYOUT

    def __init__(self, cfg: "DTUScene.Config", scene_radius: float = 1.0) -> None:
        super().__init__(cfg, scene_radius)
        root = self.root
        cam_path = self._cameras_path(root)
        source = str(cam_path)
        try:
            cams = np.load(cam_path)
            keys = set(cams.files)
        except Exception as err:
            raise DatasetError(f"cannot read camera file '{cam_path}': {err}") from err

        image_dir = _first_folder(root, cfg.image_dir, ("image", "images"))
        if not image_dir.is_dir():
            raise DatasetError(f"'{image_dir}' does not exist (expected {LAYOUT}; another folder: set dataset.image_dir)")
        indexed = indexed_images(image_dir, lambda i: f"world_mat_{i}" in keys)
        if not indexed:
            raise DatasetError(f"'{image_dir}' holds no images (expected {LAYOUT})")
        mask_dir = _first_folder(root, cfg.mask_dir, ("mask", "masks"))
        has_masks = mask_dir.is_dir() and cfg.use_masks
        mask_files = ListedFiles(mask_dir, IMAGE_EXTENSIONS)
        n_cameras = sum(1 for k in keys if k.startswith("world_mat_") and k[len("world_mat_"):].isdigit())
        if n_cameras > len(indexed):
            log.warning("%s holds %d cameras for %d images in '%s'", source, n_cameras, len(indexed), image_dir)

        # the normalization: one scale_mat for all views (NeuS writes the same one for each)
        if "scale_mat_0" not in keys:
            raise DatasetError(f"{source}: no 'scale_mat_0' (keys: {sorted(keys)[:8]}...; expected world_mat_i, scale_mat_i)")
        scale_mat = np.asarray(cams["scale_mat_0"], dtype=np.float64)
        for i, _ in indexed:
            key = f"scale_mat_{i}"
            if key in keys and not np.allclose(cams[key], scale_mat, rtol=1e-6, atol=1e-8):
                raise DatasetError(f"{source}: '{key}' differs from 'scale_mat_0'; one normalization is needed")
        if scale_mat.shape != (4, 4) or not np.all(np.isfinite(scale_mat)):
            raise DatasetError(f"{source}: 'scale_mat_0' must be a finite 4x4 matrix")
        try:
            check_similarity(scale_mat)
        except ValueError as err:
            raise DatasetError(f"{source}: 'scale_mat_0' is not a similarity transform: {err}") from err

        mask_missing, normalized = [], []
        for i, path in indexed:
            key = f"world_mat_{i}"
            if key not in keys:
                raise DatasetError(
                    f"{source}: no '{key}' for image '{path.name}' (view {i}; {len(indexed)} images in '{image_dir}', "
                    f"{n_cameras} cameras in the file)"
                )
            world = np.asarray(cams[key], dtype=np.float64)
            if world.shape not in ((4, 4), (3, 4)):
                raise DatasetError(f"{source}: '{key}' must be 3x4 or 4x4, got {world.shape}")
            if not np.all(np.isfinite(world)):
                raise DatasetError(f"{source}: '{key}' (camera pose at index [{i}]) contains NaN or inf")
            p = world[:3, :4] @ scale_mat
            try:
                k, c2w = decompose_projection(p)
            except DatasetError as err:
                raise DatasetError(f"{source}: '{key}': {err}") from err
            if abs(k[0, 1]) > cfg.max_skew * k[0, 0]:
                raise DatasetError(f"{source}: '{key}' has skew {k[0, 1]:.4g}; skewed pixels are not supported")
            width, height = image_size(path)
            cam = LensCamera(width, height, float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2]))
            mask_path = None
            if has_masks:
                mask_path = self._mask_path(mask_files, path, i)
                if mask_path is None:
                    mask_missing.append(path.name)
            self.views.append(CaptureView(path.name, path, transform_poses(scale_mat, c2w[None])[0], cam, mask_path))
            normalized.append(c2w)
        if mask_missing:
            raise DatasetError(f"'{mask_dir}' has no mask for image(s) {mask_missing[:5]} (named like the image or 000.png)")
        if not has_masks:
            log.warning("%s: no masks in '%s': training without masks", root, mask_dir)
        # the decomposed poses are in the normalized frame, the scene frame: scene -> world is scale_mat
        self.world_to_scene = invert_similarity(scale_mat)
        self._finish_setup(source, scene_to_world=scale_mat, c2w_scene=np.stack(normalized))

    def _cameras_path(self, root: Path) -> Path:
        names = [self.cfg.cameras_file] if self.cfg.cameras_file else list(CAMERA_FILES)
        for name in names:
            if (root / name).is_file():
                return root / name
        others = sorted(p.name for p in root.glob("*.npz"))
        hint = f"; it has {others[:4]}: set dataset.cameras_file" if others else ""
        raise DatasetError(f"'{root}' has no {' or '.join(names)} (expected {LAYOUT}{hint})")

    @staticmethod
    def _mask_path(mask_files: ListedFiles, image: Path, index: int) -> Optional[Path]:
        """The mask of view ``index`` (image ``image``) in the mask folder, any extension's case."""
        for stem in (image.stem, f"{index:03d}", f"{index:06d}", str(index)):
            found = mask_files.find(stem)
            if found is not None:
                return found
        return None

