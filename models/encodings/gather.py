"""Weighted-gather sampling of feature tables: the engine of the hash grid, dense grid and tri-plane.

A *sampler* maps points to rows of a feature table ``table [T, F]`` and interpolation weights:
``corners(x [C, D], n_groups, need_dw) -> (idx [K, C, G] int32, w [K, C, G], dw [D, K, C, G])``
(K corners, C points, G groups). Group ``g`` of a point gives one feature vector
``sum_k w[k, ., g] * table[idx[k, ., g]]`` (a level of a hash grid, a plane of a tri-plane, ...),
and its derivative with respect to ``x[:, d]`` is the same gather with the weights ``dw[d]``.
Samplers are written with plain differentiable torch ops, so the weights are differentiable
with respect to ``x``.

``grid_gather(x, table, sampler, ...)`` runs that gather with a custom autograd Function:

- forward: points are processed in chunks (intermediates of a few MiB, which the allocator
  reuses instead of faulting fresh pages in); the weighted gather is ``F.embedding_bag``
  (fused, no [N, K, F] intermediate); the chunks' indices and weights are kept for the backward
  (up to ``STORE_LIMIT_BYTES``, else the backward recomputes them);
- backward: ``weight * grad`` is scattered into the table gradient with a 1-D ``index_add_`` on
  a flattened view, feature pairs viewed as complex numbers (or ``index_put_`` with
  accumulation for wide rows), which on a CPU is far faster than autograd through a gather;
  the input gradient is the gather of the table with the derivative weights ``dw``;
- when the backward itself must be differentiable (``create_graph=True``, i.e. double backward)
  or needs second derivatives of the weights, it recomputes the outputs with ordinary
  differentiable torch ops and differentiates those instead, so higher-order autograd works
  (slower, but exact).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

# target number of (point, group, corner) entries per chunk: int32 index / float weight tensors
# of 2 MiB each; measured on a 2-core CPU to be well inside the fast range.
CHUNK_ENTRIES = 1 << 18
# on a GPU chunks only bound the memory of the intermediates (small chunks would mean many
# kernel launches)
CHUNK_ENTRIES_CUDA = 1 << 26
# the forward keeps its gather indices and weights for the backward up to this many bytes
# (about 2 KiB per point for a 16-level hash grid); above it the backward recomputes them
STORE_LIMIT_BYTES = 1 << 30
# with_jac: up to this many features per row the rows are gathered once and contracted with the
# 1 + D weight sets (measured ~20% faster for the hash grid's 2 features); wider rows (tri-plane,
# dense grid) use one embedding_bag per weight set, which measured faster there
JAC_GATHER_ONCE_MAX_FEATURES = 4


class GridSampler:
    """Interface of a sampler (see the module docstring).

    Layout: the point axis C and the group axis G are the inner (contiguous) axes of every
    tensor a sampler makes, so that the elementwise work vectorizes; corners K and input
    dimensions D are outer axes.
    """

    n_dims: int  # D

    def n_out_groups(self, n_groups: int) -> int:
        """Groups G of the output for ``n_groups`` active groups (after any merging)."""
        raise NotImplementedError

    def n_corners(self) -> int:
        """K: corners (table rows) per output group."""
        raise NotImplementedError

    def corners(
        self, x: torch.Tensor, n_groups: int, need_dw: bool
    ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """x [C, D] -> idx [K, C, G] int32, w [K, C, G], dw [D, K, C, G] (None unless need_dw)."""
        raise NotImplementedError


def nlinear_weights(
    s: torch.Tensor, ds: Optional[torch.Tensor]
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Multilinear corner weights from per-dimension fractions.

    s [D, C, G] (the interpolation fraction along each dimension, after any smoothstep) and
    ds [D, C, G] (d s / d x, scale included; None for no derivative) -> w [2^D, C, G] and
    dw [D, 2^D, C, G]. Corner ``k`` is the upper corner along dimension ``d`` when bit
    ``D-1-d`` of ``k`` is set (dimension 0 is the most significant bit).
    """
    D = s.shape[0]
    fac = torch.stack([1 - s, s], dim=1)  # [D, 2, C, G]
    prefix: list = [None] * D  # product over the dims before d, corners flattened
    acc = None
    for d in range(D):
        prefix[d] = acc
        acc = fac[d] if acc is None else (acc.unsqueeze(1) * fac[d].unsqueeze(0)).flatten(0, 1)
    w = acc
    if ds is None:
        return w, None
    suffix: list = [None] * D  # product over the dims after d
    acc = None
    for d in range(D - 1, -1, -1):
        suffix[d] = acc
        acc = fac[d] if acc is None else (fac[d].unsqueeze(1) * acc.unsqueeze(0)).flatten(0, 1)
    dws = []
    for d in range(D):
        dfac = torch.stack([-ds[d], ds[d]], dim=0)  # [2, C, G]
        t = dfac if prefix[d] is None else (prefix[d].unsqueeze(1) * dfac.unsqueeze(0)).flatten(0, 1)
        if suffix[d] is not None:
            t = (t.unsqueeze(1) * suffix[d].unsqueeze(0)).flatten(0, 1)
        dws.append(t)
    return w, torch.stack(dws, dim=0)


