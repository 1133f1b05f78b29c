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

import copy
import dataclasses
import logging
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np

from datasets import register
from datasets.base import DatasetError, ListedFiles, changes_aspect, image_size
from datasets.captures import CaptureConfig, CaptureScene, CaptureView
from datasets.normalization import NormalizationConfig
from datasets.undistort import from_colmap

log = logging.getLogger(__name__)

LAYOUT = "the COLMAP layout: images/ and sparse/0/ with cameras, images, points3D (.bin or .txt)"
MODEL_FILES = ("cameras", "images", "points3D")
PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")  # compared in lower case


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


def is_model_dir(folder: Path) -> bool:
    """Whether ``folder`` holds a COLMAP model (cameras, images, points3D, all .bin or all .txt)."""
    return any(all((folder / f"{n}{ext}").is_file() for n in MODEL_FILES) for ext in (".bin", ".txt"))


def registered_count(folder: Path) -> int:
    """How many images the model in ``folder`` registers (from images.bin's header, or images.txt)."""
    binary = folder / "images.bin"
    if binary.is_file():
        with binary.open("rb") as f:
            return int(np.frombuffer(f.read(8), dtype="<u8")[0]) if binary.stat().st_size >= 8 else 0
    count, pending = 0, False
    for line in (folder / "images.txt").read_text(errors="replace").splitlines():
        if pending:  # as COLMAP reads it: the line after an image's is its POINTS2D, empty or not
            count, pending = count + 1, False
        elif line.strip() and not line.lstrip().startswith("#"):
            pending = True
    return count  # an image line with no line after it is dropped, as COLMAP's reader does


