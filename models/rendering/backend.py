"""Choosing the implementation behind the rendering functions.

Two backends share one API: ``"torch"`` (pure PyTorch, any device, autograd) and ``"nerfacc"``
(nerfacc 0.5.x CUDA kernels, only for CUDA tensors). ``"auto"`` picks nerfacc when the tensors are
on CUDA and nerfacc imports, the torch backend otherwise. nerfacc is imported lazily, so importing
``models.rendering`` never needs it.
"""
from __future__ import annotations

import functools
from typing import Literal, Optional, Union

import torch

BackendName = Literal["auto", "torch", "nerfacc"]
ResolvedBackend = Literal["torch", "nerfacc"]

_MIN_NERFACC = (0, 5)


@functools.lru_cache(maxsize=None)
def _nerfacc_status() -> Optional[str]:
    """None when a usable nerfacc (>= 0.5) imports, else the reason it cannot be used."""
    try:
        import nerfacc  # noqa: F401
    except Exception as err:  # ImportError, or a broken CUDA extension build
        return f"nerfacc does not import ({type(err).__name__}: {err})"
    version = getattr(nerfacc, "__version__", "0")
    try:
        major_minor = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        major_minor = (0, 0)
    if major_minor < _MIN_NERFACC:
        return f"nerfacc {version} is installed but >= 0.5 is required"
    return None


def nerfacc_available() -> bool:
    """Whether nerfacc (>= 0.5) imports in this process. Cached after the first call."""
    return _nerfacc_status() is None


def resolve_backend(name: BackendName, device: Union[torch.device, str, None]) -> ResolvedBackend:
    """The backend to use for tensors on ``device``.

    ``"torch"`` -> "torch"; ``"auto"`` -> "nerfacc" if the device is CUDA and nerfacc imports, else
    "torch"; ``"nerfacc"`` -> "nerfacc", or a RuntimeError saying why it cannot be used.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    if name == "torch":
        return "torch"
    if name == "auto":
        return "nerfacc" if device.type == "cuda" and nerfacc_available() else "torch"
    if name == "nerfacc":
        if device.type != "cuda":
            raise RuntimeError(
                f"backend='nerfacc' needs CUDA tensors, but they are on '{device}'; "
                "use backend='torch' or 'auto'"
            )
        reason = _nerfacc_status()
        if reason is not None:
            raise RuntimeError(f"backend='nerfacc' cannot be used: {reason}; use backend='torch' or 'auto'")
        return "nerfacc"
    raise ValueError(f"unknown rendering backend '{name}'; choose one of 'auto', 'torch', 'nerfacc'")
