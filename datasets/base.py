"""What every scene loader returns, and the checks and image reading they share.

A loader (registered in ``datasets``) turns a folder on disk into ``SceneSplit``s in the
toolkit's conventions (see ``datasets.cameras``): OpenCV poses in *scene* coordinates (the
normalized frame the model works in) plus ``scene_to_world``, the similarity transform that maps
scene coordinates back to the input's own world frame (identity when the input is used as is).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import re
from pathlib import Path
from typing import List, Literal, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

Split = Literal["train", "val", "test", "predict"]

log = logging.getLogger(__name__)


class DatasetError(ValueError):
    """Input data that cannot be used; the message names the file or key at fault."""


@dataclasses.dataclass
class SceneSplit:
    """The images and cameras of one split. Each image keeps its own size and intrinsics.

    c2w [N, 3, 4] OpenCV, in scene coordinates; intrinsics [N, 4] (fx, fy, cx, cy) of each image at
    its loaded size; sizes [N, 2] int64 (H_i, W_i).

    The pixels of all images are packed into one array, image after image and row-major within
    each (so one index draws a pixel of any image, and images of different sizes waste nothing):
    pixel (x, y) of image i is row ``offsets[i] + y * W_i + x`` of
    pixels_rgb [P, 3] float in [0, 1] (colour where alpha > 0; None when there is no ground truth) and
    pixels_alpha [P] float in [0, 1] (foreground coverage; ones when the data has no masks),
    with P = sum_i H_i W_i. ``image(i)`` / ``mask(i)`` are views [H_i, W_i, 3] / [H_i, W_i] of them.

    has_mask: whether the alpha holds real foreground masks (not all ones, not all empty);
    mask_info says where they came from or why there are none (for messages).
    pixels_keep [P] bool: the pixels training may draw (False: left out, e.g. a passer-by a mask
    marks to ignore); None: every pixel.
    """

    c2w: Tensor
    intrinsics: Tensor
    sizes: Tensor
    pixels_rgb: Optional[Tensor] = None
    pixels_alpha: Optional[Tensor] = None
    has_mask: bool = False
    names: List[str] = dataclasses.field(default_factory=list)
    mask_info: str = ""
    pixels_keep: Optional[Tensor] = None

    def __post_init__(self) -> None:
        n = self.c2w.shape[0]
        if self.intrinsics.shape != (n, 4):
            raise DatasetError(f"intrinsics must be [{n}, 4], got {tuple(self.intrinsics.shape)}")
        self.sizes = torch.as_tensor(self.sizes, dtype=torch.int64).reshape(-1, 2)
        if self.sizes.shape[0] != n or bool((self.sizes <= 0).any()):
            raise DatasetError(f"sizes must be [{n}, 2] positive (height, width), got {self.sizes.tolist()[:4]}")
        counts = self.sizes[:, 0] * self.sizes[:, 1]
        #: [N + 1] int64: where each image's pixels start in the packed arrays (and the total)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(counts, 0)])
        total = int(self.offsets[-1])
        if self.pixels_rgb is not None and self.pixels_rgb.shape != (total, 3):
            raise DatasetError(f"packed images must be [{total}, 3], got {tuple(self.pixels_rgb.shape)}")
        if self.pixels_alpha is not None and self.pixels_alpha.shape != (total,):
            raise DatasetError(f"packed masks must be [{total}], got {tuple(self.pixels_alpha.shape)}")
        if self.pixels_keep is not None and (self.pixels_keep.shape != (total,) or self.pixels_keep.dtype != torch.bool):
            raise DatasetError(f"packed pixels to keep must be bool [{total}], got {tuple(self.pixels_keep.shape)}")
        heights, widths = self.sizes.unique(dim=0).unbind(-1) if n else (torch.zeros(0), torch.zeros(0))
        #: (H, W) when every image has that size, else None
        self.common_size: Optional[Tuple[int, int]] = (int(heights[0]), int(widths[0])) if len(heights) == 1 else None

    @classmethod
    def from_images(cls, c2w: Tensor, intrinsics: Tensor, images: Sequence[np.ndarray], alphas: Sequence[np.ndarray],
                    has_mask: bool, names: Sequence[str] = (), mask_info: str = "",
                    keeps: Optional[Sequence[Optional[np.ndarray]]] = None) -> "SceneSplit":
        """Pack per-image rgb [H_i, W_i, 3], alpha [H_i, W_i] (numpy float32) and, optionally, the
        pixels to keep [H_i, W_i] bool (None for an image: all of them) into a split."""
        sizes = torch.tensor([img.shape[:2] for img in images], dtype=torch.int64).reshape(-1, 2)
        for img, a in zip(images, alphas):
            if a.shape != img.shape[:2]:
                raise DatasetError(f"a mask is {a.shape} but its image is {img.shape[:2]}")
        rgb = torch.from_numpy(np.concatenate([np.asarray(img, np.float32).reshape(-1, 3) for img in images]))
        alpha = torch.from_numpy(np.concatenate([np.asarray(a, np.float32).reshape(-1) for a in alphas]))
        keep = None
        if keeps is not None and any(k is not None for k in keeps):
            keep = torch.from_numpy(np.concatenate([
                np.ones(a.size, dtype=bool) if k is None else np.asarray(k, dtype=bool).reshape(-1)
                for a, k in zip(alphas, keeps)
            ]))
        return cls(c2w=c2w, intrinsics=intrinsics, sizes=sizes, pixels_rgb=rgb, pixels_alpha=alpha,
                   has_mask=has_mask, names=list(names), mask_info=mask_info, pixels_keep=keep)

    def __len__(self) -> int:
        return int(self.c2w.shape[0])

    @property
    def has_ground_truth(self) -> bool:
        return self.pixels_rgb is not None

    def size(self, index: int) -> Tuple[int, int]:
        """(height, width) of image ``index``."""
        h, w = self.sizes[index].tolist()
        return int(h), int(w)

    def image(self, index: int) -> Tensor:
        """The colours of image ``index`` [H_i, W_i, 3] (a view into the packed pixels)."""
        if self.pixels_rgb is None:
            raise DatasetError("this split has no images (no ground truth)")
        return self.pixels_rgb[self._rows(index)].view(*self.size(index), 3)

    def mask(self, index: int) -> Tensor:
        """The alpha of image ``index`` [H_i, W_i] (a view into the packed pixels)."""
        if self.pixels_alpha is None:
            raise DatasetError("this split has no images (no ground truth)")
        return self.pixels_alpha[self._rows(index)].view(*self.size(index))

    def _rows(self, index: int) -> slice:
        """The rows of image ``index`` in the packed pixel arrays."""
        return slice(int(self.offsets[index]), int(self.offsets[index + 1]))

    def masks(self) -> List[Tensor]:
        """Every image's alpha [H_i, W_i], in order."""
        return [self.mask(i) for i in range(len(self))]

    def downscaled(self, factor: float) -> "SceneSplit":
        """This split with every image shrunk by ``factor`` (>= 1; 1 returns the split itself): each
        image's size divided and rounded (``downscaled_size``), its intrinsics scaled per axis by
        new size / old size, its alpha area-averaged and its colour area-averaged weighted by alpha
        (so that, composited over any background, it is the area average of the original
        composited image). A split without images keeps only the new sizes and intrinsics."""
        if factor < 1:
            raise DatasetError(f"a split can only be shrunk: factor must be >= 1, got {factor}")
        if factor == 1:
            return self
        from datasets.cameras import scale_intrinsics

        sizes = [downscaled_size(h, w, factor) for h, w in self.sizes.tolist()]
        intrinsics = torch.stack([
            scale_intrinsics(self.intrinsics[i], new[1] / w, new[0] / h)
            for i, ((h, w), new) in enumerate(zip(self.sizes.tolist(), sizes))
        ]) if sizes else self.intrinsics.clone()
        fields = dict(c2w=self.c2w, intrinsics=intrinsics, sizes=torch.tensor(sizes, dtype=torch.int64).reshape(-1, 2),
                      has_mask=self.has_mask, names=list(self.names), mask_info=self.mask_info)
        if self.pixels_rgb is None:
            return SceneSplit(**fields)
        images, alphas, keeps = [], [], []
        for i, (h, w) in enumerate(sizes):
            alpha = self.mask(i).numpy()[..., None]
            premultiplied = resize_image(self.image(i).numpy() * alpha, w, h)
            alpha = resize_image(alpha, w, h)
            images.append(np.clip(premultiplied / np.maximum(alpha, 1e-8), 0.0, 1.0) * (alpha > 0))
            alphas.append(np.clip(alpha[..., 0], 0.0, 1.0))
            if self.pixels_keep is not None:  # a pixel that is partly left out stays out
                kept = self.pixels_keep[self._rows(i)].view(*self.size(i)).numpy().astype(np.float32)[..., None]
                keeps.append(resize_image(kept, w, h)[..., 0] > 0.99)
        return SceneSplit.from_images(images=images, alphas=alphas, keeps=keeps or None,
                                      **{k: v for k, v in fields.items() if k != "sizes"})

    def take(self, index: Tensor) -> "SceneSplit":
        """A split holding only the views at ``index`` [K] (int64), in that order."""
        index = torch.as_tensor(index, dtype=torch.int64).reshape(-1)
        rgb = alpha = keep = None
        if self.pixels_rgb is not None:
            rows = torch.cat([torch.arange(int(self.offsets[i]), int(self.offsets[i + 1])) for i in index.tolist()]) \
                if len(index) else torch.zeros(0, dtype=torch.int64)
            rgb = self.pixels_rgb[rows]
            alpha = None if self.pixels_alpha is None else self.pixels_alpha[rows]
            keep = None if self.pixels_keep is None else self.pixels_keep[rows]
        return SceneSplit(c2w=self.c2w[index], intrinsics=self.intrinsics[index], sizes=self.sizes[index],
                          pixels_rgb=rgb, pixels_alpha=alpha, pixels_keep=keep, has_mask=self.has_mask,
                          names=[self.names[i] for i in index.tolist()] if self.names else [],
                          mask_info=self.mask_info)


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
        self._splits: dict = {}

    def load_split(self, split: Split) -> SceneSplit:
        """Read the split from disk (each call reads it again)."""
        raise NotImplementedError

    def up_direction(self) -> Tuple[float, float, float]:
        """The scene's up direction in scene coordinates (what mesh previews show up): +z, the
        convention of the layouts that come without a frame of their own."""
        return (0.0, 0.0, 1.0)

    def setup_overview(self):
        """The cameras (and points) ``datasets.scene_setup`` draws, as a SceneOverview in scene
        coordinates; None when the scene has nothing to show."""
        return None

    def split(self, split: Split) -> SceneSplit:
        """``load_split(split)`` read once and kept, so a run's data checks and its datamodule share it."""
        if split not in self._splits:
            self._splits[split] = self.load_split(split)
        return self._splits[split]


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


