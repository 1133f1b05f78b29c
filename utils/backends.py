"""Optional accelerators: which ones are usable (found once), and which one a call takes (per call).

The toolkit's PyTorch code runs everywhere. Four optional libraries, and C++ kernels built on
first use, can take over parts of it:

| backend       | import        | used for                                  | detected by                        |
|---------------|---------------|-------------------------------------------|------------------------------------|
| ``nerfacc``   | ``nerfacc``   | ray marching and compositing (CUDA)       | ``NERFACC_NEEDS`` + its CUDA build |
| ``tcnn``      | ``tinycudann``| hash-grid encoding, ``tcnn-mlp`` (CUDA)   | ``TCNN_NEEDS``                     |
| ``triton``    | ``triton``    | hash-grid encoding kernels (CUDA)         | ``TRITON_NEEDS``                   |
| ``torchmcubes``| ``torchmcubes``| marching cubes (CPU or CUDA)             | ``TORCHMCUBES_NEEDS``              |
| ``cpp``       | (built here)  | hash-grid encoding kernels (CPU)          | the caller's veto (a C++ compiler) |

A library counts as usable when it imports and has every function the toolkit calls in it, not
by its version number (nerfacc 0.4 and 0.5 share version-like names but not signatures; no
released nerfacc has ``nerfacc.losses``). The result is cached per process; ``clear_cache()``
forgets it (tests install stand-ins and call it).

``choose(requested, device, key=..., kernels=..., cpu_kernels=...)`` picks the implementation of
one call: ``"torch"`` always means PyTorch; ``"auto"`` takes the first usable kernel for tensors on
a CUDA device, the first usable CPU kernel (the hash grid's C++ kernels, ``cpp``, built by the
caller's ``veto`` probe) for CPU tensors, and PyTorch otherwise, with a one-line notice (once per
reason) when it falls back; naming a kernel forces it, and a call that cannot use it raises
``BackendError`` naming the config key. ``NSR_DISABLE_BACKENDS=nerfacc,tcnn`` (environment) makes
the named backends count as unusable, e.g. to rule out a broken install without removing it.
Nothing here imports from ``datasets/``, ``models/`` or ``systems/``.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
import threading
import types
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple, Union

import torch

logger = logging.getLogger(__name__)

# what the toolkit calls in each library (dotted paths below the top-level module)
NERFACC_NEEDS = ("traverse_grids", "render_transmittance_from_alpha", "render_weight_from_density",
                 "accumulate_along_rays")
TCNN_NEEDS = ("Encoding", "Network", "modules._module_function")
TRITON_NEEDS = ("jit", "cdiv", "language.program_id", "language.atomic_add")
TORCHMCUBES_NEEDS = ("marching_cubes",)

# backend name -> (module to import, attributes it must have)
LIBRARIES: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    "nerfacc": ("nerfacc", NERFACC_NEEDS),
    "tcnn": ("tinycudann", TCNN_NEEDS),
    "triton": ("triton", TRITON_NEEDS),
    "torchmcubes": ("torchmcubes", TORCHMCUBES_NEEDS),
}

DISABLE_ENV = "NSR_DISABLE_BACKENDS"

# device types whose tensors may go to a kernel backend. Tests add "cpu" to send CPU tensors
# through the kernel paths of stand-in libraries (tests/stand_ins); nothing else changes it.
KERNEL_DEVICE_TYPES: Tuple[str, ...] = ("cuda",)


class BackendError(RuntimeError):
    """A backend named in the config cannot be used for this call (the message names the key)."""


_status: Dict[str, Optional[str]] = {}  # backend -> None (usable) or the reason it is not
_modules: Dict[str, object] = {}
_device_status: Dict[str, Optional[str]] = {}  # backend -> reason its device code cannot run
_noticed: set = set()


def clear_cache() -> None:
    """Forget every detection result and notice (for tests that install or remove libraries)."""
    _status.clear()
    _modules.clear()
    _device_status.clear()
    _noticed.clear()


def notice_once(message: str, level: int = logging.INFO) -> None:
    """Log ``message`` once per process (until ``clear_cache``)."""
    if message not in _noticed:
        _noticed.add(message)
        logger.log(level, message)


def _resolve(module: object, dotted: str) -> bool:
    """Whether ``module`` has the attribute path ``dotted`` (importing submodules on the way)."""
    obj = module
    for part in dotted.split("."):
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        if not isinstance(obj, types.ModuleType):
            return False
        try:  # a submodule its package does not import
            obj = importlib.import_module(f"{obj.__name__}.{part}")
        except Exception:
            return False
    return True


def disabled_reason(name: str) -> Optional[str]:
    """``"disabled by NSR_DISABLE_BACKENDS"`` when the environment names backend ``name``, else None."""
    if name in {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",")}:
        return f"disabled by {DISABLE_ENV}"
    return None


def _detect(name: str) -> Optional[str]:
    if name not in LIBRARIES:
        raise ValueError(f"unknown optional library '{name}'; known: {', '.join(LIBRARIES)}")
    module_name, needs = LIBRARIES[name]
    disabled = disabled_reason(name)
    if disabled is not None:
        return disabled
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        if getattr(err, "name", None) == module_name:
            return f"{module_name} is not installed"
        return f"{module_name} does not import ({type(err).__name__}: {err})"
    except Exception as err:  # e.g. tinycudann raises EnvironmentError without CUDA
        return f"{module_name} does not import ({type(err).__name__}: {err})"
    missing = [attr for attr in needs if not _resolve(module, attr)]
    if missing:
        version = getattr(module, "__version__", "?")
        return f"{module_name} {version} lacks {', '.join(missing)}"
    _modules[name] = module
    return None


def unavailable_reason(name: str) -> Optional[str]:
    """None when the library behind backend ``name`` is usable, else why not (cached)."""
    if name not in _status:
        _status[name] = _detect(name)
    return _status[name]


def available(name: str) -> bool:
    """Whether the library behind backend ``name`` imports with everything the toolkit calls."""
    return unavailable_reason(name) is None


def library(name: str):
    """The imported library behind backend ``name``, or None when it is not usable."""
    return _modules.get(name) if available(name) else None


def disable(name: str, reason: str) -> None:
    """Mark a backend unusable for the rest of the process (e.g. its kernels failed to compile)."""
    _device_status[name] = reason
    notice_once(f"{name} disabled: {reason}; using PyTorch instead", logging.WARNING)


def _nerfacc_kernels() -> Optional[str]:
    """nerfacc 0.5 builds its CUDA extension on first use (needs nvcc); without it every
    packed call fails. Importing the module below triggers that build, so it is only done for
    CUDA tensors."""
    try:
        module = importlib.import_module("nerfacc.cuda._backend")
    except Exception as err:
        return f"nerfacc's CUDA kernels did not build ({type(err).__name__}: {err})"
    if getattr(module, "_C", None) is None:
        return "nerfacc's CUDA kernels did not build (is nvcc on PATH? see nerfacc's log line)"
    return None


# per-backend checks of the device code, run the first time a kernel is wanted for CUDA tensors
_DEVICE_PROBES: Dict[str, Callable[[], Optional[str]]] = {"nerfacc": _nerfacc_kernels}


def kernel_unavailable_reason(name: str) -> Optional[str]:
    """None when backend ``name`` can run its kernels on CUDA tensors (the library and, for
    nerfacc, its built CUDA extension), else why not (cached). Probes only on first use."""
    reason = unavailable_reason(name)
    if reason is not None:
        return reason
    if name not in _device_status:
        probe = _DEVICE_PROBES.get(name)
        _device_status[name] = probe() if probe is not None else None
    return _device_status[name]


def runs_kernels(device: Union[torch.device, str, None]) -> bool:
    """Whether tensors on ``device`` may go to a kernel backend (CUDA devices)."""
    return device is not None and torch.device(device).type in KERNEL_DEVICE_TYPES


def choose(
    requested: str,
    device: Union[torch.device, str, None],
    *,
    key: str,
    kernels: Sequence[str],
    cpu_kernels: Sequence[str] = (),
    veto: Optional[Callable[[str], Optional[str]]] = None,
) -> str:
    """The implementation for one call: "torch", one of ``kernels`` or one of ``cpu_kernels``.

    requested: the config value ("auto", "torch" or a kernel name); device: where the call's
    tensors are; key: the config key, for messages; kernels: the CUDA kernel backends this call
    has, in the order "auto" tries them; cpu_kernels: its kernels for CPU tensors (usable unless
    ``NSR_DISABLE_BACKENDS`` names them or the veto objects); veto(name) -> a reason this call's
    inputs cannot use that kernel (or None).
    """
    options = ("auto", "torch", *kernels, *cpu_kernels)
    if requested not in options:
        raise ValueError(f"{key}: unknown backend {requested!r}; choose one of {', '.join(map(repr, options))}")
    if requested == "torch":
        return "torch"
    on_kernel_device = runs_kernels(device)
    where = torch.device(device).type if device is not None else "cpu"

    def cpu_reason(name: str) -> Optional[str]:
        return disabled_reason(name) or (veto(name) if veto is not None else None)

    if requested in cpu_kernels:
        if where != "cpu":
            raise BackendError(
                f"{key}={requested!r} needs CPU tensors, but they are on '{where}'; set {key} to 'auto' or 'torch'"
            )
        reason = cpu_reason(requested)
        if reason is not None:
            raise BackendError(f"{key}={requested!r} cannot be used: {reason}; set {key} to 'auto' or 'torch'")
        return requested
    if requested != "auto":
        if not on_kernel_device:
            raise BackendError(
                f"{key}={requested!r} needs CUDA tensors, but they are on '{where}'; "
                f"set {key} to 'auto' or 'torch'"
            )
        reason = kernel_unavailable_reason(requested) or (veto(requested) if veto is not None else None)
        if reason is not None:
            raise BackendError(f"{key}={requested!r} cannot be used: {reason}; set {key} to 'auto' or 'torch'")
        return requested
    if not on_kernel_device:
        if where == "cpu":
            for name in cpu_kernels:
                reason = cpu_reason(name)
                if reason is None:
                    return name
                notice_once(f"{key}: not using {name} ({reason})")
        return "torch"
    for name in kernels:
        reason = kernel_unavailable_reason(name) or (veto(name) if veto is not None else None)
        if reason is None:
            return name
        notice_once(f"{key}: not using {name} ({reason})")
    return "torch"


# --------------------------------------------------------------------------------------------
# calls whose gradients will be differentiated again
# --------------------------------------------------------------------------------------------
_local = threading.local()


@contextlib.contextmanager
def double_backward() -> Iterator[None]:
    """Marks code whose outputs' input gradients are taken with ``create_graph=True`` (e.g. an
    SDF's gradient for the eikonal loss): kernels without second derivatives (tiny-cuda-nn's
    networks) step aside inside it."""
    depth = getattr(_local, "depth", 0)
    _local.depth = depth + 1
    try:
        yield
    finally:
        _local.depth = depth


def double_backward_active() -> bool:
    """Whether the caller is inside ``double_backward()``."""
    return getattr(_local, "depth", 0) > 0
