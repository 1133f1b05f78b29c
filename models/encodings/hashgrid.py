"""Multiresolution hash grid (Instant-NGP) and its progressive variant.

One parameter, ``table``, whatever is installed; the kernel is chosen per call (config
``backend``, see ``utils.backends.choose``): PyTorch (``grid_gather``, any device), tiny-cuda-nn's
HashGrid run on this very table (CUDA, ``models/encodings/tcnn.py``), the Triton kernels
(CUDA, ``models/encodings/triton_hashgrid.py``) or the C++ kernels (CPU,
``models/encodings/cpu_hashgrid.py``, built on first use with the machine's compiler). "auto"
prefers tiny-cuda-nn, then Triton, for CUDA inputs, and the C++ kernels for CPU inputs.
tiny-cuda-nn gives no explicit jacobian: ``has_explicit_jacobian`` tells geometries to take
gradients by autograd instead (its grid encodings support double backward).

Layout and indexing follow tiny-cuda-nn's "HashGrid" encoding, so all three compute one function
of one table:

- level ``l`` has scale ``s_l = base_resolution * per_level_scale^l - 1`` (float32 math) and
  ``R_l = ceil(s_l) + 1`` lattice vertices per axis; a point maps to ``p = x * s_l + 0.5``,
  its cell is ``floor(p)`` and its fraction ``p - floor(p)``;
- the level holds ``min(next_multiple_of_8(R_l^D), 2^log2_hashmap_size)`` entries; when
  ``R_l^D`` fits in the table the level is dense (index ``sum_d c_d R_l^d``, modulo the level
  size: vertex ``R_l`` can occur at the upper edge and wraps, as in tiny-cuda-nn), otherwise
  the spatial hash ``xor_d (c_d * prime_d) mod 2^log2_hashmap_size`` with primes
  (1, 2654435761, 805459861, ...);
- one flattened table ``[sum of level sizes, n_features_per_level]``, levels one after the
  other; output features are level-major: ``out[:, l * F_l + f]``.

Inputs are clamped to [0, 1] (the gradient is zero outside); NaN inputs sample at 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Literal, Optional, Tuple

import torch
from torch import nn

from models.encodings import register
from models.encodings.base import Encoding, on_empty_batch
from models.encodings.gather import grid_gather
from models.encodings.hashgrid_layout import HashGridSampler, hash_grid_levels
from models.encodings.tcnn import KernelCache, run_kernel
from utils import backends
from utils.config import at_least, checked, in_range, key_of, non_negative, positive

# kernel backends of the hash grid, in the order "auto" tries them: for CUDA and for CPU tensors
KERNELS = ("tcnn", "triton")
CPU_KERNELS = ("cpp",)


def _gather_function(kernel: str):
    """``grid_gather``'s signature, computed by ``kernel`` ("torch", "triton" or "cpp"; a kernel's
    module is imported only when a call takes it)."""
    if kernel == "triton":
        from models.encodings.triton_hashgrid import hashgrid_gather

        return hashgrid_gather
    if kernel == "cpp":
        from models.encodings.cpu_hashgrid import hashgrid_gather

        return hashgrid_gather
    return grid_gather


def _per_level_scale(cfg) -> float:
    if cfg.finest_resolution is not None:
        if cfg.n_levels < 2:
            return 1.0
        return math.exp(math.log(cfg.finest_resolution / cfg.base_resolution) / (cfg.n_levels - 1))
    return cfg.per_level_scale


@register("hashgrid")
class HashGrid(Encoding):
    """Multiresolution hash grid: x [N, D] in [0, 1]^D -> [N, n_levels * n_features_per_level]."""

    @dataclass
    class Config:
        n_levels: int = checked(at_least(1), default=16)
        n_features_per_level: int = checked(at_least(1), default=2)
        log2_hashmap_size: int = checked(in_range(1, 30), default=19)
        base_resolution: int = checked(at_least(1), default=16)
        per_level_scale: float = checked(at_least(1), default=1.447269237440378)
        # if set, per_level_scale = (finest_resolution / base_resolution) ** (1 / (n_levels - 1))
        finest_resolution: Optional[float] = checked(positive(), default=None)
        # parameters start uniform in [-init_std, init_std] (as iNGP)
        init_std: float = checked(non_negative(), default=1e-4)
        interpolation: Literal["linear", "smoothstep"] = "linear"
        # per call: "auto" = tiny-cuda-nn, else Triton, for CUDA inputs and the C++ kernels for CPU
        # inputs when usable, else PyTorch; "torch" / "tcnn" / "triton" / "cpp" force one (the
        # parameters are the same for all)
        backend: Literal["auto", "torch", "tcnn", "triton", "cpp"] = "auto"

        def check(self) -> Iterator[Tuple[str, str]]:
            if self.finest_resolution is not None and self.finest_resolution < self.base_resolution:
                yield "finest_resolution", (f"must be >= base_resolution ({self.base_resolution}), "
                                            f"got {self.finest_resolution}")

    def __init__(self, cfg: "HashGrid.Config", n_input_dims: int = 3):
        super().__init__()
        self.cfg = cfg
        self.n_input_dims = n_input_dims
        self.n_levels = cfg.n_levels
        self.n_features_per_level = cfg.n_features_per_level
        self.n_output_dims = cfg.n_levels * cfg.n_features_per_level
        if not 1 <= cfg.log2_hashmap_size <= 30:
            raise ValueError(f"hashgrid: log2_hashmap_size must be in 1..30, got {cfg.log2_hashmap_size}")
        if cfg.n_levels < 1 or cfg.n_features_per_level < 1 or cfg.base_resolution < 1:
            raise ValueError("hashgrid: n_levels, n_features_per_level and base_resolution must be >= 1")
        self.per_level_scale = _per_level_scale(cfg)
        if self.per_level_scale < 1.0:
            raise ValueError(f"hashgrid: per_level_scale must be >= 1, got {self.per_level_scale}")
        self.levels = hash_grid_levels(
            n_input_dims, cfg.n_levels, cfg.log2_hashmap_size, cfg.base_resolution, self.per_level_scale
        )
        n_entries = self.levels[-1].offset + self.levels[-1].size
        if n_entries * cfg.n_features_per_level >= 2**31:
            raise ValueError("hash grid table too large for int32 indexing")
        self.sampler = HashGridSampler(
            n_input_dims, self.levels, cfg.log2_hashmap_size, cfg.interpolation == "smoothstep"
        )
        self.table = nn.Parameter(torch.empty(n_entries, cfg.n_features_per_level))
        nn.init.uniform_(self.table, -cfg.init_std, cfg.init_std)
        self.backend_key = key_of(cfg, "backend", "hashgrid")
        self._tcnn_kernels = KernelCache()

    # ------------------------------------------------------------------ kernel choice
    def backend_for(self, x: torch.Tensor) -> str:
        """The implementation this call takes for points x [N, D]: "torch", "tcnn", "triton" or "cpp"."""
        choice = backends.choose(
            self.cfg.backend, x.device, key=self.backend_key, kernels=KERNELS, cpu_kernels=CPU_KERNELS, veto=self._veto
        )
        if choice == "triton":
            from models.encodings.triton_hashgrid import kernels_work

            reason = kernels_work(x.device, self.n_features_per_level, self.sampler.smoothstep)
            if reason is not None:  # found once, on the first call on this device
                if self.cfg.backend == "triton":
                    raise backends.BackendError(f"{self.backend_key}='triton' cannot be used: {reason}")
                backends.disable("triton", reason)
                return self.backend_for(x)
        return choice

    def _veto(self, name: str) -> Optional[str]:
        """Why the kernel ``name`` cannot compute this grid (None if it can)."""
        if name == "tcnn":
            if self.n_input_dims not in (2, 3, 4):
                return f"tiny-cuda-nn's hash grid takes 2- to 4-D points, not {self.n_input_dims}-D"
            if self.n_features_per_level not in (1, 2, 4, 8):
                return f"tiny-cuda-nn's hash grid takes 1, 2, 4 or 8 features per level, not {self.n_features_per_level}"
            return None
        if name == "cpp":
            from models.encodings import cpu_hashgrid

            return cpu_hashgrid.supports(self.n_input_dims, self.n_features_per_level, self.table.dtype) or (
                cpu_hashgrid.unavailable_reason()  # builds the kernels on the first call
            )
        from models.encodings.triton_hashgrid import supports  # triton is usable when asked

        return supports(self.n_input_dims, self.n_features_per_level, self.table.dtype)

    def has_explicit_jacobian(self, x: torch.Tensor) -> bool:
        """False when this call runs on tiny-cuda-nn, which computes no jacobian."""
        return self.backend_for(x) != "tcnn"

    def level_resolution(self, level: int) -> float:
        """The nominal resolution of a level, base_resolution * per_level_scale^level."""
        return self.cfg.base_resolution * self.per_level_scale**level

    def tcnn_config(self) -> dict:
        """tiny-cuda-nn's encoding config of this grid (same layout as ``table``)."""
        return {
            "otype": "HashGrid",
            "n_levels": self.cfg.n_levels,
            "n_features_per_level": self.cfg.n_features_per_level,
            "log2_hashmap_size": self.cfg.log2_hashmap_size,
            "base_resolution": self.cfg.base_resolution,
            "per_level_scale": self.per_level_scale,
            "interpolation": "Smoothstep" if self.cfg.interpolation == "smoothstep" else "Linear",
        }

    def _n_active(self) -> int:
        return self.n_levels

    def _pad(self, feats: torch.Tensor, n_active: int) -> torch.Tensor:
        """[..., n_active * F] -> [..., n_levels * F] with zeros for inactive levels (last dim)."""
        if n_active == self.n_levels:
            return feats
        pad = self.n_output_dims - feats.shape[-1]
        return torch.nn.functional.pad(feats, (0, pad))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, D] in [0, 1]^D -> features [N, F]."""
        if x.shape[0] == 0:
            return on_empty_batch(self.forward, x)
        kernel = self.backend_for(x)
        if kernel == "tcnn":
            return self._tcnn_forward(x)
        n_active = self._n_active()
        feats, _ = _gather_function(kernel)(x, self.table, self.sampler, n_active)
        return self._pad(feats.reshape(x.shape[0], -1), n_active)

    def forward_with_jacobian(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """x [N, D] -> (features [N, F], d features / d x [N, F, D] (a permuted view)).

        On a call that ``backend_for`` sends to tiny-cuda-nn (no jacobian there) this computes
        with PyTorch, from the same table (geometries avoid that: see ``has_explicit_jacobian``).
        """
        if x.shape[0] == 0:
            return on_empty_batch(self.forward_with_jacobian, x)
        n_active = self._n_active()
        N, D = x.shape
        gather = _gather_function(self.backend_for(x))
        feats, jac = gather(x, self.table, self.sampler, n_active, with_jac=True)
        feats = self._pad(feats.reshape(N, -1), n_active)
        jac = self._pad(jac.reshape(D, N, -1), n_active).permute(1, 2, 0)
        return feats, jac

    def _tcnn_forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, D] -> [N, F] by tiny-cuda-nn's HashGrid on ``table``; inactive levels zeroed."""
        tcnn = backends.library("tcnn")
        kernel = self._tcnn_kernels.get(
            x.device, lambda: tcnn.Encoding(self.n_input_dims, self.tcnn_config(), dtype=torch.float32)
        )
        # tiny-cuda-nn does not clamp: clamp (and zero NaN) as the PyTorch path does, which also
        # gives the same zero gradient outside [0, 1]
        xc = torch.nan_to_num(x, nan=0.0).clamp(0.0, 1.0)
        out = run_kernel(kernel, xc, self.table, self.n_output_dims)
        n_active = self._n_active()
        if n_active < self.n_levels:
            out = out * self._level_mask(x)
        return out

    def _level_mask(self, x: torch.Tensor) -> torch.Tensor:
        n_active = self._n_active()
        mask = torch.zeros(self.n_output_dims, dtype=torch.float32, device=x.device)
        mask[: n_active * self.n_features_per_level] = 1
        return mask

    def extra_repr(self) -> str:
        n_dense = self.sampler.n_dense
        return (
            f"{super().extra_repr()}, levels={self.n_levels} ({n_dense} dense), "
            f"features_per_level={self.n_features_per_level}, "
            f"resolutions={self.levels[0].resolution}..{self.levels[-1].resolution}, "
            f"backend={self.cfg.backend}"
        )


