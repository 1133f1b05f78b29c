"""Volume rendering of packed samples, shared by every model (NeuS, NeRF, the background).

One routine, fed with the model's own field function (as nerfacc's ``rendering`` takes
``rgb_sigma_fn`` / ``rgb_alpha_fn``): the field function turns the samples into colours plus
either an opacity per interval (``alpha``, NeuS) or a density (``sigma``, NeRF); the routine turns
those into weights and accumulates colour, opacity, depth (and normals, when given) along rays.

    values = field_fn(samples)                       # FieldValues: rgb [S, 3], alpha or sigma [S]
    weights = T_i * alpha_i                          # transmittance from alpha, or from sigma * delta
    opacity, depth, normal, rgb = sum_i weights_i * (1, t_mid_i, normal_i, rgb_i)   per ray
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Tuple

from torch import Tensor

from .compositing import BackendName, accumulate_along_rays, render_weight_from_alpha, render_weight_from_density
from .packed import PackedSamples


@dataclasses.dataclass
class FieldValues:
    """What a model's field gives for S packed samples: rgb [S, 3] and exactly one of alpha [S]
    (the opacity of each interval) or sigma [S] (density per unit distance); normal [S, 3] is
    accumulated along rays like colour when given. Models subclass this to carry more per-sample
    values back to their losses (e.g. NeuS's SDF and its gradient)."""

    rgb: Tensor
    alpha: Optional[Tensor] = None
    sigma: Optional[Tensor] = None
    normal: Optional[Tensor] = None


@dataclasses.dataclass
class Accumulated:
    """Per-ray sums over the samples of each of R rays: rgb [R, 3] (premultiplied by opacity),
    opacity [R, 1], depth [R, 1] (weighted midpoints, not divided by opacity), normal [R, 3] or None."""

    rgb: Tensor
    opacity: Tensor
    depth: Tensor
    normal: Optional[Tensor] = None


FieldFn = Callable[[PackedSamples], FieldValues]


def render_packed(
    samples: PackedSamples, field_fn: FieldFn, *, backend: BackendName = "auto"
) -> Tuple[Accumulated, FieldValues]:
    """Render packed samples with a model's field function.

    samples: R rays' packed intervals; field_fn(samples) -> FieldValues (rgb [S, 3] and alpha [S]
    or sigma [S]). Returns the per-ray ``Accumulated`` sums and the field's values; the samples'
    ``weights`` [S] are set on ``samples``. Differentiable through the field's outputs.
    """
    values = field_fn(samples)
    if (values.alpha is None) == (values.sigma is None):
        raise ValueError("a field function must return exactly one of alpha and sigma")
    ray_indices, n_rays = samples.ray_indices, samples.n_rays
    if values.alpha is not None:
        weights, _ = render_weight_from_alpha(values.alpha, ray_indices=ray_indices, n_rays=n_rays, backend=backend)
    else:
        weights, _, _ = render_weight_from_density(
            samples.t_starts, samples.t_ends, values.sigma, ray_indices=ray_indices, n_rays=n_rays, backend=backend
        )
    samples.weights = weights
    opacity = accumulate_along_rays(weights, None, ray_indices, n_rays, backend=backend)
    depth = accumulate_along_rays(weights, samples.midpoints[:, None], ray_indices, n_rays, backend=backend)
    normal = None
    if values.normal is not None:
        normal = accumulate_along_rays(weights, values.normal, ray_indices, n_rays, backend=backend)
    rgb = accumulate_along_rays(weights, values.rgb, ray_indices, n_rays, backend=backend)
    return Accumulated(rgb=rgb, opacity=opacity, depth=depth, normal=normal), values
