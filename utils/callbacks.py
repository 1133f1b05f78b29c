"""Lightning callbacks of the toolkit."""
from __future__ import annotations

import os

from pytorch_lightning.callbacks import ModelCheckpoint


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
