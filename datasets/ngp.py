"""The instant-ngp / nerfstudio layout: one ``transforms.json``.

```
root/
  transforms.json   {"fl_x", "fl_y", "cx", "cy", "w", "h",              (or "camera_angle_x" [, "camera_angle_y"])
                     "k1", "k2", "p1", "p2" [, "k3", "k4"],            optional OpenCV distortion
                     "camera_model": "OPENCV" | "OPENCV_FISHEYE" | ...  optional (nerfstudio); "is_fisheye" (instant-ngp)
                     "aabb_scale": 4,                                   optional, recorded only
                     "frames": [{"file_path": "images/0001.jpg",        relative to the JSON file
                                 "transform_matrix": 4x4,                camera-to-world, OpenGL axes
                                 "mask_path": "masks/0001.png", ...}]}   optional: black = pixels to leave out
                                                                        (nerfstudio; dataset.mask_meaning);
                                                                        any of the intrinsics above may
                                                                        also be set per frame
  images/...
```
Poses use the OpenGL/Blender camera axes (x right, y up, z backward) and are converted to OpenCV.
Frames whose image file is missing are skipped with one warning that counts them. Images are
undistorted with OpenCV; the scene is normalized from the cameras (``dataset.normalization``), or,
when it asks for the object's box, from sparse points triangulated from the images with the given
poses (``datasets/triangulation.py``; the file has none).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any, Dict, Literal, Tuple

import numpy as np

from datasets import register
from datasets.base import LISTED_IMAGE_EXTENSIONS, DatasetError, ListedFiles, changes_aspect, image_size
from datasets.captures import CaptureConfig, CaptureScene, CaptureView
from datasets.normalization import NormalizationConfig
from datasets.undistort import LensCamera, from_opencv_params

log = logging.getLogger(__name__)

LAYOUT = "the instant-ngp/nerfstudio layout: transforms.json beside the images it names"
PINHOLE_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL")


def _number(value: Any, key: str, source: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise DatasetError(f"{source}: '{key}' must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise DatasetError(f"{source}: '{key}' is not finite ({value!r})")
    return out


@register("ngp")
class NgpScene(CaptureScene):
    @dataclasses.dataclass
    class Config(CaptureConfig):
        transforms_file: str = "transforms.json"
        # what a frame's mask_path marks: 'ignore' (nerfstudio's meaning: black pixels are left out
        # of training, e.g. a passer-by) or 'foreground' (black is background, as DTU's masks)
        mask_meaning: Literal["ignore", "foreground"] = "ignore"
        normalization: NormalizationConfig = dataclasses.field(default_factory=NormalizationConfig)

    layout = LAYOUT

    def __init__(self, cfg: "NgpScene.Config", scene_radius: float = 1.0) -> None:
        super().__init__(cfg, scene_radius)
        root = self.root
        path = root / cfg.transforms_file
        if not path.is_file():
            hint = ""
            if (root / "transforms_train.json").is_file():
                hint = ("; it has transforms_train.json: the NeRF-synthetic layout (dataset.name=blender, as in "
                        "configs/neus-blender.yaml), or set dataset.transforms_file=transforms_train.json")
            raise DatasetError(f"'{path}' does not exist (expected {LAYOUT}{hint})")
        source = str(path)
        try:
            meta = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DatasetError(f"'{path}' is not valid JSON: {err}") from err
        if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
            raise DatasetError(f"'{path}' has no 'frames' list")
        if not meta["frames"]:
            raise DatasetError(f"{source}: 'frames' is empty: no usable images")
        self.aabb_scale = meta.get("aabb_scale")
        base = path.parent

        lenses: Dict[Tuple, LensCamera] = {}
        missing = []
        files = ListedFiles(base, LISTED_IMAGE_EXTENSIONS)
        if cfg.use_masks and any(isinstance(f, dict) and f.get("mask_path") for f in meta["frames"]):
            what = ("pixels to leave out of training where black (nerfstudio's meaning; for foreground masks set "
                    "dataset.mask_meaning=foreground)" if cfg.mask_meaning == "ignore" else
                    "the foreground (dataset.mask_meaning=foreground: black is background)")
            log.info("%s: the frames' mask_path masks mark %s", source, what)
        for index, frame in enumerate(meta["frames"]):
            if not isinstance(frame, dict):
                raise DatasetError(f"{source}: frame {index} is not a mapping")
            if "file_path" not in frame:
                raise DatasetError(f"{source}: frame {index} has no 'file_path'")
            if "transform_matrix" not in frame:
                raise DatasetError(f"{source}: frame {index} has no 'transform_matrix'")
            try:
                matrix = np.asarray(frame["transform_matrix"], dtype=np.float64)
            except (TypeError, ValueError):
                raise DatasetError(f"{source}: frame {index} 'transform_matrix' is not a 4x4 number matrix") from None
            if matrix.shape not in ((4, 4), (3, 4)):
                raise DatasetError(f"{source}: frame {index} 'transform_matrix' must be 4x4, got {matrix.shape}")
            if not np.all(np.isfinite(matrix)):
                raise DatasetError(f"{source}: frame {index} 'transform_matrix' (camera pose at index [{index}]) contains NaN or inf")
            image_path = files.find(str(frame["file_path"]))
            if image_path is None:
                missing.append(str(frame["file_path"]))
                continue
            lens = self._lens(meta, frame, image_path, source, index, lenses)
            c2w = matrix[:3, :4].copy()
            c2w[:, 1:3] *= -1  # OpenGL -> OpenCV camera axes
            mask_path = None
            if frame.get("mask_path") and cfg.use_masks:
                mask_path = files.find(str(frame["mask_path"]))
                if mask_path is None:
                    raise DatasetError(f"{source}: frame {index} 'mask_path' '{frame['mask_path']}' does not exist "
                                       f"(relative to '{base}'; or set dataset.use_masks=false)")
            self.views.append(CaptureView(image_path.name, image_path, c2w, lens, mask_path,
                                          mask_ignores=cfg.mask_meaning == "ignore"))
        if missing:
            if not self.views:
                raise DatasetError(
                    f"{source}: none of the {len(missing)} frames' images exist (e.g. '{missing[0]}' "
                    f"relative to '{base}')"
                )
            log.warning(
                "%s: skipped %d of %d frames whose image is missing (e.g. '%s')",
                source, len(missing), len(meta["frames"]), missing[0],
            )
        self.n_skipped = len(missing)
        self._normalize(cfg.normalization, source)
        self._finish_setup(source)

    @staticmethod
    def _lens(meta, frame, image_path: Path, source: str, index: int, cache) -> LensCamera:
        def pick(key, default=None):
            value = frame.get(key, meta.get(key, default))
            return default if value is None else value

        width, height = image_size(image_path)
        stored_w = _number(pick("w", width), "w", source)
        stored_h = _number(pick("h", height), "h", source)
        # intrinsics are given for the stored size (w, h); the image may have been resized since
        sx, sy = width / stored_w, height / stored_h
        if changes_aspect(sx, sy):
            raise DatasetError(
                f"{source}: frame {index} says w={stored_w:g}, h={stored_h:g} but its image '{image_path}' is "
                f"{width}x{height}, another aspect ratio (rotated or cropped since?): fix 'w'/'h' or the image"
            )
        # a frame's own focal length wins over the file's, whichever way each is given
        per_frame = "fl_x" in frame or "camera_angle_x" in frame
        use_focal = frame.get("fl_x") is not None if per_frame else meta.get("fl_x") is not None
        if use_focal:
            fx = _number(pick("fl_x"), "fl_x", source)
            fy = _number(pick("fl_y", fx), "fl_y", source)
        elif pick("camera_angle_x") is not None:
            angle_x = _number(pick("camera_angle_x"), "camera_angle_x", source)
            fx = 0.5 * stored_w / math.tan(0.5 * angle_x)
            fy = fx
            if pick("camera_angle_y") is not None:
                fy = 0.5 * stored_h / math.tan(0.5 * _number(pick("camera_angle_y"), "camera_angle_y", source))
        else:
            raise DatasetError(
                f"{source}: frame {index} has no intrinsics: expected 'fl_x' (and optionally fl_y, cx, cy, w, h) "
                "or 'camera_angle_x', globally or per frame"
            )
        cx = _number(pick("cx", stored_w / 2.0), "cx", source)
        cy = _number(pick("cy", stored_h / 2.0), "cy", source)
        if fx <= 0 or fy <= 0:
            raise DatasetError(f"{source}: frame {index} has a non-positive focal length ({fx}, {fy})")
        coeffs = {k: _number(pick(k, 0.0), k, source) for k in ("k1", "k2", "k3", "k4", "p1", "p2")}
        model = str(pick("camera_model", "OPENCV_FISHEYE" if pick("is_fisheye", False) else "OPENCV"))
        if model not in PINHOLE_MODELS + ("OPENCV_FISHEYE",):
            raise DatasetError(f"{source}: 'camera_model' {model!r} is not supported (OPENCV, OPENCV_FISHEYE, PINHOLE)")
        fisheye = model == "OPENCV_FISHEYE"
        if not fisheye and coeffs["k4"] != 0:
            raise DatasetError(f"{source}: 'k4' is set but the camera is not a fisheye (camera_model OPENCV_FISHEYE)")
        key = (width, height, fx * sx, fy * sy, cx * sx, cy * sy, fisheye, *coeffs.values())
        if key not in cache:
            cache[key] = from_opencv_params(width, height, fx * sx, fy * sy, cx * sx, cy * sy, fisheye=fisheye, **coeffs)
        return cache[key]