@register("progressive-hashgrid")
class ProgressiveHashGrid(HashGrid):
    """Hash grid whose finer levels are switched on during training.

    ``start_level`` levels are active until ``start_step``; then one more level every
    ``update_steps`` steps. Inactive levels output zeros (and are not computed).
    """

    @dataclass
    class Config(HashGrid.Config):
        start_level: int = checked(at_least(1), default=4)  # (more than n_levels: all from the start)
        start_step: int = checked(at_least(0), default=0)
        update_steps: int = checked(at_least(1), default=1000)

    def __init__(self, cfg: "ProgressiveHashGrid.Config", n_input_dims: int = 3):
        super().__init__(cfg, n_input_dims)
        if cfg.update_steps < 1:
            raise ValueError("progressive-hashgrid: update_steps must be >= 1")
        self.current_level = min(max(cfg.start_level, 1), self.n_levels)

    def _n_active(self) -> int:
        return self.current_level

    def update_step(self, epoch: int, global_step: int) -> None:
        cfg = self.cfg
        extra = max(global_step - cfg.start_step, 0) // cfg.update_steps
        self.current_level = min(max(cfg.start_level, 1) + extra, self.n_levels)

    @property
    def finest_active_resolution(self) -> float:
        """Nominal resolution of the finest active level (e.g. for a finite-difference step)."""
        return self.level_resolution(self.current_level - 1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, active_levels={self.current_level}"
