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
    DatasetError,
    Scene,
    SceneSplit,
    Split,
    check_poses,
    read_image,
    require_folder,
    resize_image,
    resolve_inside,
    target_size,
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
        path = resolve_inside(self.root, rel, source)
        if path.suffix == "" or not path.is_file():
            for ext in (".png", ".jpg", ".jpeg", ".exr"):
                candidate = path.with_name(path.name + ext)
                if candidate.is_file():
                    return candidate
        return path

    def _load_frames(self, split: str) -> SceneSplit:
        meta = self._meta(split)
        source = str(meta["_path"])
        frames = meta["frames"]
        if not frames:
            raise DatasetError(f"{source}: 'frames' is empty: no usable images")
        rgbs, alphas, poses, intrinsics, names = [], [], [], [], []
        size = None
        has_alpha = False
        for index, frame in enumerate(frames):
            if "transform_matrix" not in frame:
                raise DatasetError(f"{source}: frame {index} has no 'transform_matrix'")
            matrix = torch.tensor(frame["transform_matrix"], dtype=torch.float32)
            if matrix.shape != (4, 4):
                raise DatasetError(f"{source}: frame {index} 'transform_matrix' must be 4x4")
            path = self._image_path(frame, source, index)
            img = read_image(path)
            if size is None:
                size = (img.shape[1], img.shape[0])
            elif (img.shape[1], img.shape[0]) != size:
                raise DatasetError(
                    f"image '{path}' is {img.shape[1]}x{img.shape[0]} but earlier images of {source} are {size[0]}x{size[1]}"
                )
            stored_w, stored_h = size
            w, h = target_size(stored_w, stored_h, self.cfg.img_wh, self.cfg.img_downscale, source)
            img = resize_image(img, w, h)
            k = self._intrinsics(meta, frame, stored_w, stored_h, source)
            intrinsics.append(scale_intrinsics(k, w / stored_w, h / stored_h))
            if img.shape[2] == 4:
                has_alpha = True
                alphas.append(img[..., 3])
            else:
                alphas.append(np.ones(img.shape[:2], dtype=np.float32))
            rgbs.append(img[..., :3] if img.shape[2] >= 3 else np.repeat(img, 3, axis=2))
            poses.append(matrix[:3, :4])
            names.append(path.name)
        c2w = check_poses(opengl_to_opencv(torch.stack(poses)), source)
        return SceneSplit(
            c2w=c2w,
            intrinsics=torch.stack(intrinsics),
            width=w,
            height=h,
            rgb=torch.from_numpy(np.stack(rgbs)),
            alpha=torch.from_numpy(np.stack(alphas)),
            has_mask=has_alpha,
            names=names,
        )

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
        first = self._load_frames_head(train, source)
        c2w = orbit_poses(self.cfg.n_predict_views, radius, elevation, up=(0.0, 0.0, 1.0))
        return SceneSplit(
            c2w=c2w,
            intrinsics=first[0].expand(len(c2w), 4).clone(),
            width=first[1],
            height=first[2],
            names=[f"orbit_{i:03d}" for i in range(len(c2w))],
        )

    def _load_frames_head(self, meta: Dict[str, Any], source: str):
        """Intrinsics and size of the first frame, without loading the whole split."""
        path = self._image_path(meta["frames"][0], source, 0)
        img = read_image(path)
        stored_w, stored_h = img.shape[1], img.shape[0]
        w, h = target_size(stored_w, stored_h, self.cfg.img_wh, self.cfg.img_downscale, source)
        k = self._intrinsics(meta, meta["frames"][0], stored_w, stored_h, source)
        return scale_intrinsics(k, w / stored_w, h / stored_h), w, h

    def load_split(self, split: Split) -> SceneSplit:
        if split == "predict":
            return self._predict_split()
        name = {"train": "train", "val": self.cfg.val_split, "test": self.cfg.test_split}[split]
        out = self._load_frames(name)
        limit = {"val": self.cfg.max_images_val, "test": self.cfg.max_images_test}.get(split)
        if limit is not None and limit < len(out):
            out = take_views(out, torch.linspace(0, len(out) - 1, limit).round().long())
        return out


def take_views(split: SceneSplit, index: torch.Tensor) -> SceneSplit:
    """A SceneSplit holding only the views at ``index``."""
    return SceneSplit(
        c2w=split.c2w[index],
        intrinsics=split.intrinsics[index],
        width=split.width,
        height=split.height,
        rgb=None if split.rgb is None else split.rgb[index],
        alpha=None if split.alpha is None else split.alpha[index],
        has_mask=split.has_mask,
        names=[split.names[i] for i in index.tolist()] if split.names else [],
    )
