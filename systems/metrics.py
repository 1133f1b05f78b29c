"""Image metrics for validation and testing: PSNR and SSIM (pure torch, any device), LPIPS when
the ``lpips`` package and its weights are installed, and the per-image table written to a run.

Images are channels-last, values in [0, ``max_val``]. Axis names: H height, W width, C channels.
"""
from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["psnr", "ssim", "gaussian_window", "load_lpips", "lpips_skip_reason", "summarize_image_metrics",
           "write_image_metrics"]

log = logging.getLogger(__name__)

SSIM_WINDOW = 11  # pixels on a side of SSIM's Gaussian window: smaller images have no SSIM


def psnr(pred: Tensor, gt: Tensor, mask: Optional[Tensor] = None, max_val: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB: ``10 log10(max_val^2 / MSE)``.

    pred, gt: [..., C] (e.g. [H, W, 3] or rays [R, 3]); mask: optional [...] or [..., 1] (bool or
    weights) selecting the pixels that count. The MSE is the mean over selected pixels and all
    channels. Returns a scalar float32 tensor on the inputs' device; ``inf`` for identical
    images. Raises ValueError when the mask selects nothing.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt shapes differ: {tuple(pred.shape)} vs {tuple(gt.shape)}")
    sq = (pred.float() - gt.float()) ** 2
    if mask is None:
        mse = sq.mean()
    else:
        m = mask.to(device=sq.device, dtype=sq.dtype)
        if m.dim() == sq.dim() - 1:
            m = m.unsqueeze(-1)
        m = m.expand_as(sq)
        denom = m.sum()
        if float(denom) <= 0:
            raise ValueError("psnr: the mask selects no pixels")
        mse = (sq * m).sum() / denom
    return 10.0 * torch.log10(torch.as_tensor(max_val, dtype=sq.dtype, device=sq.device) ** 2 / mse)


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float32,
                    device=None) -> Tensor:
    """Normalised 1-D Gaussian [size] centred on the middle tap."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(x**2) / (2.0 * sigma**2))
    return (g / g.sum()).to(dtype=dtype, device=device)


def _filter(x: Tensor, g: Tensor) -> Tensor:
    """Separable 'valid' Gaussian filtering of x [B, 1, H, W]."""
    k = g.numel()
    x = F.conv2d(x, g.view(1, 1, k, 1))
    return F.conv2d(x, g.view(1, 1, 1, k))


def ssim(pred: Tensor, gt: Tensor, max_val: float = 1.0, window_size: int = SSIM_WINDOW,
         sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> Tensor:
    """Structural similarity (Wang et al. 2004) with an 11x11 Gaussian window (sigma 1.5).

    pred, gt: [H, W, C] (or [H, W]); each channel is compared separately and the SSIM map is
    averaged over the valid region (no padding: the (window_size - 1) / 2 border pixels are not
    centres) and over channels. Uses population (biased) local variances, C1 = (k1 max_val)^2,
    C2 = (k2 max_val)^2, as the reference implementation and scikit-image's
    ``structural_similarity(gaussian_weights=True, use_sample_covariance=False)`` do.
    Returns a scalar float32 tensor on the inputs' device.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt shapes differ: {tuple(pred.shape)} vs {tuple(gt.shape)}")
    if pred.dim() == 2:
        pred, gt = pred[..., None], gt[..., None]
    if pred.dim() != 3:
        raise ValueError(f"ssim expects [H, W, C] images, got shape {tuple(pred.shape)}")
    h, w, c = pred.shape
    if h < window_size or w < window_size:
        raise ValueError(f"ssim needs images of at least {window_size}x{window_size} pixels, "
                         f"got {h}x{w}")
    # compute in float64 on CPU (cheap there), float32 elsewhere
    dtype = torch.float64 if pred.device.type == "cpu" else torch.float32
    x = pred.to(dtype).permute(2, 0, 1).unsqueeze(1)  # [C, 1, H, W]
    y = gt.to(dtype).permute(2, 0, 1).unsqueeze(1)
    g = gaussian_window(window_size, sigma, dtype=dtype, device=pred.device)
    mu_x, mu_y = _filter(x, g), _filter(y, g)
    sxx = _filter(x * x, g) - mu_x**2
    syy = _filter(y * y, g) - mu_y**2
    sxy = _filter(x * y, g) - mu_x * mu_y
    c1, c2 = (k1 * max_val) ** 2, (k2 * max_val) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.mean().to(torch.float32)


