"""Evaluating a per-ray function in chunks of rays (e.g. whole validation images)."""
from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Callable, Dict, List, Union

import torch
from torch import Tensor


def chunked(
    fn: Callable[..., Any],
    n_rays: int,
    chunk_size: int,
    *tensors: Any,
    move_to: Union[torch.device, str, None] = None,
) -> Any:
    """Calls ``fn`` on slices of at most ``chunk_size`` rays and merges what it returns: dicts, or
    dataclasses (e.g. a RenderOutput), field by field and nested ones recursively.

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
    outputs = []
    for start in range(0, n_rays, chunk_size):
        stop = min(start + chunk_size, n_rays)
        args = [
            t[start:stop] if isinstance(t, Tensor) and t.dim() > 0 and t.shape[0] == n_rays else t for t in tensors
        ]
        out = fn(*args)
        if not isinstance(out, dict) and not _is_dataclass_instance(out):
            raise TypeError(f"chunked: fn must return a dict or a dataclass, got {type(out).__name__}")
        outputs.append(out)
    return _merge(outputs, move_to)


def _is_dataclass_instance(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _merge(outputs: List[Any], move_to) -> Any:
    """The chunks' outputs (all dicts or all instances of one dataclass) merged into one."""
    first_out = outputs[0]
    if _is_dataclass_instance(first_out):
        names = [f.name for f in dataclasses.fields(first_out)]
        parts = {name: [getattr(o, name) for o in outputs] for name in names}
    else:
        parts = {}
        for out in outputs:
            for key, value in out.items():
                parts.setdefault(key, []).append(value)
    merged: Dict[str, Any] = {}
    for key, values in parts.items():
        if move_to is not None:
            values = [v.to(move_to) if isinstance(v, Tensor) else v for v in values]
        first = values[0]
        if isinstance(first, Tensor) and first.dim() > 0:
            merged[key] = torch.cat(values, dim=0)
        elif isinstance(first, Tensor) or (isinstance(first, numbers.Number) and not isinstance(first, bool)):
            total = values[0]
            for v in values[1:]:
                total = total + v
            merged[key] = total
        elif _is_dataclass_instance(first):
            merged[key] = _merge(values, move_to)
        else:
            merged[key] = first
    return type(first_out)(**merged) if _is_dataclass_instance(first_out) else merged
