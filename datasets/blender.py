"""NeRF-synthetic ("Blender") layout.

```
root/
  transforms_train.json   {"camera_angle_x": ..., "frames": [{"file_path": "./train/r_0",
  transforms_val.json                                          "transform_matrix": 4x4}, ...]}
  transforms_test.json    (fl_x, fl_y, cx, cy, w, h may replace camera_angle_x, globally or per frame)
  train/r_0.png ...       RGBA: alpha is the foreground mask
```
Poses are OpenGL camera-to-world matrices in the scene's world frame (z up); they are used as
the scene frame directly (``scene_to_world`` is the identity).
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Dict, Iterator, List, Literal, Optional, Tuple

import numpy as np
import torch

from datasets import register
from datasets.base import (
    LISTED_IMAGE_EXTENSIONS,
    DatasetError,
    ListedFiles,
    Scene,
    SceneSplit,
    Split,
    check_poses,
    image_size,
    mask_content,
    read_image,
    require_folder,
    resize_image,
    target_size,
    warn_small_images,
)
from datasets.cameras import opengl_to_opencv, orbit_poses, scale_intrinsics
from utils.config import at_least, checked, each, in_range, length, positive

LAYOUT = "the NeRF-synthetic layout: transforms_{train,val,test}.json beside the image folders"


@dataclasses.dataclass
class RayDataConfig:
    """Options every dataset shares: how rays are drawn and what backgrounds are used."""

    # draw each training batch from one random image instead of from all images
    batch_image_sampling: bool = False
    # DataLoader workers for val/test/predict images (training rays are drawn in-process)
    num_workers: int = checked(at_least(0), default=0)
    # background colour composited behind the foreground where alpha < 1
    train_background: Literal["white", "black", "random"] = "white"
    eval_background: Literal["white", "black"] = "white"
    # cameras rendered by --predict: an orbit around the scene centre
    n_predict_views: int = checked(at_least(1), default=60)
    # None: the training cameras' mean elevation
    predict_elevation_deg: Optional[float] = checked(in_range(-90, 90), default=None)
    # at most this many images per split (None: all); handy for quick runs
    max_images_val: Optional[int] = checked(at_least(1), default=None)
    max_images_test: Optional[int] = checked(at_least(1), default=None)
    # render and score the val and test images at 1/eval_downscale of their loaded size (each
    # image's ground truth area-averaged, its intrinsics scaled); the metrics files say the size
    eval_downscale: float = checked(at_least(1), default=1.0)
    # ... and further, one factor per split, until its largest image has at most this many pixels
    # (None: no cap). A CPU's test budget then covers every view of a capture of large photos.
    eval_max_pixels: Optional[int] = checked(at_least(1), default=None)


def image_size_problems(cfg: Any) -> Iterator[Tuple[str, str]]:
    """dataset.img_wh and dataset.img_downscale choose the same thing: at most one may be set."""
    if cfg.img_wh is not None and cfg.img_downscale is not None:
        yield "img_downscale", ("set either dataset.img_wh or dataset.img_downscale, not both (set the other to null, "
                                "e.g. dataset.img_wh=null; the preset may set one)")


@register("blender")
class BlenderScene(Scene):
    @dataclasses.dataclass
    class Config(RayDataConfig):
        root_dir: str = "???"
        img_wh: Optional[List[int]] = checked(length(2), each(at_least(1)), default=None)  # [width, height] to load at
        img_downscale: Optional[float] = checked(positive(), default=None)  # or a divisor of the stored size
        val_split: Literal["train", "val", "test"] = "val"
        test_split: Literal["train", "val", "test"] = "test"

        def check(self) -> Iterator[Tuple[str, str]]:
            yield from image_size_problems(self)

    def __init__(self, cfg: "BlenderScene.Config", scene_radius: float = 1.0) -> None:
        super().__init__(cfg, scene_radius)
        self.root = require_folder(cfg.root_dir, LAYOUT)
        self._files = ListedFiles(self.root, LISTED_IMAGE_EXTENSIONS)
        self._warned_small = False

    # -------------------------------------------------------------- reading
    def _meta(self, split: str) -> Dict[str, Any]:
        path = self.root / f"transforms_{split}.json"
        if not path.is_file():
            raise DatasetError(f"'{path}' does not exist (expected {LAYOUT})")
        try:
            meta = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise DatasetError(f"'{path}' is not valid JSON: {err}") from err
        if not isinstance(meta.get("frames"), list):
            raise DatasetError(f"'{path}' has no 'frames' list")
        meta["_path"] = path
        return meta

    @staticmethod
    def _intrinsics(meta: Dict[str, Any], frame: Dict[str, Any], width: int, height: int, source: str) -> torch.Tensor:
        def pick(key):
            return frame.get(key, meta.get(key))

        if pick("fl_x") is not None:
            fx = float(pick("fl_x"))
            fy = float(pick("fl_y") if pick("fl_y") is not None else fx)
            cx = float(pick("cx") if pick("cx") is not None else width / 2.0)
            cy = float(pick("cy") if pick("cy") is not None else height / 2.0)
            # intrinsics are given for the stored size (w, h); default to the image's
            sw = width / float(pick("w") or width)
            sh = height / float(pick("h") or height)
            return torch.tensor([fx * sw, fy * sh, cx * sw, cy * sh], dtype=torch.float32)
        if pick("camera_angle_x") is not None:
            fx = 0.5 * width / math.tan(0.5 * float(pick("camera_angle_x")))
            fy = fx
            if pick("camera_angle_y") is not None:
                fy = 0.5 * height / math.tan(0.5 * float(pick("camera_angle_y")))
            return torch.tensor([fx, fy, width / 2.0, height / 2.0], dtype=torch.float32)
        raise DatasetError(f"{source}: no intrinsics: expected 'camera_angle_x' or 'fl_x' (and optionally fl_y, cx, cy)")

    def _image_path(self, frame: Dict[str, Any], source: str, index: int) -> Path:
        if "file_path" not in frame:
            raise DatasetError(f"{source}: frame {index} has no 'file_path'")
        rel = str(frame["file_path"])
        found = self._files.find(rel)
        return found if found is not None else self.root / rel.replace("\\", "/")  # read_image names it

    def _load_frames(self, split: str) -> SceneSplit:
        meta = self._meta(split)
        source = str(meta["_path"])
        frames = meta["frames"]
        if not frames:
            raise DatasetError(f"{source}: 'frames' is empty: no usable images")
        rgbs, alphas, poses, intrinsics, names, resized = [], [], [], [], [], []
        no_alpha = []
        for index, frame in enumerate(frames):
            if "transform_matrix" not in frame:
                raise DatasetError(f"{source}: frame {index} has no 'transform_matrix'")
            matrix = torch.tensor(frame["transform_matrix"], dtype=torch.float32)
            if matrix.shape != (4, 4):
                raise DatasetError(f"{source}: frame {index} 'transform_matrix' must be 4x4")
            path = self._image_path(frame, source, index)
            img = read_image(path)
            # each image at its own size, with its own intrinsics (per-frame w/h/fl_x/... or the global ones)
            stored_w, stored_h = img.shape[1], img.shape[0]
            w, h = target_size(stored_w, stored_h, self.cfg.img_wh, self.cfg.img_downscale, f"image '{path}'")
            resized.append((str(path), (stored_w, stored_h), (w, h)))
            img = resize_image(img, w, h)
            k = self._intrinsics(meta, frame, stored_w, stored_h, source)
            intrinsics.append(scale_intrinsics(k, w / stored_w, h / stored_h))
            if img.shape[2] == 4:
                alphas.append(img[..., 3])
            else:
                no_alpha.append(path.name)
                alphas.append(np.ones(img.shape[:2], dtype=np.float32))
            rgbs.append(img[..., :3] if img.shape[2] >= 3 else np.repeat(img, 3, axis=2))
            poses.append(matrix[:3, :4])
            names.append(path.name)
        if not self._warned_small:
            self._warned_small = warn_small_images(resized, self.cfg)
        c2w = check_poses(opengl_to_opencv(torch.stack(poses)), source)
        has_mask, mask_info = self._mask_status(alphas, no_alpha, len(frames), source)
        return SceneSplit.from_images(c2w, torch.stack(intrinsics), rgbs, alphas, has_mask, names, mask_info)

    @staticmethod
    def _mask_status(alphas, no_alpha, n: int, source: str):
        """(has_mask, what the masks are) of a split's alpha channels."""
        if no_alpha:
            if len(no_alpha) == n:
                return False, f"the images of {source} have no alpha channel (e.g. '{no_alpha[0]}')"
            return False, f"{len(no_alpha)} of the {n} images of {source} have no alpha channel (e.g. '{no_alpha[0]}')"
        content = mask_content(alphas)
        if content != "varied":
            return False, f"the alpha channel of every image of {source} is {content}"
        return True, f"the alpha channels of the images of {source}"

    def _predict_split(self) -> SceneSplit:
        """An orbit at the training cameras' mean distance and elevation, around the origin, z up."""
        train = self._meta("train")
        source = str(train["_path"])
        positions = torch.tensor([f["transform_matrix"] for f in train["frames"]], dtype=torch.float32)[:, :3, 3]
        positions = check_poses(positions, source)
        radius = float(positions.norm(dim=-1).mean())
        elevation = self.cfg.predict_elevation_deg
        if elevation is None:
            elevation = float(torch.rad2deg(torch.asin((positions[:, 2] / positions.norm(dim=-1)).clamp(-1, 1))).mean())
        k, w, h = self._load_frames_head(train, source)
        c2w = orbit_poses(self.cfg.n_predict_views, radius, elevation, up=(0.0, 0.0, 1.0))
        return SceneSplit(
            c2w=c2w,
            intrinsics=k.expand(len(c2w), 4).clone(),
            sizes=torch.tensor([[h, w]]).expand(len(c2w), 2),
            names=[f"orbit_{i:03d}" for i in range(len(c2w))],
        )

    def _load_frames_head(self, meta: Dict[str, Any], source: str):
        """Intrinsics and size of the first frame, without loading the whole split."""
        path = self._image_path(meta["frames"][0], source, 0)
        img = read_image(path)
        stored_w, stored_h = img.shape[1], img.shape[0]
        w, h = target_size(stored_w, stored_h, self.cfg.img_wh, self.cfg.img_downscale, f"image '{path}'")
        k = self._intrinsics(meta, meta["frames"][0], stored_w, stored_h, source)
        return scale_intrinsics(k, w / stored_w, h / stored_h), w, h

    def setup_overview(self):
        """The cameras of the train, val and test files (train marked) at their loaded sizes, read
        from the JSON and the image headers; the photos as loaded; for datasets.scene_setup."""
        from datasets.scene_setup import SceneOverview

        c2w, intrinsics, sizes, is_train, names, paths = [], [], [], [], [], []
        for split in dict.fromkeys(["train", self.cfg.val_split, self.cfg.test_split]):
            meta = self._meta(split)
            source = str(meta["_path"])
            for index, frame in enumerate(meta["frames"]):
                path = self._image_path(frame, source, index)
                stored_w, stored_h = image_size(path)
                w, h = target_size(stored_w, stored_h, self.cfg.img_wh, self.cfg.img_downscale, f"image '{path}'")
                k = self._intrinsics(meta, frame, stored_w, stored_h, source)
                intrinsics.append(scale_intrinsics(k, w / stored_w, h / stored_h).double().numpy())
                c2w.append(opengl_to_opencv(torch.tensor(frame["transform_matrix"], dtype=torch.float64))[:3].numpy())
                sizes.append((h, w))
                is_train.append(split == "train")
                names.append(f"{split}/{path.name}")
                paths.append(path)

        def load_image(i: int) -> np.ndarray:
            img = resize_image(read_image(paths[i]), sizes[i][1], sizes[i][0])
            rgb = img[..., :3] if img.shape[2] >= 3 else np.repeat(img[..., :1], 3, axis=2)
            return rgb * img[..., 3:] + (1.0 - img[..., 3:]) if img.shape[2] == 4 else rgb  # over white

        points, label = self.surface_points()
        return SceneOverview(c2w=np.stack(c2w), intrinsics=np.stack(intrinsics), sizes=np.array(sizes),
                             is_train=np.array(is_train), radius=self.scene_radius, names=names, points=points,
                             load_image=load_image, points_label=label)

    def surface_points(self):
        """(points [P, 3] on the scene's surface to draw, what they are): none for a Blender scene."""
        return None, "points"

    def load_split(self, split: Split) -> SceneSplit:
        if split == "predict":
            return self._predict_split()
        name = {"train": "train", "val": self.cfg.val_split, "test": self.cfg.test_split}[split]
        out = self._load_frames(name)
        limit = {"val": self.cfg.max_images_val, "test": self.cfg.max_images_test}.get(split)
        if limit is not None and limit < len(out):
            out = out.take(torch.linspace(0, len(out) - 1, limit).round().long())
        return out
