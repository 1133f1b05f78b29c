"""Encodings: shapes, jacobians against autograd, tri-plane / dense grid against hand computations,
frequency and spherical harmonics against closed forms, config errors."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.encodings import encodings
from utils.config import ConfigError

# every registered encoding with a small config, its input dims and expected output dims
SMALL = {
    "hashgrid": ({"n_levels": 3, "log2_hashmap_size": 8, "base_resolution": 2, "per_level_scale": 2.0,
                  "backend": "torch"}, 3, 6),
    "progressive-hashgrid": ({"n_levels": 3, "log2_hashmap_size": 8, "base_resolution": 2,
                              "per_level_scale": 2.0, "start_level": 2, "backend": "torch"}, 3, 6),
    "triplane": ({"resolution": 5, "n_features": 4}, 3, 4),
    "dense-grid": ({"resolution": 5, "n_features": 3}, 3, 3),
    "frequency": ({"n_frequencies": 3}, 3, 18),
    "spherical-harmonics": ({"degree": 4}, 3, 16),
    "identity": ({}, 3, 3),
    "with-xyz": ({"inner": {"name": "frequency", "n_frequencies": 2}}, 3, 15),
}


def _make(name, **override):
    cfg, d_in, _ = SMALL[name]
    torch.manual_seed(0)
    return encodings.make(name, dict(cfg, **override), n_input_dims=d_in)


def _inputs(name, n, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    if name == "spherical-harmonics":
        d = torch.randn(n, 3, generator=g, dtype=dtype)
        return d / d.norm(dim=-1, keepdim=True)
    # keep away from the clamp at the cube's faces, where derivatives are one-sided
    return 0.05 + 0.9 * torch.rand(n, SMALL[name][1], generator=g, dtype=dtype)


def test_every_registered_encoding_is_covered():
    assert set(encodings.names()) == set(SMALL)


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_and_dtypes(name, dtype):
    enc = _make(name).to(dtype)
    _, d_in, d_out = SMALL[name]
    assert enc.n_input_dims == d_in and enc.n_output_dims == d_out
    x = _inputs(name, 7, dtype)
    out = enc(x)
    assert out.shape == (7, d_out) and out.dtype == dtype
    feats, jac = enc.forward_with_jacobian(x)
    assert feats.shape == (7, d_out) and jac.shape == (7, d_out, d_in)
    assert feats.dtype == dtype and jac.dtype == dtype
    torch.testing.assert_close(feats, out)
    enc.update_step(0, 10)
    assert isinstance(enc.regularizations(), dict)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_jacobian_matches_autograd(name):
    enc = _make(name).double()
    if name == "progressive-hashgrid":
        enc.update_step(0, 10**6)
    if name in ("hashgrid", "progressive-hashgrid", "triplane", "dense-grid"):
        with torch.no_grad():
            for p in enc.parameters():
                p.uniform_(-1, 1)
    x = _inputs(name, 6, seed=1)
    _, jac = enc.forward_with_jacobian(x)
    ref = torch.autograd.functional.jacobian(lambda p: enc(p).sum(0), x)  # [F, N, D]
    torch.testing.assert_close(jac, ref.permute(1, 0, 2), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("aggregation", ["sum", "product", "concat"])
def test_triplane_jacobian_differentiable_wrt_planes(aggregation):
    enc = encodings.make("triplane", {"resolution": 4, "n_features": 2, "aggregation": aggregation}).double()
    x = _inputs("triplane", 5, seed=2)
    g = torch.randn(5, enc.n_output_dims, 3, dtype=torch.float64)
    _, jac = enc.forward_with_jacobian(x)
    (jac * g).sum().backward()
    got = enc.table.grad.clone()
    enc.table.grad = None
    xr = x.clone().requires_grad_(True)
    out = enc(xr)
    rows = [torch.autograd.grad(out[:, f].sum(), xr, create_graph=True)[0] for f in range(out.shape[1])]
    (torch.stack(rows, 1) * g).sum().backward()
    torch.testing.assert_close(got, enc.table.grad)


# ----------------------------------------------------------------------------- tri-plane
def _bilinear(plane, u, v):
    """Hand bilinear sample of plane [R(v), R(u), C] at u, v in [0, 1], texel centres at i / (R - 1)."""
    R = plane.shape[0]
    pu, pv = u * (R - 1), v * (R - 1)
    i0, j0 = min(int(math.floor(pu)), R - 2), min(int(math.floor(pv)), R - 2)
    fu, fv = pu - i0, pv - j0
    return ((1 - fu) * (1 - fv) * plane[j0, i0] + fu * (1 - fv) * plane[j0, i0 + 1]
            + (1 - fu) * fv * plane[j0 + 1, i0] + fu * fv * plane[j0 + 1, i0 + 1])


def test_triplane_hand_computed_bilinear_case():
    enc = encodings.make("triplane", {"resolution": 2, "n_features": 1, "aggregation": "concat"}).double()
    with torch.no_grad():
        # plane p: texel (v, u) = 10 p + 2 v + u + 1
        vals = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[11.0, 12.0], [13.0, 14.0]], [[21.0, 22.0], [23.0, 24.0]]])
        enc.table.copy_(vals.reshape(-1, 1))
    x = torch.tensor([[0.25, 0.5, 1.0]], dtype=torch.float64)
    out = enc(x)[0]
    # XY: u=.25 v=.5 -> 1 + .25 + 2*.5 ; XZ: u=.25 v=1 -> 11 + .25 + 2 ; YZ: u=.5 v=1 -> 21 + .5 + 2
    torch.testing.assert_close(out, torch.tensor([2.25, 13.25, 23.5], dtype=torch.float64))


@pytest.mark.parametrize("aggregation", ["sum", "product", "concat"])
def test_triplane_aggregations_against_hand_bilinear(aggregation):
    enc = encodings.make(
        "triplane", {"resolutions": [3, 6], "n_features": 2, "aggregation": aggregation}
    ).double()
    with torch.no_grad():
        enc.table.normal_()
    x = torch.rand(9, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x[0] = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64)
    out = enc(x)
    planes = enc.planes()
    for n in range(9):
        parts = []
        for pl in planes:
            s = [_bilinear(pl[p], float(x[n, a]), float(x[n, b])) for p, (a, b) in enumerate([(0, 1), (0, 2), (1, 2)])]
            if aggregation == "sum":
                parts.append(s[0] + s[1] + s[2])
            elif aggregation == "product":
                parts.append(s[0] * s[1] * s[2])
            else:
                parts.extend(s)
        torch.testing.assert_close(out[n], torch.cat(parts))
    expect = {"sum": 4, "product": 4, "concat": 12}[aggregation]
    assert enc.n_output_dims == expect == out.shape[1]


def test_triplane_matches_grid_sample_align_corners():
    enc = encodings.make("triplane", {"resolution": 7, "n_features": 3})
    planes = torch.randn(3, 3, 7, 7)  # [plane, C, v, u]
    with torch.no_grad():
        enc.table.copy_(planes.permute(0, 2, 3, 1).reshape(-1, 3))
    x = torch.rand(50, 3)
    g = x * 2 - 1
    coords = torch.stack([g[:, [0, 1]], g[:, [0, 2]], g[:, [1, 2]]])[:, :, None, :]
    ref = F.grid_sample(planes, coords, align_corners=True).sum(0)[..., 0].t()
    torch.testing.assert_close(enc(x), ref, rtol=1e-5, atol=1e-6)


def test_triplane_gradient_matches_autograd_of_hand_sampling():
    enc = encodings.make("triplane", {"resolution": 4, "n_features": 2}).double()
    x = torch.rand(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    w = torch.randn(6, 2, dtype=torch.float64)
    (enc(x) * w).sum().backward()
    table = enc.table.detach().clone().requires_grad_(True)
    planes = table.view(3, 4, 4, 2)
    ref = torch.stack([
        sum(_bilinear(planes[p], float(x[n, a]), float(x[n, b])) for p, (a, b) in enumerate([(0, 1), (0, 2), (1, 2)]))
        for n in range(6)
    ])
    (ref * w).sum().backward()
    torch.testing.assert_close(enc.table.grad, table.grad)


def test_triplane_regularizations_by_hand():
    enc = encodings.make("triplane", {"resolution": 2, "n_features": 1})
    with torch.no_grad():
        enc.table.copy_(torch.tensor([0.0, 1.0, 2.0, 3.0, 0, 0, 0, 0, -1, 1, -1, 1]).view(-1, 1))
    regs = enc.regularizations()
    # plane 0 = [[0, 1], [2, 3]]: u-diffs 1, 1; v-diffs 2, 2 -> mean sq (1+1+4+4)/4 = 2.5
    # plane 1 = zeros -> 0; plane 2 = [[-1, 1], [-1, 1]]: u-diffs 2, 2; v-diffs 0, 0 -> 2
    torch.testing.assert_close(regs["tv"], torch.tensor((2.5 + 0.0 + 2.0) / 3))
    torch.testing.assert_close(regs["l1"], torch.tensor((0 + 1 + 2 + 3 + 4 * 1.0) / 12))
    regs["tv"].backward()
    assert enc.table.grad is not None


def test_triplane_product_init_around_one():
    enc = encodings.make("triplane", {"resolution": 8, "n_features": 4, "aggregation": "product"})
    assert abs(enc.table.mean().item() - 1.0) < 0.05
    enc = encodings.make("triplane", {"resolution": 8, "n_features": 4, "init": "uniform", "init_scale": 0.5})
    assert enc.table.abs().max() <= 0.5 and abs(enc.table.mean().item()) < 0.1


# ----------------------------------------------------------------------------- dense grid
def test_dense_grid_against_hand_trilinear():
    enc = encodings.make("dense-grid", {"resolution": 3, "n_features": 2}).double()
    with torch.no_grad():
        enc.table.normal_()
    vol = enc.volume()  # [z, y, x, C]
    x = torch.rand(10, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    x[0] = torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64)
    out = enc(x)
    for n in range(10):
        p = [float(x[n, d]) * 2 for d in range(3)]
        c = [min(int(math.floor(v)), 1) for v in p]
        f = [p[d] - c[d] for d in range(3)]
        acc = 0
        for dz in (0, 1):
            for dy in (0, 1):
                for dx in (0, 1):
                    wgt = (f[0] if dx else 1 - f[0]) * (f[1] if dy else 1 - f[1]) * (f[2] if dz else 1 - f[2])
                    acc = acc + wgt * vol[c[2] + dz, c[1] + dy, c[0] + dx]
        torch.testing.assert_close(out[n], acc)


def test_dense_grid_matches_grid_sample_and_regularizers():
    enc = encodings.make("dense-grid", {"resolution": 5, "n_features": 3})
    x = torch.rand(40, 3)
    vol = enc.volume().detach().permute(3, 0, 1, 2)[None]  # [1, C, z, y, x]
    ref = F.grid_sample(vol, (x * 2 - 1)[None, :, None, None, :], align_corners=True)[0, :, :, 0, 0].t()
    torch.testing.assert_close(enc(x), ref, rtol=1e-5, atol=1e-6)
    v = enc.volume().detach()
    sq = [v.diff(dim=d).pow(2) for d in range(3)]
    tv = sum(s.sum() for s in sq) / sum(s.numel() for s in sq)
    regs = enc.regularizations()
    torch.testing.assert_close(regs["tv"], tv)
    torch.testing.assert_close(regs["l1"], v.abs().mean())


# ----------------------------------------------------------------------------- frequency
def test_frequency_closed_form_and_layout():
    enc = encodings.make("frequency", {"n_frequencies": 4})
    x = torch.rand(5, 3)
    out = enc(x).view(5, 3, 4, 2)
    for k in range(4):
        torch.testing.assert_close(out[:, :, k, 0], torch.sin(2**k * math.pi * x))
        torch.testing.assert_close(out[:, :, k, 1], torch.cos(2**k * math.pi * x))


def test_frequency_coarse_to_fine_weights():
    enc = encodings.make("frequency", {"n_frequencies": 4, "c2f_start_step": 100, "c2f_end_step": 500})
    x = torch.rand(6, 3)
    full = encodings.make("frequency", {"n_frequencies": 4})(x).view(6, 3, 4, 2)
    assert (enc(x) == 0).all()  # before the start every band is off
    enc.update_step(0, 300)  # alpha = 2: bands 0, 1 fully on, 2 and 3 off
    out = enc(x).view(6, 3, 4, 2)
    torch.testing.assert_close(out[:, :, :2], full[:, :, :2])
    assert (out[:, :, 2:] == 0).all()
    enc.update_step(0, 350)  # alpha = 2.5: band 2 at (1 - cos(pi / 2)) / 2 = 0.5
    torch.testing.assert_close(enc(x).view(6, 3, 4, 2)[:, :, 2], 0.5 * full[:, :, 2])
    enc.update_step(0, 10**6)
    torch.testing.assert_close(enc(x).view(6, 3, 4, 2), full)
    _, jac = enc.forward_with_jacobian(x.double())
    assert jac.shape == (6, 24, 3)


def test_frequency_bad_c2f_config():
    with pytest.raises(ValueError, match="c2f_end_step"):
        encodings.make("frequency", {"c2f_start_step": 10, "c2f_end_step": 5})


# ----------------------------------------------------------------------------- spherical harmonics
def _real_sh_scipy(l, m, d):
    from scipy.special import sph_harm_y

    theta = np.arccos(np.clip(d[:, 2], -1, 1))
    phi = np.arctan2(d[:, 1], d[:, 0])
    y = sph_harm_y(l, abs(m), theta, phi)
    if m > 0:
        return np.sqrt(2) * y.real
    if m < 0:
        return np.sqrt(2) * y.imag
    return y.real


@pytest.mark.parametrize("degree", [1, 2, 4, 6])
def test_sh_matches_scipy(degree):
    enc = encodings.make("spherical-harmonics", {"degree": degree})
    d = _inputs("spherical-harmonics", 64, seed=6)
    out = enc(d).numpy()
    ref = np.stack([_real_sh_scipy(l, m, d.numpy()) for l in range(degree) for m in range(-l, l + 1)], -1)
    np.testing.assert_allclose(out, ref, rtol=1e-9, atol=1e-10)
    assert enc.n_output_dims == degree**2


def test_sh_closed_forms_low_bands():
    """The well-known closed forms (as in tiny-cuda-nn) for bands 0..2."""
    d = _inputs("spherical-harmonics", 20, seed=7)
    x, y, z = d.unbind(-1)
    out = encodings.make("spherical-harmonics", {"degree": 3})(d)
    ref = torch.stack([
        torch.full_like(x, 0.28209479177387814),
        -0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x,
        1.0925484305920792 * x * y, -1.0925484305920792 * y * z,
        0.94617469575755997 * z * z - 0.31539156525251999,
        -1.0925484305920792 * x * z, 0.54627421529603959 * (x * x - y * y),
    ], -1)
    torch.testing.assert_close(out, ref)


def test_sh_orthonormal_monte_carlo():
    enc = encodings.make("spherical-harmonics", {"degree": 4})
    d = torch.randn(200_000, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    d = d / d.norm(dim=-1, keepdim=True)
    Y = enc(d)
    gram = 4 * math.pi * Y.t() @ Y / d.shape[0]
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=0.03, rtol=0)


def test_sh_degree_out_of_range():
    with pytest.raises(ValueError, match="degree"):
        encodings.make("spherical-harmonics", {"degree": 9})


# ----------------------------------------------------------------------------- identity, with-xyz
def test_with_xyz_puts_centred_xyz_first_and_composes():
    enc = encodings.make("with-xyz", {"inner": {"name": "dense-grid", "resolution": 4, "n_features": 2},
                                      "xyz_scale": 3.0}).double()
    x = _inputs("dense-grid", 5, seed=9)
    out = enc(x)
    torch.testing.assert_close(out[:, :3], (2 * x - 1) * 3.0)
    torch.testing.assert_close(out[:, 3:], enc.inner(x))
    assert enc.regularizations().keys() == {"tv", "l1"}
    feats, jac = enc.forward_with_jacobian(x)
    torch.testing.assert_close(jac[:, :3], 6.0 * torch.eye(3, dtype=torch.float64).expand(5, 3, 3))


def test_with_xyz_forwards_progressive_attributes():
    prog = encodings.make("with-xyz", {"inner": dict(SMALL["progressive-hashgrid"][0], name="progressive-hashgrid")})
    assert prog.finest_active_resolution == pytest.approx(4.0)
    prog.update_step(0, 10**6)
    assert prog.current_level == 3 and prog.finest_active_resolution == pytest.approx(8.0)
    plain = encodings.make("with-xyz", {"inner": {"name": "frequency"}})
    assert not hasattr(plain, "finest_active_resolution")


def test_identity():
    enc = encodings.make("identity", {}, n_input_dims=2)
    x = torch.rand(4, 2)
    assert enc(x) is x
    _, jac = enc.forward_with_jacobian(x)
    torch.testing.assert_close(jac, torch.eye(2).expand(4, 2, 2))


# ----------------------------------------------------------------------------- configs
@pytest.mark.parametrize("name", sorted(SMALL))
def test_unknown_key_raises_config_error_naming_it(name):
    cfg = dict(SMALL[name][0], bogus_option=1)
    with pytest.raises(ConfigError, match="bogus_option"):
        encodings.make(name, cfg)


def test_nested_unknown_key_names_the_path():
    with pytest.raises(ConfigError, match=r"inner\.n_frequency"):
        encodings.make("with-xyz", {"inner": {"name": "frequency", "n_frequency": 3}})


@pytest.mark.parametrize("name", ["hashgrid", "triplane", "dense-grid"])
def test_grids_clamp_inputs_outside_the_cube(name):
    """Points outside [0, 1] (e.g. finite differences at the boundary) sample the clamped point,
    with zero derivative along the clamped axes; NaN does not crash."""
    enc = _make(name).double()
    x = torch.tensor([[-0.2, 0.5, 1.3], [0.3, 1.0001, 0.7]], dtype=torch.float64)
    out = enc(x)
    torch.testing.assert_close(out, enc(x.clamp(0, 1)))
    _, jac = enc.forward_with_jacobian(x)
    assert (jac[0, :, 0] == 0).all() and (jac[0, :, 2] == 0).all() and (jac[1, :, 1] == 0).all()
    xr = x.clone().requires_grad_(True)
    enc(xr).sum().backward()
    assert xr.grad[0, 0] == 0 and xr.grad[1, 1] == 0
    nan = torch.tensor([[float("nan"), 0.5, 0.5]], dtype=torch.float64)
    assert torch.isfinite(enc(nan)).all()


def test_grid_double_backward_gradgradcheck_triplane():
    from models.encodings.gather import grid_gather

    enc = encodings.make("triplane", {"resolution": 3, "n_features": 2, "aggregation": "concat"}).double()
    x = _inputs("triplane", 3, seed=10).requires_grad_(True)
    table = enc.table.detach().clone().requires_grad_(True)
    fn = lambda p, t: grid_gather(p, t, enc.sampler, 0)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, table), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradgradcheck(fn, (x, table), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("cfg", [
    {"name": "dense-grid", "resolution": 4, "n_features": 1},
    {"name": "dense-grid", "resolution": 4, "n_features": 3},
    {"name": "triplane", "resolution": 5, "n_features": 16, "aggregation": "product"},
    {"name": "triplane", "resolutions": [3, 5], "n_features": 6},
    {"name": "hashgrid", "n_levels": 2, "n_features_per_level": 4, "log2_hashmap_size": 6, "base_resolution": 3,
     "backend": "torch"},
])
@pytest.mark.parametrize("with_jac", [False, True])
@pytest.mark.parametrize("x_grad", [False, True])
def test_fast_backward_matches_plain_autograd(cfg, with_jac, x_grad):
    """The scatter backward (all its feature-width paths) against autograd through plain torch ops."""
    from models.encodings.gather import gather_reference, grid_gather

    enc = encodings.make(cfg["name"], cfg).double()
    sampler, G = enc.sampler, getattr(enc, "n_levels", 1)
    x = _inputs("dense-grid", 40, seed=11).requires_grad_(x_grad)
    table = enc.table.detach().clone().requires_grad_(True)
    feats, jac = grid_gather(x, table, sampler, G, with_jac=with_jac)
    ref_f, ref_j = gather_reference(x, table, sampler, G, with_jac)
    torch.testing.assert_close(feats, ref_f)
    g = torch.randn_like(feats)
    outs, refs, grads = [feats], [ref_f], [g]
    if with_jac:
        torch.testing.assert_close(jac, ref_j)
        outs.append(jac), refs.append(ref_j), grads.append(torch.randn_like(jac))
    inputs = [x, table] if x_grad else [table]
    got = torch.autograd.grad(outs, inputs, grads)
    want = torch.autograd.grad(refs, inputs, grads)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["hashgrid", "progressive-hashgrid", "triplane", "dense-grid", "frequency"])
def test_empty_batch_keeps_shapes(name):
    """A training step whose rays all miss gives zero points; encodings must not fail on them."""
    enc = encodings.make(name, {}, n_input_dims=3)
    x = torch.zeros(0, 3)
    assert enc(x).shape == (0, enc.n_output_dims)
    feats, jac = enc.forward_with_jacobian(x)
    assert feats.shape == (0, enc.n_output_dims) and jac.shape == (0, enc.n_output_dims, 3)
