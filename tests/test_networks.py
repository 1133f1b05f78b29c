"""Networks: shapes, hand-written input gradients against autograd, sphere init, SIREN init and FiLM."""
import math

import pytest
import torch
import torch.nn.functional as F

from models.networks import networks
from utils.config import ConfigError

ACTS = ["relu", "softplus", "silu", "sigmoid", "tanh", "none"]


def _mlp(d_in=5, d_out=3, **cfg):
    return networks.make("mlp", dict({"n_neurons": 16, "backend": "torch"}, **cfg), n_input_dims=d_in,
                         n_output_dims=d_out)


def _manual_mlp(net, h):
    """Forward written out from the effective weights (w = g v / |v| rows under weight norm)."""
    cfg = net.cfg
    acts = {"relu": torch.relu, "softplus": lambda z: F.softplus(z, beta=cfg.softplus_beta), "silu": F.silu,
            "sigmoid": torch.sigmoid, "tanh": torch.tanh, "none": lambda z: z}
    n = len(net.layers)
    for i, layer in enumerate(net.layers):
        if cfg.weight_norm:
            p = layer.parametrizations.weight
            g, v = p.original0, p.original1
            W = g * v / v.norm(dim=1, keepdim=True)
        else:
            W = layer.weight
        h = h @ W.t() + (layer.bias if layer.bias is not None else 0)
        h = acts[cfg.activation if i < n - 1 else cfg.output_activation](h)
    return h


def test_registered_networks():
    assert {"mlp", "siren"} <= set(networks.names())


