"""Image metrics for validation and testing: PSNR and SSIM (pure torch, any device).

Images are channels-last, values in [0, ``max_val``]. Axis names: H height, W width, C channels.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["psnr", "ssim", "gaussian_window"]


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


def ssim(pred: Tensor, gt: Tensor, max_val: float = 1.0, window_size: int = 11,
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
