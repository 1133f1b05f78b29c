"""Compositing on packed samples against a per-ray brute-force reference and hand values."""
import math

import pytest
import torch

from models.rendering import (
    accumulate_along_rays,
    distortion_loss,
    render_transmittance_from_alpha,
    render_weight_from_alpha,
    render_weight_from_density,
)
from models.rendering import compositing

LENGTHS = [0, 5, 1, 0, 12, 3, 8, 0]  # samples per ray, including empty rays (first and last too)


@pytest.fixture(params=["float64", "padded"])
def scan_mode(request, monkeypatch):
    """Run each test with both segmented-scan strategies (float64 global scan, padded layout)."""
    monkeypatch.setattr(compositing, "_FORCE_SCAN", request.param)
    return request.param


def packed(lengths, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    ray_indices = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    n = ray_indices.numel()
    alphas = torch.rand(n, generator=g, dtype=dtype) * 0.9
    deltas = torch.rand(n, generator=g, dtype=dtype) * 0.2 + 0.01
    t_starts = torch.zeros(n, dtype=dtype)
    for r in range(len(lengths)):  # contiguous sorted intervals per ray, starting at a random near
        m = ray_indices == r
        if m.any():
            ends = 0.5 + torch.rand(1, generator=g, dtype=dtype) + torch.cumsum(deltas[m], 0)
            t_starts[m] = ends - deltas[m]
    sigmas = torch.rand(n, generator=g, dtype=dtype) * 5
    values = torch.rand(n, 3, generator=g, dtype=dtype)
    return ray_indices, alphas, sigmas, t_starts, t_starts + deltas, values


# -------------------------------------------------------------------------------------------
# brute-force references: a Python loop over rays with cumprod / explicit double sums
# -------------------------------------------------------------------------------------------
def ref_trans_from_alpha(alphas, ray_indices, n_rays):
    out = []
    for r in range(n_rays):
        a = alphas[ray_indices == r]
        prod = torch.cumprod(1 - a, 0)
        out.append(torch.cat([torch.ones_like(a[:1]), prod[:-1]]) if a.numel() else a)
    return torch.cat(out)


def ref_trans_from_density(t0, t1, sigmas, ray_indices, n_rays):
    out = []
    for r in range(n_rays):
        m = ray_indices == r
        tau = sigmas[m] * (t1[m] - t0[m])
        out.append(torch.exp(-(torch.cumsum(tau, 0) - tau)))
    return torch.cat(out)


def ref_accumulate(weights, values, ray_indices, n_rays):
    rows = []
    for r in range(n_rays):
        m = ray_indices == r
        v = values[m] if values is not None else torch.ones_like(weights[m])[:, None]
        rows.append((weights[m][:, None] * v).sum(0) if m.any() else torch.zeros(v.shape[1], dtype=weights.dtype))
    return torch.stack(rows)


def ref_distortion(weights, t0, t1, ray_indices, n_rays):
    out = []
    for r in range(n_rays):
        m = ray_indices == r
        w, mid, delta = weights[m], (t0[m] + t1[m]) / 2, t1[m] - t0[m]
        total = weights.new_zeros(())
        for i in range(w.numel()):
            for j in range(w.numel()):
                total = total + w[i] * w[j] * (mid[i] - mid[j]).abs()
            total = total + w[i] ** 2 * delta[i] / 3
        out.append(total)
    return torch.stack(out)


# -------------------------------------------------------------------------------------------
# hand-computed cases
# -------------------------------------------------------------------------------------------
def test_hand_case_alpha():
    alphas = torch.tensor([0.5, 0.5])
    ray_indices = torch.tensor([0, 0])
    weights, trans = render_weight_from_alpha(alphas, ray_indices, 1)
    assert torch.allclose(trans, torch.tensor([1.0, 0.5]))
    assert torch.allclose(weights, torch.tensor([0.5, 0.25]))
    opacity = accumulate_along_rays(weights, None, ray_indices, 1)
    assert opacity.shape == (1, 1) and torch.allclose(opacity, torch.tensor([[0.75]]))


def test_hand_case_density():
    t_starts, t_ends = torch.tensor([0.0, 0.5]), torch.tensor([0.5, 0.75])
    sigmas = torch.tensor([1.0, 2.0])  # sigma * delta = 0.5 for both
    weights, trans, alphas = render_weight_from_density(t_starts, t_ends, sigmas, torch.tensor([0, 0]), 1)
    a = 1 - math.exp(-0.5)
    assert torch.allclose(alphas, torch.tensor([a, a]))
    assert torch.allclose(trans, torch.tensor([1.0, math.exp(-0.5)]))
    assert torch.allclose(weights, torch.tensor([a, math.exp(-0.5) * a]))


def test_hand_case_distortion():
    # w = [0.5, 0.5] on [0, 1] and [1, 2]: pairs 2 * 0.25 * |0.5 - 1.5| = 0.5, self 1/3 * 0.25 * 2
    loss = distortion_loss(
        torch.tensor([0.5, 0.5, 1.0]), torch.tensor([0.0, 1.0, 3.0]), torch.tensor([1.0, 2.0, 3.5]),
        torch.tensor([0, 0, 1]), 3,
    )
    assert torch.allclose(loss, torch.tensor([0.5 + 1 / 6, 0.5 / 3, 0.0]))


def test_opaque_sample_stops_transmittance():
    alphas = torch.tensor([0.2, 1.0, 0.3, 0.4, 0.5])
    trans = render_transmittance_from_alpha(alphas, torch.tensor([0, 0, 0, 0, 1]), 2)
    assert torch.equal(trans, torch.tensor([1.0, 0.8, 0.0, 0.0, 1.0]))


# -------------------------------------------------------------------------------------------
# against the brute force, with gradients
# -------------------------------------------------------------------------------------------
def test_transmittance_and_weights_from_alpha_match_reference(scan_mode):
    ray_indices, alphas, *_ = packed(LENGTHS)
    alphas[3] = 1.0  # an opaque sample (ray 1) and a fully transparent one
    alphas[20] = 0.0
    n_rays = len(LENGTHS)
    g = torch.Generator().manual_seed(1)
    c_t, c_w = torch.randn(alphas.shape, generator=g, dtype=alphas.dtype), torch.randn(
        alphas.shape, generator=g, dtype=alphas.dtype
    )

    a1 = alphas.clone().requires_grad_()
    w1, t1 = render_weight_from_alpha(a1, ray_indices, n_rays, backend="torch")
    (grad1,) = torch.autograd.grad((t1 * c_t).sum() + (w1 * c_w).sum(), a1)

    a2 = alphas.clone().requires_grad_()
    t2 = ref_trans_from_alpha(a2, ray_indices, n_rays)
    w2 = t2 * a2
    (grad2,) = torch.autograd.grad((t2 * c_t).sum() + (w2 * c_w).sum(), a2)

    assert torch.allclose(t1, t2, atol=1e-12)
    assert torch.allclose(w1, w2, atol=1e-12)
    assert torch.allclose(grad1, grad2, atol=1e-10)
    assert grad2[3].abs() > 1e-3  # the opaque sample's gradient is non-trivial and was matched


def test_transmittance_gradcheck():
    ray_indices, alphas, *_ = packed([3, 0, 4, 1])
    a = (alphas * 0.8 + 0.05).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: render_transmittance_from_alpha(x, ray_indices, 4), (a,))


