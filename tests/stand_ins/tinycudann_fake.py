"""A stand-in for tiny-cuda-nn's torch bindings (``tinycudann``, v2.0 interface) in PyTorch.

What the toolkit touches is reproduced: ``Encoding(n_input_dims, encoding_config, seed, dtype)``,
``Network(n_input_dims, n_output_dims, network_config, seed)`` with ``params``, ``dtype``,
``loss_scale``, ``native_tcnn_module`` and ``forward``, and ``modules._module_function.apply(native,
input, params, loss_scale)``. The native checks are those of tiny-cuda-nn: CUDA tensors (unless
``accept_cpu``), float32 contiguous input [B, n_input_dims] with B a multiple of 256, contiguous
parameters of the module's precision and count. Functions:

- HashGrid encoding: tiny-cuda-nn's hash grid, written with the toolkit's level layout and plain
  differentiable gather (``gather_reference``), with double backward (tiny-cuda-nn has it for grids);
- FullyFusedMLP / CutlassMLP: weight matrices only (row-major, concatenated), input padded to 16
  with 1.0, output padded to 16, tiny-cuda-nn's activations (softplus with K_ACT = 10), half
  precision parameters; first-order gradients only (double backward raises, as in tiny-cuda-nn).
"""
from __future__ import annotations

import types

import torch
import torch.nn.functional as F

GRANULARITY = 256
K_ACT = 10.0


