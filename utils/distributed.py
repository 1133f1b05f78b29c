"""Which process of a multi-process run this is, before Lightning has set anything up.

Lightning's own launcher (``--devices N`` with ``trainer.strategy=ddp``) runs launch.py once and,
inside ``Trainer.fit``, starts the other local ranks by running the same command line again with
``LOCAL_RANK``/``NODE_RANK`` set. torchrun sets ``RANK``; SLURM's ``srun`` sets ``SLURM_PROCID``.
Only global rank 0 creates the run folder and writes files; the others learn its path from the
environment (Lightning's launcher copies the parent's environment into the children) or, with an
external launcher, from a broadcast once the process group is up (``utils.callbacks.DistributedRun``).
"""
from __future__ import annotations

import os
from typing import Mapping, Optional

# set by global rank 0 before Trainer.fit, inherited by the ranks Lightning's launcher starts
ENV_RUN_DIR = "NSR_TOOLKIT_RUN_DIR"
ENV_TB_DIR = "NSR_TOOLKIT_TB_DIR"
ENV_RESUME = "NSR_TOOLKIT_RESUME_CKPT"


def _int(env: Mapping[str, str], key: str) -> Optional[int]:
    value = env.get(key)
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def launch_rank(env: Optional[Mapping[str, str]] = None) -> int:
    """The global rank the launcher gave this process (0 when it is not distributed).

    Only "zero or not" matters before the process group exists: ``RANK`` (torchrun, or set by
    Lightning later) wins; else a non-zero ``NODE_RANK`` or ``LOCAL_RANK`` (Lightning's launcher,
    or a manual multi-node start); else ``SLURM_PROCID`` when SLURM started several tasks.
    """
    env = os.environ if env is None else env
    rank = _int(env, "RANK")
    if rank is not None:
        return rank
    node, local = _int(env, "NODE_RANK") or 0, _int(env, "LOCAL_RANK") or 0
    if node or local:
        return max(1, node * 1000 + local)  # some non-zero rank; the exact value comes later
    if (_int(env, "SLURM_NTASKS") or 1) > 1:
        return _int(env, "SLURM_PROCID") or 0
    return 0


def started_by_lightning_launcher(env: Optional[Mapping[str, str]] = None) -> bool:
    """True in a rank that Lightning's launcher started from a rank-0 launch.py (it inherited the run folder)."""
    env = os.environ if env is None else env
    return launch_rank(env) != 0 and bool(env.get(ENV_RUN_DIR))
