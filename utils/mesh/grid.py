"""Sampling a field on (part of) a regular grid, chunk by chunk, with progress reports.

The grid has ``resolution`` points per axis, the first and last at ``bounds`` min and max
(spacing ``(max - min) / (resolution - 1)``). Inside is where ``value < threshold``.
Axis names in shapes: N points, X/Y/Z grid sizes.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from utils.mesh.backends import NonFiniteFieldError

BoundsLike = Union[Tuple[Sequence[float], Sequence[float]], Tensor, np.ndarray]
FieldFn = Callable[[Tensor], Tensor]


class EmptySurfaceError(ValueError):
    """The field never crosses the threshold on the grid, so there is no surface to mesh."""


# --------------------------------------------------------------------------------------------
# progress
# --------------------------------------------------------------------------------------------
class Progress:
    """A tqdm bar when tqdm imports, else a line on stderr every ~10%; silent when disabled."""

    def __init__(self, enabled: bool, total: int, desc: str):
        self.enabled, self.total, self.desc = enabled, max(int(total), 1), desc
        self.done, self.next_report, self.bar = 0, 0.1, None
        self.start = time.perf_counter()
        if enabled:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=self.total, desc=desc, unit="pt", unit_scale=True,
                                leave=False, file=sys.stderr)
            except ImportError:
                print(f"{desc}: {self.total} points", file=sys.stderr, flush=True)

    def update(self, n: int) -> None:
        if not self.enabled:
            return
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.done / self.total >= self.next_report or self.done >= self.total:
            frac = self.done / self.total
            print(f"{self.desc}: {100 * frac:5.1f}% ({self.done}/{self.total} points, "
                  f"{time.perf_counter() - self.start:.1f} s)", file=sys.stderr, flush=True)
            self.next_report = math.floor(frac * 10 + 1) / 10

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------------------------
# grid evaluation
# --------------------------------------------------------------------------------------------
class FieldStats:
    """Range of the evaluated values and how many points were evaluated or skipped."""

    def __init__(self) -> None:
        self.vmin, self.vmax = math.inf, -math.inf
        self.n_evaluated = self.n_skipped = 0

    def crosses(self, threshold: float) -> bool:
        """Whether some grid value is < threshold and some is >= threshold (skipped points
        count as outside)."""
        has_inside = self.n_evaluated > 0 and self.vmin < threshold
        has_outside = self.n_skipped > 0 or (self.n_evaluated > 0 and self.vmax >= threshold)
        return has_inside and has_outside

    def merge(self, other: "FieldStats") -> None:
        """Add the counts and range of ``other`` (another part of the same grid)."""
        self.vmin, self.vmax = min(self.vmin, other.vmin), max(self.vmax, other.vmax)
        self.n_evaluated += other.n_evaluated
        self.n_skipped += other.n_skipped

    def describe(self) -> str:
        if self.n_evaluated == 0:
            return f"skip_fn marked all {self.n_skipped} grid points as empty"
        s = f"the field ranges over [{self.vmin:.6g}, {self.vmax:.6g}]"
        if self.n_skipped:
            s += (f" on the {self.n_evaluated} evaluated points ({self.n_skipped} skipped by "
                  "skip_fn)")
        return s


def _call_field(field_fn: FieldFn, pts: Tensor) -> Tensor:
    out = field_fn(pts)
    if not isinstance(out, Tensor):
        raise TypeError(f"field_fn must return a Tensor, got {type(out).__name__}")
    if out.numel() != pts.shape[0]:
        raise ValueError(f"field_fn must return [N] (or [N, 1]) values for [N, 3] points; got "
                         f"shape {tuple(out.shape)} for N={pts.shape[0]}")
    return out.reshape(-1).to(torch.float32)


def _chunks(shape: Sequence[int], chunk_size: int):
    """Split a [X, Y, Z] box into sub-boxes (i0, i1, j0, j1) (all of axis 2) that are contiguous
    in C order: whole axis-0 slabs when a slab fits in ``chunk_size`` points, else runs of
    axis-1 rows of one slab (at least one row, so a chunk holds max(chunk_size, Z) points at
    most)."""
    sx, sy, sz = shape
    rows = max(1, chunk_size // sz)
    if rows >= sy:
        step = rows // sy
        for i0 in range(0, sx, step):
            yield i0, min(sx, i0 + step), 0, sy
    else:
        for i0 in range(sx):
            for j0 in range(0, sy, rows):
                yield i0, i0 + 1, j0, min(sy, j0 + rows)


# values closer than this (times max(1, |threshold|)) to the threshold are moved out to it
_SNAP = 2.0**-21  # 4 float32 ulps at 1.0


def snap_off_threshold(values: Tensor, threshold: float) -> Tensor:
    """Move values within ``delta = 2^-21 max(1, |threshold|)`` of ``threshold`` to
    ``threshold -+ delta``, keeping the side marching cubes puts them on (PyMCubes counts a
    value equal to the threshold with the inside, so it goes to ``threshold - delta``).

    Why: a sample at (or within rounding of) the threshold puts marching-cubes vertices exactly
    on that sample, one per crossing edge, all at one position; copies of such vertices made by
    two neighbouring blocks cannot be told apart by position, so block-wise extraction could not
    weld them like the one-pass mesh. Both paths snap, so they agree; vertices move by at most
    ``delta / |gradient|`` (5e-7 scene units for an SDF with threshold 0).
    values [N] -> [N] (a new tensor; the input is not modified).
    """
    delta = _SNAP * max(1.0, abs(float(threshold)))
    side = torch.where(values <= threshold, threshold - delta, threshold + delta).to(values.dtype)
    return torch.where((values - threshold).abs() < delta, side, values)


def evaluate_box(field_fn: FieldFn, axes: Sequence[Tensor], start: Sequence[int],
                  shape: Sequence[int], threshold: float, chunk_size: int,
                  skip_fn: Optional[Callable[[Tensor], Tensor]], skip_value: float,
                  out_device: torch.device, progress: Progress) -> Tuple[Tensor, FieldStats]:
    """Evaluate the field on the grid points ``axes[a][start[a] : start[a] + shape[a]]``.

    Points [N, 3] are generated per chunk of about ``chunk_size`` grid points (slabs of axis-0
    slices, or rows of one slice), never all at once. Returns values [X, Y, Z] float32 on
    ``out_device`` (passed through ``snap_off_threshold``) and the range of the evaluated values.
    """
    sx, sy, sz = (int(s) for s in shape)
    ax = [axes[a][int(start[a]):int(start[a]) + int(shape[a])] for a in range(3)]
    device = ax[0].device
    values = torch.empty(sx * sy * sz, dtype=torch.float32, device=out_device)
    stats = FieldStats()
    for i0, i1, j0, j1 in _chunks((sx, sy, sz), chunk_size):
        ni, nj = i1 - i0, j1 - j0
        n = ni * nj * sz
        pts = torch.empty(ni, nj, sz, 3, dtype=torch.float32, device=device)
        pts[..., 0] = ax[0][i0:i1, None, None]
        pts[..., 1] = ax[1][None, j0:j1, None]
        pts[..., 2] = ax[2][None, None, :]
        pts = pts.view(n, 3)
        if skip_fn is not None:
            skip = skip_fn(pts).reshape(-1).to(device=device, dtype=torch.bool)
            if skip.shape[0] != n:
                raise ValueError(f"skip_fn must return [N] booleans, got shape {tuple(skip.shape)}")
            keep = ~skip
            out = torch.full((n,), threshold + skip_value, dtype=torch.float32, device=device)
            evaluated_pts = pts[keep]
            evaluated = _call_field(field_fn, evaluated_pts).to(device) if len(evaluated_pts) \
                else out[:0]
            out[keep] = evaluated
            stats.n_skipped += n - evaluated.numel()
        else:
            evaluated_pts = pts
            evaluated = out = _call_field(field_fn, pts).to(device)
        if evaluated.numel():
            lo, hi = torch.aminmax(evaluated)  # NaN anywhere makes them NaN
            lo, hi = torch.stack([lo, hi]).tolist()
            if math.isnan(lo) or math.isnan(hi):
                nan = torch.isnan(evaluated)
                raise NonFiniteFieldError(
                    f"field_fn returned NaN at {int(nan.sum())} of {evaluated.numel()} points in "
                    f"a chunk (first at {[round(float(x), 6) for x in evaluated_pts[nan][0]]}); "
                    "the model has probably diverged (check the training losses and weights for "
                    "NaN)")
            stats.vmin, stats.vmax = min(stats.vmin, lo), max(stats.vmax, hi)
            stats.n_evaluated += evaluated.numel()
        offset = (i0 * sy + j0) * sz
        values[offset:offset + n] = snap_off_threshold(out, threshold).to(out_device)
        progress.update(n)
    return values.view(sx, sy, sz), stats


def parse_bounds(bounds: BoundsLike) -> Tuple[np.ndarray, np.ndarray]:
    """([3] min, [3] max) or a [2, 3] tensor/array -> (min [3], max [3]) float64 arrays."""
    if isinstance(bounds, Tensor):
        b = bounds.detach().cpu().double().numpy()
    else:
        b = np.asarray([np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x,
                                   dtype=np.float64) for x in bounds], dtype=np.float64)
    if b.shape != (2, 3):
        raise ValueError(f"bounds must be ([3] min, [3] max), got shape {b.shape}")
    lo, hi = b[0], b[1]
    if not np.all(np.isfinite(b)) or not np.all(hi > lo):
        raise ValueError(f"bounds need finite min < max on every axis, got min={lo.tolist()} "
                         f"max={hi.tolist()}")
    return lo, hi


def parse_resolution(resolution: Union[int, Sequence[int]], name: str) -> Tuple[int, int, int]:
    """An int or three ints (points per axis, each >= 2) -> three ints."""
    res = (int(resolution),) * 3 if np.isscalar(resolution) else tuple(int(r) for r in resolution)
    if len(res) != 3 or min(res) < 2:
        raise ValueError(f"{name} must be an int >= 2 (or three of them), got {resolution!r}")
    return res  # type: ignore[return-value]


def grid_axes(lo: np.ndarray, hi: np.ndarray, res: Sequence[int], device) -> list:
    """The grid's coordinates per axis: three float32 tensors [X], [Y], [Z] on ``device``."""
    # float64 linspace then float32: the same coordinates whichever sub-box is evaluated
    return [torch.linspace(float(lo[a]), float(hi[a]), int(res[a]), dtype=torch.float64)
            .to(torch.float32).to(device) for a in range(3)]


