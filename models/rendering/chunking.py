"""Evaluating a per-ray function in chunks of rays (e.g. whole validation images)."""
from __future__ import annotations

import numbers
from typing import Any, Callable, Dict, List, Union

import torch
from torch import Tensor


def chunked(
    fn: Callable[..., Dict[str, Any]],
    n_rays: int,
    chunk_size: int,
    *tensors: Any,
    move_to: Union[torch.device, str, None] = None,
) -> Dict[str, Any]:
    """Calls ``fn`` on slices of at most ``chunk_size`` rays and merges the returned dicts.

    Positional ``tensors`` with first dimension ``n_rays`` ([R, ...]) are sliced; anything else is
    passed unchanged to every call. In the merged dict:
      - tensors with at least one dimension are concatenated along dim 0 (per-ray outputs give
        [R, ...]; packed per-sample outputs give all samples, but their ray indices stay local to
        each chunk);
      - numbers and 0-dim tensors are summed over chunks (e.g. sample counts; a per-chunk mean
        must be re-weighted by the caller);
      - other values (strings, None, ...) keep the first chunk's value.
    ``move_to`` moves each chunk's tensors (e.g. to "cpu") before merging, to bound device memory.
    Gradients are not disabled here: wrap the call in ``torch.no_grad()`` for inference.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    parts: Dict[str, List[Any]] = {}
    for start in range(0, n_rays, chunk_size):
        stop = min(start + chunk_size, n_rays)
        args = [
            t[start:stop] if isinstance(t, Tensor) and t.dim() > 0 and t.shape[0] == n_rays else t for t in tensors
        ]
        out = fn(*args)
        if not isinstance(out, dict):
            raise TypeError(f"chunked: fn must return a dict, got {type(out).__name__}")
        for key, value in out.items():
            if move_to is not None and isinstance(value, Tensor):
                value = value.to(move_to)
            parts.setdefault(key, []).append(value)
    merged: Dict[str, Any] = {}
    for key, values in parts.items():
        first = values[0]
        if isinstance(first, Tensor) and first.dim() > 0:
            merged[key] = torch.cat(values, dim=0)
        elif isinstance(first, Tensor) or (isinstance(first, numbers.Number) and not isinstance(first, bool)):
            total = values[0]
            for v in values[1:]:
                total = total + v
            merged[key] = total
        else:
            merged[key] = first
    return merged
