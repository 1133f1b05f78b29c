"""Loading checkpoints safely: weights only (no arbitrary pickled code), with clear errors.

Every command reads a checkpoint through ``read_checkpoint`` (is it a readable checkpoint?) and
``check_checkpoint`` (do its weights fit this model?); ``--train --resume`` also asks
``check_resumable`` (does its trainer state fit this run's optimizer and schedule?). Each problem
is a CheckpointError whose one-line message names the file and says what to do."""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional

import torch

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6: a zip archive
PICKLE_MAGIC = b"\x80"  # the legacy format: a pickle (protocol >= 2)


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint for this model; the message names it."""


def _first_line(err: BaseException) -> str:
    """The first sentence of an error's message (torch's go on for a paragraph)."""
    text = (str(err).splitlines() or [""])[0].strip().split(". ")[0].rstrip(".")
    return text or type(err).__name__


def _describe_unreadable(path: Path, head: bytes, err: BaseException) -> str:
    """Why torch.load refused ``path`` (whose first bytes are ``head``), in one line."""
    if isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in str(err):
        return (f"checkpoint '{path}' holds objects other than tensors and plain data, which are refused for safety "
                "(load it only if you trust it, and save its state_dict again)")
    if head.startswith(ZIP_MAGIC):
        return (f"checkpoint '{path}' is truncated or damaged ({_first_line(err)}); use another checkpoint, e.g. an "
                "earlier step*.ckpt of the same run")
    return f"checkpoint '{path}' cannot be read ({type(err).__name__}: {_first_line(err)})"


def read_checkpoint(path: str | Path) -> Dict[str, Any]:
    """The checkpoint dict at ``path``, loaded with ``weights_only=True``, or a CheckpointError
    saying what the file is instead (missing, a folder, empty, not a PyTorch file, truncated, ...)."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("**/*.ckpt"), key=lambda p: (p.stat().st_mtime, p.name == "last.ckpt"))
        hint = f" (it holds {len(found)} checkpoint(s), e.g. '{found[-1]}')" if found else ""
        raise CheckpointError(f"checkpoint '{path}' is a folder, not a checkpoint file{hint}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint '{path}': {err.strerror or err}") from err
    if not head:
        raise CheckpointError(f"checkpoint '{path}' is empty (0 bytes): a write cut short? Use another checkpoint")
    if not (head.startswith(ZIP_MAGIC) or head.startswith(PICKLE_MAGIC)):
        raise CheckpointError(f"'{path}' is not a checkpoint: not a file written by torch.save (a .ckpt of a run's "
                              "ckpt/ folder is)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError, KeyError,
            IndexError, TypeError, AttributeError) as err:
        raise CheckpointError(_describe_unreadable(path, head, err)) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"'{path}' is not a Lightning checkpoint of this toolkit (no 'state_dict')")
    return ckpt


def check_checkpoint(module: torch.nn.Module, path: str | Path, ckpt: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The checkpoint at ``path`` (or ``ckpt``, already read from it) if its weights fit ``module``
    exactly (same keys and shapes) and are finite, else a CheckpointError saying what is wrong."""
    ckpt = read_checkpoint(path) if ckpt is None else ckpt
    state = ckpt["state_dict"]
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state)
                        if not isinstance(state[k], torch.Tensor) or own[k].shape != state[k].shape)
    def show(keys):
        return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

    if missing or unexpected or mismatched:
        def shape(v):
            return tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__

        parts = []
        if missing:
            parts.append(f"missing {show(missing)}")
        if unexpected:
            parts.append(f"unexpected {show(unexpected)}")
        if mismatched:
            parts.append("shape differs for " + show([f"{k} {shape(state[k])} vs {tuple(own[k].shape)}" for k in mismatched]))
        raise CheckpointError(
            f"checkpoint '{path}' does not fit this model (was it made with another config?): " + "; ".join(parts)
        )
    params = {name for name, _ in module.named_parameters()}
    broken = sorted(k for k in params & set(state) if state[k].is_floating_point() and not bool(torch.isfinite(state[k]).all()))
    if broken:
        raise CheckpointError(f"checkpoint '{path}' holds NaN/inf weights ({show(broken)}): use an earlier checkpoint")
    return ckpt


def check_resumable(ckpt: Dict[str, Any], path: str | Path, optimizer: torch.optim.Optimizer,
                    has_scheduler: bool) -> None:
    """For ``--train --resume``: ``ckpt`` holds a trainer state Lightning can restore into a run
    whose optimizer is like ``optimizer`` (same parameter groups) and that has (or has not) a
    learning-rate schedule; else a CheckpointError (the weights may still start a new run)."""
    fresh = "; --resume-weights-only starts a new run from its weights"
    states = ckpt.get("optimizer_states")
    if not states:
        raise CheckpointError(f"checkpoint '{path}' holds weights only, no optimizer state to resume{fresh}")
    if len(states) != 1:
        raise CheckpointError(f"checkpoint '{path}' has {len(states)} optimizer states, this run has 1{fresh}")
    saved = [len(g.get("params", ())) for g in states[0].get("param_groups", ())]
    own = [len(g["params"]) for g in optimizer.param_groups]
    if saved != own:
        raise CheckpointError(
            f"checkpoint '{path}' was trained with other optimizer parameter groups ({len(saved)} groups of "
            f"{saved} parameters; this config's system.optimizer makes {len(own)} of {own}){fresh}")
    schedules = len(ckpt.get("lr_schedulers") or ())
    if schedules != int(has_scheduler):
        raise CheckpointError(
            f"checkpoint '{path}' has {schedules} learning-rate schedule(s), this config's system.scheduler "
            f"{'has one' if has_scheduler else 'has none'}{fresh}")
    for key in ("global_step", "loops"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint '{path}' has no '{key}': it cannot resume training{fresh}")


def load_weights(module: torch.nn.Module, path: str | Path, ckpt: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Load the weights of checkpoint ``path`` into ``module`` (strictly); returns the checkpoint."""
    ckpt = check_checkpoint(module, path, ckpt)
    module.load_state_dict(ckpt["state_dict"], strict=True)
    return ckpt


def restore_weights(module, path: str | Path, ckpt: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """``load_weights`` into a LightningModule, then its ``on_load_checkpoint`` hook (so it can take
    what else it keeps there, e.g. the step its weights were trained to); returns the checkpoint."""
    ckpt = load_weights(module, path, ckpt)
    module.on_load_checkpoint(ckpt)
    return ckpt
