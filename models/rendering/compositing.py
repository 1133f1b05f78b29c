"""Volume rendering on packed samples: transmittance, weights, accumulation, distortion loss.

Samples are packed (see docs/DEVELOPING.md): flat tensors [S] sorted by ray, with
``ray_indices [S]`` (int64) naming each sample's ray; a ray may have no samples. Every function is
differentiable with respect to its float inputs. The transmittance, weight and accumulation
functions take ``backend=`` (the config's ``model.backend``): "torch" (PyTorch, any device),
"nerfacc" (nerfacc 0.5.x kernels, CUDA tensors only) or "auto" (nerfacc for CUDA tensors when it is
usable, else PyTorch); see ``utils.backends``. The distortion loss has no nerfacc implementation.

Precision: per-ray (segmented) prefix sums are computed as one global cumulative sum in float64
followed by a subtraction of the value at the segment start, so the error stays ~1e-16 times the
global sum instead of ~1e-7 (float32) -- accurate to float32 resolution even with millions of
samples. On devices without float64 (MPS) a padded [R, max_samples_per_ray] layout is scanned in
the input dtype instead.
"""
from __future__ import annotations

from typing import Literal, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from utils import backends

BackendName = Literal["auto", "torch", "nerfacc"]

# the config key the rendering backend comes from, for messages
BACKEND_KEY = "model.backend"


def uses_nerfacc(backend: BackendName, device: Union[torch.device, str]) -> bool:
    """Whether a rendering call with tensors on ``device`` goes to nerfacc (see ``utils.backends.choose``)."""
    return backends.choose(backend, device, key=BACKEND_KEY, kernels=("nerfacc",)) == "nerfacc"


def _nerfacc():
    return backends.library("nerfacc")

# Tests set this to "padded" or "float64" to exercise a scan strategy on any device.
_FORCE_SCAN: Optional[str] = None


# --------------------------------------------------------------------------------------------
# segmented scans
# --------------------------------------------------------------------------------------------
class _Segments:
    """Where each sample's ray starts and ends in the packed layout.

    ray_indices [S] (sorted), n_rays -> first [S], last [S] (positions of the first and last
    sample of the same ray), plus what the padded layout needs.
    """

    def __init__(self, ray_indices: Tensor, n_rays: int):
        self.ray_indices = ray_indices
        self.n_rays = n_rays
        self.counts = torch.bincount(ray_indices, minlength=n_rays) if ray_indices.numel() else (
            torch.zeros(n_rays, dtype=torch.long, device=ray_indices.device)
        )
        ends = torch.cumsum(self.counts, 0)
        starts = ends - self.counts
        self.first = starts[ray_indices]
        self.last = ends[ray_indices] - 1
        self.mode = _FORCE_SCAN or ("padded" if ray_indices.device.type == "mps" else "float64")

    @property
    def work_dtype(self) -> Optional[torch.dtype]:
        """dtype to scan in (None: keep the input dtype)."""
        return torch.float64 if self.mode == "float64" else None

    def scan(self, x: Tensor, exclusive: bool = True, reverse: bool = False) -> Tensor:
        """Per-ray cumulative sum of x [S] (in x's dtype; call with float64 for precision).

        exclusive, forward: sum_{j < i, same ray} x_j; reverse: sum_{j > i, same ray} x_j
        (inclusive versions add x_i).
        """
        if x.numel() == 0:
            return x.clone()
        if self.mode == "padded":
            return self._scan_padded(x, exclusive, reverse)
        c = torch.cumsum(x, 0)
        if not reverse:
            before = c - x  # global exclusive sum
            out = before - before[self.first]
            return out if exclusive else out + x
        out = c[self.last] - c
        return out if exclusive else out + x

    def _scan_padded(self, x: Tensor, exclusive: bool, reverse: bool) -> Tensor:
        pos = torch.arange(x.shape[0], device=x.device) - self.first
        width = int(self.counts.max().item())
        if reverse:  # scan the reversed order: position from the end of the ray
            pos = self.last - self.first - pos
        padded = x.new_zeros(self.n_rays, width).index_put((self.ray_indices, pos), x)
        out = torch.cumsum(padded, dim=1)[self.ray_indices, pos]
        return out - x if exclusive else out


