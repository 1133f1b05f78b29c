"""Optional tiny-cuda-nn backend for the hash grid encodings.

tiny-cuda-nn is imported lazily; it is used only when it imports, CUDA is present and the
config's ``backend`` allows it ("auto" or "tcnn"). Otherwise the PyTorch implementation is
used, with a one-line notice (logged once per reason).
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Optional

import torch

logger = logging.getLogger(__name__)
_noticed: set = set()


def notice_once(message: str, level: int = logging.INFO) -> None:
    """Log ``message`` once per process."""
    if message not in _noticed:
        _noticed.add(message)
        logger.log(level, message)


@functools.lru_cache(maxsize=None)
def tcnn_available() -> bool:
    """Whether ``tinycudann`` imports (it needs CUDA to be useful)."""
    try:
        import tinycudann  # noqa: F401
    except Exception:  # ImportError, or a broken CUDA install raising on import
        return False
    return True


def use_tcnn(backend: str, what: str) -> bool:
    """Whether to build the tiny-cuda-nn version of ``what`` for the config value ``backend``."""
    if backend == "torch":
        return False
    ok = tcnn_available() and torch.cuda.is_available()
    if not ok:
        reason = "tinycudann is not installed" if not tcnn_available() else "CUDA is not available"
        level = logging.WARNING if backend == "tcnn" else logging.INFO
        notice_once(f"{what}: {reason}; using the PyTorch implementation (backend={backend})", level)
    return ok


def make_tcnn_encoding(module: Any, backend: str) -> Optional[torch.nn.Module]:
    """A ``tinycudann.Encoding`` equivalent to ``module`` (which has ``tcnn_config()``), or None."""
    if not use_tcnn(backend, type(module).__name__):
        return None
    import tinycudann as tcnn

    return tcnn.Encoding(module.n_input_dims, module.tcnn_config(), dtype=torch.float32)


def tcnn_encode(enc: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x [N, D] in [0, 1]^D -> float32 features [N, F] from a tiny-cuda-nn encoding."""
    return enc(x.contiguous()).float()


def tcnn_no_jacobian(module: Any) -> None:
    raise NotImplementedError(
        f"{type(module).__name__} with the tiny-cuda-nn backend has no explicit jacobian; "
        "use grad_type 'finite_difference' or 'autograd' for normals, or set backend: torch"
    )


def copy_params_to_tcnn(table: torch.Tensor, enc: torch.nn.Module) -> None:
    """Write a PyTorch hash grid table [T, F] into a tiny-cuda-nn HashGrid's parameters.

    Both lay levels out one after the other with features contiguous per entry.
    """
    with torch.no_grad():
        flat = table.detach().reshape(-1)
        enc.params.data[: flat.numel()] = flat.to(enc.params.device, enc.params.dtype)
