"""utils.backends: libraries detected by the functions they have, the per-call choice, notices."""
import logging
import sys
import types

import pytest
import torch

from tests.stand_ins import install_module
from utils import backends


def fake_module(name, **attrs):
    mod = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(mod, key, value)
    return mod


@pytest.fixture
def fresh(monkeypatch):
    backends.clear_cache()
    yield monkeypatch
    backends.clear_cache()


def nerfacc_05(**drop):
    fns = {name: (lambda *a, **k: None) for name in backends.NERFACC_NEEDS}
    for name in drop:
        fns.pop(name)
    return fake_module("nerfacc", __version__="0.5.3", **fns)


def test_detected_by_functions_not_version(fresh):
    # a 0.5.3 version string without traverse_grids is not the API the toolkit calls
    install_module(fresh, "nerfacc", nerfacc_05(traverse_grids=None))
    reason = backends.unavailable_reason("nerfacc")
    assert reason is not None and "traverse_grids" in reason and "0.5.3" in reason
    assert backends.library("nerfacc") is None
    backends.clear_cache()
    # nerfacc 0.3/0.4 shape (an older version number, other functions): unusable, named
    install_module(fresh, "nerfacc", fake_module("nerfacc", __version__="0.4.0", ray_marching=None,
                                                 accumulate_along_rays=None))
    assert "render_weight_from_density" in backends.unavailable_reason("nerfacc")
    backends.clear_cache()
    install_module(fresh, "nerfacc", nerfacc_05())
    assert backends.available("nerfacc")


def test_dotted_needs_import_submodules(fresh):
    tcnn = fake_module("tinycudann", Encoding=object, Network=object)
    install_module(fresh, "tinycudann", tcnn)
    assert "modules._module_function" in backends.unavailable_reason("tinycudann".replace("tinycudann", "tcnn"))
    backends.clear_cache()
    modules = fake_module("tinycudann.modules", _module_function=object)
    fresh.setitem(sys.modules, "tinycudann.modules", modules)  # a submodule not set as attribute
    assert backends.available("tcnn")


def test_missing_and_broken_imports_give_reasons(fresh, tmp_path):
    install_module(fresh, "tinycudann", None)
    assert backends.unavailable_reason("tcnn") == "tinycudann is not installed"
    # tinycudann raises EnvironmentError on import without CUDA; a broken build raises anything
    (tmp_path / "torchmcubes.py").write_text("raise EnvironmentError('Unknown compute capability')\n")
    fresh.syspath_prepend(str(tmp_path))
    fresh.delitem(sys.modules, "torchmcubes", raising=False)
    reason = backends.unavailable_reason("torchmcubes")
    assert reason == "torchmcubes does not import (OSError: Unknown compute capability)"


def test_disabled_by_the_environment(fresh):
    install_module(fresh, "nerfacc", nerfacc_05())
    fresh.setenv("NSR_DISABLE_BACKENDS", "tcnn, nerfacc")
    assert backends.unavailable_reason("nerfacc") == "disabled by NSR_DISABLE_BACKENDS"


def test_detection_is_cached_until_cleared(fresh):
    install_module(fresh, "nerfacc", nerfacc_05())
    assert backends.available("nerfacc")
    install_module(fresh, "nerfacc", None)
    assert backends.available("nerfacc")  # cached
    backends.clear_cache()
    assert not backends.available("nerfacc")


def test_choose_torch_auto_and_forced(fresh):
    install_module(fresh, "nerfacc", nerfacc_05())
    fresh.setitem(sys.modules, "nerfacc.cuda._backend", fake_module("nerfacc.cuda._backend", _C=object()))
    kw = dict(key="model.backend", kernels=("nerfacc",))
    assert backends.choose("torch", "cuda", **kw) == "torch"
    assert backends.choose("auto", "cpu", **kw) == "torch"
    assert backends.choose("auto", torch.device("cuda", 1), **kw) == "nerfacc"
    assert backends.choose("nerfacc", "cuda", **kw) == "nerfacc"
    with pytest.raises(backends.BackendError, match=r"model.backend='nerfacc' needs CUDA tensors.*'cpu'"):
        backends.choose("nerfacc", "cpu", **kw)
    with pytest.raises(ValueError, match="model.backend: unknown backend 'jax'"):
        backends.choose("jax", "cpu", **kw)


