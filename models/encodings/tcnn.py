"""Running tiny-cuda-nn kernels on the toolkit's own parameters.

The modules that can use tiny-cuda-nn (the hash grid, ``tcnn-mlp``) keep their parameters in
tiny-cuda-nn's layout as ordinary ``nn.Parameter``s, so what is trained and saved never depends on
what is installed. Per call, when the inputs are on CUDA, tinycudann is usable and the config's
``backend`` allows it (``utils.backends.choose``), the tiny-cuda-nn kernel is run with that very
parameter tensor through tinycudann's autograd function, ``tinycudann.modules._module_function``
(an internal API: the README pins the tiny-cuda-nn version it was checked against, v2.0).

The native module is built lazily, once per device, from a throw-away ``tinycudann.Encoding`` /
``Network`` and kept in a ``KernelCache`` outside the module tree: not in the state dict, not
pickled or copied (a copy builds its own on first use).

tiny-cuda-nn's input rules are met here: float32 inputs [B, D], contiguous, B a multiple of 256
(padded, then the output is sliced back), parameters contiguous in the module's precision.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict

import torch
import torch.nn.functional as F

from utils import backends

# tiny-cuda-nn's BATCH_SIZE_GRANULARITY (common.h): batches must be a multiple of it
BATCH_GRANULARITY = 256


@dataclasses.dataclass
class TcnnKernel:
    """One native tiny-cuda-nn module and what calling it needs."""

    native: object  # the module's native_tcnn_module
    param_dtype: torch.dtype  # precision its parameters are passed in
    loss_scale: float
    n_params: int
    n_output_dims: int  # as the module reports it (networks: before padding to 16)


class KernelCache:
    """Native tiny-cuda-nn modules by device, kept outside the nn.Module tree."""

    def __init__(self) -> None:
        self._kernels: Dict[torch.device, TcnnKernel] = {}

    def get(self, device: torch.device, build: Callable[[], torch.nn.Module]) -> TcnnKernel:
        """The kernel for ``device``, built on first use from ``build()`` (a tinycudann Module)."""
        if device not in self._kernels:
            if device.type == "cuda":
                with torch.cuda.device(device):
                    module = build()
            else:  # stand-ins in tests
                module = build()
            self._kernels[device] = TcnnKernel(
                native=module.native_tcnn_module,
                param_dtype=module.dtype,
                loss_scale=module.loss_scale,
                n_params=module.params.numel(),
                n_output_dims=module.n_output_dims,
            )
            # the Python module (and its own initial parameters) is dropped; the native one lives on
        return self._kernels[device]

    def __getstate__(self) -> dict:  # native modules are neither pickled nor copied
        return {}

    def __setstate__(self, state: dict) -> None:
        self._kernels = {}


def run_kernel(kernel: TcnnKernel, x: torch.Tensor, params: torch.Tensor, n_out: int) -> torch.Tensor:
    """x [N, I] and the flat parameters params [P] -> float32 [N, n_out] through the kernel."""
    if params.numel() != kernel.n_params:
        raise RuntimeError(
            f"tiny-cuda-nn expects {kernel.n_params} parameters but the module has {params.numel()}; "
            "the installed tiny-cuda-nn lays them out differently from the version the README pins"
        )
    n = x.shape[0]
    pad = (-n) % BATCH_GRANULARITY
    xp = F.pad(x, (0, 0, 0, pad)) if pad else x
    fn = backends.library("tcnn").modules._module_function
    out = fn.apply(kernel.native, xp.to(torch.float32).contiguous(),
                   params.reshape(-1).to(kernel.param_dtype).contiguous(), kernel.loss_scale)
    return out[:n, :n_out].float()
