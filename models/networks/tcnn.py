"""``tcnn-mlp``: tiny-cuda-nn's fully fused MLP as a network of its own, runnable everywhere.

Why a separate network (issue #16): tiny-cuda-nn's networks cannot share parameters with the
PyTorch ``mlp``. They have no biases, pad their input to a multiple of 16 with the constant 1.0
(those weight columns act as the first layer's bias), pad their output to a multiple of 16, and
have no second derivatives. So the plain ``mlp`` stays PyTorch on every machine and never changes
architecture with what is installed; a config that wants tiny-cuda-nn's MLP names this network.

Its parameters are one flat vector in tiny-cuda-nn's layout (FullyFusedMLP / CutlassMLP,
tiny-cuda-nn v2.0): the row-major weight matrices one after the other,
``W_0 [n_neurons, in_pad]``, ``n_hidden_layers - 1`` times ``[n_neurons, n_neurons]``,
``W_last [out_pad, n_neurons]``, with ``in_pad`` / ``out_pad`` the input / output widths rounded up
to a multiple of 16. Per call (``utils.backends.choose``) it runs tiny-cuda-nn's kernel on that
vector (CUDA inputs, tinycudann usable, ``backend`` auto or tcnn) or computes the same function
with PyTorch from the same vector (any device), so checkpoints load anywhere:

    h_pad = [h, 1, ..., 1]  (to in_pad columns);  a = act(W_0 h_pad);  a = act(W_i a) ...;
    out = output_activation((W_last a)[:, :n_out])

Activations are tiny-cuda-nn's: relu, softplus (``log(1 + e^{10 z}) / 10``: its K_ACT is 10),
sigmoid, tanh, none; the output activation is applied in PyTorch after slicing. tiny-cuda-nn
computes the fused MLP in half precision (its parameters cast per call), the PyTorch path in the
parameters' dtype: the two agree to about 1e-3 relative.

Second derivatives: tiny-cuda-nn's networks have none, so inside ``utils.backends.double_backward()``
(an SDF's autograd gradient while training) the PyTorch path is taken, and
``forward_with_input_grad`` is always PyTorch. Biases and sphere initialization do not exist
here: SDF geometries keep the PyTorch ``mlp`` (as instant-nsr-pl does); this is meant for colour
and density networks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Literal, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from models.encodings.tcnn import KernelCache, run_kernel
from models.networks import register
from utils import backends
from utils.config import at_least, checked, key_of

TcnnActivation = Literal["relu", "softplus", "sigmoid", "tanh", "none"]

_TCNN_NAMES = {"relu": "ReLU", "softplus": "Softplus", "sigmoid": "Sigmoid", "tanh": "Tanh", "none": "None"}
SOFTPLUS_BETA = 10.0  # tiny-cuda-nn's K_ACT
ALIGNMENT = 16  # tiny-cuda-nn pads network inputs and outputs to multiples of 16


def _padded(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


def tcnn_activation(name: str, z: torch.Tensor) -> torch.Tensor:
    """tiny-cuda-nn's activation ``name`` of z (any shape)."""
    if name == "relu":
        return torch.relu(z)
    if name == "softplus":
        return F.softplus(z, beta=SOFTPLUS_BETA)
    if name == "sigmoid":
        return torch.sigmoid(z)
    if name == "tanh":
        return torch.tanh(z)
    return z


def _activation_grad(name: str, z: torch.Tensor, a: torch.Tensor):
    """d activation / d z (None for the identity)."""
    if name == "relu":
        return (z > 0).to(z.dtype)
    if name == "softplus":
        return torch.sigmoid(SOFTPLUS_BETA * z)
    if name == "sigmoid":
        return a * (1.0 - a)
    if name == "tanh":
        return 1.0 - a * a
    return None


