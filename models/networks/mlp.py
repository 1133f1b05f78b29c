"""Fully connected network with optional weight normalization and SDF sphere initialization.

PyTorch only, on every device: tiny-cuda-nn's fused MLP has another architecture (no biases, a
padded input), so it is a network of its own (``tcnn-mlp``, models/networks/tcnn.py) chosen in the
config, never swapped in for this one by what is installed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, List, Literal, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from models.networks import register
from utils.config import at_least, checked, key_of, positive

Activation = Literal["relu", "softplus", "silu", "sigmoid", "tanh", "none"]


def activate(name: str, z: torch.Tensor, beta: float) -> torch.Tensor:
    """The activation ``name`` applied to pre-activations z (any shape)."""
    if name == "relu":
        return torch.relu(z)
    if name == "softplus":
        return F.softplus(z, beta=beta)
    if name == "silu":
        return F.silu(z)
    if name == "sigmoid":
        return torch.sigmoid(z)
    if name == "tanh":
        return torch.tanh(z)
    return z


def activation_grad(name: str, z: torch.Tensor, a: torch.Tensor, beta: float) -> Optional[torch.Tensor]:
    """d activation / d z at z (a = activation(z)); None for the identity."""
    if name == "relu":
        return (z > 0).to(z.dtype)
    if name == "softplus":
        return torch.sigmoid(beta * z)
    if name == "silu":
        s = torch.sigmoid(z)
        return s * (1.0 + z * (1.0 - s))
    if name == "sigmoid":
        return a * (1.0 - a)
    if name == "tanh":
        return 1.0 - a * a
    return None


_INPLACE = {"relu": torch.relu_, "sigmoid": torch.sigmoid_, "tanh": torch.tanh_}


@register("mlp")
class MLP(nn.Module):
    """h [N, I] -> [N, O]: ``n_hidden_layers`` layers of ``n_neurons`` then a linear output layer.

    ``sphere_init`` (IDR / SAL / NeuS geometric initialization) makes the first output start as
    the signed distance ``|p| - sphere_init_radius`` of the centred coordinates p = the first 3
    input columns (as the "with-xyz" encoding produces them); the other input columns start
    with zero weights. Meant for ``activation: softplus`` (large beta) or relu.
    """

    @dataclass
    class Config:
        n_neurons: int = checked(at_least(1), default=64)
        n_hidden_layers: int = checked(at_least(0), default=1)
        activation: Activation = "relu"
        output_activation: Activation = "none"
        # sharpness of the softplus (100: close to relu, for SDFs)
        softplus_beta: float = checked(positive(), default=100.0)
        sphere_init: bool = False
        sphere_init_radius: float = checked(positive(), default=0.5)
        inside_out: bool = False  # sphere init with the sign flipped (negative outside)
        weight_norm: bool = False
        bias: bool = True
        # one implementation (PyTorch); kept so older configs load. 'tcnn' is refused: the
        # tiny-cuda-nn MLP is the network 'tcnn-mlp'
        backend: Literal["auto", "torch", "tcnn"] = "auto"

        def check(self) -> Iterator[Tuple[str, str]]:
            if self.sphere_init and self.n_hidden_layers < 1:
                yield "n_hidden_layers", "sphere_init needs at least one hidden layer"

    def __init__(self, cfg: "MLP.Config", n_input_dims: int, n_output_dims: int):
        super().__init__()
        self.cfg = cfg
        self.n_input_dims = n_input_dims
        self.n_output_dims = n_output_dims
        if cfg.n_hidden_layers < 0 or cfg.n_neurons < 1:
            raise ValueError("mlp: n_hidden_layers must be >= 0 and n_neurons >= 1")
        if cfg.sphere_init and (cfg.n_hidden_layers < 1 or n_input_dims < 3):
            raise ValueError("mlp: sphere_init needs at least one hidden layer and 3 input dims (centred xyz first)")
        if cfg.backend == "tcnn":
            raise ValueError(
                f"{key_of(cfg, 'backend', 'mlp')}='tcnn': the PyTorch MLP has no tiny-cuda-nn kernel (tiny-cuda-nn's "
                "MLP has no biases); use the network 'tcnn-mlp' (name: tcnn-mlp) for it"
            )
        dims = [n_input_dims] + [cfg.n_neurons] * cfg.n_hidden_layers + [n_output_dims]
        layers: List[nn.Linear] = []
        for i in range(len(dims) - 1):
            layer = nn.Linear(dims[i], dims[i + 1], bias=cfg.bias)
            if cfg.sphere_init:
                self._sphere_init(layer, i, len(dims) - 2)
            if cfg.weight_norm:
                layer = nn.utils.parametrizations.weight_norm(layer)
            layers.append(layer)
        self.layers = nn.ModuleList(layers)

    def _sphere_init(self, layer: nn.Linear, index: int, last: int) -> None:
        cfg = self.cfg
        with torch.no_grad():
            out_dim, in_dim = layer.weight.shape
            if index == last:
                mean = math.sqrt(math.pi) / math.sqrt(in_dim)
                layer.weight.normal_(-mean if cfg.inside_out else mean, 1e-4)
                if layer.bias is not None:
                    layer.bias.fill_(cfg.sphere_init_radius if cfg.inside_out else -cfg.sphere_init_radius)
            else:
                layer.weight.normal_(0.0, math.sqrt(2.0) / math.sqrt(out_dim))
                if index == 0:
                    layer.weight[:, 3:] = 0.0
                if layer.bias is not None:
                    layer.bias.zero_()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h [N, I] -> [N, O]."""
        cfg = self.cfg
        n = len(self.layers)
        for i, layer in enumerate(self.layers):
            h = layer(h)
            name = cfg.activation if i < n - 1 else cfg.output_activation
            if name in _INPLACE:  # their backward needs only their output: save an allocation
                h = _INPLACE[name](h)
            else:
                h = activate(name, h, cfg.softplus_beta)
        return h

    def forward_with_input_grad(self, h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """h [N, I] -> (out [N, O], d out[:, 0] / d h [N, I]).

        The gradient comes from a hand-written backward pass through the layers (a first-order
        graph: differentiable w.r.t. the parameters and h without ``create_graph``).
        """
        cfg = self.cfg
        beta = cfg.softplus_beta
        n = len(self.layers)
        cache = []
        a = h
        z = h
        for i, layer in enumerate(self.layers):
            W = layer.weight  # computed once (weight norm) and reused by the backward
            z = F.linear(a, W, layer.bias)
            if i < n - 1:
                a = activate(cfg.activation, z, beta)
                cache.append((W, z, a))
            else:
                out = activate(cfg.output_activation, z, beta)
                last_w = W
        z0 = z[:, :1]
        dz0 = activation_grad(cfg.output_activation, z0, out[:, :1], beta)
        g = last_w[0].expand(h.shape[0], -1) if dz0 is None else dz0 * last_w[0]
        for W, z_i, a_i in reversed(cache):
            da = activation_grad(cfg.activation, z_i, a_i, beta)
            if da is not None:
                g = g * da
            g = g @ W
        return out, g

    def extra_repr(self) -> str:
        cfg = self.cfg
        return (
            f"n_input_dims={self.n_input_dims}, n_output_dims={self.n_output_dims}, "
            f"hidden={cfg.n_hidden_layers}x{cfg.n_neurons}, activation={cfg.activation}, "
            f"output_activation={cfg.output_activation}, sphere_init={cfg.sphere_init}, "
            f"weight_norm={cfg.weight_norm}"
        )
