"""The hash grid's layout, shared by its PyTorch and Triton paths: the levels (scale, lattice
size, table size and offset, dense or hashed) and the corner indexing and weights of a point
(see models/encodings/hashgrid.py for the layout, which is tiny-cuda-nn's HashGrid's)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np
import torch

from models.encodings.gather import GridSampler, combine_corner_terms, nlinear_weights


HASH_PRIMES = (1, 2654435761, 805459861, 3674653429, 2097192037, 1434869437, 2165219737)


@dataclass
class GridLevel:
    scale: float  # s_l (a float32 value)
    resolution: int  # R_l: lattice vertices per axis
    size: int  # entries in the table
    offset: int  # first entry in the flattened table
    hashed: bool
    wraps: bool  # a dense level whose upper-edge vertex index can reach R_l


def hash_grid_levels(
    n_dims: int, n_levels: int, log2_hashmap_size: int, base_resolution: float, per_level_scale: float
) -> List[GridLevel]:
    """The level layout of a hash grid (as tiny-cuda-nn lays it out)."""
    hashmap = 1 << log2_hashmap_size
    log2_scale = np.float32(np.log2(np.float32(per_level_scale)))
    levels, offset = [], 0
    for lvl in range(n_levels):
        scale = float(
            np.float32(np.exp2(np.float32(lvl) * log2_scale)) * np.float32(base_resolution)
            - np.float32(1.0)
        )
        res = int(math.ceil(scale)) + 1
        dense_size = res**n_dims
        size = min(-(-dense_size // 8) * 8, hashmap)
        hashed = dense_size > hashmap
        # the largest vertex coordinate reached for x in [0, 1] is floor(scale + 0.5) + 1
        wraps = (not hashed) and (math.floor(scale + 0.5) + 1 > res - 1)
        levels.append(GridLevel(scale, res, size, offset, hashed, wraps))
        offset += size
    return levels


class HashGridSampler(GridSampler):
    """Corners and weights of the hash grid's levels (see the module docstring)."""

    def __init__(self, n_dims: int, levels: List[GridLevel], log2_hashmap_size: int, smoothstep: bool):
        if n_dims > len(HASH_PRIMES):
            raise ValueError(f"hash grid supports at most {len(HASH_PRIMES)} input dims, got {n_dims}")
        self.n_dims = n_dims
        self.levels = levels
        self.mask = (1 << log2_hashmap_size) - 1
        self.smoothstep = smoothstep
        hashed = [lv.hashed for lv in levels]
        # resolutions grow with the level, so dense levels come first
        self.n_dense = hashed.index(True) if True in hashed else len(levels)
        if any(hashed[: self.n_dense]) or not all(hashed[self.n_dense :]):
            raise ValueError("hash grid levels must be dense first, then hashed (per_level_scale >= 1)")
        self._meta: Dict[Tuple[torch.device, torch.dtype], Dict[str, torch.Tensor]] = {}
        self._kernel_meta: Dict[torch.device, Tuple[torch.Tensor, ...]] = {}

    def n_out_groups(self, n_groups: int) -> int:
        return n_groups

    def n_corners(self) -> int:
        return 1 << self.n_dims

    def meta(self, device: torch.device, dtype: torch.dtype) -> Dict[str, torch.Tensor]:
        key = (device, dtype)
        if key not in self._meta:
            with torch.inference_mode(False):  # cached: must also serve calls recorded by autograd
                self._meta[key] = self._make_meta(device, dtype)
        return self._meta[key]

    def _make_meta(self, device: torch.device, dtype: torch.dtype) -> Dict[str, torch.Tensor]:
        lv = self.levels
        D = self.n_dims
        strides = [[lvl.resolution**d for d in range(D)] for lvl in lv]
        return {
            "scale": torch.tensor([lvl.scale for lvl in lv], dtype=dtype, device=device),
            "offset": torch.tensor([lvl.offset for lvl in lv], dtype=torch.int32, device=device),
            "size": torch.tensor([lvl.size for lvl in lv], dtype=torch.int32, device=device),
            "stride": torch.tensor(strides, dtype=torch.int32, device=device),
            # the primes as int32 bit patterns (two's complement of the uint32 values)
            "primes": torch.tensor(
                [p - (1 << 32) if p >= 1 << 31 else p for p in HASH_PRIMES[:D]],
                dtype=torch.int32,
                device=device,
            ),
        }

    def kernel_meta(self, device: torch.device) -> Tuple[torch.Tensor, ...]:
        """Per-level tables for kernels: scale [L] float32, offset, size, resolution, hashed [L] int32."""
        if device not in self._kernel_meta:
            lv = self.levels
            i32 = dict(dtype=torch.int32, device=device)
            with torch.inference_mode(False):
                self._kernel_meta[device] = (
                    torch.tensor([lvl.scale for lvl in lv], dtype=torch.float32, device=device),
                    torch.tensor([lvl.offset for lvl in lv], **i32),
                    torch.tensor([lvl.size for lvl in lv], **i32),
                    torch.tensor([lvl.resolution for lvl in lv], **i32),
                    torch.tensor([int(lvl.hashed) for lvl in lv], **i32),
                )
        return self._kernel_meta[device]

    def corners(self, x, n_groups, need_dw):
        C, D = x.shape
        L = n_groups
        m = self.meta(x.device, x.dtype)
        scale = m["scale"][:L]
        xt = x.t()  # [D, C]
        # NaN would index outside the table: it samples at 0 instead
        pos = torch.nan_to_num(xt, nan=0.0).clamp_(0.0, 1.0).unsqueeze(-1) * scale + 0.5  # [D, C, L]
        fl = torch.floor(pos)
        f = pos - fl
        ci = fl.to(torch.int32)
        s = f * f * (3.0 - 2.0 * f) if self.smoothstep else f
        ds = None
        if need_dw:
            inside = ((xt >= 0) & (xt <= 1)).to(x.dtype).unsqueeze(-1)  # clamp: no gradient outside
            ds = (6.0 * f * (1.0 - f)) * scale if self.smoothstep else scale.expand_as(f)
            ds = ds * inside
        w, dw = nlinear_weights(s, ds)  # [K, C, L], [D, K, C, L]
        K = 1 << D
        idx = torch.empty(K, C, L, dtype=torch.int32, device=x.device)
        Ld = min(L, self.n_dense)
        if Ld > 0:
            stride = m["stride"][:Ld].t().unsqueeze(1)  # [D, 1, Ld]
            t = ci[:, :, :Ld] * stride
            terms = torch.stack([t, t + stride], dim=1)  # [D, 2, C, Ld]
            wraps = any(lv.wraps for lv in self.levels[:Ld])
            if not wraps:
                terms[0] += m["offset"][:Ld]
            out = idx[:, :, :Ld]
            combine_corner_terms(terms, "add", out)
            if wraps:
                torch.remainder(out, m["size"][:Ld], out=out)
                out.add_(m["offset"][:Ld])
        if L > Ld:
            # int32 products wrap around like tiny-cuda-nn's uint32 ones; the low
            # log2_hashmap_size bits, all that the mask keeps, are the same
            hp = ci[:, :, Ld:L] * m["primes"].view(D, 1, 1)
            h = torch.stack([hp, hp + m["primes"].view(D, 1, 1)], dim=1).bitwise_and_(self.mask)
            out = idx[:, :, Ld:L]
            combine_corner_terms(h, "xor", out)
            out.add_(m["offset"][Ld:L])
        return idx, w, dw
