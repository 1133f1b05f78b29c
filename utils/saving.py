"""Writing images, image grids, videos and JSON with clear errors."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor


class SaveError(OSError):
    """An output that could not be written; the message names the path."""


def _prepare(path: Path) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SaveError(f"cannot create the folder '{path.parent}': {err.strerror or err}") from err
    return path


def to_uint8(img: Tensor | np.ndarray) -> np.ndarray:
    """Float image [H, W, C] in [0, 1] -> uint8 array (a uint8 array is returned as is)."""
    if isinstance(img, np.ndarray) and img.dtype == np.uint8:
        return img
    if isinstance(img, Tensor):
        img = img.detach().float().cpu().numpy()
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def colorize_scalar(values: Tensor, vmin: Optional[float] = None, vmax: Optional[float] = None,
                    mask: Optional[Tensor] = None) -> Tensor:
    """A scalar image [H, W] -> a false-colour image [H, W, 3] in [0, 1] (turbo), normalized to [vmin, vmax]."""
    import cv2

    v = values.detach().float().cpu()
    valid = v[mask.cpu() > 0.5] if mask is not None and (mask > 0.5).any() else v.flatten()
    lo = float(valid.min()) if vmin is None else vmin
    hi = float(valid.max()) if vmax is None else vmax
    norm = ((v - lo) / max(hi - lo, 1e-8)).clamp(0, 1).numpy()
    rgb = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_TURBO)[..., ::-1]
    out = torch.from_numpy(rgb.copy()).float() / 255.0
    if mask is not None:
        out = out * (mask.cpu()[..., None] > 0.5)
    return out


def image_row(images: Sequence[Tensor], gap: int = 2) -> Tensor:
    """Images [H, W, 3] side by side with white gaps -> [H, W_total, 3]."""
    h = images[0].shape[0]
    gap_img = torch.ones(h, gap, 3)
    parts: List[Tensor] = []
    for i, img in enumerate(images):
        if i:
            parts.append(gap_img)
        parts.append(img.detach().float().cpu())
    return torch.cat(parts, dim=1)


def save_image(path: str | Path, img: Tensor | np.ndarray) -> Path:
    """Save a float image [H, W, 3|1] in [0, 1] as PNG/JPG."""
    import imageio.v3 as iio

    path = _prepare(Path(path))
    try:
        iio.imwrite(path, to_uint8(img))
    except OSError as err:
        raise SaveError(f"cannot write image '{path}': {err.strerror or err}") from err
    return path


def pad_to_common_size(frames: Sequence[np.ndarray], value: int = 255) -> List[np.ndarray]:
    """Frames [H_i, W_i, C] of different sizes (views of different sizes) centred on a canvas of
    the largest height and width, filled with ``value``; frames of one size are returned as they are."""
    sizes = {f.shape[:2] for f in frames}
    if len(sizes) <= 1:
        return list(frames)
    h = max(s[0] for s in sizes)
    w = max(s[1] for s in sizes)
    out = []
    for f in frames:
        canvas = np.full((h, w) + f.shape[2:], value, dtype=f.dtype)
        top, left = (h - f.shape[0]) // 2, (w - f.shape[1]) // 2
        canvas[top:top + f.shape[0], left:left + f.shape[1]] = f
        out.append(canvas)
    return out


def save_video(path: str | Path, frames: Sequence[np.ndarray], fps: int = 20) -> Path:
    """uint8 frames [H, W, 3] -> an MP4 (H.264 through imageio-ffmpeg) or a GIF, by extension."""
    import imageio.v2 as iio2

    path = _prepare(Path(path))
    if not frames:
        raise SaveError(f"no frames to write into '{path}'")
    frames = pad_to_common_size(frames)
    try:
        if path.suffix == ".gif":
            iio2.mimsave(path, list(frames), duration=1000.0 / fps, loop=0)
        else:
            # even sizes keep H.264 encoders happy
            h, w = frames[0].shape[:2]
            frames = [f[: h - h % 2, : w - w % 2] for f in frames]
            with iio2.get_writer(path, fps=fps, codec="libx264", quality=8, macro_block_size=1) as writer:
                for frame in frames:
                    writer.append_data(frame)
    except OSError as err:
        raise SaveError(f"cannot write video '{path}': {err.strerror or err}") from err
    return path


def save_json(path: str | Path, data: Dict[str, Any]) -> Path:
    path = _prepare(Path(path))
    try:
        path.write_text(json.dumps(data, indent=2))
    except OSError as err:
        raise SaveError(f"cannot write '{path}': {err.strerror or err}") from err
    return path
