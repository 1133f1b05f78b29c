"""Triton kernels for the multiresolution hash grid: the same function as ``HashGridSampler`` with
``grid_gather`` (see hashgrid.py for the layout), without compiling anything beyond Triton's JIT.

- forward: features [N, G, F] and, optionally, their jacobian [3, N, G, F] with respect to x;
- backward: the table gradient (from the features' and the jacobian's gradients, scattered with
  atomic adds, so its summation order is not fixed as the PyTorch path's is) and the input
  gradient from the features' gradient.

Second derivatives go through the differentiable PyTorch reference (``hashgrid_kernels.py``, the
autograd wrapper shared with the C++ CPU kernels).

One program handles BLOCK points of one level (launch grid: point blocks x active levels). The
kernels cover what the hash grid is used for: 3-D points, 1, 2, 4 or 8 features per level, a
float32 table (``supports`` says why a call is not covered).

This module needs triton and is imported only when a call takes the triton backend. On a CPU
the kernels run under Triton's interpreter when TRITON_INTERPRET=1 is set before this module is
imported (Triton reads it when ``@triton.jit`` decorates): the tests do that.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from models.encodings.hashgrid_kernels import KernelPair
from models.encodings.hashgrid_layout import HashGridSampler, hash_grid_levels

# points per program (a multiple of the 32-thread warp; 128 keeps the 8 corners' registers in
# bounds for F <= 8)
BLOCK = 128
SUPPORTED_FEATURES = (1, 2, 4, 8)


def supports(n_dims: int, n_features: int, table_dtype: torch.dtype) -> Optional[str]:
    """None when the kernels cover a hash grid of these options, else why not."""
    if n_dims != 3:
        return f"the triton kernels take 3-D points, not {n_dims}-D"
    if n_features not in SUPPORTED_FEATURES:
        return f"the triton kernels take 1, 2, 4 or 8 features per level, not {n_features}"
    if table_dtype != torch.float32:
        return f"the triton kernels take a float32 table, not {table_dtype}"
    return None


@triton.jit
def _axis(xr, scale, SMOOTH: tl.constexpr):
    """One coordinate [BLOCK] -> lattice cell (int64), interpolation fraction s, ds/dx (0 outside [0, 1])."""
    x = tl.where(xr == xr, xr, 0.0)  # NaN samples at 0
    x = tl.minimum(tl.maximum(x, 0.0), 1.0)
    pos = x * scale + 0.5
    cell = tl.floor(pos)
    frac = pos - cell
    inside = (xr >= 0.0) & (xr <= 1.0)  # the clamp has no gradient outside
    if SMOOTH:
        s = frac * frac * (3.0 - 2.0 * frac)
        ds = 6.0 * frac * (1.0 - frac) * scale
    else:
        s = frac
        ds = frac * 0.0 + scale
    ds = tl.where(inside, ds, 0.0)
    return cell.to(tl.int64), s, ds


@triton.jit
def _level(level, scale_ptr, offset_ptr, size_ptr, res_ptr, hashed_ptr):
    """One level's lattice scale, table offset and size, resolution and whether it is hashed."""
    scale = tl.load(scale_ptr + level)
    offset = tl.load(offset_ptr + level).to(tl.int64)
    size = tl.load(size_ptr + level).to(tl.int64)
    res = tl.load(res_ptr + level).to(tl.int64)
    hashed = tl.load(hashed_ptr + level) != 0
    return scale, offset, size, res, hashed


@triton.jit
def _corner(UPPER: tl.constexpr, g, s, d):
    """Along one axis, a corner's lattice coordinate, its interpolation weight and the weight's
    derivative: the upper vertex (g + 1, s, ds) when UPPER, else the lower (g, 1 - s, -ds)."""
    if UPPER:
        return g + 1, s, d
    else:
        return g, 1.0 - s, -d


@triton.jit
def _row(c0, c1, c2, res, size, hashed, offset):
    """Table row of lattice vertex (c0, c1, c2) [BLOCK] int64: dense index (wrapping at the level
    size, as tiny-cuda-nn) or the coherent prime hash (low bits of the products, which is what
    the uint32 products keep after the mask)."""
    dense = (c0 + c1 * res + c2 * res * res) % size
    h = (c0 * 1) ^ (c1 * 2654435761) ^ (c2 * 805459861)
    return tl.where(hashed, h & (size - 1), dense) + offset