def test_choose_falls_back_with_one_notice_per_reason(fresh, caplog):
    install_module(fresh, "nerfacc", None)
    install_module(fresh, "tinycudann", None)
    kw = dict(key="x.backend", kernels=("tcnn", "nerfacc"))
    with caplog.at_level(logging.INFO, logger="utils.backends"):
        for _ in range(3):
            assert backends.choose("auto", "cuda", **kw) == "torch"
    notices = [r.getMessage() for r in caplog.records]
    assert notices == ["x.backend: not using tcnn (tinycudann is not installed)",
                       "x.backend: not using nerfacc (nerfacc is not installed)"]
    with pytest.raises(backends.BackendError, match=r"x.backend='tcnn' cannot be used: tinycudann is not installed"):
        backends.choose("tcnn", "cuda", **kw)


def test_veto_skips_a_kernel_for_this_call(fresh):
    install_module(fresh, "tinycudann", fake_module("tinycudann", Encoding=1, Network=1,
                                                    modules=fake_module("m", _module_function=1)))
    kw = dict(key="k", kernels=("tcnn",), veto=lambda name: "7-D points")
    assert backends.choose("auto", "cuda", **kw) == "torch"
    with pytest.raises(backends.BackendError, match="7-D points"):
        backends.choose("tcnn", "cuda", **kw)


def test_cpu_kernels_serve_cpu_tensors_only(fresh, monkeypatch, caplog):
    """A CPU kernel: auto takes it for CPU tensors (CUDA kernels for CUDA tensors), unless its
    veto or the environment rules it out; forcing it on CUDA tensors names the key."""
    install_module(fresh, "tinycudann", None)
    vetoed = {}
    kw = dict(key="enc.backend", kernels=("tcnn",), cpu_kernels=("cpp",), veto=lambda name: vetoed.get(name))
    assert backends.choose("auto", "cpu", **kw) == "cpp"
    assert backends.choose("cpp", "cpu", **kw) == "cpp"
    assert backends.choose("auto", "cuda", **kw) == "torch"  # tinycudann missing; cpp is not for CUDA
    with pytest.raises(backends.BackendError, match=r"enc.backend='cpp' needs CPU tensors, but they are on 'cuda'"):
        backends.choose("cpp", "cuda", **kw)
    with pytest.raises(backends.BackendError, match=r"enc.backend='tcnn' needs CUDA tensors"):
        backends.choose("tcnn", "cpu", **kw)
    vetoed["cpp"] = "no C++ compiler found"
    with caplog.at_level(logging.INFO, logger="utils.backends"):
        assert backends.choose("auto", "cpu", **kw) == "torch"
    assert [r.getMessage() for r in caplog.records] == ["enc.backend: not using cpp (no C++ compiler found)"]
    with pytest.raises(backends.BackendError, match="enc.backend='cpp' cannot be used: no C\\+\\+ compiler"):
        backends.choose("cpp", "cpu", **kw)
    vetoed.clear()
    monkeypatch.setenv(backends.DISABLE_ENV, "cpp")
    assert backends.choose("auto", "cpu", **kw) == "torch"


def test_nerfacc_without_built_kernels_is_not_used_on_cuda(fresh):
    install_module(fresh, "nerfacc", nerfacc_05())
    fresh.setitem(sys.modules, "nerfacc.cuda._backend", fake_module("nerfacc.cuda._backend", _C=None))
    assert backends.available("nerfacc")  # the Python API is there ...
    assert backends.choose("auto", "cuda", key="model.backend", kernels=("nerfacc",)) == "torch"  # ... not the kernels
    with pytest.raises(backends.BackendError, match="CUDA kernels did not build"):
        backends.choose("nerfacc", "cuda", key="model.backend", kernels=("nerfacc",))


def test_disable_after_a_kernel_failure(fresh):
    install_module(fresh, "nerfacc", nerfacc_05())
    fresh.setitem(sys.modules, "nerfacc.cuda._backend", fake_module("nerfacc.cuda._backend", _C=1))
    assert backends.choose("auto", "cuda", key="k", kernels=("nerfacc",)) == "nerfacc"
    backends.disable("nerfacc", "it crashed")
    assert backends.choose("auto", "cuda", key="k", kernels=("nerfacc",)) == "torch"


def test_double_backward_marker_nests():
    assert not backends.double_backward_active()
    with backends.double_backward():
        with backends.double_backward():
            assert backends.double_backward_active()
        assert backends.double_backward_active()
    assert not backends.double_backward_active()


def test_utils_imports_nothing_from_the_upper_layers():
    import ast
    from pathlib import Path

    tree = ast.parse(Path(backends.__file__).read_text())
    names = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [n for n in names if n and n.split(".")[0] in ("datasets", "models", "systems")]