def _to_work(x: Tensor, seg: _Segments) -> Tensor:
    return x.to(seg.work_dtype) if seg.work_dtype is not None else x


def _check_packed(name: str, x: Tensor, ray_indices: Tensor) -> None:
    if x.shape[0] != ray_indices.shape[0]:
        raise ValueError(f"{name} has {x.shape[0]} samples but ray_indices has {ray_indices.shape[0]}")


# --------------------------------------------------------------------------------------------
# transmittance from alpha, with exact gradients (also where alpha == 1)
# --------------------------------------------------------------------------------------------
class _TransmittanceFromAlpha(torch.autograd.Function):
    """trans_i = prod_{j < i, same ray} (1 - alpha_j), computed in log space.

    Factors equal to zero (alpha >= 1) are counted separately instead of taking log(0), so the
    forward pass is exact and the gradient with respect to the first opaque sample of a ray (the
    one factor every later transmittance depends on) is the true product of the other factors.
    First-order gradients only (double backward raises).
    """

    @staticmethod
    def forward(ctx, alphas: Tensor, seg: _Segments) -> Tensor:  # type: ignore[override]
        a = _to_work(alphas, seg)
        f = 1.0 - a
        zero = f <= 0
        log_f = torch.log1p(-torch.where(zero, torch.zeros_like(a), a))
        log_prefix = seg.scan(log_f)
        n_zeros = seg.scan(zero.to(a.dtype))
        trans = torch.where(n_zeros > 0.5, torch.zeros_like(a), torch.exp(log_prefix))
        ctx.seg = seg
        ctx.any_zero = bool(zero.any())
        ctx.save_for_backward(f, zero, trans, log_prefix, n_zeros)
        return trans.to(alphas.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_trans: Tensor):  # type: ignore[override]
        f, zero, trans, log_prefix, n_zeros = ctx.saved_tensors
        seg: _Segments = ctx.seg
        g = grad_trans.to(f.dtype)
        # d trans_i / d f_k = trans_i / f_k for i > k (f_k != 0)
        later = seg.scan(g * trans, exclusive=True, reverse=True)
        grad_f = later / torch.where(zero, torch.ones_like(f), f)
        if ctx.any_zero:
            # first zero factor k of a ray: d trans_i / d f_k = prod of the other factors before i,
            # non-zero exactly for the samples that have that one zero before them
            one_zero = (n_zeros > 0.5) & (n_zeros < 1.5)
            u = torch.where(one_zero, g * torch.exp(log_prefix), torch.zeros_like(g))
            first_zero = zero & (n_zeros < 0.5)
            grad_zero = torch.where(first_zero, seg.scan(u, exclusive=True, reverse=True), torch.zeros_like(g))
            grad_f = torch.where(zero, grad_zero, grad_f)
        return (-grad_f).to(grad_trans.dtype), None


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------
def render_transmittance_from_alpha(
    alphas: Tensor, ray_indices: Tensor, n_rays: int, *, backend: BackendName = "auto"
) -> Tensor:
    """Transmittance before each sample: exclusive product of (1 - alpha) along its ray.

    alphas [S] in [0, 1], ray_indices [S] int64 (sorted), n_rays -> trans [S].
    """
    _check_packed("alphas", alphas, ray_indices)
    if uses_nerfacc(backend, alphas.device):
        return _nerfacc().render_transmittance_from_alpha(alphas, ray_indices=ray_indices, n_rays=n_rays)
    return _TransmittanceFromAlpha.apply(alphas, _Segments(ray_indices, n_rays))