@triton.jit
def _forward_kernel(
    x_ptr, table_ptr, out_ptr, jac_ptr,
    scale_ptr, offset_ptr, size_ptr, res_ptr, hashed_ptr,
    N, OUT_STRIDE,
    F: tl.constexpr, WITH_JAC: tl.constexpr, SMOOTH: tl.constexpr, BLOCK: tl.constexpr,
):
    level = tl.program_id(1)
    n = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    m = n < N
    f = tl.arange(0, F)
    scale, offset, size, res, hashed = _level(level, scale_ptr, offset_ptr, size_ptr, res_ptr, hashed_ptr)
    g0, s0, d0 = _axis(tl.load(x_ptr + n * 3 + 0, mask=m, other=0.0), scale, SMOOTH)
    g1, s1, d1 = _axis(tl.load(x_ptr + n * 3 + 1, mask=m, other=0.0), scale, SMOOTH)
    g2, s2, d2 = _axis(tl.load(x_ptr + n * 3 + 2, mask=m, other=0.0), scale, SMOOTH)
    acc = tl.zeros((BLOCK, F), dtype=tl.float32)
    j0 = tl.zeros((BLOCK, F), dtype=tl.float32)
    j1 = tl.zeros((BLOCK, F), dtype=tl.float32)
    j2 = tl.zeros((BLOCK, F), dtype=tl.float32)
    # corner c: upper along dimension d when bit 2 - d of c is set (as nlinear_weights orders them)
    for c in tl.static_range(8):
        c0, w0, v0 = _corner((c >> 2) & 1, g0, s0, d0)
        c1, w1, v1 = _corner((c >> 1) & 1, g1, s1, d1)
        c2, w2, v2 = _corner(c & 1, g2, s2, d2)
        row = _row(c0, c1, c2, res, size, hashed, offset)
        vals = tl.load(table_ptr + row[:, None] * F + f[None, :], mask=m[:, None], other=0.0)
        acc += (w0 * w1 * w2)[:, None] * vals
        if WITH_JAC:
            j0 += (v0 * w1 * w2)[:, None] * vals
            j1 += (w0 * v1 * w2)[:, None] * vals
            j2 += (w0 * w1 * v2)[:, None] * vals
    col = level * F + f
    where = n[:, None] * OUT_STRIDE + col[None, :]
    tl.store(out_ptr + where, acc, mask=m[:, None])
    if WITH_JAC:
        plane = N * OUT_STRIDE
        tl.store(jac_ptr + where, j0, mask=m[:, None])
        tl.store(jac_ptr + plane + where, j1, mask=m[:, None])
        tl.store(jac_ptr + 2 * plane + where, j2, mask=m[:, None])


@triton.jit
def _backward_kernel(
    x_ptr, table_ptr, gfeat_ptr, gjac_ptr, gtable_ptr, gx_ptr,
    scale_ptr, offset_ptr, size_ptr, res_ptr, hashed_ptr,
    N, OUT_STRIDE,
    F: tl.constexpr, HAS_GFEAT: tl.constexpr, HAS_GJAC: tl.constexpr, NEED_TABLE: tl.constexpr,
    NEED_X: tl.constexpr, SMOOTH: tl.constexpr, BLOCK: tl.constexpr,
):
    level = tl.program_id(1)
    n = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    m = n < N
    f = tl.arange(0, F)
    scale, offset, size, res, hashed = _level(level, scale_ptr, offset_ptr, size_ptr, res_ptr, hashed_ptr)
    g0, s0, d0 = _axis(tl.load(x_ptr + n * 3 + 0, mask=m, other=0.0), scale, SMOOTH)
    g1, s1, d1 = _axis(tl.load(x_ptr + n * 3 + 1, mask=m, other=0.0), scale, SMOOTH)
    g2, s2, d2 = _axis(tl.load(x_ptr + n * 3 + 2, mask=m, other=0.0), scale, SMOOTH)
    col = level * F + f
    where = n[:, None] * OUT_STRIDE + col[None, :]
    gf = tl.zeros((BLOCK, F), dtype=tl.float32)
    gj0 = tl.zeros((BLOCK, F), dtype=tl.float32)
    gj1 = tl.zeros((BLOCK, F), dtype=tl.float32)
    gj2 = tl.zeros((BLOCK, F), dtype=tl.float32)
    if HAS_GFEAT:
        gf = tl.load(gfeat_ptr + where, mask=m[:, None], other=0.0)
    if HAS_GJAC:
        plane = N * OUT_STRIDE
        gj0 = tl.load(gjac_ptr + where, mask=m[:, None], other=0.0)
        gj1 = tl.load(gjac_ptr + plane + where, mask=m[:, None], other=0.0)
        gj2 = tl.load(gjac_ptr + 2 * plane + where, mask=m[:, None], other=0.0)
    gx0 = tl.zeros((BLOCK,), dtype=tl.float32)
    gx1 = tl.zeros((BLOCK,), dtype=tl.float32)
    gx2 = tl.zeros((BLOCK,), dtype=tl.float32)
    for c in tl.static_range(8):
        c0, w0, v0 = _corner((c >> 2) & 1, g0, s0, d0)
        c1, w1, v1 = _corner((c >> 1) & 1, g1, s1, d1)
        c2, w2, v2 = _corner(c & 1, g2, s2, d2)
        row = _row(c0, c1, c2, res, size, hashed, offset)
        rows = row[:, None] * F + f[None, :]
        if NEED_TABLE:
            src = (w0 * w1 * w2)[:, None] * gf
            if HAS_GJAC:
                src += (v0 * w1 * w2)[:, None] * gj0
                src += (w0 * v1 * w2)[:, None] * gj1
                src += (w0 * w1 * v2)[:, None] * gj2
            tl.atomic_add(gtable_ptr + rows, src, mask=m[:, None])
        if NEED_X:
            vals = tl.load(table_ptr + rows, mask=m[:, None], other=0.0)
            t = tl.sum(vals * gf, axis=1)
            gx0 += v0 * w1 * w2 * t
            gx1 += w0 * v1 * w2 * t
            gx2 += w0 * w1 * v2 * t
    if NEED_X:
        tl.atomic_add(gx_ptr + n * 3 + 0, gx0, mask=m)
        tl.atomic_add(gx_ptr + n * 3 + 1, gx1, mask=m)
        tl.atomic_add(gx_ptr + n * 3 + 2, gx2, mask=m)


