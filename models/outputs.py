"""The typed contract between a model and whoever renders with it (systems, scripts, tests).

A model turns rays into a ``RenderOutput``: per-ray tensors [R, C] always, and during training
the per-sample tensors [S, ...] the losses need, as ``PackedSamples`` (flat lists of the samples
of all rays, sorted by ray, then by distance; see docs/DEVELOPING.md).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import Tensor

from models.rendering.packed import PackedSamples

__all__ = ["BackgroundOutput", "PackedSamples", "RenderOutput", "count"]


@dataclasses.dataclass
class BackgroundOutput:
    """What the learned background beyond the scene box renders, alone.

    rgb [R, 3] premultiplied by its opacity [R, 1]; depth [R, 1] (weighted, not normalized).
    Training only: ``samples``, its packed intervals with their weights, and the same intervals in
    *normalized disparity*, s_starts [S] and s_ends [S] (0 where the ray leaves the box, 1 at the
    far plane), which is what its distortion loss uses since distances span orders of magnitude."""

    rgb: Tensor
    opacity: Tensor
    depth: Tensor
    num_samples: Tensor
    samples: Optional[PackedSamples] = None
    s_starts: Optional[Tensor] = None
    s_ends: Optional[Tensor] = None


@dataclasses.dataclass
class RenderOutput:
    """What rendering R rays gives.

    rgb [R, 3]: the final colour (foreground, then the learned background if any, then the batch's
    background colour); opacity [R, 1], depth [R, 1] (weighted, not divided by opacity) and normal
    [R, 3] (NeuS: weighted normals) are the foreground's, inside the scene box; num_samples: a
    scalar tensor, the samples evaluated (foreground and background).
    Training only: ``samples`` (the foreground's packed intervals with their weights) and for NeuS
    the SDF at them, sdf [S], sdf_grad [S, 3], sdf_laplace [S] (with model.compute_laplace).
    """

    rgb: Tensor
    opacity: Tensor
    depth: Tensor
    num_samples: Tensor
    normal: Optional[Tensor] = None
    samples: Optional[PackedSamples] = None
    sdf: Optional[Tensor] = None
    sdf_grad: Optional[Tensor] = None
    sdf_laplace: Optional[Tensor] = None
    background: Optional[BackgroundOutput] = None

    @property
    def n_rays(self) -> int:
        return int(self.rgb.shape[0])


def count(n: int, like: Tensor) -> Tensor:
    """A sample count as a scalar float tensor on ``like``'s device (summed over chunks)."""
    return torch.tensor(float(n), device=like.device)