def test_weights_from_density_match_reference(scan_mode):
    ray_indices, _, sigmas, t0, t1, _ = packed(LENGTHS, seed=3)
    n_rays = len(LENGTHS)
    g = torch.Generator().manual_seed(2)
    c = torch.randn(sigmas.shape[0], 3, generator=g, dtype=sigmas.dtype)

    def run(fn_weights):
        s, a, b = sigmas.clone().requires_grad_(), t0.clone().requires_grad_(), t1.clone().requires_grad_()
        weights, trans, alphas = fn_weights(a, b, s)
        loss = (weights * c[:, 0]).sum() + (trans * c[:, 1]).sum() + (alphas * c[:, 2]).sum()
        return (weights, trans, alphas), torch.autograd.grad(loss, (s, a, b))

    def ours(a, b, s):
        return render_weight_from_density(a, b, s, ray_indices, n_rays, backend="torch")

    def ref(a, b, s):
        trans = ref_trans_from_density(a, b, s, ray_indices, n_rays)
        alphas = 1 - torch.exp(-s * (b - a))
        return trans * alphas, trans, alphas

    out1, grads1 = run(ours)
    out2, grads2 = run(ref)
    for x, y in zip(out1 + grads1, out2 + grads2):
        assert torch.allclose(x, y, atol=1e-10)