def combine_corner_terms(terms: torch.Tensor, op: str, out: torch.Tensor) -> torch.Tensor:
    """Per-dimension corner terms [D, 2, C, G] -> all 2^D combinations written to out [2^D, C, G].

    ``op`` is "add" (dense indexing: sum of coordinate * stride) or "xor" (spatial hash).
    Corner order matches ``nlinear_weights`` (dimension 0 most significant).
    """
    fn = torch.add if op == "add" else torch.bitwise_xor
    D = terms.shape[0]
    if D == 1:
        out.copy_(terms[0])
        return out
    acc = terms[0]
    for d in range(1, D):
        a = acc.unsqueeze(1)
        b = terms[d].unsqueeze(0)
        if d == D - 1:
            fn(a, b, out=out.view(acc.shape[0], 2, *out.shape[1:]))
        else:
            acc = fn(a, b).flatten(0, 1)
    return out


def scatter_add_rows(grad_table: torch.Tensor, idx: torch.Tensor, src: torch.Tensor) -> None:
    """grad_table [T, F] += scatter of src [..., F] into rows idx [...] (in place, not differentiable).

    ``src`` may also be complex [..., F/2] (feature pairs). A 1-D ``index_add_`` over a
    flattened view, feature pairs viewed as complex numbers (half as many indices). Measured on
    a 2-core CPU: 2-D ``index_add_`` is several times slower; ``index_put_(accumulate=True)``
    is as fast with one thread but about 3x slower with two (atomic adds).
    """
    T, Fd = grad_table.shape
    M = idx.numel()
    flat = idx.reshape(-1)
    if src.is_complex():
        h = Fd // 2
        dst = torch.view_as_complex(grad_table.view(T, h, 2)).view(-1)
        vals = src.reshape(-1)
    elif Fd % 2 == 0 and grad_table.dtype in (torch.float32, torch.float64):
        h = Fd // 2
        dst = torch.view_as_complex(grad_table.view(T, h, 2)).view(-1)
        vals = torch.view_as_complex(src.reshape(M, h, 2)).view(-1)
    else:
        h = Fd
        dst = grad_table.view(-1)
        vals = src.reshape(-1)
    if h > 1:
        flat = (flat.unsqueeze(1) * h + torch.arange(h, dtype=flat.dtype, device=flat.device)).view(-1)
    dst.index_add_(0, flat, vals)


def _chunks(n: int, size: int):
    for s in range(0, n, size):
        yield s, min(s + size, n)


