"""The autograd wrapper shared by the hash grid's kernel backends (Triton on CUDA, C++ on a CPU).

A backend supplies two launchers over plain float32 tensors; this module does the rest: the
contiguous float32 copies, the output and gradient buffers, and the route through the
differentiable PyTorch reference when the backward must itself be differentiable
(``create_graph=True``) or the input gradient of a jacobian is wanted (second derivatives of the
weights), as ``grid_gather`` does.

- ``forward(x [N, 3], table [T, F], sampler, n_levels, feats [N, L, F], jac [3, N, L, F] or None)``
  fills ``feats`` (and ``jac``, d feats / d x);
- ``backward(x, table, sampler, n_levels, g_feat [N, L, F] or None, g_jac [3, N, L, F] or None,
  g_table [T, F] or None, g_x [N, 3] or None)`` adds the table gradient into ``g_table`` and writes
  the input gradient (from ``g_feat``) into ``g_x``; it is called only with N > 0 and something
  to compute.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

from models.encodings.gather import _backward_reference, backward_inputs, needs_reference_backward

Launcher = Callable[..., None]


class KernelPair:
    """A backend's forward and backward launchers, and its autograd Function over them."""

    def __init__(self, name: str, forward: Launcher, backward: Launcher) -> None:
        self.name = name
        self.function = _function_for(name, forward, backward)

    def gather(
        self, x: torch.Tensor, table: torch.Tensor, sampler, n_levels: int, with_jac: bool = False
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``grid_gather`` for a hash grid, by this backend's kernels.

        x [N, 3] in [0, 1]^3, table [T, F] float32, sampler a ``HashGridSampler``, n_levels active
        levels -> (feats [N, n_levels, F], jac [3, N, n_levels, F] or None). Differentiable w.r.t.
        ``table`` and ``x`` (second order through the PyTorch reference).
        """
        if with_jac:
            feats, jac = self.function.apply(x, table, sampler, n_levels, True)
            return feats, jac
        return self.function.apply(x, table, sampler, n_levels, False), None


def _function_for(name: str, launch_forward: Launcher, launch_backward: Launcher) -> type:
    class _KernelGather(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, table, sampler, n_levels, with_jac):  # type: ignore[override]
            ctx.set_materialize_grads(False)
            xk = x.detach().to(torch.float32).contiguous()
            tk = table.detach().contiguous()
            N, Fd = xk.shape[0], tk.shape[1]
            feats = torch.empty(N, n_levels, Fd, dtype=torch.float32, device=x.device)
            jac = torch.empty(3, N, n_levels, Fd, dtype=torch.float32, device=x.device) if with_jac else None
            if N > 0:
                launch_forward(xk, tk, sampler, n_levels, feats, jac)
            ctx.save_for_backward(x, table)
            ctx.sampler, ctx.n_groups, ctx.with_jac = sampler, n_levels, with_jac
            return (feats, jac) if with_jac else feats

        @staticmethod
        def backward(ctx, *grads):  # type: ignore[override]
            x, table, g_feat, g_jac, need_x, need_t = backward_inputs(ctx, grads)
            if g_feat is None and g_jac is None:
                return None, None, None, None, None
            if needs_reference_backward(g_jac, need_x):
                gx, gt = _backward_reference(ctx, x, table, g_feat, g_jac, need_x, need_t)
                return gx, gt, None, None, None
            xk = x.detach().to(torch.float32).contiguous()
            tk = table.detach().contiguous()
            N = xk.shape[0]
            gt = torch.zeros_like(tk) if need_t else None
            gx = torch.zeros(N, 3, dtype=torch.float32, device=x.device) if need_x and g_feat is not None else None
            if N > 0 and (gt is not None or gx is not None):
                gf = None if g_feat is None else g_feat.to(torch.float32).contiguous()
                gj = None if g_jac is None else g_jac.to(torch.float32).contiguous()
                launch_backward(xk, tk, ctx.sampler, ctx.n_groups, gf, gj, gt, gx)
            if need_x and gx is None:
                gx = torch.zeros_like(x)
            return (None if gx is None else gx.to(x.dtype)), gt, None, None, None

    _KernelGather.__name__ = _KernelGather.__qualname__ = name
    return _KernelGather
