"""The kernel paths against the PyTorch reference: values and gradients.

Each test runs where it can: on a CPU through the stand-ins (tests/stand_ins) or Triton's
interpreter, and on a CUDA machine also against the real tinycudann / Triton kernels (skipped,
with the reason, where those are missing). The PyTorch path (``backend: torch``) is the reference.
"""
import importlib
import logging

import pytest
import torch

from models import encodings
from models.networks import networks
from tests.stand_ins import pretend_cpu_is_cuda
from utils import backends

CUDA = torch.cuda.is_available()
# level 0 dense (4^3 vertices, wrapping at the upper edge), levels 1-3 hashed (7^3 ... > 2^8 entries)
GRID = {"n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 8, "base_resolution": 4,
        "per_level_scale": 1.7}


def unit_points(n, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, generator=g)
    x[0] = 0.0
    x[1] = 1.0
    x[2] = torch.tensor([0.999, 1.0, 0.5])
    x[3] = torch.tensor([-0.2, 1.3, 0.5])  # outside: clamped, zero gradient
    return x.to(device)


def grid_pair(name, cfg, device, kernel):
    """(module on ``kernel``, the same parameters on PyTorch) -> both on device."""
    fast = encodings.make(name, dict(cfg, backend=kernel)).to(device)
    ref = encodings.make(name, dict(cfg, backend="torch")).to(device)
    with torch.no_grad():
        fast.table.uniform_(-1, 1, generator=torch.Generator(device=fast.table.device).manual_seed(3))
    ref.load_state_dict(fast.state_dict())
    return fast, ref


def compare_grid(fast, ref, x, rtol, atol, jacobian=True):
    """Values, table and input gradients (and the jacobian with its table gradient) agree."""
    g = torch.Generator(device=x.device).manual_seed(7)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    fa, fb = fast(xa), ref(xb)
    torch.testing.assert_close(fa, fb, rtol=rtol, atol=atol)
    w = torch.randn(fa.shape, generator=g, device=x.device)
    ga = torch.autograd.grad((fa * w).sum(), (xa, fast.table))
    gb = torch.autograd.grad((fb * w).sum(), (xb, ref.table))
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
    assert ga[1].abs().sum() > 0 and ga[0][3, :2].abs().sum() == 0 and ga[0][3, 2] != 0
    if jacobian:
        (fa, ja), (fb, jb) = fast.forward_with_jacobian(x), ref.forward_with_jacobian(x)
        torch.testing.assert_close(ja, jb, rtol=rtol, atol=atol)
        v = torch.randn(ja.shape, generator=g, device=x.device)
        ta = torch.autograd.grad((ja * v).sum() + (fa * w).sum(), fast.table)[0]
        tb = torch.autograd.grad((jb * v).sum() + (fb * w).sum(), ref.table)[0]
        torch.testing.assert_close(ta, tb, rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------------------------
# tiny-cuda-nn
# ------------------------------------------------------------------------------------------------
TCNN_TARGETS = [
    pytest.param("stand-in", id="stand-in"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(
        not (CUDA and backends.available("tcnn")), reason="needs CUDA and tinycudann (checks the real kernels)")),
]


@pytest.fixture
def tcnn_device(request, make_stand_ins, monkeypatch):
    """The device whose tensors reach tiny-cuda-nn: the CPU with the stand-in, or CUDA."""
    if request.param == "stand-in":
        pretend_cpu_is_cuda(monkeypatch, make_stand_ins(nerfacc=False))
        return torch.device("cpu")
    return torch.device("cuda")


@pytest.mark.parametrize("tcnn_device", TCNN_TARGETS, indirect=True)
@pytest.mark.parametrize("interpolation", ["linear", "smoothstep"])
def test_hash_grid_on_tcnn_matches_pytorch(tcnn_device, interpolation):
    fast, ref = grid_pair("progressive-hashgrid", dict(GRID, interpolation=interpolation, start_level=2),
                          tcnn_device, "tcnn")
    assert fast.backend_for(torch.empty(1, 3, device=tcnn_device)) == "tcnn"
    x = unit_points(300, tcnn_device)  # not a multiple of tiny-cuda-nn's 256: padded
    compare_grid(fast, ref, x, rtol=1e-4, atol=1e-5, jacobian=False)  # 2 of 4 levels active
    fast.update_step(0, 10**6), ref.update_step(0, 10**6)
    compare_grid(fast, ref, x, rtol=1e-4, atol=1e-5, jacobian=False)


@pytest.mark.parametrize("tcnn_device", TCNN_TARGETS, indirect=True)
@pytest.mark.parametrize("activation,output_activation", [("relu", "none"), ("softplus", "sigmoid"), ("tanh", "none")])
def test_tcnn_mlp_kernel_matches_its_pytorch_path(tcnn_device, activation, output_activation):
    cfg = {"n_neurons": 16, "n_hidden_layers": 2, "activation": activation, "output_activation": output_activation}
    torch.manual_seed(0)
    fast = networks.make("tcnn-mlp", dict(cfg, backend="tcnn"), n_input_dims=7, n_output_dims=3).to(tcnn_device)
    ref = networks.make("tcnn-mlp", dict(cfg, backend="torch"), n_input_dims=7, n_output_dims=3).to(tcnn_device)
    ref.load_state_dict(fast.state_dict())
    h = torch.randn(300, 7, device=tcnn_device)
    ha, hb = h.clone().requires_grad_(), h.clone().requires_grad_()
    oa, ob = fast(ha), ref(hb)
    # tiny-cuda-nn's networks compute in half precision
    torch.testing.assert_close(oa, ob, rtol=2e-2, atol=2e-3)
    w = torch.randn(oa.shape, device=tcnn_device)
    ga = torch.autograd.grad((oa * w).sum(), (ha, fast.params))
    gb = torch.autograd.grad((ob * w).sum(), (hb, ref.params))
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=3e-2, atol=3e-3)


