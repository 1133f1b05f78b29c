"""Lightning callbacks of the toolkit."""
from __future__ import annotations

import logging
import os
import time

from pytorch_lightning.callbacks import Callback, ModelCheckpoint

log = logging.getLogger("progress")


class AtomicModelCheckpoint(ModelCheckpoint):
    """Writes each checkpoint to a temporary file and renames it into place, so a run killed
    mid-write never leaves a truncated checkpoint under the final name."""

    def _save_checkpoint(self, trainer, filepath: str) -> None:  # noqa: D401 (Lightning hook)
        tmp = f"{filepath}.tmp"
        trainer.save_checkpoint(tmp, self.save_weights_only)
        trainer.strategy.barrier("atomic_checkpoint")
        if trainer.is_global_zero:
            os.replace(tmp, filepath)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        for logger in trainer.loggers:
            logger.after_save_checkpoint(self)


class ConsoleProgress(Callback):
    """One log line every ``every_s`` seconds during training (for logs and non-interactive runs,
    where a progress bar is off or unreadable): step, elapsed, ETA and the progress-bar metrics."""

    def __init__(self, every_s: float = 15.0) -> None:
        self.every_s = every_s
        self._start = 0.0
        self._last = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = self._last = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.monotonic()
        if now - self._last < self.every_s or not trainer.is_global_zero:
            return
        self._last = now
        step, total = trainer.global_step, trainer.max_steps
        elapsed = now - self._start
        eta = elapsed / max(step, 1) * max(total - step, 0)
        metrics = trainer.progress_bar_metrics
        shown = " ".join(f"{k.split('/')[-1]}={float(v):.4g}" for k, v in metrics.items() if not k.startswith("val/"))
        log.info("step %d/%d  %.0fs elapsed, ~%.0fs left  %s", step, total, elapsed, eta, shown)