def find_model_dir(root: Path, sparse_dir: Optional[str]) -> Path:
    """The folder holding the COLMAP model: ``root/sparse_dir`` when set; else (None) the largest
    of sparse/<N> (the mapper numbers its models in the order it starts them, not by size: a
    warning names the others), else sparse/ itself, else nerfstudio's colmap/sparse/<N>."""
    if sparse_dir is not None:
        if is_model_dir(root / sparse_dir):
            return root / sparse_dir
        raise DatasetError(f"dataset.sparse_dir: no COLMAP model in '{root / sparse_dir}': expected cameras, "
                           f"images and points3D as .bin or .txt ({LAYOUT})")
    for parent in (root / "sparse", root / "colmap" / "sparse"):
        numbered = sorted((p for p in parent.glob("*") if re.fullmatch(r"[0-9]+", p.name) and is_model_dir(p)),
                          key=lambda p: int(p.name)) if parent.is_dir() else []
        if numbered:
            counts = [registered_count(p) for p in numbered]
            best = numbered[int(np.argmax(counts))]  # the first of the largest
            if len(numbered) > 1:
                log.warning("%s holds %d COLMAP models (%s): using '%s', the one with the most registered images; "
                            "set dataset.sparse_dir for another", parent, len(numbered),
                            ", ".join(f"{p.name}: {c} images" for p, c in zip(numbered, counts)),
                            best.relative_to(root))
            log.info("COLMAP model: '%s'", best)
            return best
        if is_model_dir(parent):
            return parent
    elsewhere = [p for p in (root / "distorted" / "sparse" / "0",) if is_model_dir(p)]
    hint = (f"; there is one in '{elsewhere[0]}': set dataset.sparse_dir={elsewhere[0].relative_to(root)} "
            "(and dataset.images_dir to the photos it was made from)") if elsewhere else ""
    raise DatasetError(
        f"no COLMAP model in '{root / 'sparse/0'}', another sparse/<N>, '{root / 'sparse'}' or colmap/sparse/<N>: "
        "expected cameras, "
        f"images and points3D as .bin or .txt ({LAYOUT}){hint}"
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
        sparse_dir: Optional[str] = None  # None: the largest model in sparse/<N>, sparse/ or colmap/sparse/<N>
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
        masks = ListedFiles(masks_dir, (".png",))

        lenses = {}
        missing, no_mask = [], []
        for image_id in sorted(recon.images.keys()):
            image = recon.images[image_id]
            if not image_has_pose(image):
                continue
            path = images_dir / image.name
            if not path.is_file():
                missing.append(image.name)
                continue
            if image.camera_id not in lenses:
                if image.camera_id not in recon.cameras:
                    raise DatasetError(f"{source}: image '{image.name}' names camera {image.camera_id}, which is missing")
                camera = self._camera_for_stored_size(recon.cameras[image.camera_id], path, source)
                lenses[image.camera_id] = from_colmap(camera, source)
            w2c = cam_from_world_matrix(image)
            c2w = np.concatenate([w2c[:, :3].T, (-w2c[:, :3].T @ w2c[:, 3])[:, None]], axis=1)
            mask_path = self._mask_path(masks, image.name) if use_masks else None
            if use_masks and mask_path is None:
                no_mask.append(image.name)
            self.views.append(CaptureView(image.name, path, c2w, lenses[image.camera_id], mask_path))
        if missing and not self.views:
            raise DatasetError(
                f"{source} lists {len(missing)} image(s), none of them in '{images_dir}' (e.g. {missing[:3]}; "
                "another folder: set dataset.images_dir)"
            )
        if missing:
            log.warning("%s: skipped %d registered image(s) missing from '%s', e.g. %s",
                        source, len(missing), images_dir, missing[:3])
        if no_mask:
            raise DatasetError(f"'{masks_dir}' has no mask for {len(no_mask)} image(s), e.g. {no_mask[:3]}")
        if not self.views:
            raise DatasetError(f"{source} has no registered images")
        self._report_registration(images_dir, source)
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

    def _report_registration(self, images_dir: Path, source: str) -> None:
        """Log how many of the photos in ``images_dir`` the model registers; warn when fewer than
        half (a partial reconstruction, or a text model whose images.txt lacks the POINTS2D lines)."""
        nested = any("/" in v.name for v in self.views)  # photos in sub-folders: count those too
        listing = images_dir.rglob("*") if nested else images_dir.iterdir()
        photos = sum(1 for p in listing if p.suffix.lower() in PHOTO_EXTENSIONS and p.is_file())
        n = len(self.views)
        if photos > n:
            # every second pose line taken for a POINTS2D line registers about half the photos
            halved = (Path(source) / "images.txt").is_file() and abs(2 * n - photos) <= 1
            hint = (" (in a hand-written images.txt every image needs two lines: the second, its POINTS2D, may "
                    "be empty)") if halved else ""
            report = log.warning if n < 0.8 * photos else log.info
            report("%s registers %d of the %d photos in '%s': the other %d are left out%s",
                   source, n, photos, images_dir, photos - n, hint)
        else:
            log.info("%s: %d of the %d photos in '%s' registered", source, n, photos, images_dir)

    @staticmethod
    def _camera_for_stored_size(camera: Any, photo: Path, source: str) -> Any:
        """``camera`` for its photos as stored: COLMAP's camera when they have its size, else the
        camera rescaled to theirs when they keep its aspect ratio (a downscaled copy such as
        images_2/, as mip-NeRF 360 and 3DGS captures ship), else an error."""
        width, height = image_size(photo)
        if (width, height) == (int(camera.width), int(camera.height)):
            return camera
        sx, sy = width / float(camera.width), height / float(camera.height)
        if changes_aspect(sx, sy):
            raise DatasetError(
                f"image '{photo}' is {width}x{height} but its camera {camera.camera_id} in {source} is "
                f"{camera.width}x{camera.height}, another aspect ratio (cropped or rotated since?)"
            )
        scaled = copy.deepcopy(camera)
        scaled.rescale(width, height)
        log.info("%s: camera %d rescaled from %dx%d to the photos' %dx%d ('%s')", source, camera.camera_id,
                 camera.width, camera.height, width, height, photo.parent.name)
        return scaled

    @staticmethod
    def _mask_path(masks: ListedFiles, name: str) -> Optional[Path]:
        """The mask of image ``name``: NAME.png, NAME with .png for its extension, or NAME (any case)."""
        for candidate in (f"{name}.png", str(Path(name).with_suffix(".png")), name):
            found = masks.find(candidate)
            if found is not None:
                return found
        return None