# ------------------------------------------------------------------------------------------------
# Triton
# ------------------------------------------------------------------------------------------------
KERNEL_MODULE = "models.encodings.triton_hashgrid"  # needs triton: imported by the fixture


@pytest.fixture
def triton_kernels():
    """The kernel module: compiled on CUDA machines, under Triton's interpreter on a CPU
    (tests/conftest.py sets TRITON_INTERPRET=1 there before triton is imported)."""
    triton = pytest.importorskip("triton", reason="triton is not installed (pip install triton; CI installs it)")
    if not CUDA and not triton.knobs.runtime.interpret:
        pytest.skip("no GPU and triton was imported before TRITON_INTERPRET=1 was set")
    return importlib.import_module(KERNEL_MODULE)


@pytest.fixture
def triton_device(triton_kernels, make_stand_ins, monkeypatch):
    """CUDA, or the CPU sent down the kernel paths (the interpreter runs the kernels)."""
    if CUDA:
        yield torch.device("cuda")
        backends.clear_cache()  # a test may have disabled triton
        return
    pretend_cpu_is_cuda(monkeypatch, make_stand_ins(tcnn=False, nerfacc=False, triton=True))
    yield torch.device("cpu")


@pytest.mark.parametrize("interpolation", ["linear", "smoothstep"])
def test_triton_hash_grid_matches_pytorch(triton_device, interpolation):
    fast, ref = grid_pair("progressive-hashgrid", dict(GRID, interpolation=interpolation, start_level=3),
                          triton_device, "triton")
    assert fast.backend_for(torch.empty(1, 3, device=triton_device)) == "triton"
    x = unit_points(150, triton_device)
    compare_grid(fast, ref, x, rtol=1e-4, atol=1e-5)  # 3 of 4 levels active


def test_auto_prefers_tcnn_then_triton(triton_device, monkeypatch):
    enc = encodings.make("hashgrid", GRID).to(triton_device)
    x = torch.empty(1, 3, device=triton_device)
    expected = "tcnn" if backends.available("tcnn") else "triton"
    assert enc.backend_for(x) == expected


def compare_second_derivatives(device, kernel):
    """An eikonal-style loss: the input gradient taken with create_graph, then differentiated."""
    fast, ref = grid_pair("hashgrid", GRID, device, kernel)
    x = unit_points(60, device)[4:]
    out = []
    for enc in (fast, ref):
        xr = x.clone().requires_grad_()
        f = enc(xr)
        (gx,) = torch.autograd.grad(f[:, 0].sum() + f[:, 5].sum(), xr, create_graph=True)
        out.append((gx, torch.autograd.grad(gx.square().sum(), enc.table)[0]))
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_triton_second_derivatives_through_the_reference(triton_device):
    compare_second_derivatives(triton_device, "triton")


