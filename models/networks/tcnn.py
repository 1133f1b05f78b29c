"""Optional tiny-cuda-nn backend for the MLP.

Used only when ``tinycudann`` imports, CUDA is present, the config's ``backend`` allows it and
the options have a tiny-cuda-nn equivalent (no weight norm, softplus only with beta 1);
otherwise the PyTorch MLP is built, with a one-line notice. tiny-cuda-nn layers have no
biases, so the MLP keeps a single output bias (which carries the sphere init's -radius).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch

from models.encodings.tcnn import notice_once, tcnn_available, use_tcnn  # noqa: F401 (re-exported)

_TCNN_ACTIVATIONS = {
    "relu": "ReLU",
    "softplus": "Softplus",
    "sigmoid": "Sigmoid",
    "tanh": "Tanh",
    "none": "None",
}


def _unsupported(cfg: Any) -> Optional[str]:
    if cfg.weight_norm:
        return "weight_norm"
    if cfg.activation not in _TCNN_ACTIVATIONS:
        return f"activation {cfg.activation}"
    if cfg.activation == "softplus" and cfg.softplus_beta != 1.0:
        return f"softplus_beta {cfg.softplus_beta} (tiny-cuda-nn's softplus has beta 1)"
    return None


def tcnn_network_config(cfg: Any) -> dict:
    otype = "FullyFusedMLP" if cfg.n_neurons in (16, 32, 64, 128) else "CutlassMLP"
    return {
        "otype": otype,
        "activation": _TCNN_ACTIVATIONS[cfg.activation],
        "output_activation": "None",  # applied in PyTorch after the output bias
        "n_neurons": cfg.n_neurons,
        "n_hidden_layers": cfg.n_hidden_layers,
    }


def make_tcnn_network(module: Any, cfg: Any, n_in: int, n_out: int) -> Optional[torch.nn.Module]:
    """A ``tinycudann.Network`` for the MLP config, or None (PyTorch fallback)."""
    if not use_tcnn(cfg.backend, "MLP"):
        return None
    reason = _unsupported(cfg)
    if reason is not None:
        notice_once(f"MLP: tiny-cuda-nn has no {reason}; using the PyTorch implementation")
        return None
    import tinycudann as tcnn

    net_cfg = tcnn_network_config(cfg)
    net = tcnn.Network(n_in, n_out, net_cfg)
    if cfg.sphere_init:
        sphere_init_tcnn(net, net_cfg, n_in, n_out, cfg.n_neurons, cfg.n_hidden_layers, cfg.inside_out)
    return net


def _padded(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def sphere_init_tcnn(
    net: torch.nn.Module, net_cfg: dict, n_in: int, n_out: int, width: int, n_hidden: int, inside_out: bool
) -> None:
    """Geometric init written into a tiny-cuda-nn network's flat parameters.

    Layout: the layers' weight matrices one after the other, each row-major [out, in] with the
    input padded to a multiple of 16 (FullyFusedMLP; 8 for CutlassMLP) and the output likewise.
    """
    pad = 16 if net_cfg["otype"] == "FullyFusedMLP" else 8
    n_in_p, n_out_p = _padded(n_in, pad), _padded(n_out, pad)
    mats = []
    first = torch.zeros(width, n_in_p)
    first[:, :3].normal_(0.0, math.sqrt(2.0) / math.sqrt(width))
    mats.append(first)
    for _ in range(n_hidden - 1):
        mats.append(torch.randn(width, width) * (math.sqrt(2.0) / math.sqrt(width)))
    mean = math.sqrt(math.pi) / math.sqrt(width)
    last = torch.zeros(n_out_p, width)
    last[:n_out].normal_(-mean if inside_out else mean, 1e-4)
    mats.append(last)
    flat = torch.cat([m.reshape(-1) for m in mats])
    with torch.no_grad():
        params = net.params
        if params.numel() != flat.numel():
            raise RuntimeError(
                f"unexpected tiny-cuda-nn parameter count {params.numel()} (expected {flat.numel()})"
            )
        params.copy_(flat.to(params.device, params.dtype))


def tcnn_forward(net: torch.nn.Module, h: torch.Tensor, n_out: int) -> torch.Tensor:
    """h [N, I] -> float32 [N, O] through a tiny-cuda-nn network."""
    return net(h.contiguous())[:, :n_out].float()
