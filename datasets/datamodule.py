"""A Lightning DataModule over any registered scene.

Training is an endless stream of random-ray batches drawn in-process (cheap indexing into the
images held in memory), so the batch size can change from step to step: dynamic ray sampling
(``systems.ray_budget.DynamicRayBudget``, a callback) sets it with ``set_train_rays``.
Validation, test and predict go image by image; each batch says its image's height and width.
"""
from __future__ import annotations

import logging
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset

from datasets.base import DatasetError, Scene, SceneSplit, eval_downscale_factor
from datasets.cameras import camera_rays, pixel_directions, pixel_directions_at

log = logging.getLogger(__name__)

BACKGROUNDS = {"white": 1.0, "black": 0.0}

#: the splits that are rendered and scored (at 1/dataset.eval_downscale of their size)
EVAL_SPLITS = ("val", "test")


def background_colours(kind: str, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """Per-ray background colours [n, 3] for 'white', 'black' or 'random'."""
    if kind == "random":
        return torch.rand(n, 3, generator=generator)
    return torch.full((n, 3), BACKGROUNDS[kind])


def composite(rgb: Tensor, alpha: Tensor, background: Tensor) -> Tensor:
    """Straight-alpha colour rgb [..., 3] over background [..., 3] with coverage alpha [...]."""
    return rgb * alpha[..., None] + background * (1.0 - alpha[..., None])


class RandomRays(IterableDataset):
    """Endless batches of random training rays, each through the centre of a real pixel of a
    training image (images may differ in size), never one the split leaves out (``pixels_keep``).

    Each item: rays_o [n, 3], rays_d [n, 3] (world/scene frame, unit), rgb [n, 3] (ground truth
    composited over ``background``), alpha [n], background [n, 3]. Without ``image_sampling`` every
    pixel of every image is equally likely; with it, each batch comes from one image, chosen
    uniformly, and its pixels are equally likely.
    """

    def __init__(self, split: SceneSplit, n_rays: int, image_sampling: bool, background: str, seed: int):
        if split.pixels_rgb is None:
            raise ValueError("the training split has no images")
        self.split = split
        self.n_rays = int(n_rays)
        self.image_sampling = image_sampling
        self.background = background
        self.seed = seed
        # rows of the pixels training may draw, and where each image's start among them
        self.kept_rows: Optional[Tensor] = None
        if split.pixels_keep is not None:
            self.kept_rows = torch.nonzero(split.pixels_keep)[:, 0]
            if self.kept_rows.numel() == 0:
                raise DatasetError("the masks of the training images leave out every pixel (masks of pixels to "
                                   "ignore; fix them or set dataset.use_masks=false)")
            self.kept_starts = torch.searchsorted(self.kept_rows, split.offsets)  # [N + 1]
            self.images_with_pixels = torch.nonzero(self.kept_starts[1:] > self.kept_starts[:-1])[:, 0]

    def draw_pixels(self, generator: torch.Generator) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """n random pixels -> (image index [n], x [n], y [n], row in the packed pixels [n]), int64."""
        s = self.split
        n = self.n_rays
        if self.kept_rows is not None:
            if self.image_sampling:
                pick = torch.randint(0, len(self.images_with_pixels), (1,), generator=generator)
                one = int(self.images_with_pixels[pick])
                lo, hi = int(self.kept_starts[one]), int(self.kept_starts[one + 1])
            else:
                lo, hi = 0, int(self.kept_rows.numel())
            row = self.kept_rows[torch.randint(lo, hi, (n,), generator=generator)]
            img = torch.searchsorted(s.offsets, row, right=True) - 1
        elif s.common_size is not None:
            # one size: image, then x, then y, as the toolkit always drew them (runs reproduce exactly)
            h, w = s.common_size
            if self.image_sampling:
                img = torch.randint(0, len(s), (1,), generator=generator).expand(n)
            else:
                img = torch.randint(0, len(s), (n,), generator=generator)
            x = torch.randint(0, w, (n,), generator=generator)
            y = torch.randint(0, h, (n,), generator=generator)
            return img, x, y, (img * h + y) * w + x
        elif self.image_sampling:
            one = int(torch.randint(0, len(s), (1,), generator=generator))
            start, stop = int(s.offsets[one]), int(s.offsets[one + 1])
            row = torch.randint(start, stop, (n,), generator=generator)
            img = torch.full((n,), one, dtype=torch.int64)
        else:
            row = torch.randint(0, int(s.offsets[-1]), (n,), generator=generator)
            img = torch.searchsorted(s.offsets, row, right=True) - 1
        local = row - s.offsets[img]
        w = s.sizes[img, 1]
        y = torch.div(local, w, rounding_mode="floor")
        return img, local - y * w, y, row

    def sample(self, generator: torch.Generator) -> Dict[str, Tensor]:
        s = self.split
        n = self.n_rays
        img, x, y, row = self.draw_pixels(generator)
        pixels = torch.stack([x, y], dim=-1).float() + 0.5
        dirs = pixel_directions_at(pixels, s.intrinsics[img])
        rays_o, rays_d = camera_rays(dirs, s.c2w[img])
        alpha = s.pixels_alpha[row]
        background = background_colours(self.background, n, generator)
        rgb = composite(s.pixels_rgb[row], alpha, background)
        return {"rays_o": rays_o, "rays_d": rays_d, "rgb": rgb, "alpha": alpha, "background": background}

    def __iter__(self) -> Iterator[Dict[str, Tensor]]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        generator = torch.Generator().manual_seed(self.seed * 9973 + worker)
        while True:
            yield self.sample(generator)


def spread_order(n: int) -> List[int]:
    """A permutation of range(n) whose every prefix is spread evenly over it (the van der Corput
    sequence scaled to n, repeats skipped): 0, n/2, n/4, 3n/4, ... So a pass over images in this
    order that stops early has still seen views from all around the split."""
    order: List[int] = []
    seen = set()
    i = 0
    while len(order) < n:
        v, denom, k = 0.0, 1.0, i
        while k:  # bit-reversed i as a fraction in [0, 1)
            denom *= 2.0
            v += (k & 1) / denom
            k >>= 1
        index = min(n - 1, int(v * n))
        if index not in seen:
            seen.add(index)
            order.append(index)
        i += 1
    return order


class ImageRays(Dataset):
    """One whole image per item, at its own size: index, height, width, rays [H*W, 3] and, where
    there is ground truth, rgb [H*W, 3], alpha [H*W] and has_mask (whether alpha is a real
    foreground mask, see SceneSplit.has_mask). ``order``: the split's image indices in the order
    items are served (default: in order); each item's ``index`` is the image's own."""

    def __init__(self, split: SceneSplit, background: str, order: Optional[Sequence[int]] = None):
        self.split = split
        self.background = background
        self.order = list(range(len(split))) if order is None else [int(i) for i in order]
        if sorted(self.order) != list(range(len(split))):
            raise ValueError(f"order must be a permutation of the split's {len(split)} image indices")

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, position: int) -> Dict[str, Tensor]:
        index = self.order[position]
        s = self.split
        height, width = s.size(index)
        dirs = pixel_directions(width, height, s.intrinsics[index]).reshape(-1, 3)
        rays_o, rays_d = camera_rays(dirs, s.c2w[index])
        n = rays_o.shape[0]
        item = {
            "index": torch.tensor(index),
            "height": height,
            "width": width,
            "rays_o": rays_o,
            "rays_d": rays_d,
            "background": background_colours(self.background, n),
        }
        if s.pixels_rgb is not None:
            alpha = s.mask(index).reshape(-1)
            item["alpha"] = alpha
            item["has_mask"] = bool(s.has_mask)
            item["rgb"] = composite(s.image(index).reshape(-1, 3), alpha, item["background"])
        return item