def test_triton_kernels_say_what_they_do_not_cover(triton_kernels):
    assert triton_kernels.supports(3, 2, torch.float32) is None
    assert "3-D" in triton_kernels.supports(2, 2, torch.float32)
    assert "features" in triton_kernels.supports(3, 3, torch.float32)
    assert "float32" in triton_kernels.supports(3, 2, torch.float64)


# ------------------------------------------------------------------------------------------------
# nerfacc (the real one on CUDA: tests/test_rendering_nerfacc_parity.py)
# ------------------------------------------------------------------------------------------------
def test_nerfacc_stand_in_path_matches_pytorch(stand_ins, monkeypatch):
    from models.rendering import (OccupancyGrid, accumulate_along_rays, ray_marching, render_transmittance_from_alpha,
                                  render_weight_from_density)
    from tests.test_rendering_nerfacc_parity import assert_same_samples

    pretend_cpu_is_cuda(monkeypatch, stand_ins)
    g = torch.Generator().manual_seed(0)
    grid = OccupancyGrid([-1, -1, -1, 1, 1, 1], resolution=8, levels=2)
    grid.set_binary(torch.rand(grid.binaries.shape, generator=g) < 0.4)
    o = torch.randn(200, 3, generator=g) * 2.5
    d = torch.nn.functional.normalize(torch.randn(200, 3, generator=g) - 0.3 * o, dim=-1)
    kw = dict(grid=grid, render_step_size=0.05, near_plane=0.05)
    ours = ray_marching(o, d, backend="torch", **kw)
    theirs = ray_marching(o, d, backend="nerfacc", **kw)
    assert [c for c, _ in stand_ins.nerfacc.calls] == ["traverse_grids"]
    assert_same_samples(ours, theirs, 200)

    ray_indices, t0, t1 = ours
    n = ray_indices.numel()
    alphas = (torch.rand(n, generator=g) * 0.9).requires_grad_()
    sigmas = (torch.rand(n, generator=g) * 20).requires_grad_()
    c = torch.randn(3, 200, generator=g)

    def run(backend):
        tr = render_transmittance_from_alpha(alphas, ray_indices, 200, backend=backend)
        w, _, _ = render_weight_from_density(t0, t1, sigmas, ray_indices, 200, backend=backend)
        acc = accumulate_along_rays(w, None, ray_indices, 200, backend=backend)
        loss = (acc[:, 0] * c[0]).sum() + (tr * alphas).sum()
        return (tr, w, acc), torch.autograd.grad(loss, (alphas, sigmas))

    (a, ga), (b, gb) = run("nerfacc"), run("torch")
    for x, y in zip(a + ga, b + gb):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)
    assert {"render_transmittance_from_alpha", "render_weight_from_density"} <= {c for c, _ in stand_ins.nerfacc.calls}


