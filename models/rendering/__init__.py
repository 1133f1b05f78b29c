"""Rendering core: rays -> packed samples -> pixels, with a pure-PyTorch backend (any device,
autograd) and a nerfacc 0.5 backend used for CUDA tensors when nerfacc imports.

Samples are packed: ``ray_indices [S]`` (int64, sorted), ``t_starts [S]``, ``t_ends [S]``.
"""
from .aabb import ray_aabb_intersect
from .backend import nerfacc_available, resolve_backend
from .chunking import chunked
from .compositing import (
    accumulate_along_rays,
    distortion_loss,
    render_transmittance_from_alpha,
    render_weight_from_alpha,
    render_weight_from_density,
)
from .contraction import contract, sample_background
from .marching import ray_marching
from .occupancy_grid import OccupancyGrid
from .packed import PackedSamples
from .visual_hull import visual_hull_cells
from .volume import Accumulated, FieldValues, render_packed

__all__ = [
    "Accumulated",
    "FieldValues",
    "OccupancyGrid",
    "PackedSamples",
    "accumulate_along_rays",
    "chunked",
    "contract",
    "distortion_loss",
    "nerfacc_available",
    "ray_aabb_intersect",
    "ray_marching",
    "render_packed",
    "render_transmittance_from_alpha",
    "render_weight_from_alpha",
    "render_weight_from_density",
    "resolve_backend",
    "sample_background",
    "visual_hull_cells",
]