class ListedFiles:
    """Finds the files a camera file lists (``file_path``, ``mask_path``) as such files spell them
    in the wild: relative to ``base`` (the camera file's folder; ``..`` and symlinked folders
    allowed), with Windows backslashes, without an extension (each of ``extensions`` is tried),
    with an extension in another case (``.png`` listed, ``.PNG`` on disk), or as an absolute path
    from the machine that wrote the file (then its tails under ``base``, the longest first)."""

    def __init__(self, base: Path, extensions: Sequence[str]) -> None:
        self.base = base
        self.extensions = tuple(e.lower() for e in extensions)
        self._listings: dict = {}  # folder -> {lower-case name: path}

    def find(self, listed: str) -> Optional[Path]:
        """The file ``listed`` names, or None when none of its readings exists."""
        text = str(listed).replace("\\", "/")
        parts = [q for q in text.split("/") if q not in ("", ".")]
        if not parts:
            return None
        if text.startswith("/") or re.match(r"^[A-Za-z]:/", text):
            # as written when it exists here, else its tail under base: the longest tail first
            candidates = [Path(text)] if text.startswith("/") else []
            candidates += [self.base.joinpath(*parts[k:]) for k in range(1, len(parts))]
        else:
            candidates = [self.base.joinpath(*parts)]
        for candidate in candidates:
            found = self._match(candidate)
            if found is not None:
                return found
        return None

    def _match(self, path: Path) -> Optional[Path]:
        if path.is_file():
            return path
        names = [path.name]
        if path.suffix.lower() not in self.extensions:
            names += [path.name + ext for ext in self.extensions]
        listing = self._listing(path.parent)
        for name in names:
            found = listing.get(name.lower())
            if found is not None:
                return found
        return None

    def _listing(self, folder: Path) -> dict:
        if folder not in self._listings:
            try:
                entries = [p for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []
            except OSError:
                entries = []
            self._listings[folder] = {p.name.lower(): p for p in entries}
        return self._listings[folder]


# colour spaces whose channels are not RGB(A): Pillow converts them to RGB while reading
_NON_RGB_MODES = ("CMYK", "YCbCr", "LAB", "HSV")


def _pillow_mode(path: Path) -> Optional[str]:
    """Pillow's mode of an image file ('RGB', 'CMYK', ...), from its header; None if Pillow cannot tell."""
    try:
        from PIL import Image

        with Image.open(path) as img:
            return str(img.mode)
    except Exception:  # noqa: BLE001 (not an image Pillow reads: imageio's other plugins may)
        return None


def read_image(path: Path) -> np.ndarray:
    """An image file as float32 [H, W, C] in [0, 1] (C = 1, 3 or 4, RGB order). CMYK and other
    non-RGB colour spaces (e.g. a print-ready JPEG) come as RGB; grey + alpha as RGBA."""
    import imageio.v3 as iio

    if not path.is_file():
        raise DatasetError(f"image file '{path}' does not exist")
    try:
        if _pillow_mode(path) in _NON_RGB_MODES:
            img = np.asarray(iio.imread(path, mode="RGB"))
        else:
            img = np.asarray(iio.imread(path))
    except Exception as err:  # noqa: BLE001 (each reader has its own exceptions)
        raise DatasetError(f"cannot read image '{path}': {image_error_reason(path, err)}") from err
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3:
        raise DatasetError(f"image '{path}' has an unexpected shape {img.shape}")
    if img.shape[2] == 2:  # grey + alpha
        img = img[..., [0, 0, 0, 1]]
    scale = 65535.0 if img.dtype == np.uint16 else 255.0 if img.dtype == np.uint8 else 1.0
    return img.astype(np.float32) / scale


def image_size(path: Path) -> Tuple[int, int]:
    """(width, height) of an image file, from its header."""
    from PIL import Image

    if not path.is_file():
        raise DatasetError(f"image file '{path}' does not exist")
    try:
        with Image.open(path) as img:
            return int(img.size[0]), int(img.size[1])
    except Exception as err:
        raise DatasetError(f"cannot read image '{path}': {err}") from err


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


#: how much resizing may change an image's aspect ratio (the rounding of a resized size) before the
#: image counts as cropped or turned
ASPECT_TOLERANCE = 0.02

#: tried (in any case) when a camera file lists an image without its extension, as Blender and
#: instant-ngp files do
LISTED_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".exr")