class SceneDataModule(pl.LightningDataModule):
    """Loads the splits a stage needs from ``scene`` and serves them."""

    def __init__(self, scene: Scene, cfg, train_num_rays: int = 1024, seed: int = 0):
        super().__init__()
        self.scene = scene
        self.cfg = cfg
        self.train_num_rays = int(train_num_rays)
        self.seed = seed
        self.splits: Dict[str, SceneSplit] = {}
        self.train_dataset: Optional[RandomRays] = None

    def split(self, name: str) -> SceneSplit:
        """The scene's split ``name``; val and test at 1/dataset.eval_downscale of their size (or
        less, see dataset.eval_max_pixels)."""
        if name not in self.splits:
            split = self.scene.split(name)  # type: ignore[arg-type]
            if name in EVAL_SPLITS:
                split = split.downscaled(eval_downscale_factor(split.sizes.tolist(), self.cfg.eval_downscale,
                                                               self.cfg.eval_max_pixels))
            self.splits[name] = split
        return self.splits[name]

    def set_train_rays(self, n_rays: int) -> None:
        """The number of rays of the next training batches."""
        self.train_num_rays = int(n_rays)
        if self.train_dataset is not None:
            self.train_dataset.n_rays = self.train_num_rays

    def setup(self, stage: Optional[str] = None) -> None:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        if stage in (None, "fit"):
            # a different ray stream on every process
            self.train_dataset = RandomRays(
                self.split("train"), self.train_num_rays, self.cfg.batch_image_sampling,
                self.cfg.train_background, seed=self.seed + rank,
            )
        if stage in (None, "fit", "validate"):
            self.split("val")
        if stage in (None, "test"):
            self.split("test")
        if stage in (None, "predict"):
            self.split("predict")

    def state_dict(self) -> Dict[str, list]:
        """Kept in checkpoints, so a checkpoint records the frame its weights live in."""
        return {"scene_to_world": self.scene.scene_to_world.tolist()}

    def load_state_dict(self, state: Dict[str, list]) -> None:
        saved = state.get("scene_to_world")
        if saved is not None and not torch.allclose(
            torch.tensor(saved, dtype=torch.float64), self.scene.scene_to_world.double(), rtol=1e-5, atol=1e-6
        ):
            log.warning(
                "the checkpoint was trained in another scene frame (scene_to_world %s, now %s): "
                "did the data or dataset.normalization change?", saved, self.scene.scene_to_world.tolist()
            )

    def _images(self, name: str) -> DataLoader:
        split = self.split(name)
        # test images in an order whose every prefix spreads over the views: a test that stops
        # early (system.test_time_share) still scores views from all around
        order = spread_order(len(split)) if name == "test" else None
        dataset = ImageRays(split, self.cfg.eval_background, order=order)
        workers = self.cfg.num_workers
        return DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                          persistent_workers=workers > 0)

    def train_dataloader(self) -> DataLoader:
        assert self.train_dataset is not None, "setup('fit') was not called"
        return DataLoader(self.train_dataset, batch_size=None, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        return self._images("val")

    def test_dataloader(self) -> DataLoader:
        return self._images("test")

    def predict_dataloader(self) -> DataLoader:
        return self._images("predict")