def infer_device(field_fn, bounds) -> torch.device:
    """The device of field_fn's parameters (a Module), else of ``bounds`` (a tensor), else CPU."""
    if isinstance(field_fn, torch.nn.Module):
        for p in field_fn.parameters():
            return p.device
        for b in field_fn.buffers():
            return b.device
    if isinstance(bounds, Tensor):
        return bounds.device
    return torch.device("cpu")


def empty_surface_error(stats: FieldStats, threshold: float, res, lo, hi,
                        where: str) -> EmptySurfaceError:
    """The error for a grid (``where``) on which the field does not cross the threshold."""
    hint = ""
    if stats.n_evaluated:
        if stats.vmin >= threshold:
            hint = (" Every value is >= the threshold (all outside): the bounds may miss the "
                    "object, or the field may be offset.")
        elif stats.vmax < threshold:
            hint = (" Every value is < the threshold (all inside): the bounds may lie inside the "
                    "object, or the field may have the opposite sign convention (negate it).")
    return EmptySurfaceError(
        f"no surface to extract on the {where} ({res[0]}x{res[1]}x{res[2]} points over bounds "
        f"min={np.round(lo, 6).tolist()} max={np.round(hi, 6).tolist()}): {stats.describe()}, "
        f"which does not cross the threshold {threshold:.6g} (inside is value < threshold).{hint}"
        " Check that training has converged, that the threshold suits the field (0 for an SDF) "
        "and that the bounds enclose the object.")