def changes_aspect(scale_x: float, scale_y: float) -> bool:
    """Whether scaling an image by scale_x, scale_y changes its aspect ratio by more than
    ASPECT_TOLERANCE."""
    return abs(scale_x - scale_y) > ASPECT_TOLERANCE * max(scale_x, scale_y)


def target_size(width: int, height: int, img_wh: Optional[Sequence[int]], img_downscale: Optional[float], source: str):
    """The (w, h) to load an image stored at (width, height) at, from either ``img_wh`` (that size
    exactly, refused when it changes the image's aspect ratio by more than 2%) or ``img_downscale``
    (the stored size divided, rounded). ``source`` names the image (or its file) in errors."""
    if img_wh is not None and img_downscale is not None:
        raise DatasetError(f"{source}: set either dataset.img_wh or dataset.img_downscale, not both")
    if img_wh is not None:
        w, h = int(img_wh[0]), int(img_wh[1])
        if w <= 0 or h <= 0:
            raise DatasetError(f"dataset.img_wh must be positive, got {list(img_wh)}")
        if changes_aspect(w / width, h / height):
            raise DatasetError(
                f"dataset.img_wh {[w, h]} changes the aspect ratio of {source} ({width}x{height}) by more than 2%; "
                "for images of different shapes use dataset.img_downscale instead"
            )
        return w, h
    if img_downscale is not None:
        if img_downscale <= 0:
            raise DatasetError(f"dataset.img_downscale must be positive, got {img_downscale}")
        return max(1, int(math.floor(width / img_downscale + 0.5))), max(1, int(math.floor(height / img_downscale + 0.5)))
    return width, height


