"""PyTorch stand-ins for the optional CUDA libraries, so every dispatch decision runs on a CPU.

``install(monkeypatch, ...)`` (through the fixtures ``stand_ins`` / ``make_stand_ins`` of
tests/conftest.py) puts a fake ``tinycudann`` and a fake ``nerfacc`` into ``sys.modules``
(and hides ``triton`` unless asked not to), reports CUDA as available and clears the toolkit's
detection cache; everything is undone when the test ends. The fakes follow the real libraries'
interfaces as the toolkit uses them (tinycudann v2.0's ``Encoding`` / ``Network`` / ``modules._module_function``,
nerfacc 0.5.3's functions) and, like the real ones, refuse CPU tensors in their CUDA-only calls
(``accept_cpu = True`` lifts that, together with ``pretend_cpu_is_cuda``, to run the kernel paths on
a CPU). Each fake records its calls in ``calls`` so tests can see which implementation ran.
"""
from __future__ import annotations

import dataclasses
import sys
import types
from typing import List, Optional, Tuple

import pytest
import torch

from tests.stand_ins.nerfacc_fake import make_nerfacc
from tests.stand_ins.tinycudann_fake import make_tinycudann
from utils import backends


@dataclasses.dataclass
class StandIns:
    tcnn: Optional[types.ModuleType]
    nerfacc: Optional[types.ModuleType]

    def calls(self) -> List[Tuple[str, str]]:
        """Every (call, device type) the fakes received, tinycudann's first."""
        out = []
        for mod in (self.tcnn, self.nerfacc):
            if mod is not None:
                out.extend(mod.calls)
        return out

    def accept_cpu(self, value: bool = True) -> None:
        for mod in (self.tcnn, self.nerfacc):
            if mod is not None:
                mod.accept_cpu = value


def install_module(monkeypatch: pytest.MonkeyPatch, name: str, module: Optional[types.ModuleType]) -> None:
    """sys.modules[name] = module (None: importing ``name`` fails), for this test only."""
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        monkeypatch.delitem(sys.modules, key)
    monkeypatch.setitem(sys.modules, name, module)
    for sub_name, sub in getattr(module, "_submodules", {}).items():
        monkeypatch.setitem(sys.modules, sub_name, sub)


def install(monkeypatch: pytest.MonkeyPatch, tcnn: bool = True, nerfacc: bool = True, triton: bool = False,
            nerfacc_kernels_built: bool = True, cuda_available: bool = True) -> StandIns:
    """Install the stand-ins (or hide a library with False). ``triton=True`` leaves the real triton
    (if installed) importable; the default hides it, since its kernels cannot run on CPU tensors
    outside the interpreter."""
    fake_tcnn = make_tinycudann() if tcnn else None
    fake_nerfacc = make_nerfacc(kernels_built=nerfacc_kernels_built) if nerfacc else None
    install_module(monkeypatch, "tinycudann", fake_tcnn)
    install_module(monkeypatch, "nerfacc", fake_nerfacc)
    if not triton:
        install_module(monkeypatch, "triton", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_available)
    backends.clear_cache()  # the fixtures clear it again when the test ends
    return StandIns(fake_tcnn, fake_nerfacc)


def pretend_cpu_is_cuda(monkeypatch: pytest.MonkeyPatch, stand_ins: StandIns) -> None:
    """Send CPU tensors down the kernel paths, to the stand-ins' CPU implementations."""
    monkeypatch.setattr(backends, "KERNEL_DEVICE_TYPES", ("cuda", "cpu"))
    stand_ins.accept_cpu(True)
