"""What one evaluation pass over a split (validation, test, predict) produces: an image grid and
metrics per image, video frames, and the files they are written to.

In a distributed run each process renders its share of the images; a ``SplitRecorder`` gathers
them (each image once, by index) and rank zero writes every file once.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from models.outputs import RenderOutput
from systems.metrics import load_lpips, psnr, ssim
from utils.distributed import all_gather, gather_to_zero, is_distributed
from utils.saving import colorize_scalar, image_row, save_image, save_video, to_uint8

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)

#: called with (metric name, reason) for a metric an image could not be scored with
SkipFn = Callable[[str, str], None]


def image_grid(batch: Dict[str, Any], out: RenderOutput, h: int, w: int) -> Tensor:
    """ground truth (when the batch has it) | render | depth | normal (NeuS) | opacity, as one
    image [H, W_total, 3] from a whole image's rays (batch tensors [H*W, C], out per ray)."""
    opacity = out.opacity.reshape(h, w)
    panels = []
    if "rgb" in batch:
        panels.append(batch["rgb"].reshape(h, w, 3))
    panels.append(out.rgb.reshape(h, w, 3))
    panels.append(colorize_scalar(out.depth.reshape(h, w), mask=opacity))
    if out.normal is not None:
        normal = F.normalize(out.normal.reshape(h, w, 3), dim=-1)
        panels.append(((normal + 1.0) * 0.5) * opacity[..., None] + (1.0 - opacity[..., None]))
    panels.append(opacity[..., None].expand(h, w, 3))
    return image_row(panels)


def image_metrics(batch: Dict[str, Any], out: RenderOutput, h: int, w: int, with_lpips: bool = False,
                  on_skip: Optional[SkipFn] = None) -> Dict[str, float]:
    """PSNR and SSIM (and LPIPS, when asked and available) of a whole rendered image against the
    batch's ground truth; {} when the batch has none. Where the data has foreground masks
    (batch["has_mask"]), also ``psnr_masked``: the PSNR over the pixels whose mask is >= 0.5 (as
    IDR / NeuS score DTU; not for an image without such pixels). A metric that cannot be computed (e.g. SSIM of an image smaller than
    its window) is left out and ``on_skip(name, reason)`` told why (default: a warning)."""
    if "rgb" not in batch:
        return {}
    on_skip = on_skip or (lambda name, reason: log.warning("%s skipped: %s", name.upper(), reason))
    pred = out.rgb.reshape(h, w, 3).clamp(0, 1)
    gt = batch["rgb"].reshape(h, w, 3)
    metrics = {"psnr": float(psnr(pred, gt))}
    if batch.get("has_mask", False) and "alpha" in batch:
        foreground = batch["alpha"].reshape(h, w) >= 0.5
        if bool(foreground.any()):  # (an image without foreground has none; the mean is over the others)
            metrics["psnr_masked"] = float(psnr(pred, gt, mask=foreground))
    scorers: Dict[str, Callable] = {"ssim": ssim}
    if with_lpips:
        lpips_fn, _ = load_lpips()
        if lpips_fn is not None:
            scorers["lpips"] = lpips_fn
    for name, fn in scorers.items():
        try:
            metrics[name] = float(fn(pred, gt))
        except (ValueError, RuntimeError) as err:  # an image the metric cannot take: the rest still count
            on_skip(name, (str(err).splitlines() or [type(err).__name__])[0])
    return metrics