@pytest.mark.parametrize("n_hidden", [0, 1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mlp_shapes(n_hidden, dtype):
    net = _mlp(7, 4, n_hidden_layers=n_hidden).to(dtype)
    h = torch.randn(9, 7, dtype=dtype)
    out = net(h)
    assert out.shape == (9, 4) and out.dtype == dtype
    out2, grad = net.forward_with_input_grad(h)
    assert grad.shape == (9, 7) and grad.dtype == dtype
    torch.testing.assert_close(out2, out)
    assert len(net.layers) == n_hidden + 1


@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("weight_norm", [False, True])
def test_mlp_forward_matches_manual(activation, weight_norm):
    torch.manual_seed(0)
    net = _mlp(activation=activation, n_hidden_layers=2, weight_norm=weight_norm, output_activation="tanh",
               softplus_beta=7.0).double()
    if weight_norm:  # make g differ from |v| so the normalization matters
        with torch.no_grad():
            for layer in net.layers:
                layer.parametrizations.weight.original0.mul_(1.7)
    h = torch.randn(11, 5, dtype=torch.float64)
    torch.testing.assert_close(net(h), _manual_mlp(net, h))


@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("output_activation", ["none", "sigmoid", "softplus"])
@pytest.mark.parametrize("weight_norm", [False, True])
def test_mlp_input_grad_matches_autograd(activation, output_activation, weight_norm):
    torch.manual_seed(1)
    net = _mlp(activation=activation, output_activation=output_activation, n_hidden_layers=2,
               weight_norm=weight_norm, softplus_beta=5.0).double()
    h = torch.randn(13, 5, dtype=torch.float64, requires_grad=True)
    out, grad = net.forward_with_input_grad(h)
    (ref,) = torch.autograd.grad(net(h)[:, 0].sum(), h, create_graph=True)
    torch.testing.assert_close(grad, ref)
    # a loss on the gradient: the explicit graph gives the parameters and h the same gradients
    # as double backward through autograd
    params = [h] + list(net.parameters())
    w = torch.randn(13, 5, dtype=torch.float64)
    got = torch.autograd.grad((grad * w).sum() + out.sum(), params, allow_unused=True)
    want = torch.autograd.grad((ref * w).sum() + net(h).sum(), params, allow_unused=True)
    for a, b in zip(got, want):
        if b is None:
            assert a is None or a.abs().max() == 0
        else:
            torch.testing.assert_close(a, b)


def test_mlp_input_grad_no_hidden_layer():
    net = _mlp(n_hidden_layers=0, output_activation="sigmoid").double()
    h = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    _, grad = net.forward_with_input_grad(h)
    (ref,) = torch.autograd.grad(net(h)[:, 0].sum(), h)
    torch.testing.assert_close(grad, ref)


def test_mlp_without_bias():
    net = _mlp(bias=False)
    assert all(layer.bias is None for layer in net.layers)
    assert net(torch.zeros(2, 5)).abs().max() == 0


def _ball_points(n, seed):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(n, 3, generator=g)
    return p / p.norm(dim=-1, keepdim=True) * torch.rand(n, 1, generator=g), g


@pytest.mark.parametrize("weight_norm", [False, True])
def test_sphere_init_is_close_to_sphere_sdf(weight_norm):
    """relu, wide: sdf(p) = |p| g(p/|p|) - r with g ~ 1 +- O(1/sqrt(width)) (random init)."""
    torch.manual_seed(2)
    r = 0.5
    net = _mlp(3 + 8, 4, n_neurons=1024, n_hidden_layers=1, sphere_init=True, sphere_init_radius=r,
               weight_norm=weight_norm)
    p, g = _ball_points(2000, 3)
    feats = torch.randn(2000, 8, generator=g)  # the non-xyz inputs must not matter at init
    sdf = net(torch.cat([p, feats], -1))[:, 0]
    err = (sdf - (p.norm(dim=-1) - r)).abs()
    assert err.mean() < 0.05 and err.max() < 0.3
    # the extra input columns start at zero
    first = net.layers[0].weight
    assert first[:, 3:].abs().max() == 0 and first[:, :3].abs().max() > 0


def test_sphere_init_default_sdf_config_and_inside_out():
    """The SDF default (64 softplus units, beta 100): looser, but the sign structure is right."""
    torch.manual_seed(3)
    cfg = dict(n_neurons=64, n_hidden_layers=1, activation="softplus", sphere_init=True,
               sphere_init_radius=0.5, weight_norm=True)
    net = _mlp(3 + 4, 2, **cfg)
    p, g = _ball_points(2000, 4)
    h = torch.cat([p, torch.randn(2000, 4, generator=g)], -1)
    sdf = net(h)[:, 0]
    err = (sdf - (p.norm(dim=-1) - 0.5)).abs()
    assert err.mean() < 0.15
    assert net(torch.zeros(1, 7))[0, 0] < -0.3
    torch.manual_seed(3)
    flipped = _mlp(3 + 4, 2, inside_out=True, **cfg)
    sdf_io = flipped(h)[:, 0]
    assert ((sdf_io - (0.5 - p.norm(dim=-1))).abs()).mean() < 0.15
    assert flipped(torch.zeros(1, 7))[0, 0] > 0.3


def test_sphere_init_needs_hidden_layer():
    with pytest.raises(ValueError, match="sphere_init"):
        _mlp(n_hidden_layers=0, sphere_init=True)


def test_mlp_config_errors():
    with pytest.raises(ConfigError, match="n_neuron"):
        networks.make("mlp", {"n_neuron": 3}, n_input_dims=2, n_output_dims=1)
    with pytest.raises(ConfigError, match="activation"):
        networks.make("mlp", {"activation": "gelu"}, n_input_dims=2, n_output_dims=1)
    with pytest.raises(ConfigError, match="w00"):
        networks.make("siren", {"w00": 3}, n_input_dims=2, n_output_dims=1)


# ----------------------------------------------------------------------------- tcnn-mlp
def _tcnn_mlp(d_in=5, d_out=3, **cfg):
    return networks.make("tcnn-mlp", dict({"n_neurons": 16, "n_hidden_layers": 2, "backend": "torch"}, **cfg),
                         n_input_dims=d_in, n_output_dims=d_out)


def _manual_tcnn_mlp(net, h):
    """tiny-cuda-nn's layout written out: row-major matrices one after the other, the input padded
    to 16 columns with ones, the output padded to 16 rows; softplus with K_ACT = 10."""
    acts = {"relu": torch.relu, "softplus": lambda z: torch.log1p(torch.exp(10 * z)) / 10, "sigmoid": torch.sigmoid,
            "tanh": torch.tanh, "none": lambda z: z}
    p, w, d_in = net.params, net.cfg.n_neurons, h.shape[1]
    shapes = [(w, 16)] + [(w, w)] * (net.cfg.n_hidden_layers - 1) + [(16, w)]
    assert p.numel() == sum(r * c for r, c in shapes)
    a = torch.cat([h, torch.ones(h.shape[0], 16 - d_in, dtype=h.dtype)], dim=1)
    start = 0
    for i, (r, c) in enumerate(shapes):
        W = p[start:start + r * c].reshape(r, c)
        start += r * c
        a = a @ W.t()
        if i < len(shapes) - 1:
            a = acts[net.cfg.activation](a)
    return acts[net.cfg.output_activation](a[:, :net.n_output_dims])


@pytest.mark.parametrize("activation,output_activation", [("relu", "none"), ("softplus", "sigmoid"), ("tanh", "tanh")])
def test_tcnn_mlp_pytorch_path_is_tcnns_layout(activation, output_activation):
    torch.manual_seed(0)
    net = _tcnn_mlp(activation=activation, output_activation=output_activation).double()
    h = torch.randn(40, 5, dtype=torch.float64)
    assert torch.allclose(net(h), _manual_tcnn_mlp(net, h), atol=1e-12)
    # padded input columns act as a bias: the output depends on them even for h = 0
    assert net(torch.zeros(2, 5, dtype=torch.float64)).abs().sum() > 0


@pytest.mark.parametrize("activation", ["relu", "softplus", "tanh"])
def test_tcnn_mlp_input_grad_matches_autograd(activation):
    torch.manual_seed(1)
    net = _tcnn_mlp(activation=activation, output_activation="sigmoid").double()
    h = torch.randn(30, 5, dtype=torch.float64, requires_grad=True)
    out, g = net.forward_with_input_grad(h)
    (ref,) = torch.autograd.grad(net(h)[:, 0].sum(), h)
    assert torch.allclose(out, net(h)) and torch.allclose(g, ref, atol=1e-10)


def test_tcnn_mlp_initialization_and_config_errors():
    torch.manual_seed(0)
    net = _tcnn_mlp(d_in=20, d_out=1, n_neurons=64)
    first, hidden, last = net.matrices()
    assert first.shape == (64, 32) and hidden.shape == (64, 64) and last.shape == (16, 64)
    bound = (6.0 / (64 + 32)) ** 0.5  # Xavier-uniform per matrix, as tiny-cuda-nn
    assert first.abs().max() <= bound and first.abs().max() > 0.9 * bound
    with pytest.raises(ValueError, match="n_hidden_layers: must be >= 1"):
        _tcnn_mlp(n_hidden_layers=0)
    with pytest.raises(ConfigError, match="activation"):
        _tcnn_mlp(activation="silu")


# ----------------------------------------------------------------------------- SIREN
def _siren(d_in=3, d_out=2, **cfg):
    return networks.make("siren", dict({"n_neurons": 32, "n_hidden_layers": 3}, **cfg), n_input_dims=d_in,
                         n_output_dims=d_out)


def _manual_siren(net, h, film=None):
    n = len(net.layers)
    for i, layer in enumerate(net.layers):
        z = h @ layer.weight.t() + layer.bias
        if i == n - 1:
            return z
        w0 = net.cfg.w0_initial if i == 0 else net.cfg.w0
        freq = 1.0 if film is None else film[0][:, i]
        phase = 0.0 if film is None else film[1][:, i]
        h = torch.sin(w0 * freq * z + phase)


def test_siren_shapes_and_forward():
    torch.manual_seed(0)
    net = _siren().double()
    h = torch.rand(6, 3, dtype=torch.float64) * 2 - 1
    out = net(h)
    assert out.shape == (6, 2)
    torch.testing.assert_close(out, _manual_siren(net, h))
    assert net.n_film_layers == 3


def test_siren_init_bounds():
    net = _siren(d_in=4, n_neurons=64, w0=2.0)
    assert net.layers[0].weight.abs().max() <= 1 / 4
    assert net.layers[0].weight.abs().max() > 0.8 / 4
    bound = math.sqrt(6 / 64) / 2.0
    for layer in net.layers[1:]:
        assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.9 * bound


def test_siren_init_statistics():
    """SIREN paper: the first layer's activations are arcsine-distributed (uniform phases), the
    hidden pre-activations ~ N(0, 1) at every depth, so hidden activations are distributed as
    sin(N(0, 1)) (roughly arcsine)."""
    torch.manual_seed(0)
    net = _siren(d_in=3, n_neurons=256, n_hidden_layers=5)
    h = torch.rand(2048, 3) * 2 - 1
    grid = torch.linspace(-0.9, 0.9, 7)
    arcsine_cdf = 0.5 + torch.asin(grid) / math.pi
    z_ref = torch.randn(400_000, generator=torch.Generator().manual_seed(1))
    sin_normal_cdf = (torch.sin(z_ref).unsqueeze(1) <= grid).float().mean(0)
    pre_stds = []
    with torch.no_grad():
        a = h
        for i, layer in enumerate(net.layers[:-1]):
            w0 = net.cfg.w0_initial if i == 0 else net.cfg.w0
            z = w0 * layer(a)
            a = torch.sin(z)
            cdf = (a.reshape(-1, 1) <= grid).float().mean(0)
            if i == 0:
                assert (cdf - arcsine_cdf).abs().max() < 0.03
            else:
                pre_stds.append(z.std().item())
                assert (cdf - sin_normal_cdf).abs().max() < 0.03, f"layer {i}"
                assert (cdf - arcsine_cdf).abs().max() < 0.1, f"layer {i}"
    assert all(abs(s - 1.0) < 0.15 for s in pre_stds), pre_stds
    assert max(pre_stds) - min(pre_stds) < 0.15


@pytest.mark.parametrize("with_film", [False, True])
def test_siren_input_grad_matches_autograd(with_film):
    torch.manual_seed(4)
    net = _siren(film=with_film).double()
    h = (torch.rand(5, 3, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    film = None
    if with_film:
        film = (1 + 0.3 * torch.randn(5, 3, 32, dtype=torch.float64), 0.5 * torch.randn(5, 3, 32, dtype=torch.float64))
    out, grad = net.forward_with_input_grad(h, film)
    (ref,) = torch.autograd.grad(net(h, film)[:, 0].sum(), h, create_graph=True)
    torch.testing.assert_close(out, net(h, film))
    torch.testing.assert_close(grad, ref)
    params = list(net.parameters())
    got = torch.autograd.grad(grad.pow(2).sum(), params, allow_unused=True)
    want = torch.autograd.grad(ref.pow(2).sum(), params, allow_unused=True)
    for a, b in zip(got, want):
        if b is None:  # the output bias does not enter the input gradient
            assert a is None or a.abs().max() == 0
        else:
            torch.testing.assert_close(a, b)


def test_siren_film():
    torch.manual_seed(5)
    net = _siren(film=True).double()
    h = torch.rand(8, 3, dtype=torch.float64) * 2 - 1
    plain = net(h)
    ident = (torch.ones(1, 3, 32, dtype=torch.float64), torch.zeros(1, 3, 32, dtype=torch.float64))
    torch.testing.assert_close(net(h, ident), plain)
    film = (1 + 0.5 * torch.randn(8, 3, 32, dtype=torch.float64), torch.randn(8, 3, 32, dtype=torch.float64))
    changed = net(h, film)
    assert (changed - plain).abs().max() > 1e-2
    torch.testing.assert_close(changed, _manual_siren(net, h, film))
    with pytest.raises(ValueError, match="FiLM"):
        net(h, (torch.ones(1, 2, 32), torch.zeros(1, 2, 32)))
    with pytest.raises(ValueError, match="film"):
        _siren()(h.float(), (torch.ones(1, 3, 32), torch.zeros(1, 3, 32)))