def test_accumulate_matches_reference():
    ray_indices, alphas, _, _, _, values = packed(LENGTHS, seed=4)
    n_rays = len(LENGTHS)
    w1, v1 = alphas.clone().requires_grad_(), values.clone().requires_grad_()
    out1 = accumulate_along_rays(w1, v1, ray_indices, n_rays, backend="torch")
    w2, v2 = alphas.clone().requires_grad_(), values.clone().requires_grad_()
    out2 = ref_accumulate(w2, v2, ray_indices, n_rays)
    assert out1.shape == (n_rays, 3)
    assert torch.allclose(out1, out2, atol=1e-12)
    c = torch.randn(n_rays, 3, generator=torch.Generator().manual_seed(5), dtype=out1.dtype)
    g1 = torch.autograd.grad((out1 * c).sum(), (w1, v1))
    g2 = torch.autograd.grad((out2 * c).sum(), (w2, v2))
    assert all(torch.allclose(x, y, atol=1e-12) for x, y in zip(g1, g2))
    opacity = accumulate_along_rays(alphas, None, ray_indices, n_rays)
    assert torch.allclose(opacity, ref_accumulate(alphas, None, ray_indices, n_rays), atol=1e-12)
    assert torch.all(opacity[torch.tensor(LENGTHS) == 0] == 0)


def test_distortion_matches_reference(scan_mode):
    ray_indices, alphas, _, t0, t1, _ = packed(LENGTHS, seed=6)
    n_rays = len(LENGTHS)
    weights = render_weight_from_alpha(alphas, ray_indices, n_rays)[0]

    def grads(fn):
        w, a, b = weights.clone().requires_grad_(), t0.clone().requires_grad_(), t1.clone().requires_grad_()
        loss = fn(w, a, b, ray_indices, n_rays)
        c = torch.arange(1, n_rays + 1, dtype=loss.dtype)
        return loss, torch.autograd.grad((loss * c).sum(), (w, a, b))

    loss1, g1 = grads(distortion_loss)
    loss2, g2 = grads(ref_distortion)
    assert loss1.shape == (n_rays,)
    assert torch.allclose(loss1, loss2, atol=1e-12)
    assert all(torch.allclose(x, y, atol=1e-10) for x, y in zip(g1, g2))


def test_float32_inputs_match_float64_reference(scan_mode):
    ray_indices, alphas, sigmas, t0, t1, values = packed(LENGTHS, seed=7)
    n_rays = len(LENGTHS)
    w32, tr32, _ = render_weight_from_density(t0.float(), t1.float(), sigmas.float(), ray_indices, n_rays)
    assert w32.dtype == torch.float32
    ref_t = ref_trans_from_density(t0, t1, sigmas, ray_indices, n_rays)
    assert torch.allclose(tr32.double(), ref_t, atol=1e-6)
    d32 = distortion_loss(w32, t0.float(), t1.float(), ray_indices, n_rays)
    assert torch.allclose(d32.double(), ref_distortion(w32.double(), t0, t1, ray_indices, n_rays), atol=1e-5)


def test_precision_with_many_samples():
    """200k float32 samples whose optical depth sums to 2e4 overall: a single float32 cumulative
    sum over all samples would be off by ~1e-3 in the exponent; per-ray results must stay
    accurate to ~1e-6 relative."""
    n_rays, per_ray = 2000, 100
    ray_indices = torch.arange(n_rays).repeat_interleave(per_ray)
    t_starts = torch.arange(per_ray, dtype=torch.float32).repeat(n_rays) * 0.01
    t_ends = t_starts + 0.01
    g = torch.Generator().manual_seed(0)
    sigmas = 5 + 10 * torch.rand(n_rays * per_ray, generator=g)  # tau ~ 0.05..0.15 per sample
    _, trans, _ = render_weight_from_density(t_starts, t_ends, sigmas, ray_indices, n_rays)
    last = ray_indices == n_rays - 1
    tau = (sigmas * (t_ends - t_starts))[last].double()
    ref = torch.exp(-(torch.cumsum(tau, 0) - tau))
    assert ref[-1] < 1e-3
    assert torch.allclose(trans[last].double(), ref, rtol=2e-6, atol=0)

    alphas = 1 - torch.exp(-sigmas * 0.01)
    trans_a = render_transmittance_from_alpha(alphas, ray_indices, n_rays)
    ref_a = torch.cumprod(1 - alphas[last].double(), 0)
    ref_a = torch.cat([torch.ones(1, dtype=torch.float64), ref_a[:-1]])
    assert torch.allclose(trans_a[last].double(), ref_a, rtol=2e-6, atol=0)


def test_empty_inputs():
    e = torch.zeros(0)
    ri = torch.zeros(0, dtype=torch.long)
    w, t = render_weight_from_alpha(e.clone().requires_grad_(), ri, 3)
    assert w.shape == (0,) and t.shape == (0,)
    assert accumulate_along_rays(w, None, ri, 3).shape == (3, 1)
    assert torch.equal(distortion_loss(e, e, e, ri, 3), torch.zeros(3))


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError):
        render_transmittance_from_alpha(torch.zeros(3), torch.zeros(2, dtype=torch.long), 1)