class SplitRecorder:
    """Collects one pass over a split: images to write, video frames and per-image metric rows.

    Paths are relative to the run's save folder, which rank zero joins them to when it writes.
    On one process images are written at once; in a distributed run they wait for ``write_images``.
    """

    def __init__(self) -> None:
        self.rows: List[Dict[str, float]] = []
        self.frames: List[Tuple[int, np.ndarray]] = []  # (image index, frame) for the video
        self.skipped: Dict[str, str] = {}  # metric -> why it could not be computed (the first reason)
        self.sizes: set = set()  # (height, width) of the images scored
        self.not_rendered: List[int] = []  # indices of the images left out (a spent time budget)
        self._pending: List[Tuple[str, np.ndarray]] = []

    def add_image(self, save_dir: Path, relative: str, img: Tensor) -> None:
        if is_distributed():
            self._pending.append((relative, to_uint8(img)))
        else:
            save_image(Path(save_dir) / relative, img)

    def add_frame(self, index: int, img: Tensor) -> None:
        self.frames.append((index, to_uint8(img)))

    def add_row(self, index: int, metrics: Dict[str, float], size: Optional[Tuple[int, int]] = None) -> None:
        """The metrics of image ``index``, scored at ``size`` (height, width)."""
        if metrics:
            self.rows.append({"index": index, **metrics})
            if size is not None:
                self.sizes.add((int(size[0]), int(size[1])))

    def leave_out(self, index: int) -> None:
        """Image ``index`` is neither rendered nor scored in this pass."""
        self.not_rendered.append(int(index))

    def gathered_left_out(self) -> List[int]:
        """The indices every process left out, sorted (on every process)."""
        return sorted({i for part in all_gather(list(self.not_rendered)) for i in part})

    def gathered_sizes(self) -> List[Tuple[int, int]]:
        """The (height, width) sizes the images of every process were scored at, sorted."""
        return sorted({tuple(x) for part in all_gather(sorted(self.sizes)) for x in part})

    def skip(self, metric: str, reason: str) -> None:
        """A metric one image could not be scored with (see image_metrics)."""
        self.skipped.setdefault(metric, reason)

    def gathered_skips(self) -> Dict[str, str]:
        """The skipped metrics of every process (on every process), each with one reason."""
        merged: Dict[str, str] = {}
        for part in all_gather(dict(self.skipped)):
            for metric, reason in part.items():
                merged.setdefault(metric, reason)
        return merged

    def write_images(self, save_dir: Path) -> None:
        """Distributed: rank zero writes the images every process rendered, each once."""
        written = set()
        for relative, img in (item for part in gather_to_zero(self._pending) for item in part):
            if relative not in written:
                written.add(relative)
                save_image(Path(save_dir) / relative, img)
        self._pending = []

    def gathered_rows(self) -> List[Dict[str, float]]:
        """The metric rows of every process (on every process), each image once, in image order."""
        by_index: Dict[Any, Dict[str, float]] = {}
        for row in (row for part in all_gather(list(self.rows)) for row in part):
            by_index.setdefault(row.get("index"), row)
        return [by_index[k] for k in sorted(by_index, key=lambda k: (k is None, k if k is not None else 0))]

    def gathered_frames(self) -> List[np.ndarray]:
        """Video frames of every process in image order, each once (on rank zero; [] elsewhere)."""
        by_index: Dict[int, np.ndarray] = {}
        for part in gather_to_zero(self.frames):
            for index, frame in part:
                by_index.setdefault(index, frame)
        return [by_index[i] for i in sorted(by_index)]

    def reset(self) -> None:
        self.rows, self.frames, self._pending, self.skipped = [], [], [], {}
        self.sizes, self.not_rendered = set(), []


def eval_sizing(dataset_cfg: Any) -> Dict[str, Any]:
    """The dataset keys that sized the val/test images: eval_downscale (1: their loaded size) and,
    when set, eval_max_pixels (the sizes are then what both together gave)."""
    sizing: Dict[str, Any] = {"eval_downscale": float(dataset_cfg.eval_downscale)}
    if dataset_cfg.eval_max_pixels is not None:
        sizing["eval_max_pixels"] = int(dataset_cfg.eval_max_pixels)
    return sizing


def scored_resolution(sizes: Sequence[Tuple[int, int]], sizing: Dict[str, Any]) -> Dict[str, Any]:
    """What the metrics files say about the resolution the images were scored at: the sizes
    ("WxH", each once) and the keys that sized them (``eval_sizing``)."""
    return {"sizes": [f"{w}x{h}" for h, w in sizes], **sizing}


def write_video(frames: Sequence[np.ndarray], path: Path, fps: int, gif: bool = False) -> Path:
    """Frames [H, W, 3] uint8 as an MP4 at ``path`` (and a GIF beside it with ``gif``)."""
    path = save_video(path, frames, fps)
    log.info("video: %s", path)
    if gif:
        save_video(path.with_suffix(".gif"), frames, fps)
    return path


def failure_reason(err: BaseException) -> str:
    """An error in one line: its message as it is when written for users (ValueError, OSError),
    else with its type (a bug's message alone rarely says enough)."""
    text = (str(err).splitlines() or [""])[0].strip()
    if text and isinstance(err, (ValueError, OSError)):
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


# the smallest chunk (rays) render_whole_image falls back to when rendering runs out of memory
MIN_EVAL_CHUNK = 256


def render_whole_image(model, batch: Dict[str, Any]) -> RenderOutput:
    """The rays of one whole image (batch: rays_o, rays_d, background [H*W, 3]) rendered by the model
    in chunks of model.eval_chunk_size rays; a chunk that runs out of memory is tried again at half
    the size (with a warning), down to MIN_EVAL_CHUNK."""
    import torch

    from utils.memory import is_out_of_memory

    model_cfg = model.cfg
    while True:
        try:
            return model(batch["rays_o"], batch["rays_d"], batch["background"])
        except (RuntimeError, MemoryError) as err:
            if not is_out_of_memory(err) or model_cfg.eval_chunk_size <= MIN_EVAL_CHUNK:
                raise
            smaller = max(MIN_EVAL_CHUNK, model_cfg.eval_chunk_size // 2)
            log.warning("out of memory rendering a %sx%s image in chunks of %d rays (model.eval_chunk_size): "
                        "trying %d", batch.get("width"), batch.get("height"), model_cfg.eval_chunk_size, smaller)
            model_cfg.eval_chunk_size = smaller
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
