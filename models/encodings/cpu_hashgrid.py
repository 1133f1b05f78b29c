"""The hash grid's CPU kernels (``csrc/hashgrid_cpu.cpp``): the same function as ``HashGridSampler``
with ``grid_gather`` (see hashgrid.py for the layout), in one pass per point and level.

- forward: features [N, L, F] and, optionally, their jacobian [3, N, L, F] with respect to x;
- backward: the table gradient (from the features' and the jacobian's gradients; each level's
  rows are summed by one thread in point order, so the result is the same for any thread count)
  and the input gradient from the features' gradient.

Second derivatives go through the differentiable PyTorch reference (``hashgrid_kernels.py``, the
autograd wrapper shared with the Triton kernels).

The library is built on first use with the machine's C++ compiler (``$CXX``, else ``c++`` or
``g++``; a few seconds, once) into a cache folder (``$NSR_KERNEL_CACHE``, else
``~/.cache/neural-surface/kernels``), keyed by the source, the compiler and the machine, and
loaded with ctypes: no PyTorch headers are needed, and no Python package is built. Without a
compiler ``unavailable_reason`` says so and the hash grid uses PyTorch.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Optional

import torch

from models.encodings.hashgrid_kernels import KernelPair

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "hashgrid_cpu.cpp"
ABI_VERSION = 1
SUPPORTED_FEATURES = (1, 2, 4, 8)
CACHE_ENV = "NSR_KERNEL_CACHE"
# -ffp-contract=off: no fused multiply-adds, so a point lands in the same cell as on PyTorch's path
CXX_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-pthread", "-ffp-contract=off")
BUILD_TIMEOUT_S = 120

_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_reason: Optional[str] = None
_tried = False


def supports(n_dims: int, n_features: int, table_dtype: torch.dtype) -> Optional[str]:
    """None when the kernels cover a hash grid of these options, else why not."""
    if n_dims != 3:
        return f"the CPU kernels take 3-D points, not {n_dims}-D"
    if n_features not in SUPPORTED_FEATURES:
        return f"the CPU kernels take 1, 2, 4 or 8 features per level, not {n_features}"
    if table_dtype != torch.float32:
        return f"the CPU kernels take a float32 table, not {table_dtype}"
    return None


def _compiler() -> Optional[str]:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def cache_dir() -> Path:
    """Where built libraries are kept."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "neural-surface" / "kernels"


def _build(cxx: str) -> Path:
    """Compile the source (once per source, compiler and machine) -> the library's path."""
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256(
        SOURCE.read_bytes() + "\0".join([cxx, version, *CXX_FLAGS, platform.machine()]).encode()
    ).hexdigest()[:16]
    target = cache_dir() / f"hashgrid_cpu-{key}.so"
    if target.exists():
        return target
    logger.info("hash grid: building its C++ CPU kernels with %s (once per machine, a few seconds) into %s",
                cxx, target.parent)
    target.parent.mkdir(parents=True, exist_ok=True)
    # build beside the target and rename: a concurrent run never loads a half-written file
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run(
            [cxx, *CXX_FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S
        )
        if done.returncode != 0:
            raise RuntimeError(f"{cxx} failed: {(done.stderr.strip().splitlines() or ['?'])[-1][:300]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def _load() -> ctypes.CDLL:
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found ($CXX, c++, g++ or clang++)")
    lib = ctypes.CDLL(str(_build(cxx)))
    if lib.hg_abi_version() != ABI_VERSION:
        raise RuntimeError(f"the built library has ABI {lib.hg_abi_version()}, expected {ABI_VERSION}")
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.hg_forward.argtypes = [p, i64, p, i32, p, p, p, p, p, i32, i32, p, p, i32]
    lib.hg_forward.restype = i32
    lib.hg_backward.argtypes = [p, i64, p, i32, p, p, p, p, p, i32, i32, p, p, p, p, i32]
    lib.hg_backward.restype = i32
    return lib


def unavailable_reason() -> Optional[str]:
    """None when the kernels are built and loaded (built on the first call), else why not."""
    global _lib, _reason, _tried
    with _lock:
        if not _tried:
            _tried = True
            try:
                _lib = _load()
                logger.info("hash grid: using its C++ CPU kernels for CPU tensors (model's backend: auto or cpp)")
            except Exception as err:  # no compiler, a failed build, an unloadable library
                _reason = f"its CPU kernels could not be built ({type(err).__name__}: {err})"
    return _reason


def _library() -> ctypes.CDLL:
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(reason)
    return _lib


def _ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _level_tables(sampler) -> list:
    """Pointers to the per-level tables (scale, offset, size, resolution, hashed); the sampler
    caches those tensors, so they outlive the call."""
    return [t.data_ptr() for t in sampler.kernel_meta(torch.device("cpu"))]


def _check(code: int, what: str) -> None:
    if code != 0:
        raise RuntimeError(f"hash-grid CPU kernel {what} failed (code {code})")


def _forward(xk, tk, sampler, n_levels, feats, jac) -> None:
    """Run the forward kernel (see hashgrid_kernels.py)."""
    code = _library().hg_forward(
        _ptr(xk), xk.shape[0], _ptr(tk), tk.shape[1], *_level_tables(sampler), n_levels,
        int(sampler.smoothstep), _ptr(feats), _ptr(jac), torch.get_num_threads(),
    )
    _check(code, "forward")


def _backward(xk, tk, sampler, n_levels, gf, gj, gt, gx) -> None:
    """Run the backward kernel (see hashgrid_kernels.py)."""
    code = _library().hg_backward(
        _ptr(xk), xk.shape[0], _ptr(tk), tk.shape[1], *_level_tables(sampler), n_levels,
        int(sampler.smoothstep), _ptr(gf), _ptr(gj), _ptr(gt), _ptr(gx), torch.get_num_threads(),
    )
    _check(code, "backward")


KERNELS = KernelPair("_HashGridCPU", _forward, _backward)
# ``grid_gather`` for a hash grid on CPU tensors, by the C++ kernels (see KernelPair.gather)
hashgrid_gather = KERNELS.gather
