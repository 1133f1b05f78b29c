"""Loading checkpoints safely: weights only (no arbitrary pickled code), with clear errors."""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any, Dict

import torch


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint for this model; the message names it."""


def read_checkpoint(path: str | Path) -> Dict[str, Any]:
    """The checkpoint dict at ``path``, loaded with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError) as err:
        raise CheckpointError(
            f"'{path}' is not a readable checkpoint (or holds objects other than tensors and plain "
            f"data, which are refused for safety): {str(err).splitlines()[0]}"
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"'{path}' is not a Lightning checkpoint of this toolkit (no 'state_dict')")
    return ckpt


def check_checkpoint(module: torch.nn.Module, path: str | Path) -> Dict[str, Any]:
    """The checkpoint at ``path`` if its weights fit ``module`` exactly (same keys and shapes),
    else a CheckpointError saying what differs. Every command reads checkpoints through here."""
    ckpt = read_checkpoint(path)
    state = ckpt["state_dict"]
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        def show(keys):
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        parts = []
        if missing:
            parts.append(f"missing {show(missing)}")
        if unexpected:
            parts.append(f"unexpected {show(unexpected)}")
        if mismatched:
            parts.append("shape differs for " + show([f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in mismatched]))
        raise CheckpointError(
            f"checkpoint '{path}' does not fit this model (was it made with another config?): " + "; ".join(parts)
        )
    return ckpt


def load_weights(module: torch.nn.Module, path: str | Path) -> Dict[str, Any]:
    """Load the weights of checkpoint ``path`` into ``module`` (strictly); returns the checkpoint."""
    ckpt = check_checkpoint(module, path)
    module.load_state_dict(ckpt["state_dict"], strict=True)
    return ckpt


def restore_weights(module, path: str | Path) -> Dict[str, Any]:
    """``load_weights`` into a LightningModule, then its ``on_load_checkpoint`` hook (so it can take
    what else it keeps there, e.g. the step its weights were trained to); returns the checkpoint."""
    ckpt = load_weights(module, path)
    module.on_load_checkpoint(ckpt)
    return ckpt