def render_weight_from_alpha(
    alphas: Tensor, ray_indices: Tensor, n_rays: int, *, backend: BackendName = "auto"
) -> Tuple[Tensor, Tensor]:
    """Rendering weights w_i = T_i * alpha_i.

    alphas [S], ray_indices [S], n_rays -> weights [S], trans [S].
    """
    trans = render_transmittance_from_alpha(alphas, ray_indices, n_rays, backend=backend)
    return trans * alphas, trans


def render_weight_from_density(
    t_starts: Tensor,
    t_ends: Tensor,
    sigmas: Tensor,
    ray_indices: Tensor,
    n_rays: int,
    *,
    backend: BackendName = "auto",
) -> Tuple[Tensor, Tensor, Tensor]:
    """Weights from densities: alpha_i = 1 - exp(-sigma_i * delta_i), T_i = exp(-sum_{j<i} sigma_j delta_j).

    t_starts [S], t_ends [S], sigmas [S], ray_indices [S], n_rays -> weights [S], trans [S], alphas [S].
    """
    _check_packed("sigmas", sigmas, ray_indices)
    if uses_nerfacc(backend, sigmas.device):
        return _nerfacc().render_weight_from_density(t_starts, t_ends, sigmas, ray_indices=ray_indices, n_rays=n_rays)
    seg = _Segments(ray_indices, n_rays)
    tau = sigmas * (t_ends - t_starts)
    alphas = -torch.expm1(-tau)
    trans = torch.exp(-seg.scan(_to_work(tau, seg))).to(sigmas.dtype)
    return trans * alphas, trans, alphas


def accumulate_along_rays(
    weights: Tensor,
    values: Optional[Tensor],
    ray_indices: Tensor,
    n_rays: int,
    *,
    backend: BackendName = "auto",
) -> Tensor:
    """Weighted sum of per-sample values over each ray.

    weights [S], values [S, C] or None, ray_indices [S], n_rays -> [R, C] ([R, 1] opacity if
    values is None). Rays without samples get zeros.
    """
    _check_packed("weights", weights, ray_indices)
    if values is not None and values.dim() == 1:
        raise ValueError("values must be [S, C]; use values[:, None] for one channel")
    if uses_nerfacc(backend, weights.device):
        return _nerfacc().accumulate_along_rays(weights, values, ray_indices=ray_indices, n_rays=n_rays)
    src = weights[:, None] if values is None else weights[:, None] * values
    out = src.new_zeros((n_rays, src.shape[1]))
    return out.index_add(0, ray_indices, src)


def distortion_loss(
    weights: Tensor,
    t_starts: Tensor,
    t_ends: Tensor,
    ray_indices: Tensor,
    n_rays: int,
) -> Tensor:
    """Mip-NeRF 360 distortion loss per ray, in O(S).

    L = sum_{i,j} w_i w_j |m_i - m_j| + 1/3 sum_i w_i^2 (t_end_i - t_start_i), with m the interval
    midpoints (samples of a ray sorted by t). The pairwise term is written with per-ray exclusive
    sums W_i = sum_{j<i} w_j and M_i = sum_{j<i} w_j m_j as 2 sum_i w_i (m_i W_i - M_i).

    weights [S], t_starts [S], t_ends [S], ray_indices [S], n_rays -> loss [R].

    PyTorch on every device: no released nerfacc with the 0.5 API has a distortion loss (only
    0.3.x had ``nerfacc.losses``), and these few scans are cheap next to the field.
    """
    _check_packed("weights", weights, ray_indices)
    seg = _Segments(ray_indices, n_rays)
    w = _to_work(weights, seg)
    t0, t1 = _to_work(t_starts, seg), _to_work(t_ends, seg)
    mids = 0.5 * (t0 + t1)
    pair = 2.0 * w * (mids * seg.scan(w) - seg.scan(w * mids))
    per_sample = pair + (t1 - t0) * w.square() / 3.0
    loss = per_sample.new_zeros(n_rays).index_add(0, ray_indices, per_sample)
    return loss.to(weights.dtype)
