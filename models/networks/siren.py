"""SIREN (sine activations) with optional pi-GAN FiLM conditioning."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from models.networks import register
from utils.config import at_least, checked, positive

Film = Tuple[torch.Tensor, torch.Tensor]


@register("siren")
class Siren(nn.Module):
    """h [N, I] -> [N, O]: ``n_hidden_layers`` sine layers of ``n_neurons``, then a linear layer.

    Sine layer i computes ``sin(w0_i * freq_i * (W_i a + b_i) + phase_i)`` with w0_0 = w0_initial
    and w0_i = w0 after it; without FiLM freq = 1 and phase = 0. Initialization as in the
    SIREN paper: first layer weights U(-1/I, 1/I), the others U(-sqrt(6/in)/w0, sqrt(6/in)/w0)
    (biases keep PyTorch's default). Inputs are expected roughly in [-1, 1].

    FiLM (pi-GAN): ``film = (frequencies, phase_shifts)``, each [N or 1, n_film_layers,
    n_neurons]; ``n_film_layers`` equals ``n_hidden_layers`` (one pair per sine layer), so a
    mapping network can produce them.
    """

    @dataclass
    class Config:
        n_neurons: int = checked(at_least(1), default=64)
        n_hidden_layers: int = checked(at_least(1), default=3)  # sine layers
        w0_initial: float = checked(positive(), default=30.0)
        w0: float = checked(positive(), default=1.0)
        film: bool = False  # accept FiLM frequencies and phase shifts in forward

    def __init__(self, cfg: "Siren.Config", n_input_dims: int, n_output_dims: int):
        super().__init__()
        if cfg.n_hidden_layers < 1:
            raise ValueError("siren: n_hidden_layers must be >= 1")
        self.cfg = cfg
        self.n_input_dims = n_input_dims
        self.n_output_dims = n_output_dims
        self.n_film_layers = cfg.n_hidden_layers
        self.n_neurons = cfg.n_neurons
        dims = [n_input_dims] + [cfg.n_neurons] * cfg.n_hidden_layers + [n_output_dims]
        self.layers = nn.ModuleList(nn.Linear(dims[i], dims[i + 1]) for i in range(len(dims) - 1))
        self.w0s = [cfg.w0_initial] + [cfg.w0] * (cfg.n_hidden_layers - 1)
        with torch.no_grad():
            for i, layer in enumerate(self.layers):
                fan_in = layer.weight.shape[1]
                bound = 1.0 / fan_in if i == 0 else math.sqrt(6.0 / fan_in) / cfg.w0
                layer.weight.uniform_(-bound, bound)

    def _film(self, film: Optional[Film], i: int):
        if film is None:
            return None, None
        freq, phase = film
        return freq[:, i], phase[:, i]

    def _check_film(self, film: Optional[Film]) -> None:
        if film is None:
            return
        if not self.cfg.film:
            raise ValueError("siren: FiLM inputs given but the config has film: false")
        freq, phase = film
        want = (self.n_film_layers, self.n_neurons)
        if freq.dim() != 3 or tuple(freq.shape[1:]) != want or freq.shape != phase.shape:
            raise ValueError(
                f"siren: FiLM frequencies and phase shifts must both be [N or 1, {want[0]}, {want[1]}], "
                f"got {tuple(freq.shape)} and {tuple(phase.shape)}"
            )

    def forward(self, h: torch.Tensor, film: Optional[Film] = None) -> torch.Tensor:
        """h [N, I], film ([N or 1, L, n], [N or 1, L, n]) or None -> [N, O]."""
        self._check_film(film)
        n = len(self.layers)
        for i, layer in enumerate(self.layers):
            z = layer(h)
            if i == n - 1:
                return z
            freq, phase = self._film(film, i)
            arg = z * self.w0s[i] if freq is None else z * (freq * self.w0s[i]) + phase
            h = torch.sin(arg)
        return h

    def forward_with_input_grad(
        self, h: torch.Tensor, film: Optional[Film] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """h [N, I] -> (out [N, O], d out[:, 0] / d h [N, I]) by a hand-written backward pass."""
        self._check_film(film)
        n = len(self.layers)
        cache = []
        a = h
        for i, layer in enumerate(self.layers):
            W = layer.weight
            z = F.linear(a, W, layer.bias)
            if i == n - 1:
                out = z
                last_w = W
                break
            freq, phase = self._film(film, i)
            scale = self.w0s[i] if freq is None else freq * self.w0s[i]
            arg = z * scale if freq is None else z * scale + phase
            a = torch.sin(arg)
            cache.append((W, torch.cos(arg) * scale))
        g = last_w[0].expand(h.shape[0], -1)
        for W, dact in reversed(cache):
            g = (g * dact) @ W
        return out, g

    def extra_repr(self) -> str:
        cfg = self.cfg
        return (
            f"n_input_dims={self.n_input_dims}, n_output_dims={self.n_output_dims}, "
            f"hidden={cfg.n_hidden_layers}x{cfg.n_neurons}, w0_initial={cfg.w0_initial}, w0={cfg.w0}, "
            f"film={cfg.film}"
        )
