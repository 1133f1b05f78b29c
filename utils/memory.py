"""How much memory a device has free, and byte counts in words: for the estimates made before
a large allocation (mesh extraction, whole-image rendering), so a run can refuse or adapt with
a message instead of meeting the allocator's exception."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch


def available_memory(device: Union[str, torch.device] = "cpu") -> Optional[int]:
    """Bytes that can still be allocated on ``device`` (CPU: the kernel's MemAvailable; CUDA: the
    free memory of that GPU), or None when it cannot be told (then no estimate is checked)."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
            return int(free)
        except (RuntimeError, AssertionError, ValueError):
            return None
    if device.type != "cpu":
        return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil  # optional

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 (absent or unsupported here)
        return None


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'; 3 * 2**30 -> '3.0 GiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n:.1f} TiB"


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocator saying it ran out of memory (CUDA, CPU or Python's own)."""
    if isinstance(err, MemoryError):
        return True
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(err, oom):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text
                                              or "not enough memory" in text)
