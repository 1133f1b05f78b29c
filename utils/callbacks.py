"""Lightning callbacks of the toolkit: atomic checkpoints, a graceful stop on SIGINT/SIGTERM, one run
folder across the processes of a distributed run, and a console progress line."""
from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Optional

import torch
from pytorch_lightning.callbacks import Callback, Checkpoint, ModelCheckpoint

from utils.saving import SaveError

log = logging.getLogger("progress")

# errors that mean "this output cannot be written here" rather than a bug
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG}


class NonFiniteWeightsError(RuntimeError):
    """The model holds NaN or inf parameters: no checkpoint is written with them."""


class TrainingInterrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after saving ``path`` (None when nothing could be saved)."""

    def __init__(self, signum: int, step: int, path: Optional[Path]) -> None:
        self.signum, self.step, self.path = signum, step, path
        name = signal.Signals(signum).name
        super().__init__(f"{name} at step {step}" + (f": saved {path}" if path else ""))

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)


def _disk_hint(path: Path) -> str:
    try:
        free = shutil.disk_usage(path.parent if path.parent.exists() else ".").free
    except OSError:
        return ""
    return f" ({free / 2**20:.0f} MiB free there)" if free < 2**30 else ""


def describe_write_error(err: BaseException, path: Path) -> str:
    """A one-line reason for a failed write of ``path``: the OS error, or torch's writer message
    (which loses the errno) with the free space when it is low."""
    if isinstance(err, OSError) and (err.strerror or err.errno):
        return err.strerror or os.strerror(err.errno)
    first = (str(err).splitlines() or [type(err).__name__])[0]
    return first + _disk_hint(path)


def check_finite_weights(module: torch.nn.Module) -> None:
    bad = [name for name, p in module.named_parameters() if not bool(torch.isfinite(p.detach()).all())]
    if bad:
        shown = ", ".join(bad[:3]) + (f" (+{len(bad) - 3} more)" if len(bad) > 3 else "")
        raise NonFiniteWeightsError(f"the model has NaN/inf parameters ({shown}); no checkpoint is written with them")


def save_checkpoint_atomically(trainer, filepath: str | Path, weights_only: bool = False) -> Path:
    """Write the trainer's checkpoint to ``filepath.tmp``, flush it to disk and rename it into place
    (rank 0 writes; every rank learns whether it worked, so all raise together).

    Raises NonFiniteWeightsError (nothing written) when a parameter is NaN/inf, and SaveError naming
    the file when the write fails (disk full, no permission, ...)."""
    filepath = Path(filepath)
    check_finite_weights(trainer.lightning_module)
    # what Trainer.save_checkpoint does, without its closing barrier: a rank that failed to write
    # must not leave the others waiting there (they wait for the broadcast below instead)
    checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only)
    tmp = filepath.with_name(filepath.name + ".tmp")
    error: Optional[str] = None
    if trainer.is_global_zero:
        try:
            filepath.parent.mkdir(parents=True, exist_ok=True)
            trainer.strategy.save_checkpoint(checkpoint, tmp)
            with open(tmp, "rb") as f:  # the rename must not expose data still in flight
                os.fsync(f.fileno())
            os.replace(tmp, filepath)
        except (OSError, RuntimeError) as err:  # torch's zip writer raises RuntimeError on a full disk
            error = f"cannot write checkpoint '{filepath}': {describe_write_error(err, filepath)}"
            try:
                tmp.unlink()
            except OSError:
                pass
    if trainer.world_size > 1:
        error = trainer.strategy.broadcast(error, src=0)
    if error is not None:
        raise SaveError(error)
    return filepath


class AtomicModelCheckpoint(ModelCheckpoint):
    """Writes each checkpoint to a temporary file and renames it into place, so a run killed
    mid-write never leaves a truncated checkpoint under the final name. A failed write raises
    SaveError naming the file; a model with NaN/inf weights is never saved."""

    def _save_checkpoint(self, trainer, filepath: str) -> None:  # noqa: D401 (Lightning hook)
        save_checkpoint_atomically(trainer, filepath, self.save_weights_only)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(self)

    def on_train_end(self, trainer, pl_module) -> None:
        """last.ckpt holds the final step even when max_steps is not a multiple of the period."""
        super().on_train_end(trainer, pl_module)
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class GracefulStop(Checkpoint):
    """On SIGINT (Ctrl-C) or SIGTERM during training: finish the current step, write
    ``<run>/ckpt/last.ckpt`` (atomically) and raise TrainingInterrupted. A second Ctrl-C stops at
    once without a checkpoint. In a distributed run the ranks agree on stopping at a step boundary
    (any rank's signal stops all), so they save and exit together.

    Lightning's own SIGTERM handling (a flag broadcast from rank 0 and a SIGTERMException, which
    exits with status 0 and no checkpoint) is replaced while training runs; the previous handlers
    come back when training ends.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, run_paths) -> None:
        self.run_paths = run_paths  # utils.run_dir.RunPaths (DistributedRun may correct it)
        self.received: Optional[int] = None
        self._previous: dict = {}

    @property
    def ckpt_dir(self) -> Path:
        return Path(self.run_paths.ckpt_dir)

    # -------------------------------------------------------------- signal handlers
    def _handler(self, signum, frame) -> None:
        if self.received is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # second Ctrl-C: stop now
            return
        self.received = signum
        log.warning("received %s: stopping after this step and saving %s (Ctrl-C again to stop at once)",
                    signal.Signals(signum).name, self.ckpt_dir / "last.ckpt")

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.SIGNALS:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handler)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    # -------------------------------------------------------------- Lightning hooks
    def on_train_start(self, trainer, pl_module) -> None:
        self.received = None
        self._install()

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore()

    def _agreed_signal(self, trainer) -> Optional[int]:
        """The signal to stop on, the same on every rank (the largest signal number any rank got)."""
        if trainer.world_size <= 1:
            return self.received
        flag = torch.tensor([float(self.received or 0)], device=trainer.strategy.root_device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item()) or None

    def _stop_if_asked(self, trainer) -> None:
        signum = self._agreed_signal(trainer)
        if signum is None:
            return
        path = self.ckpt_dir / "last.ckpt"
        saved: Optional[Path] = None
        try:
            saved = save_checkpoint_atomically(trainer, path)
        except NonFiniteWeightsError as err:
            log.error("%s", err)
        raise TrainingInterrupted(signum, trainer.global_step, saved)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._stop_if_asked(trainer)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        # a long validation inside fit need not run to its end (every rank has as many batches)
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._stop_if_asked(trainer)


class DistributedRun(Callback):
    """Makes every process of a distributed run agree on rank 0's run folder (the others may have
    been started by torchrun or SLURM without knowing it) and points the system's outputs there."""

    def __init__(self, run_paths, context) -> None:
        self.run_paths = run_paths
        self.context = context

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.world_size <= 1:
            return
        root, tb_dir = trainer.strategy.broadcast((str(self.run_paths.root), str(self.run_paths.tb_dir)), src=0)
        if Path(root) != self.run_paths.root:
            self.run_paths.root, self.run_paths.tb_dir = Path(root), Path(tb_dir)
        self.context.save_dir = self.run_paths.save_dir


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
