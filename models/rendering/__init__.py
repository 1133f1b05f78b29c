"""Rendering core: rays -> packed samples -> pixels, with a pure-PyTorch backend (any device,
autograd) and a nerfacc 0.5 backend for CUDA tensors when nerfacc is usable (``utils.backends``).

Samples are packed: ``ray_indices [S]`` (int64, sorted), ``t_starts [S]``, ``t_ends [S]``.
"""
from .aabb import ray_aabb_intersect
from .chunking import chunked
from .compositing import (
    BackendName,
    accumulate_along_rays,
    distortion_loss,
    render_transmittance_from_alpha,
    render_weight_from_alpha,
    render_weight_from_density,
    uses_nerfacc,
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
    "BackendName",
    "OccupancyGrid",
    "PackedSamples",
    "accumulate_along_rays",
    "chunked",
    "contract",
    "distortion_loss",
    "ray_aabb_intersect",
    "ray_marching",
    "render_packed",
    "render_transmittance_from_alpha",
    "render_weight_from_alpha",
    "render_weight_from_density",
    "sample_background",
    "uses_nerfacc",
    "visual_hull_cells",
]
