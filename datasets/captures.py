"""What the real-capture loaders (dtu, colmap, ngp) share.

A loader reads its camera file in ``__init__`` into ``CaptureView``s (image path, optional mask
path, OpenCV camera-to-world pose in the input's *world* frame, lens), computes the world -> scene
normalization (so ``scene_to_world`` is known before any image is read), and reads, undistorts and
resizes the images only when a split is first asked for (each image once, then cached).

Splits: with ``holdout_every: N > 0`` every N-th view is held out of training and used for val and
test; with 0 all views train, and val/test are views spread evenly over them (at most
``max_images_val`` / ``max_images_test``). ``predict`` is an orbit around the scene centre at the
training cameras' median distance and mean elevation (up: the scene's +z when the normalization
turned up onto +z, else the cameras' mean up vector).
"""
from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from datasets.base import (
    DatasetError,
    Scene,
    SceneSplit,
    Split,
    changes_aspect,
    check_poses,
    mask_content,
    read_image,
    require_folder,
    resize_image,
    target_size,
    warn_small_images,
)
from datasets.blender import RayDataConfig, image_size_problems
from datasets.cameras import orbit_poses, scale_intrinsics
from datasets.normalization import (
    NormalizationConfig,
    SupportPlane,
    camera_up,
    frame_scene,
    invert_similarity,
    mean_elevation_deg,
    needs_points,
    transform_points,
    transform_poses,
)
from datasets.triangulation import points_for_framing
from datasets.undistort import LensCamera
from utils.config import at_least, checked, each, length, positive, rule

log = logging.getLogger(__name__)


@dataclasses.dataclass
class CaptureConfig(RayDataConfig):
    """Options every capture loader shares (besides RayDataConfig's)."""

    root_dir: str = "???"
    img_wh: Optional[List[int]] = checked(length(2), each(at_least(1)), default=None)  # [width, height] to load at
    img_downscale: Optional[float] = checked(positive(), default=None)  # or a divisor of the stored size
    # 0: train on every view, validate/test on views spread over them; N: hold out every N-th view
    holdout_every: int = checked(rule(lambda v: v == 0 or v >= 2, "must be 0 (none) or >= 2 (1 leaves no view to train on)"),
                                 default=0)
    use_masks: bool = True  # read the layout's masks when it has them
    max_images_val: Optional[int] = checked(at_least(1), default=4)
    max_images_test: Optional[int] = checked(at_least(1), default=None)

    def check(self) -> Iterator[Tuple[str, str]]:
        yield from image_size_problems(self)


@dataclasses.dataclass
class CaptureView:
    """One view: where its image (and mask) is, its pose c2w [3, 4] (OpenCV, world) and its lens."""

    name: str
    image_path: Path
    c2w: np.ndarray
    camera: LensCamera
    mask_path: Optional[Path] = None
    # the mask marks pixels to leave out of training (black), as nerfstudio's masks do, instead of
    # the foreground
    mask_ignores: bool = False


def read_mask(path: Path) -> np.ndarray:
    """A mask image (grey, RGB or RGBA) as float32 [H, W, 1] in [0, 1]: the mean of its colour channels
    (or its alpha, when it has one). A mask stored as the integers 0 and 1 (numpy's
    ``mask.astype(np.uint8)``, common in home-made preprocessing) reads as 0 and 1, not 0 and 1/255."""
    img = read_image(path)
    if img.shape[2] == 4:
        mask = img[..., 3:4]
    else:
        mask = img[..., :3].mean(axis=2, keepdims=True) if img.shape[2] >= 3 else img[..., :1]
    top = float(mask.max()) if mask.size else 0.0
    lossless = path.suffix.lower() not in (".jpg", ".jpeg")  # a JPEG's 0/1 would blur into 0, 1, 2, ...
    integer_one = any(math.isclose(top, 1.0 / m, rel_tol=1e-5) for m in (255.0, 65535.0))  # 8 or 16 bits
    if lossless and integer_one and bool(np.all((mask == 0) | (mask == top))):
        mask = mask / top
    return mask