def _chunk_size(sampler: GridSampler, n_groups: int, device: torch.device) -> int:
    per_point = max(1, sampler.n_out_groups(n_groups) * sampler.n_corners())
    entries = CHUNK_ENTRIES_CUDA if device.type == "cuda" else CHUNK_ENTRIES
    return max(256, entries // per_point)


def gather_reference(
    x: torch.Tensor, table: torch.Tensor, sampler: GridSampler, n_groups: int, with_jac: bool
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The same outputs as ``grid_gather`` with ordinary differentiable torch ops (any order).

    x [N, D], table [T, F] -> feats [N, G, F], jac [D, N, G, F] (or None).
    """
    idx, w, dw = sampler.corners(x, n_groups, with_jac)
    vals = F.embedding(idx.long(), table)  # [K, N, G, F]
    feats = (vals * w.to(table.dtype).unsqueeze(-1)).sum(0)
    jac = None
    if with_jac:
        jac = (vals.unsqueeze(0) * dw.to(table.dtype).unsqueeze(-1)).sum(1)
    return feats, jac


def _as_pairs(t: torch.Tensor) -> Optional[torch.Tensor]:
    """[..., F] real with F even -> complex [..., F/2] view (None when that is not possible)."""
    if t.shape[-1] % 2 or t.dtype not in (torch.float32, torch.float64):
        return None
    t = t.contiguous()
    return torch.view_as_complex(t.view(*t.shape[:-1], t.shape[-1] // 2, 2))


class _GridGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, table, sampler, n_groups, with_jac, will_backward):  # type: ignore[override]
        ctx.set_materialize_grads(False)
        N, D = x.shape
        Fd = table.shape[1]
        G = sampler.n_out_groups(n_groups)
        K = sampler.n_corners()
        feats = table.new_empty(N, G, Fd)
        jac = table.new_empty(D, N, G, Fd) if with_jac else None
        # keep the gather's indices and weights for the backward when they fit the budget,
        # instead of recomputing them there
        per_entry = 4 + table.element_size() * (1 + (D if with_jac else 0))
        store = will_backward and N * G * K * per_entry <= STORE_LIMIT_BYTES
        stored = []
        for s, e in _chunks(N, _chunk_size(sampler, n_groups, x.device)):
            C = e - s
            idx, w, dw = sampler.corners(x[s:e], n_groups, with_jac)
            w = w.to(table.dtype)
            dw = None if dw is None else dw.to(table.dtype)
            if with_jac and Fd <= JAC_GATHER_ONCE_MAX_FEATURES:
                # value and derivatives share the corners: gather each row once (complex pairs,
                # corner-major layout) and contract it with the 1 + D weight sets
                feats[s:e], jac[:, s:e] = _gather_with_jac(table, idx, w, dw)
            else:
                # [C * G, K]: one bag per output row (a 3-D permuted copy: much faster on CPU
                # than the 2-D transposed copy that reshape(-1, K).contiguous() would make)
                bags = idx.permute(1, 2, 0).contiguous().view(-1, K)
                wb = w.permute(1, 2, 0).contiguous().view(-1, K)
                feats[s:e] = F.embedding_bag(bags, table, per_sample_weights=wb, mode="sum").view(C, G, Fd)
                if with_jac:
                    dwb = dw.permute(0, 2, 3, 1).contiguous().view(D, -1, K)
                    for d in range(D):
                        jac[d, s:e] = F.embedding_bag(
                            bags, table, per_sample_weights=dwb[d], mode="sum"
                        ).view(C, G, Fd)
            if store:
                # corner-major (idx, w, dw) with a jacobian, else the bags of the forward
                stored.append(("kcg", s, e, idx, w, dw) if with_jac else ("bags", s, e, bags, wb, None))
        ctx.save_for_backward(x, table)
        ctx.stored = stored if store else None
        ctx.sampler = sampler
        ctx.n_groups = n_groups
        ctx.with_jac = with_jac
        if with_jac:
            return feats, jac
        return feats

    @staticmethod
    def backward(ctx, *grads):  # type: ignore[override]
        x, table, g_feat, g_jac, need_x, need_t = backward_inputs(ctx, grads)
        if g_feat is None and g_jac is None:
            gx = gt = None
        elif needs_reference_backward(g_jac, need_x):
            gx, gt = _backward_reference(ctx, x, table, g_feat, g_jac, need_x, need_t)
        else:
            gx, gt = _backward_fast(ctx, x, table, g_feat, g_jac, need_x, need_t)
        ctx.stored = None
        return gx, gt, None, None, None, None


def backward_inputs(ctx, grads):
    """What a grid-gather autograd function's backward works from (forward saved x and table and
    set ctx.with_jac): (x, table, g_feat, g_jac or None, need_x, need_t)."""
    x, table = ctx.saved_tensors
    g_jac = grads[1] if ctx.with_jac else None
    return x, table, grads[0], g_jac, ctx.needs_input_grad[0], ctx.needs_input_grad[1]


def needs_reference_backward(g_jac, need_x: bool) -> bool:
    """Whether the backward must go through the differentiable PyTorch reference: when it is
    itself differentiated (create_graph), or for x's gradient of a jacobian (second order)."""
    return torch.is_grad_enabled() or (need_x and g_jac is not None)


def _backward_reference(ctx, x, table, g_feat, g_jac, need_x, need_t):
    """Differentiable backward: recompute with plain torch ops and differentiate those."""
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        feats, jac = gather_reference(x, table, ctx.sampler, ctx.n_groups, g_jac is not None)
        outs, gouts = [], []
        if g_feat is not None:
            outs.append(feats)
            gouts.append(g_feat)
        if g_jac is not None:
            outs.append(jac)
            gouts.append(g_jac)
        inputs = [t for t, need in ((x, need_x), (table, need_t)) if need]
        if not inputs:
            return None, None
        got = list(
            torch.autograd.grad(outs, inputs, gouts, create_graph=create_graph, allow_unused=True)
        )
    gx = got.pop(0) if need_x else None
    gt = got.pop(0) if need_t else None
    if need_x and gx is None:
        gx = torch.zeros_like(x)
    if need_t and gt is None:
        gt = torch.zeros_like(table)
    return gx, gt


def _pairs_or_real(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Gradients as complex feature pairs for narrow rows (F <= 4: the weight * gradient products
    then run on the point axis instead of a tiny inner axis), else real and contiguous."""
    if t is None:
        return None
    c = _as_pairs(t) if t.shape[-1] <= 4 else None
    return c if c is not None else t.contiguous()


def _backward_fast(ctx, x, table, g_feat, g_jac, need_x, need_t):
    sampler = ctx.sampler
    N, D = x.shape
    gt = torch.zeros_like(table) if need_t else None
    gx = torch.zeros(N, D, dtype=x.dtype, device=x.device) if need_x else None
    # complex views pair up features: the weight * gradient products and the scatter then work
    # on half as many (complex) elements
    gf = _pairs_or_real(g_feat)  # [N, G, H]
    gj = _pairs_or_real(g_jac)  # [D, N, G, H]
    if need_t:
        # (splitting this serial scatter over two threads, each into its own buffer, measured
        # no faster on a 2-core CPU)
        for idx, src in _scatter_sources(ctx, x, table, gf, gj):
            scatter_add_rows(gt, idx, src)
    if need_x and g_feat is not None:
        for s, e in _chunks(N, _chunk_size(sampler, ctx.n_groups, x.device)):
            idx, _, dw = sampler.corners(x[s:e], ctx.n_groups, True)
            vals = F.embedding(idx, table)  # [K, C, G, F]
            tg = (vals * g_feat[s:e].unsqueeze(0)).sum(-1)  # [K, C, G]
            gx[s:e] = (dw.to(table.dtype) * tg.unsqueeze(0)).sum((1, 3)).t().to(x.dtype)
    return gx, gt


def _scatter_sources(ctx, x, table, gf, gj):
    """(rows, weight * grad) per chunk, from the stored corners or recomputed ones."""
    D = x.shape[1]
    if ctx.stored is not None:
        for layout, s, e, idx, w, dw in ctx.stored:
            if layout == "bags":  # idx = bags [C * G, K], w [C * G, K]
                yield idx, _bag_outer(w.view(e - s, gf.shape[1], -1), gf[s:e])
                continue
            yield idx, _weighted_grads(w, dw, gf, gj, s, e, D)
        return
    for s, e in _chunks(x.shape[0], _chunk_size(ctx.sampler, ctx.n_groups, x.device)):
        idx, w, dw = ctx.sampler.corners(x[s:e], ctx.n_groups, gj is not None)
        dw = None if dw is None else dw.to(table.dtype)
        yield idx, _weighted_grads(w.to(table.dtype), dw, gf, gj, s, e, D)


def _weighted_grads(w, dw, gf, gj, s, e, D):
    """Corner-major w [K, C, G], dw [D, K, C, G] times the output gradients -> [K, C, G(, H)]."""
    src = None
    if gf is not None:
        src = _outer(w, gf[s:e])
    if gj is not None:
        for d in range(D):
            term = _outer(dw[d], gj[d, s:e])
            src = term if src is None else src.add_(term)
    return src


def _gather_with_jac(table, idx, w, dw):
    """table [T, F], idx [K, C, G], w [K, C, G], dw [D, K, C, G] -> feats [C, G, F], jac [D, C, G, F]."""
    K, C, G = idx.shape
    Fd = table.shape[1]
    pairs = _as_pairs(table) if table.is_contiguous() else None
    tv = pairs if pairs is not None else table  # [T, H] (complex) or [T, F]
    if tv.shape[1] == 1:  # 1-D index_select is much faster than selecting rows of width 1
        vals = torch.index_select(tv[:, 0], 0, idx.reshape(-1)).view(K, C, G, 1)
    else:
        vals = torch.index_select(tv, 0, idx.reshape(-1)).view(K, C, G, -1)
    f = (w.unsqueeze(-1) * vals).sum(0)
    j = (dw.unsqueeze(-1) * vals.unsqueeze(0)).sum(1)
    if pairs is not None:
        f = torch.view_as_real(f)
        j = torch.view_as_real(j)
    return f.reshape(C, G, Fd), j.reshape(-1, C, G, Fd)


def _bag_outer(wb: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """wb [C, G, K] times g [C, G, H] -> [C, G, K, H] (as [C, G, K] when H == 1)."""
    if g.shape[-1] == 1:
        return wb * g
    return wb.unsqueeze(-1) * g.unsqueeze(2)


def _outer(w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """w [K, C, G] times g [C, G, H] -> [K, C, G, H] (as [K, C, G] when H == 1)."""
    if g.shape[-1] == 1:
        return w * g[..., 0]
    return w.unsqueeze(-1) * g


def grid_gather(
    x: torch.Tensor,
    table: torch.Tensor,
    sampler: GridSampler,
    n_groups: int,
    with_jac: bool = False,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """x [N, D], table [T, F] -> (feats [N, G, F], jac [D, N, G, F] or None).

    ``jac[d]`` is d feats / d x[:, d]. Differentiable w.r.t. ``table`` and ``x`` (the jacobian
    w.r.t. ``x`` through the reference path only, i.e. slower).
    """
    if x.dim() != 2 or x.shape[1] != sampler.n_dims:
        raise ValueError(f"expected points of shape [N, {sampler.n_dims}], got {tuple(x.shape)}")
    will_backward = torch.is_grad_enabled() and (x.requires_grad or table.requires_grad)
    if with_jac:
        feats, jac = _GridGather.apply(x, table, sampler, n_groups, True, will_backward)
        return feats, jac
    return _GridGather.apply(x, table, sampler, n_groups, False, will_backward), None
