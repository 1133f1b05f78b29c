"""Timing and memory helpers shared by the benchmark scripts (one copy of each).

- ``synchronize`` / ``timed``: wall-clock seconds of repeated calls, synchronized on CUDA;
- ``read_status_kb`` / ``reset_peak_rss`` / ``peak_extra_bytes`` / ``PeakMemory``: the process's
  resident-set high-water mark (Linux) and, on CUDA, the allocator's peak;
- ``StepClock``: a Lightning callback timing each training step of a run made by the toolkit's
  own build path (systems/build.py), with the samples it rendered and an optional time budget.
"""
from __future__ import annotations

import ctypes
import gc
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch


def synchronize(device) -> None:
    """Wait for queued kernels (CUDA), so wall-clock timings cover the work."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], reps: int, warmup: int = 1, device="cpu") -> List[float]:
    """Wall-clock seconds of ``reps`` calls of fn after ``warmup`` calls (synchronized on CUDA)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        synchronize(device)
        out.append(time.perf_counter() - t)
    return out


# ------------------------------------------------------------------------------------------------
# memory (Linux: /proc/self)
# ------------------------------------------------------------------------------------------------
def libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def fix_mmap_threshold() -> None:
    """Make glibc serve large blocks with mmap and give them back on free, so the resident set
    follows the live tensors instead of keeping freed heap pages."""
    lib = libc()
    if lib is not None:
        lib.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD (fixing it also stops dynamic raising)
        lib.mallopt(-1, 64 * 1024)  # M_TRIM_THRESHOLD


def read_status_kb(field: str) -> Optional[int]:
    """A field of /proc/self/status in kB (e.g. VmRSS, VmHWM); None where unreadable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current VmRSS; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_extra_bytes(fn: Callable[[], object]) -> Optional[int]:
    """Peak resident memory above the starting level while fn runs (None if unmeasurable)."""
    gc.collect()
    lib = libc()
    if lib is not None:
        lib.malloc_trim(0)  # hand freed heap pages back, so the start level is the live memory
    if not reset_peak_rss():
        return None
    start = read_status_kb("VmRSS")
    fn()
    peak = read_status_kb("VmHWM")
    if start is None or peak is None:
        return None
    return (peak - start) * 1024


class PeakMemory:
    """Peak memory while the ``with`` block runs: the process's resident-set high-water mark
    (Linux; reset at entry) and, on CUDA, the allocator's peak. MB; None where unmeasurable."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.rss_mb: Optional[float] = None
        self.cuda_mb: Optional[float] = None

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        lib = libc()
        if lib is not None:
            lib.malloc_trim(0)
        self._rss_ok = reset_peak_rss()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc) -> None:
        if self._rss_ok:
            kb = read_status_kb("VmHWM")
            self.rss_mb = None if kb is None else kb / 1024
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.cuda_mb = torch.cuda.max_memory_allocated(self.device) / 2**20

    @property
    def mb(self) -> Optional[float]:
        """The figure to report: the CUDA peak on a GPU, else the resident-set peak."""
        return self.cuda_mb if self.device.type == "cuda" else self.rss_mb


# ------------------------------------------------------------------------------------------------
# training steps
# ------------------------------------------------------------------------------------------------
def _callback_base():
    import pytorch_lightning as pl

    return pl.Callback


class StepClock(_callback_base()):
    """Wall time of each training step (between the ends of consecutive steps: data, forward,
    backward, optimizer and grid updates; the clock restarts after a validation) and the samples
    it rendered (from the system's training_step output). With ``seconds``, training stops once
    that much training time is spent. ``on_step(trainer, module, clock)`` runs after each step,
    outside the timing (e.g. an evaluation)."""

    def __init__(self, seconds: Optional[float] = None,
                 on_step: Optional[Callable[[Any, Any, "StepClock"], None]] = None) -> None:
        self.seconds = seconds
        self.on_step = on_step
        self.times: List[float] = []
        self.samples: List[float] = []
        self._last = 0.0
        self._device = torch.device("cpu")

    @property
    def train_s(self) -> float:
        return sum(self.times)

    def _restart(self) -> None:
        synchronize(self._device)
        self._last = time.perf_counter()

    def on_train_start(self, trainer, pl_module) -> None:
        self._device = pl_module.device
        self._restart()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        synchronize(self._device)
        self.times.append(time.perf_counter() - self._last)
        n = outputs.get("num_samples") if isinstance(outputs, dict) else None
        self.samples.append(float(n) if n is not None else float("nan"))
        if self.seconds is not None and self.train_s >= self.seconds:
            trainer.should_stop = True
        if self.on_step is not None:
            self.on_step(trainer, pl_module, self)
        self._restart()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.training:
            self._restart()

    def summary(self, skip: int = 0) -> Dict[str, Optional[float]]:
        """Median step time and samples/s over the steps after the first ``skip``."""
        times, samples = self.times[skip:], self.samples[skip:]
        rates = [s / t for s, t in zip(samples, times) if s == s and t > 0]
        step_s = statistics.median(times) if times else None
        return {"step_s": step_s, "steps_per_s": 1.0 / step_s if step_s else None,
                "samples_per_s": statistics.median(rates) if rates else None,
                "samples_per_step": statistics.median([s for s in samples if s == s]) if samples else None}