class CaptureScene(Scene):
    """Base of the capture loaders: ``__init__`` checks that ``cfg.root_dir`` is a folder (into
    ``self.root``, errors naming ``layout``); subclasses then set ``views`` (and ``points_world``
    when the layout has points), call ``_normalize`` (or set ``world_to_scene`` themselves, as DTU
    does) and ``_finish_setup``."""

    layout: str = ""
    #: sparse points [P, 3] in world coordinates (COLMAP's points3D), when the layout has them
    points_world: Optional[np.ndarray] = None
    #: their colours [P, 3] uint8, when known
    points_rgb: Optional[np.ndarray] = None

    def __init__(self, cfg, scene_radius: float = 1.0) -> None:
        super().__init__(cfg, scene_radius)
        self.root = require_folder(cfg.root_dir, self.layout)
        self.views: List[CaptureView] = []
        self.world_to_scene = np.eye(4)
        self._images: Dict[int, Tuple[np.ndarray, np.ndarray, bool]] = {}
        self._sizes: Dict[int, Tuple[int, int]] = {}
        self._warned_mask_resize = False
        #: whether the normalization turned the scene's up direction onto +z
        self.up_is_z = False
        #: the floor or wall the scene box was cut at (scene frame), for the set-up picture
        self.support_plane: Optional[SupportPlane] = None

    # -------------------------------------------------------------- set-up
    def _normalize(self, cfg: NormalizationConfig, source: str) -> None:
        """Set ``world_to_scene`` (and ``up_is_z``) from the views and the sparse points
        (``points_world``), triangulated from the images first when the layout has none and
        ``cfg`` needs them."""
        if self.points_world is None:
            self.points_world, self.points_rgb = points_for_framing(self.views, needs_points(cfg), source)
        lenses = [v.camera for v in self.views]
        framing = frame_scene(
            np.stack([v.c2w for v in self.views]), self.points_world, cfg, source, radius=self.scene_radius,
            intrinsics=np.stack([lens.intrinsics for lens in lenses]),
            sizes=np.array([(lens.height, lens.width) for lens in lenses]),
        )
        self.world_to_scene, self.support_plane = framing.world_to_scene, framing.plane
        self.up_is_z = cfg.up != "none"

    def _finish_setup(
        self, source: str, scene_to_world: Optional[np.ndarray] = None, c2w_scene: Optional[np.ndarray] = None
    ) -> None:
        """Check the views, set ``scene_to_world`` and the scene-frame poses, and choose the splits.
        ``scene_to_world`` / ``c2w_scene`` may be given exactly when the loader has them."""
        if not self.views:
            raise DatasetError(f"{source}: no usable views")
        c2w = np.stack([v.c2w for v in self.views])
        check_poses(torch.from_numpy(c2w), source)
        m = np.asarray(self.world_to_scene, dtype=np.float64)
        if not np.all(np.isfinite(m)):
            raise DatasetError(f"{source}: the scene normalization is not finite")
        # float32 like the base class's identity (its entries are exact to ~1e-7 relative)
        self.scene_to_world = torch.from_numpy(invert_similarity(m) if scene_to_world is None else scene_to_world).float()
        self.c2w_scene = transform_poses(m, c2w) if c2w_scene is None else c2w_scene
        self.source = source
        n = len(self.views)
        warn_small_images([(str(v.image_path), (v.camera.width, v.camera.height), self.loaded_size(i))
                           for i, v in enumerate(self.views)], self.cfg)
        every = self.cfg.holdout_every
        if every < 0:
            raise DatasetError(f"dataset.holdout_every must be >= 0, got {every}")
        if every > 0:
            held = np.arange(n) % every == 0
            if held.all() or not held.any():
                raise DatasetError(f"{source}: dataset.holdout_every={every} with {n} views leaves no train or no val view")
            self.train_index = np.nonzero(~held)[0]
            self.eval_index = np.nonzero(held)[0]
        else:
            self.train_index = self.eval_index = np.arange(n)

    @property
    def points_scene(self) -> Optional[np.ndarray]:
        """The sparse points [P, 3] in scene coordinates, when the layout has them."""
        return None if self.points_world is None else transform_points(self.world_to_scene, self.points_world)

    # -------------------------------------------------------------- images
    def _image(self, index: int) -> Tuple[np.ndarray, np.ndarray, bool, Optional[np.ndarray]]:
        """(rgb [h, w, 3], alpha [h, w], has_mask, keep) of view ``index``: undistorted, resized to its
        loaded size (``loaded_size``); keep [h, w] bool: the pixels to train on, from a mask of
        pixels to ignore (``CaptureView.mask_ignores``), else None (all)."""
        if index in self._images:
            return self._images[index]
        view = self.views[index]
        cam = view.camera
        img = read_image(view.image_path)
        if (img.shape[1], img.shape[0]) != (cam.width, cam.height):
            raise DatasetError(
                f"image '{view.image_path}' is {img.shape[1]}x{img.shape[0]} but its camera in {self.source} "
                f"says {cam.width}x{cam.height}"
            )
        alpha, has_mask = None, False
        if img.shape[2] == 4 and self.cfg.use_masks:  # an RGBA capture: its alpha is the mask
            alpha, has_mask = img[..., 3:4], True
        rgb = img[..., :3] if img.shape[2] >= 3 else np.repeat(img[..., :1], 3, axis=2)
        keep = None
        if view.mask_path is not None and self.cfg.use_masks:
            mask = self._read_mask_for(view, rgb.shape[1], rgb.shape[0])
            if view.mask_ignores:
                keep = mask
            else:
                alpha, has_mask = mask, True
        w, h = self.loaded_size(index)
        rgb = resize_image(cam.undistort(rgb), w, h)

        def as_loaded(mask: np.ndarray) -> np.ndarray:  # [H, W, 1] stored -> [h, w] loaded
            return resize_image(cam.undistort(mask, is_mask=True), w, h)[..., 0]

        alpha = np.ones((h, w), dtype=np.float32) if alpha is None else as_loaded(alpha)
        if keep is not None:  # a pixel that is partly ignored is left out
            keep = as_loaded(keep) > 0.99
        out = (np.clip(rgb, 0, 1).astype(np.float32), np.clip(alpha, 0, 1).astype(np.float32), has_mask, keep)
        self._images[index] = out
        return out

    def _read_mask_for(self, view: CaptureView, width: int, height: int) -> np.ndarray:
        """The mask of ``view`` [height, width, 1] for its width x height image. A mask of another
        size but the same shape is resized (one warning); a transposed mask, or one of another
        aspect ratio, is refused, naming the file and dataset.use_masks."""
        alpha = read_mask(view.mask_path)
        mh, mw = alpha.shape[:2]
        if (mw, mh) == (width, height):
            return alpha
        turned = (mw > mh) != (width > height) and mw != mh and width != height
        if turned or changes_aspect(width / mw, height / mh):
            what = "turned by 90 degrees (transposed or rotated?)" if turned else "of another aspect ratio"
            raise DatasetError(
                f"mask '{view.mask_path}' is {mw}x{mh} but its image '{view.image_path}' is {width}x{height}: "
                f"{what}; fix the mask or set dataset.use_masks=false"
            )
        if not self._warned_mask_resize:
            self._warned_mask_resize = True
            log.warning("masks are resized to their images' size (e.g. '%s': %dx%d -> %dx%d)",
                        view.mask_path, mw, mh, width, height)
        return resize_image(alpha, width, height)

    def loaded_size(self, index: int) -> Tuple[int, int]:
        """(width, height) view ``index`` is loaded at: its own size, resized by dataset.img_wh or
        dataset.img_downscale."""
        if index not in self._sizes:
            view = self.views[index]
            cam = view.camera
            self._sizes[index] = target_size(cam.width, cam.height, self.cfg.img_wh, self.cfg.img_downscale,
                                             f"image '{view.image_path}'")
        return self._sizes[index]

    def intrinsics(self, index: int) -> torch.Tensor:
        """[4] (fx, fy, cx, cy) of view ``index`` at its loaded size."""
        cam = self.views[index].camera
        w, h = self.loaded_size(index)
        k = torch.tensor(cam.intrinsics, dtype=torch.float32)
        return scale_intrinsics(k, w / cam.width, h / cam.height)

    def _split_of(self, index: np.ndarray) -> SceneSplit:
        loaded = [self._image(int(i)) for i in index]
        names = [self.views[int(i)].name for i in index]
        alphas = [x[1] for x in loaded]
        has_mask, mask_info = self._mask_status(alphas, [x[2] for x in loaded], names)
        if not has_mask:  # masks the split does not use must not cut the photos either
            alphas = [np.ones_like(a) for a in alphas]
        return SceneSplit.from_images(
            c2w=torch.from_numpy(self.c2w_scene[index]).float(),
            intrinsics=torch.stack([self.intrinsics(int(i)) for i in index]),
            images=[x[0] for x in loaded],
            alphas=alphas,
            keeps=[x[3] for x in loaded],
            has_mask=has_mask,
            names=names,
            mask_info=mask_info,
        )

    def _mask_status(self, alphas, with_mask, names) -> Tuple[bool, str]:
        """(has_mask, what the masks are) of a split's alpha maps [h, w], per-view has-mask flags and names."""
        if not self.cfg.use_masks:
            return False, f"dataset.use_masks is false ({self.layout})"
        if not any(with_mask):
            return False, f"{self.root} has no masks ({self.layout})"
        if not all(with_mask):
            missing = [name for name, m in zip(names, with_mask) if not m]
            return False, f"{len(missing)} view(s) of {self.root} have no mask (e.g. '{missing[0]}')"
        content = mask_content(alphas)
        if content != "varied":
            return False, f"every mask of {self.root} is {content}"
        return True, f"the masks of {self.root}"

    def setup_overview(self):
        """Every view's camera at its loaded size (training views marked), the sparse points and
        the photos (as the run loads them), for datasets.scene_setup."""
        from datasets.scene_setup import SceneOverview

        n = len(self.views)
        is_train = np.zeros(n, dtype=bool)
        is_train[self.train_index] = True
        return SceneOverview(
            c2w=np.asarray(self.c2w_scene, dtype=np.float64),
            intrinsics=np.stack([self.intrinsics(i).double().numpy() for i in range(n)]),
            sizes=np.array([self.loaded_size(i)[::-1] for i in range(n)]),
            is_train=is_train,
            radius=self.scene_radius,
            names=[v.name for v in self.views],
            points=self.points_scene,
            points_rgb=self.points_rgb,
            load_image=lambda i: self._image(i)[0],
            plane=self.support_plane,
        )

    # -------------------------------------------------------------- splits
    def scene_up(self) -> np.ndarray:
        """The scene's up direction [3]: +z when normalized so, else the cameras' mean up."""
        if self.up_is_z:
            return np.array([0.0, 0.0, 1.0])
        return camera_up(self.c2w_scene[self.train_index])

    def up_direction(self) -> Tuple[float, float, float]:
        """``scene_up`` (DTU keeps its scan's frame: there the cameras' mean up), or +z when the
        cameras cannot tell."""
        try:
            return tuple(float(x) for x in self.scene_up())
        except DatasetError:
            return super().up_direction()

    def _predict_split(self) -> SceneSplit:
        eyes = self.c2w_scene[self.train_index, :3, 3]
        up = self.scene_up()
        elevation = self.cfg.predict_elevation_deg
        if elevation is None:
            elevation = mean_elevation_deg(eyes, up)
        radius = float(np.median(np.linalg.norm(eyes, axis=-1)))
        c2w = orbit_poses(self.cfg.n_predict_views, radius, elevation, up=tuple(float(x) for x in up))
        first = int(self.train_index[0])  # the orbit's cameras are the first training view's
        w, h = self.loaded_size(first)
        k = self.intrinsics(first)
        return SceneSplit(
            c2w=c2w, intrinsics=k.expand(len(c2w), 4).clone(), sizes=torch.tensor([[h, w]]).expand(len(c2w), 2),
            names=[f"orbit_{i:03d}" for i in range(len(c2w))],
        )

    def load_split(self, split: Split) -> SceneSplit:
        if split == "predict":
            return self._predict_split()
        if split == "train":
            return self._split_of(self.train_index)
        index = self.eval_index
        limit = {"val": self.cfg.max_images_val, "test": self.cfg.max_images_test}[split]
        if limit is not None and limit < len(index):
            pick = np.unique(np.round(np.linspace(0, len(index) - 1, max(1, limit))).astype(int))
            index = index[pick]
        return self._split_of(index)