# ------------------------------------------------------------------------------------------------
# LPIPS (optional)
# ------------------------------------------------------------------------------------------------
# torchvision weights of the LPIPS backbones (what lpips.LPIPS(pretrained=True) loads through
# torchvision; it would download them into torch.hub's cache when missing, which we never do)
_LPIPS_BACKBONE_WEIGHTS = {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights", "squeeze": "SqueezeNet1_1_Weights"}
_lpips_cache: Dict[str, Tuple[Optional[Callable], Optional[str]]] = {}


def _backbone_weights_missing(net: str) -> Optional[str]:
    """None when torchvision's pretrained weights of ``net`` are in torch.hub's cache, else why not."""
    try:
        import torchvision.models as tvm
    except Exception as err:  # noqa: BLE001 (an incompatible torchvision raises more than ImportError)
        return f"torchvision does not import ({err.__class__.__name__}: {err})"
    weights = getattr(tvm, _LPIPS_BACKBONE_WEIGHTS[net], None)
    if weights is None:
        return f"this torchvision has no {_LPIPS_BACKBONE_WEIGHTS[net]}"
    url = weights.IMAGENET1K_V1.url
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if not path.is_file():
        return f"the {net} backbone weights are not in {path.parent} (expected {path.name})"
    return None


def load_lpips(net: str = "alex") -> Tuple[Optional[Callable[[Tensor, Tensor], Tensor]], Optional[str]]:
    """LPIPS (Zhang et al. 2018) if the ``lpips`` package imports and its weights are on disk.

    Returns (fn, None) with ``fn(pred, gt) -> scalar tensor`` for images [H, W, 3] in [0, 1] on
    any device, or (None, reason) when it cannot be used; nothing is downloaded. The result is
    cached per ``net`` ("alex", "vgg" or "squeeze").
    """
    if net not in _LPIPS_BACKBONE_WEIGHTS:
        raise ValueError(f"lpips net must be one of {sorted(_LPIPS_BACKBONE_WEIGHTS)}, got '{net}'")
    if net in _lpips_cache:
        return _lpips_cache[net]
    result: Tuple[Optional[Callable], Optional[str]]
    try:
        import lpips  # noqa: F401
    except Exception as err:  # noqa: BLE001
        result = (None, f"the 'lpips' package is not installed ({err.__class__.__name__}: {err})")
    else:
        missing = _backbone_weights_missing(net)
        if missing is not None:
            result = (None, missing)
        else:
            try:
                model = lpips.LPIPS(net=net, verbose=False).eval()
                for p in model.parameters():
                    p.requires_grad_(False)
            except Exception as err:  # noqa: BLE001
                result = (None, f"lpips.LPIPS(net='{net}') failed ({err.__class__.__name__}: {err})")
            else:
                result = (_lpips_fn(model), None)
    _lpips_cache[net] = result
    if result[1] is not None:
        log.info("LPIPS skipped: %s", result[1])  # once per process: the result is cached
    return result


def _lpips_fn(model: torch.nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
    def fn(pred: Tensor, gt: Tensor) -> Tensor:
        """pred, gt [H, W, 3] in [0, 1] -> scalar float32 (lower is closer)."""
        if pred.shape != gt.shape or pred.dim() != 3 or pred.shape[-1] != 3:
            raise ValueError(f"lpips expects two [H, W, 3] images, got {tuple(pred.shape)} and {tuple(gt.shape)}")
        device = pred.device
        model.to(device)
        x = pred.float().permute(2, 0, 1)[None]
        y = gt.float().permute(2, 0, 1).to(device)[None]
        with torch.no_grad():
            d = model(x, y, normalize=True)  # normalize: inputs in [0, 1] -> [-1, 1]
        return d.reshape(()).float()

    return fn


def lpips_skip_reason(net: str = "alex") -> Optional[str]:
    """Why LPIPS is not computed (None when it is)."""
    return load_lpips(net)[1]


# ------------------------------------------------------------------------------------------------
# per-image metrics of a split
# ------------------------------------------------------------------------------------------------
def summarize_image_metrics(rows: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Per-image rows ``{"index": i, "psnr": ..., ...}`` -> ``{"per_image": rows sorted by index
    (one per index), "mean": {metric: mean over the images that have it}, "n_images": n}``.

    A repeated index (a distributed sampler pads the last batch with repeats) counts once.
    Infinite values (PSNR of an exact match) are kept per image; a mean containing one is inf.
    """
    by_index: Dict[int, Dict[str, Any]] = {}
    for row in rows:
        by_index.setdefault(int(row["index"]), dict(row, index=int(row["index"])))
    per_image = [by_index[i] for i in sorted(by_index)]
    keys: List[str] = []
    for row in per_image:
        keys += [k for k in row if k != "index" and k not in keys]
    mean = {}
    for key in keys:
        values = [float(r[key]) for r in per_image if key in r]
        mean[key] = math.fsum(values) / len(values)
    return {"per_image": per_image, "mean": mean, "n_images": len(per_image)}


def _json_number(v: float) -> Any:
    return v if math.isfinite(v) else ("inf" if v > 0 else "-inf" if v < 0 else "nan")


def write_image_metrics(path_stem: os.PathLike | str, summary: Dict[str, Any],
                        extra: Optional[Dict[str, Any]] = None) -> Tuple[Path, Optional[Path]]:
    """Write ``summarize_image_metrics`` output as ``<stem>.json`` and ``<stem>.csv``.

    The CSV has one row per image (``index`` then the metrics) and a last row ``mean``; it is
    written only when there are images. ``extra`` entries are added to the JSON (e.g. geometry
    metrics, or a note that image metrics were skipped). Non-finite numbers are written as the
    strings "inf" / "-inf" / "nan" in the JSON (which has no such numbers) and as is in the CSV.
    Returns (json path, csv path or None).
    """
    from utils.saving import save_json

    stem = Path(path_stem)
    data: Dict[str, Any] = {}
    if summary.get("per_image"):
        data["mean"] = {k: _json_number(v) for k, v in summary["mean"].items()}
        data["n_images"] = summary["n_images"]
        data["per_image"] = [{k: (v if k == "index" else _json_number(float(v))) for k, v in r.items()}
                             for r in summary["per_image"]]
    data.update(extra or {})
    json_path = save_json(stem.with_name(stem.name + ".json"), data)
    csv_path = None
    if summary.get("per_image"):
        keys = list(summary["mean"])
        csv_path = stem.with_name(stem.name + ".csv")
        with open(csv_path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["index", *keys])
            for row in summary["per_image"]:
                writer.writerow([row["index"], *[_fmt(row.get(k)) for k in keys]])
            writer.writerow(["mean", *[_fmt(summary["mean"][k]) for k in keys]])
    return json_path, csv_path


def _fmt(v: Optional[float]) -> str:
    return "" if v is None else repr(float(v))