@register("tcnn-mlp")
class TcnnMLP(nn.Module):
    """h [N, I] -> [N, O] with tiny-cuda-nn's MLP architecture (see the module docstring)."""

    @dataclass
    class Config:
        # 16, 32, 64 or 128 run tiny-cuda-nn's FullyFusedMLP, others CutlassMLP
        n_neurons: int = checked(at_least(1), default=64)
        n_hidden_layers: int = checked(at_least(1), default=2)
        activation: TcnnActivation = "relu"
        output_activation: TcnnActivation = "none"
        # per call: "auto" = tiny-cuda-nn for CUDA inputs when usable, else PyTorch; "torch" / "tcnn" force one
        backend: Literal["auto", "torch", "tcnn"] = "auto"

    def __init__(self, cfg: "TcnnMLP.Config", n_input_dims: int, n_output_dims: int):
        super().__init__()
        self.cfg = cfg
        self.n_input_dims = n_input_dims
        self.n_output_dims = n_output_dims
        if cfg.n_hidden_layers < 1 or cfg.n_neurons < 1:
            raise ValueError(f"{key_of(cfg, 'n_hidden_layers', 'tcnn-mlp')}: tcnn-mlp needs at least one hidden "
                             "layer of at least one neuron")
        w = cfg.n_neurons
        self.shapes: List[Tuple[int, int]] = (
            [(w, _padded(n_input_dims))] + [(w, w)] * (cfg.n_hidden_layers - 1) + [(_padded(n_output_dims), w)]
        )
        self.params = nn.Parameter(torch.empty(sum(r * c for r, c in self.shapes)))
        self.reset_parameters()
        self.backend_key = key_of(cfg, "backend", "tcnn-mlp")
        self._tcnn_kernels = KernelCache()

    def reset_parameters(self) -> None:
        """Xavier-uniform per matrix, as tiny-cuda-nn initializes them."""
        with torch.no_grad():
            for m in self.matrices():
                bound = math.sqrt(6.0 / (m.shape[0] + m.shape[1]))
                m.uniform_(-bound, bound)

    def matrices(self) -> List[torch.Tensor]:
        """The weight matrices [out, in] as views of ``params`` (first, hidden..., last)."""
        out, start = [], 0
        for r, c in self.shapes:
            out.append(self.params[start : start + r * c].view(r, c))
            start += r * c
        return out

    def tcnn_config(self) -> dict:
        return {
            "otype": "FullyFusedMLP" if self.cfg.n_neurons in (16, 32, 64, 128) else "CutlassMLP",
            "activation": _TCNN_NAMES[self.cfg.activation],
            "output_activation": "None",  # applied in PyTorch after slicing
            "n_neurons": self.cfg.n_neurons,
            "n_hidden_layers": self.cfg.n_hidden_layers,
        }

    def backend_for(self, h: torch.Tensor) -> str:
        """The implementation this call takes for inputs h [N, I]: "torch" or "tcnn"."""
        choice = backends.choose(self.cfg.backend, h.device, key=self.backend_key, kernels=("tcnn",))
        if choice == "tcnn" and backends.double_backward_active():
            backends.notice_once(f"{self.backend_key}: tiny-cuda-nn's MLP has no second derivatives; "
                                 "PyTorch computes it where the SDF gradient is differentiated again")
            return "torch"
        return choice

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h [N, I] -> [N, O]."""
        if self.backend_for(h) == "tcnn":
            tcnn = backends.library("tcnn")
            kernel = self._tcnn_kernels.get(
                h.device, lambda: tcnn.Network(self.n_input_dims, self.n_output_dims, self.tcnn_config())
            )
            out = run_kernel(kernel, h, self.params, self.n_output_dims)
        else:
            out = self._hidden(h)[-1][1] @ self.matrices()[-1][: self.n_output_dims].t()
        return tcnn_activation(self.cfg.output_activation, out)

    def _hidden(self, h: torch.Tensor) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """(pre-activation, activation) of each hidden layer for h [N, I] (PyTorch)."""
        pad = self.shapes[0][1] - h.shape[1]
        a = torch.cat([h, h.new_ones(h.shape[0], pad)], dim=1) if pad else h
        out = []
        for W in self.matrices()[:-1]:
            z = a @ W.t()
            a = tcnn_activation(self.cfg.activation, z)
            out.append((z, a))
        return out

    def forward_with_input_grad(self, h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """h [N, I] -> (out [N, O], d out[:, 0] / d h [N, I]), always with PyTorch (a first-order
        graph, differentiable w.r.t. the parameters: tiny-cuda-nn has no such gradient)."""
        mats = self.matrices()
        hidden = self._hidden(h)
        z = hidden[-1][1] @ mats[-1][: self.n_output_dims].t()
        out = tcnn_activation(self.cfg.output_activation, z)
        dz0 = _activation_grad(self.cfg.output_activation, z[:, :1], out[:, :1])
        g = mats[-1][0].expand(h.shape[0], -1) if dz0 is None else dz0 * mats[-1][0]
        for W, (z_i, a_i) in zip(reversed(mats[:-1]), reversed(hidden)):
            da = _activation_grad(self.cfg.activation, z_i, a_i)
            if da is not None:
                g = g * da
            g = g @ W
        return out, g[:, : self.n_input_dims]

    def extra_repr(self) -> str:
        cfg = self.cfg
        return (
            f"n_input_dims={self.n_input_dims}, n_output_dims={self.n_output_dims}, "
            f"hidden={cfg.n_hidden_layers}x{cfg.n_neurons}, activation={cfg.activation}, "
            f"output_activation={cfg.output_activation}, backend={cfg.backend}"
        )