def _launch_grid(n_points: int, n_levels: int) -> Tuple[int, int]:
    return (triton.cdiv(n_points, BLOCK), n_levels)


def _forward(xk, tk, sampler, n_levels, feats, jac) -> None:
    """Launch the forward kernel (see hashgrid_kernels.py); without a jacobian ``feats`` stands in
    for its unused pointer."""
    N, Fd = xk.shape[0], tk.shape[1]
    _forward_kernel[_launch_grid(N, n_levels)](
        xk, tk, feats, feats if jac is None else jac, *sampler.kernel_meta(xk.device), N, n_levels * Fd,
        F=Fd, WITH_JAC=jac is not None, SMOOTH=sampler.smoothstep, BLOCK=BLOCK,
    )


def _backward(xk, tk, sampler, n_levels, gf, gj, gt, gx) -> None:
    """Launch the backward kernel (see hashgrid_kernels.py); the table stands in for the pointers
    of missing tensors (the kernel does not touch them)."""
    N, Fd = xk.shape[0], tk.shape[1]
    _backward_kernel[_launch_grid(N, n_levels)](
        xk, tk, tk if gf is None else gf, tk if gj is None else gj, tk if gt is None else gt,
        xk if gx is None else gx, *sampler.kernel_meta(xk.device), N, n_levels * Fd,
        F=Fd, HAS_GFEAT=gf is not None, HAS_GJAC=gj is not None, NEED_TABLE=gt is not None,
        NEED_X=gx is not None and gf is not None, SMOOTH=sampler.smoothstep, BLOCK=BLOCK,
    )


KERNELS = KernelPair("_HashGridTriton", _forward, _backward)
# ``grid_gather`` for a hash grid on CUDA tensors, by the Triton kernels (see KernelPair.gather)
hashgrid_gather = KERNELS.gather


_compiled: dict = {}  # (device, F, smoothstep) -> None or why the kernels failed


def kernels_work(device: torch.device, n_features: int, smoothstep: bool) -> Optional[str]:
    """Compile and run both kernels once on two points of a tiny grid (cached): None when they
    work on ``device``, else the error (an old Triton, an unsupported GPU), so a caller can fall
    back before a training step fails half-way."""
    key = (device, n_features, smoothstep)
    if key not in _compiled:
        try:
            with torch.inference_mode(False), torch.enable_grad():  # the caller may be evaluating
                _run_once(device, n_features, smoothstep)
            _compiled[key] = None
        except Exception as err:  # compilation or launch errors
            first_line = (str(err).splitlines() or [""])[0][:200]
            _compiled[key] = f"its hash-grid kernels fail here ({type(err).__name__}: {first_line})"
    return _compiled[key]


def _run_once(device: torch.device, n_features: int, smoothstep: bool) -> None:
    """Forward with the jacobian, its table gradient, and the input gradient, on a tiny grid."""

    levels = hash_grid_levels(3, 2, 4, 2, 3.0)  # one dense and one hashed level
    sampler = HashGridSampler(3, levels, 4, smoothstep)
    table = torch.rand(levels[-1].offset + levels[-1].size, n_features, device=device, requires_grad=True)
    x = torch.rand(2, 3, device=device, requires_grad=True)
    feats, jac = hashgrid_gather(x, table, sampler, 2, with_jac=True)
    torch.autograd.grad(feats.sum() + jac.sum(), table)
    torch.autograd.grad(hashgrid_gather(x, table, sampler, 2)[0].sum(), x)
