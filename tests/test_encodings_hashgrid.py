"""Hash grid against a brute-force reference, gradients (first and second order), progressive levels."""
import math

import pytest
import torch

from models import encodings
from models.encodings.hashgrid import HashGrid

PRIMES = (1, 2654435761, 805459861)

# levels: scale 1 (R=2, dense), 3 (R=4, dense), 7 (R=8: 512 > 2^8, hashed); integer scales also
# exercise the upper-edge wrap of dense levels
TINY = dict(
    n_levels=3, n_features_per_level=2, log2_hashmap_size=8, base_resolution=2,
    per_level_scale=2.0, backend="torch",
)


def brute_force(x, table, n_levels, log2_T, base, per_level_scale, n_feat, smoothstep=False):
    """Per point, per level, per corner: tiny-cuda-nn's hash grid written out plainly (float64)."""
    T = 2**log2_T
    sizes, offsets, off = [], [], 0
    for lvl in range(n_levels):
        scale = base * per_level_scale**lvl - 1.0
        res = math.ceil(scale) + 1
        size = min(((res**3 + 7) // 8) * 8, T)
        sizes.append((scale, res, size, res**3 > T))
        offsets.append(off)
        off += size
    rows = []
    for n in range(x.shape[0]):
        feats = []
        for lvl in range(n_levels):
            scale, res, size, hashed = sizes[lvl]
            acc = [0.0] * n_feat
            pos = [x[n, d].clamp(0, 1) * scale + 0.5 for d in range(3)]
            cell = [math.floor(float(p.detach())) for p in pos]
            frac = [pos[d] - cell[d] for d in range(3)]
            if smoothstep:
                frac = [f * f * (3 - 2 * f) for f in frac]
            for corner in range(8):
                c = [cell[d] + ((corner >> d) & 1) for d in range(3)]
                wgt = 1.0
                for d in range(3):
                    wgt = wgt * (frac[d] if (corner >> d) & 1 else 1 - frac[d])
                if hashed:
                    h = 0
                    for d in range(3):
                        h ^= (c[d] * PRIMES[d]) & 0xFFFFFFFF
                    index = h % size
                else:
                    index = (c[0] + c[1] * res + c[2] * res * res) % size
                for f in range(n_feat):
                    acc[f] = acc[f] + wgt * table[offsets[lvl] + index, f]
            feats.extend(acc)
        rows.append(torch.stack([torch.as_tensor(a, dtype=torch.float64) for a in feats]))
    return torch.stack(rows)


def _points(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, generator=g, dtype=torch.float64)
    # edges: exactly 0, exactly 1 and just below 1 (where dense levels wrap)
    x[0] = 0.0
    x[1] = 1.0
    x[2] = torch.tensor([0.999, 0.9999, 1.0], dtype=torch.float64)
    return x


def _tiny(**kw):
    cfg = dict(TINY, **kw)
    enc = encodings.make("hashgrid", cfg).double()
    with torch.no_grad():
        enc.table.uniform_(-1, 1, generator=torch.Generator().manual_seed(1))
    return enc


def test_layout_matches_expectation():
    enc = _tiny()
    assert [lv.hashed for lv in enc.levels] == [False, False, True]
    assert [lv.resolution for lv in enc.levels] == [2, 4, 8]
    assert [lv.size for lv in enc.levels] == [8, 64, 256]
    assert enc.table.shape == (8 + 64 + 256, 2)
    assert enc.n_output_dims == 6


@pytest.mark.parametrize("interpolation", ["linear", "smoothstep"])
def test_values_and_gradients_match_brute_force(interpolation):
    enc = _tiny(interpolation=interpolation)
    x = _points(24).requires_grad_(True)
    weights = torch.randn(24, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    out = enc(x)
    ref_table = enc.table.detach().clone().requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    ref = brute_force(x_ref, ref_table, 3, 8, 2, 2.0, 2, smoothstep=interpolation == "smoothstep")
    assert out.shape == (24, 6) and out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)

    (out * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(enc.table.grad, ref_table.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-8, atol=1e-10)


def test_float32_matches_float64():
    enc = _tiny()
    x = _points(64, seed=3)
    ref = enc(x)
    enc32 = _tiny().float()
    torch.testing.assert_close(enc32(x.float()).double(), ref, rtol=1e-4, atol=1e-5)


def test_default_config_large_batch_against_brute_force_subset():
    """The default 16-level layout (5 dense, 11 hashed levels) on a few points, float32."""
    torch.manual_seed(0)
    enc = encodings.make("hashgrid", {"backend": "torch", "init_std": 1.0})
    x = torch.rand(2000, 3, generator=torch.Generator().manual_seed(4))
    out = enc(x)
    assert out.shape == (2000, 32) and out.dtype == torch.float32
    sub = [0, 1, 777, 1999]
    ref = brute_force(x[sub].double(), enc.table.detach().double(), 16, 19, 16, 1.447269237440378, 2)
    # float32 positions at the finest level (scale ~4095) carry ~1e-4 cell-fraction error;
    # a wrong row would be off by O(1)
    torch.testing.assert_close(out[sub].double(), ref, rtol=0, atol=1e-2)


def test_jacobian_matches_autograd():
    enc = _tiny(interpolation="smoothstep")
    x = _points(10, seed=5)[3:]  # away from the clamp edges
    feats, jac = enc.forward_with_jacobian(x)
    torch.testing.assert_close(feats, enc(x))
    ref = torch.autograd.functional.jacobian(lambda p: enc(p).sum(0), x)  # [F, N, D]
    torch.testing.assert_close(jac, ref.permute(1, 0, 2), rtol=1e-8, atol=1e-10)
    assert jac.shape == (7, 6, 3)


def test_jacobian_is_differentiable_wrt_table():
    enc = _tiny()
    x = _points(12, seed=6)[3:]
    g = torch.randn(9, 6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    _, jac = enc.forward_with_jacobian(x)
    (jac * g).sum().backward()
    got = enc.table.grad.clone()
    enc.table.grad = None
    # reference: the jacobian by autograd with create_graph, then its gradient w.r.t. the table
    xr = x.clone().requires_grad_(True)
    out = enc(xr)
    rows = [torch.autograd.grad(out[:, f].sum(), xr, create_graph=True)[0] for f in range(6)]
    ref_jac = torch.stack(rows, 1)
    (ref_jac * g).sum().backward()
    torch.testing.assert_close(got, enc.table.grad, rtol=1e-8, atol=1e-10)


def test_double_backward_gradcheck():
    enc = _tiny(n_levels=2, interpolation="smoothstep")  # smoothstep: non-zero second derivatives
    x = _points(6, seed=8)[3:].requires_grad_(True)
    table = enc.table.detach().clone().requires_grad_(True)

    def fn(pts, tab):
        from models.encodings.gather import grid_gather

        return grid_gather(pts, tab, enc.sampler, 2)[0]

    assert torch.autograd.gradcheck(fn, (x, table), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradgradcheck(fn, (x, table), eps=1e-6, atol=1e-5)


def test_eikonal_style_double_backward_reaches_table():
    """normal = d sdf/dx by autograd (create_graph), then a loss on it back to the table."""
    enc = _tiny()
    x = _points(8, seed=9)[3:].requires_grad_(True)
    sdf = (enc(x) * torch.arange(1.0, 7.0, dtype=torch.float64)).sum(-1)
    (normal,) = torch.autograd.grad(sdf.sum(), x, create_graph=True)
    loss = ((normal.norm(dim=-1) - 1) ** 2).sum()
    loss.backward()
    assert enc.table.grad is not None and enc.table.grad.abs().sum() > 0
    # compare with the explicit jacobian path, which is first-order differentiable w.r.t. the table
    table_grad = enc.table.grad.clone()
    enc.table.grad = None
    _, jac = enc.forward_with_jacobian(x.detach())
    normal2 = (jac * torch.arange(1.0, 7.0, dtype=torch.float64)[None, :, None]).sum(1)
    torch.testing.assert_close(normal2, normal.detach())
    ((normal2.norm(dim=-1) - 1) ** 2).sum().backward()
    torch.testing.assert_close(enc.table.grad, table_grad, rtol=1e-8, atol=1e-10)


def test_backward_without_stored_corners(monkeypatch):
    """The backward that recomputes the corners (large batches) gives the same gradients."""
    import models.encodings.gather as gather

    enc = _tiny()
    x = _points(50, seed=10)
    w = torch.randn(50, 6, dtype=torch.float64)
    (enc(x) * w).sum().backward()
    stored = enc.table.grad.clone()
    enc.table.grad = None
    monkeypatch.setattr(gather, "STORE_LIMIT_BYTES", 0)
    monkeypatch.setattr(gather, "CHUNK_ENTRIES", 64)  # many small chunks
    (enc(x) * w).sum().backward()
    torch.testing.assert_close(enc.table.grad, stored)
    _, jac = enc.forward_with_jacobian(x)
    enc.table.grad = None
    jac.sum().backward()
    g1 = enc.table.grad.clone()
    monkeypatch.setattr(gather, "STORE_LIMIT_BYTES", 1 << 30)
    enc.table.grad = None
    enc.forward_with_jacobian(x)[1].sum().backward()
    torch.testing.assert_close(enc.table.grad, g1)


def test_finest_resolution_sets_per_level_scale():
    enc = encodings.make(
        "hashgrid", {"n_levels": 8, "base_resolution": 16, "finest_resolution": 2048, "backend": "torch",
                     "log2_hashmap_size": 12}
    )
    assert enc.per_level_scale == pytest.approx(2.0)
    assert enc.level_resolution(7) == pytest.approx(2048)


def test_init_is_uniform_small():
    enc = encodings.make("hashgrid", {"n_levels": 4, "log2_hashmap_size": 12, "backend": "torch"})
    assert enc.table.abs().max() <= 1e-4
    assert enc.table.std() > 3e-5


def test_progressive_masks_levels_by_step():
    cfg = dict(TINY, n_levels=3, start_level=1, start_step=10, update_steps=5)
    enc = encodings.make("progressive-hashgrid", cfg).double()
    full = HashGrid(HashGrid.Config(**TINY), 3).double()
    with torch.no_grad():
        enc.table.uniform_(-1, 1)
        full.table.copy_(enc.table)
    x = _points(16, seed=11)
    ref = full(x)
    expect = {0: 1, 9: 1, 10: 1, 14: 1, 15: 2, 19: 2, 20: 3, 1000: 3}
    for step, n_active in expect.items():
        enc.update_step(0, step)
        assert enc.current_level == n_active
        out = enc(x)
        torch.testing.assert_close(out[:, : 2 * n_active], ref[:, : 2 * n_active])
        assert (out[:, 2 * n_active:] == 0).all()
        feats, jac = enc.forward_with_jacobian(x)
        torch.testing.assert_close(feats, out)
        assert (jac[:, 2 * n_active:] == 0).all()
        assert enc.finest_active_resolution == pytest.approx(2 * 2.0 ** (n_active - 1))


def test_progressive_inactive_levels_get_no_gradient():
    cfg = dict(TINY, start_level=1, update_steps=100)
    enc = encodings.make("progressive-hashgrid", cfg)
    enc(torch.rand(32, 3)).sum().backward()
    level0 = enc.levels[0]
    g = enc.table.grad
    assert g[: level0.size].abs().sum() > 0
    assert (g[level0.size:] == 0).all()


def test_unknown_key_raises_config_error():
    from utils.config import ConfigError

    with pytest.raises(ConfigError, match="n_level"):
        encodings.make("hashgrid", {"n_level": 4})
    with pytest.raises(ConfigError, match="interpolation"):
        encodings.make("hashgrid", {"interpolation": "cubic"})