def downscaled_size(height: int, width: int, factor: float) -> Tuple[int, int]:
    """(height, width) of an image of height x width shrunk by ``factor``: each side divided and
    rounded half up, at least 1 pixel (as dataset.img_downscale sizes images)."""
    return (max(1, int(math.floor(height / factor + 0.5))), max(1, int(math.floor(width / factor + 0.5))))


def eval_downscale_factor(sizes: Sequence[Tuple[int, int]], eval_downscale: float,
                          eval_max_pixels: Optional[int]) -> float:
    """The factor a val/test split of images of ``sizes`` ((height, width) each) is shrunk by:
    dataset.eval_downscale, raised where needed so that its largest image, shrunk, has at most
    ``eval_max_pixels`` pixels (None: no cap)."""
    factor = float(eval_downscale)
    if eval_max_pixels is not None and len(sizes):
        largest = max(int(h) * int(w) for h, w in sizes)
        factor = max(factor, math.sqrt(largest / eval_max_pixels))
    return factor


#: a warning when resizing leaves an image's shorter side below this many pixels
SMALL_IMAGE_SIDE = 64


def warn_small_images(resized: Sequence[Tuple[str, Tuple[int, int], Tuple[int, int]]], cfg) -> bool:
    """One warning when ``dataset.img_wh`` / ``img_downscale`` shrank images below SMALL_IMAGE_SIDE
    pixels on their shorter side; returns whether it warned. resized: (file, stored (w, h), loaded
    (w, h)) per image."""
    small = [(name, stored, loaded) for name, stored, loaded in resized
             if min(loaded) < SMALL_IMAGE_SIDE and min(loaded) < min(stored)]
    if not small:
        return False
    name, stored, loaded = min(small, key=lambda item: min(item[2]))
    key = "dataset.img_wh" if getattr(cfg, "img_wh", None) is not None else "dataset.img_downscale"
    value = getattr(cfg, "img_wh", None) if key == "dataset.img_wh" else getattr(cfg, "img_downscale", None)
    log.warning(
        "%d image(s) are smaller than %d px on a side after %s=%s (e.g. '%s': %dx%d -> %dx%d): too few pixels "
        "to learn a surface from; lower %s", len(small), SMALL_IMAGE_SIDE, key, value, name, *stored, *loaded, key,
    )
    return True


def mask_content(alphas: Sequence[np.ndarray]) -> str:
    """What a set of foreground masks [H_i, W_i] holds: 'varied' (foreground and background), or
    else a phrase saying they are all foreground / all background (then they say nothing about
    the object)."""
    any_fg = any(bool((np.asarray(a) >= 0.5).any()) for a in alphas)
    any_bg = any(bool((np.asarray(a) < 0.5).any()) for a in alphas)
    if any_fg and any_bg:
        return "varied"
    return "all foreground (fully opaque)" if any_fg else "all background (fully transparent)"