def _pad16(n: int) -> int:
    return -(-n // 16) * 16


def _act(name: str, z: torch.Tensor) -> torch.Tensor:
    if name == "ReLU":
        return torch.relu(z)
    if name == "Softplus":
        return torch.log1p(torch.exp(z * K_ACT)) / K_ACT
    if name == "Sigmoid":
        return torch.sigmoid(z)
    if name == "Tanh":
        return torch.tanh(z)
    if name == "None":
        return z
    raise ValueError(f"stand-in tinycudann: activation {name} not covered")


def make_tinycudann() -> types.ModuleType:
    """A fresh ``tinycudann`` module object (with ``tinycudann.modules``), its own call log."""
    tcnn = types.ModuleType("tinycudann")
    modules = types.ModuleType("tinycudann.modules")
    tcnn.modules = modules
    tcnn._submodules = {"tinycudann.modules": modules}
    tcnn.calls = []  # (what, device type) per kernel call
    tcnn.accept_cpu = False
    tcnn.__version__ = "2.0 (stand-in)"

    class Precision:
        Fp32 = "fp32"
        Fp16 = "fp16"

    def torch_precision(p):
        return torch.float16 if p == Precision.Fp16 else torch.float32

    class Native:
        """The native module: sizes, precision and the function of (input, params)."""

        def __init__(self, kind, n_input_dims, n_output_dims, config, precision):
            self.kind, self.config, self.precision = kind, config, precision
            self.n_input_dims = n_input_dims
            if kind == "encoding":
                if config.get("otype") != "HashGrid":
                    raise ValueError(f"stand-in tinycudann: encoding {config.get('otype')} not covered")
                from models.encodings.hashgrid_layout import HashGridSampler, hash_grid_levels

                F_ = config["n_features_per_level"]
                levels = hash_grid_levels(n_input_dims, config["n_levels"], config["log2_hashmap_size"],
                                          config["base_resolution"], config["per_level_scale"])
                self.sampler = HashGridSampler(n_input_dims, levels, config["log2_hashmap_size"],
                                               config.get("interpolation") == "Smoothstep")
                self.n_features = F_
                self._n_params = (levels[-1].offset + levels[-1].size) * F_
                self._n_output_dims = config["n_levels"] * F_  # a standalone encoding is not padded
                self.padded_output = self._n_output_dims
                self.double_backward = True
            else:
                if config.get("otype") not in ("FullyFusedMLP", "CutlassMLP"):
                    raise ValueError(f"stand-in tinycudann: network {config.get('otype')} not covered")
                w, hidden = config["n_neurons"], config["n_hidden_layers"]
                self.shapes = [(w, _pad16(n_input_dims))] + [(w, w)] * (hidden - 1) + [(_pad16(n_output_dims), w)]
                self._n_params = sum(r * c for r, c in self.shapes)
                self._n_output_dims = n_output_dims
                self.padded_output = _pad16(n_output_dims)
                self.double_backward = False

        def n_params(self):
            return self._n_params

        def n_output_dims(self):
            return self._n_output_dims

        def param_precision(self):
            return self.precision

        def initial_params(self, seed):
            g = torch.Generator().manual_seed(seed)
            return (torch.rand(self._n_params, generator=g) * 2 - 1) * 1e-4

        def hyperparams(self):
            return dict(self.config)

        def check(self, x, params):
            for name, t in (("input", x), ("params", params)):
                if t.device.type != "cuda" and not tcnn.accept_cpu:
                    raise RuntimeError(f"stand-in tinycudann: {name} must be a CUDA tensor")
                if not t.is_contiguous():
                    raise RuntimeError(f"stand-in tinycudann: {name} must be contiguous")
            if x.dtype != torch.float32 or x.dim() != 2 or x.shape[1] != self.n_input_dims:
                raise RuntimeError(f"stand-in tinycudann: input must be float32 [B, {self.n_input_dims}]")
            if x.shape[0] % GRANULARITY:
                raise RuntimeError(f"stand-in tinycudann: batch size {x.shape[0]} is not a multiple of {GRANULARITY}")
            if params.dtype != torch_precision(self.precision) or params.numel() != self._n_params:
                raise RuntimeError("stand-in tinycudann: params have the wrong dtype or size")

        def function(self, x, params):
            """input [B, I] float32, params [P] -> output [B, padded outputs] in the module's precision."""
            p = params.float()
            if self.kind == "encoding":
                from models.encodings.gather import gather_reference

                table = p.view(-1, self.n_features)
                feats, _ = gather_reference(x, table, self.sampler, len(self.sampler.levels), False)
                return feats.reshape(x.shape[0], -1).to(torch_precision(self.precision))
            h = torch.cat([x, x.new_ones(x.shape[0], self.shapes[0][1] - x.shape[1])], dim=1)
            start = 0
            for i, (r, c) in enumerate(self.shapes):
                W = p[start : start + r * c].view(r, c)
                start += r * c
                h = h @ W.t()
                last = i == len(self.shapes) - 1
                h = _act(self.config.get("output_activation", "None") if last else self.config["activation"], h)
            return h.to(torch_precision(self.precision))

    class FirstOrderOnly(torch.autograd.Function):
        """A network call: gradients of input and params, no double backward."""

        @staticmethod
        def forward(ctx, native, x, params):
            ctx.native = native
            ctx.save_for_backward(x, params)
            with torch.no_grad():
                return native.function(x, params)

        @staticmethod
        def backward(ctx, grad):
            if torch.is_grad_enabled():
                raise RuntimeError(f"{ctx.native.config['otype']} does not support double backward.")
            x, params = ctx.saved_tensors
            with torch.enable_grad():
                xr, pr = x.detach().requires_grad_(), params.detach().requires_grad_()
                out = ctx.native.function(xr, pr)
                gx, gp = torch.autograd.grad(out, (xr, pr), grad.to(out.dtype))
            return None, gx, gp

    class ModuleFunction:
        """tinycudann.modules._module_function"""

        @staticmethod
        def apply(native, x, params, loss_scale):
            native.check(x, params)
            tcnn.calls.append((native.kind, x.device.type))
            if native.double_backward:
                return native.function(x, params)
            return FirstOrderOnly.apply(native, x, params)

    class Module(torch.nn.Module):
        def __init__(self, seed=1337):
            super().__init__()
            self.native_tcnn_module = self._native_tcnn_module()
            self.dtype = torch_precision(self.native_tcnn_module.param_precision())
            self.seed = seed
            self.params = torch.nn.Parameter(self.native_tcnn_module.initial_params(seed))
            self.loss_scale = 128.0 if self.native_tcnn_module.param_precision() == Precision.Fp16 else 1.0

        def forward(self, x):
            if x.device.type != "cuda" and not tcnn.accept_cpu:
                raise RuntimeError("stand-in tinycudann: input must be a CUDA tensor (the real one calls x.cuda())")
            n = x.shape[0]
            pad = (-n) % GRANULARITY
            xp = F.pad(x, (0, 0, 0, pad)) if pad else x
            out = ModuleFunction.apply(self.native_tcnn_module, xp.to(torch.float).contiguous(),
                                       self.params.to(self.dtype).contiguous(), self.loss_scale)
            return out[:n, : self.n_output_dims]

    class Encoding(Module):
        def __init__(self, n_input_dims, encoding_config, seed=1337, dtype=None):
            self.n_input_dims = n_input_dims
            self.encoding_config = encoding_config
            self.precision = Precision.Fp16 if dtype in (None, torch.float16) else Precision.Fp32
            super().__init__(seed=seed)
            self.n_output_dims = self.native_tcnn_module.n_output_dims()

        def _native_tcnn_module(self):
            return Native("encoding", self.n_input_dims, None, self.encoding_config, self.precision)

    class Network(Module):
        def __init__(self, n_input_dims, n_output_dims, network_config, seed=1337):
            self.n_input_dims = n_input_dims
            self.n_output_dims = n_output_dims
            self.network_config = network_config
            super().__init__(seed=seed)

        def _native_tcnn_module(self):  # networks run in half precision (TCNN_HALF_PRECISION builds)
            return Native("network", self.n_input_dims, self.n_output_dims, self.network_config, Precision.Fp16)

    modules._module_function = ModuleFunction
    modules._torch_precision = torch_precision
    modules.Module = Module
    for name, obj in (("Encoding", Encoding), ("Network", Network), ("Module", Module)):
        setattr(modules, name, obj)
        setattr(tcnn, name, obj)
    return tcnn
