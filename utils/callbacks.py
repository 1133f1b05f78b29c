"""Lightning callbacks of the toolkit: atomic checkpoints, a graceful stop on SIGINT/SIGTERM, a
guard that skips steps with NaN/inf losses or gradients, and a console progress line."""
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

from utils.distributed import sum_over_ranks
from utils.saving import SaveError

log = logging.getLogger("progress")

# errors that mean "this output cannot be written here" rather than a bug
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG}


class NonFiniteWeightsError(RuntimeError):
    """The model holds NaN or inf parameters: no checkpoint is written with them."""


class TrainingDiverged(RuntimeError):
    """The loss or its gradients stayed NaN/inf for system.max_consecutive_bad_steps steps in a row."""


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
    SaveError naming the file; a model with NaN/inf weights is never saved.

    Besides the periodic checkpoints, one is written when the first validation of a fit starts and
    when training ends (last.ckpt, or step*.ckpt without save_last), unless one of that step exists:
    whatever fails in a validation, or in the test and export after training, the weights trained
    so far are on disk."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._validated_in_fit = False

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._validated_in_fit = False

    def on_validation_start(self, trainer, pl_module) -> None:
        super().on_validation_start(trainer, pl_module)
        if trainer.state.fn == "fit" and not trainer.sanity_checking and not self._validated_in_fit:
            self._validated_in_fit = True
            self._save_now(trainer, "before the first validation")

    def _save_now(self, trainer, why: str) -> None:
        """A checkpoint of the current step, unless there is one (or nothing was trained)."""
        if trainer.global_step == 0 or self._should_skip_saving_checkpoint(trainer):
            return
        candidates = self._monitor_candidates(trainer)
        if self.save_last:
            self._save_last_checkpoint(trainer, candidates)
        else:
            self._save_topk_checkpoint(trainer, candidates)
        if trainer.is_global_zero:
            log.info("checkpoint of step %d written %s", trainer.global_step, why)

    def _save_checkpoint(self, trainer, filepath: str) -> None:  # noqa: D401 (Lightning hook)
        save_checkpoint_atomically(trainer, filepath, self.save_weights_only)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(self)

    def on_train_end(self, trainer, pl_module) -> None:
        """The final step is saved even when max_steps is not a multiple of the period."""
        super().on_train_end(trainer, pl_module)
        self._save_now(trainer, "at the end of training")


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

    def __init__(self, ckpt_dir: Path) -> None:
        self.ckpt_dir = Path(ckpt_dir)  # where last.ckpt goes (rank zero's run folder; only it writes)
        self.received: Optional[int] = None
        self._previous: dict = {}

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


class NonFiniteStepGuard(Callback):
    """Skips the optimizer step (no update) when the loss or a gradient is NaN/inf, counts it
    (``train/skipped_steps``) and stops the run after ``max_in_a_row`` such steps in a row.

    Gradients are already reduced over the processes when it looks at them, and the losses'
    finiteness is reduced here, so every process decides the same. With a mixed-precision grad
    scaler, inf/NaN gradients are the scaler's business (it skips them and rescales)."""

    def __init__(self, max_in_a_row: int) -> None:
        if int(max_in_a_row) < 1:
            raise ValueError(f"system.max_consecutive_bad_steps must be >= 1, got {max_in_a_row}")
        self.max_in_a_row = int(max_in_a_row)
        self.skipped_steps = 0  # over the whole run (kept in checkpoints)
        self._bad_in_a_row = 0
        self._loss_bad = False

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self._loss_bad = not bool(torch.isfinite(loss.detach()).all())

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        (bad_ranks,) = sum_over_ranks(float(self._loss_bad))
        loss_bad = bad_ranks > 0
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        finite = bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()) if grads else True
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            finite = True
        if finite and not loss_bad:
            self._bad_in_a_row = 0
            return
        for group in optimizer.param_groups:  # the optimizer skips parameters without a gradient
            for p in group["params"]:
                p.grad = None
        self.skipped_steps += 1
        self._bad_in_a_row += 1
        what = "loss" if loss_bad else "gradients"
        log.warning("step %d skipped: the %s had NaN/inf values (%d skipped so far, %d in a row)",
                    trainer.global_step, what, self.skipped_steps, self._bad_in_a_row)
        if self._bad_in_a_row >= self.max_in_a_row:
            raise TrainingDiverged(
                f"training stopped at step {trainer.global_step}: the loss or its gradients were NaN/inf in "
                f"{self._bad_in_a_row} steps in a row (system.max_consecutive_bad_steps={self.max_in_a_row}); no "
                "update was made from them, so the weights and checkpoints stay finite. Lower the learning rate, "
                "check the data, or set gradient clipping (trainer.gradient_clip_val)"
            )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        pl_module.log("train/skipped_steps", float(self.skipped_steps))

    def state_dict(self):
        return {"skipped_steps": self.skipped_steps}

    def load_state_dict(self, state_dict) -> None:
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))


class ConsoleProgress(Callback):
    """One log line every ``every_s`` seconds during training (for logs and non-interactive runs,
    where a progress bar is off or unreadable): step, elapsed, ETA and the progress-bar metrics.
    The ETA is the sooner of the steps left at the pace so far and a time budget's rest."""

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
        schedule = getattr(pl_module, "schedule", None)
        if schedule is not None and schedule.timed:  # trainer.max_minutes may end training first
            eta = min(eta, max(schedule.budget_s - schedule.training_seconds(), 0.0))
        metrics = trainer.progress_bar_metrics
        shown = " ".join(f"{k.split('/')[-1]}={float(v):.4g}" for k, v in metrics.items() if not k.startswith("val/"))
        log.info("step %d/%d  %.0fs elapsed, ~%.0fs left  %s", step, total, elapsed, eta, shown)