def test_triton_kernels_that_fail_to_compile_fall_back(triton_device, triton_kernels, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("PTX .version 8.7 does not support .target sm_99\nmore")

    monkeypatch.setattr(triton_kernels, "_compiled", {})
    monkeypatch.setattr(triton_kernels, "hashgrid_gather", broken)
    enc = encodings.make("hashgrid", dict(GRID, backend="auto"), path="enc").to(triton_device)
    x = torch.rand(5, 3, device=triton_device)
    with caplog.at_level(logging.WARNING, logger="utils.backends"):
        assert enc.backend_for(x) != "triton"
        enc(x)
    assert any("triton disabled: its hash-grid kernels fail here (RuntimeError: PTX" in r.getMessage()
               for r in caplog.records)
    forced = encodings.make("hashgrid", dict(GRID, backend="triton"), path="enc").to(triton_device)
    with pytest.raises(backends.BackendError, match=r"enc.backend='triton' cannot be used: .*PTX"):
        forced(x)


# ------------------------------------------------------------------------------------------------
# the hash grid's C++ CPU kernels (built here with the machine's compiler)
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def cpp_kernels(monkeypatch):
    """The kernel module, built and loaded; a test may reset its state (restored afterwards)."""
    from models.encodings import cpu_hashgrid

    reason = cpu_hashgrid.unavailable_reason()
    if reason is not None:
        pytest.skip(f"the C++ CPU kernels are not available here: {reason}")
    for name in ("_tried", "_lib", "_reason"):
        monkeypatch.setattr(cpu_hashgrid, name, getattr(cpu_hashgrid, name))
    return cpu_hashgrid


@pytest.mark.parametrize("interpolation", ["linear", "smoothstep"])
@pytest.mark.parametrize("features", [1, 2, 4, 8])
def test_cpp_hash_grid_matches_pytorch(cpp_kernels, interpolation, features):
    cfg = dict(GRID, n_features_per_level=features, interpolation=interpolation, start_level=3)
    fast, ref = grid_pair("progressive-hashgrid", cfg, "cpu", "cpp")
    assert fast.backend_for(torch.empty(1, 3)) == "cpp"
    x = unit_points(150, "cpu")
    x[4] = float("nan")  # samples at 0, as on PyTorch's path
    compare_grid(fast, ref, x, rtol=1e-4, atol=1e-5)  # 3 of 4 levels active


def test_cpp_second_derivatives_through_the_reference(cpp_kernels):
    compare_second_derivatives("cpu", "cpp")


def test_cpp_gradients_do_not_depend_on_the_thread_count(cpp_kernels):
    """Each level's rows are summed by one thread in point order: same bits on 1 or 2 threads."""
    enc = encodings.make("hashgrid", dict(GRID, backend="cpp", init_std=1.0))
    x = unit_points(3000, "cpu", seed=5)
    threads = torch.get_num_threads()
    grads = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            f, j = enc.forward_with_jacobian(x)
            grads.append(torch.autograd.grad(f.square().sum() + j.square().sum(), enc.table)[0])
    finally:
        torch.set_num_threads(threads)
    assert grads[0].abs().sum() > 0
    assert torch.equal(grads[0], grads[1])


def test_cpp_kernels_say_what_they_do_not_cover(cpp_kernels):
    assert cpp_kernels.supports(3, 2, torch.float32) is None
    assert "3-D" in cpp_kernels.supports(2, 2, torch.float32)
    assert "features" in cpp_kernels.supports(3, 3, torch.float32)
    assert "float32" in cpp_kernels.supports(3, 2, torch.float64)
    enc = encodings.make("hashgrid", dict(GRID, n_features_per_level=3), path="enc")
    assert enc.backend_for(torch.empty(1, 3)) == "torch"  # auto steps aside
    forced = encodings.make("hashgrid", dict(GRID, n_features_per_level=3, backend="cpp"), path="enc")
    with pytest.raises(backends.BackendError, match=r"enc.backend='cpp' cannot be used: .*features per level, not 3"):
        forced(torch.rand(4, 3))


def test_cpp_is_not_used_where_it_cannot_be(cpp_kernels, monkeypatch, caplog):
    """Disabled by the environment, or no compiler: auto uses PyTorch, naming the reason once;
    forcing it fails with the key."""
    enc = encodings.make("hashgrid", GRID, path="enc")
    x = torch.rand(5, 3)
    monkeypatch.setenv(backends.DISABLE_ENV, "cpp")
    assert enc.backend_for(x) == "torch"
    monkeypatch.delenv(backends.DISABLE_ENV)
    monkeypatch.setattr(cpp_kernels, "_tried", False)
    monkeypatch.setattr(cpp_kernels, "_compiler", lambda: None)
    backends.clear_cache()
    with caplog.at_level(logging.INFO, logger="utils.backends"):
        assert enc.backend_for(x) == "torch"
        enc(x)
    assert any("not using cpp (its CPU kernels could not be built (RuntimeError: no C++ compiler" in r.getMessage()
               for r in caplog.records)
    forced = encodings.make("hashgrid", dict(GRID, backend="cpp"), path="enc")
    with pytest.raises(backends.BackendError, match=r"enc.backend='cpp' cannot be used: .*no C\+\+ compiler"):
        forced(x)


def test_cpp_builds_into_the_cache_folder(cpp_kernels, monkeypatch, tmp_path):
    """A fresh cache folder gets one library, and a second load reuses it."""
    monkeypatch.setenv(cpp_kernels.CACHE_ENV, str(tmp_path))
    for attempt in range(2):
        monkeypatch.setattr(cpp_kernels, "_tried", False)
        assert cpp_kernels.unavailable_reason() is None
        assert [p.name.startswith("hashgrid_cpu-") for p in tmp_path.iterdir()] == [True]
