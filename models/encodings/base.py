"""The interface every encoding follows.

An encoding maps points ``x [N, D]`` (positions in the unit cube [0, 1]^D, or unit directions
for spherical harmonics) to features ``[N, F]``.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import nn


class Encoding(nn.Module):
    """Base class: ``n_input_dims`` (D) and ``n_output_dims`` (F) plus the common hooks."""

    n_input_dims: int
    n_output_dims: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, D] -> features [N, F]."""
        raise NotImplementedError

    def forward_with_jacobian(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """x [N, D] -> (features [N, F], jacobian d features / d x [N, F, D]).

        The jacobian is computed explicitly (no ``create_graph``) and stays differentiable with
        respect to the encoding's parameters; it may be a non-contiguous view.
        """
        raise NotImplementedError(f"{type(self).__name__} has no forward_with_jacobian")

    def has_explicit_jacobian(self, x: torch.Tensor) -> bool:
        """Whether ``forward_with_jacobian`` computes the jacobian for points x [N, D] itself (False
        when the call would run on a kernel without one, e.g. tiny-cuda-nn: take gradients by
        autograd then)."""
        return type(self).forward_with_jacobian is not Encoding.forward_with_jacobian

    def update_step(self, epoch: int, global_step: int) -> None:
        """Called by the system once per training step (progressive schedules use it)."""

    def regularizations(self) -> Dict[str, torch.Tensor]:
        """Unweighted regularization terms by name (empty unless the encoding has some)."""
        return {}

    def extra_repr(self) -> str:
        return f"n_input_dims={self.n_input_dims}, n_output_dims={self.n_output_dims}"


def on_empty_batch(fn, x: torch.Tensor):
    """``fn``'s output for a zero-row input x [0, D]: computed on one dummy point, sliced to 0 rows.

    Keeps output shapes (and the autograd graph) right where reshapes with -1 cannot infer them.
    """
    out = fn(x.new_zeros(1, x.shape[1]))
    return tuple(t[:0] for t in out) if isinstance(out, tuple) else out[:0]
