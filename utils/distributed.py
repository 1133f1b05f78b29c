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


# --------------------------------------------------------------------------- gathering results
# Lightning's DistributedSampler gives each process a share of the evaluation images, repeating
# the first ones so all shares have the same length; results are gathered and de-duplicated by
# image index, and every file is written once, by rank zero.
_gloo_group = None


def is_distributed() -> bool:
    """Whether this process is one of several in an initialized process group."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_rank_zero() -> bool:
    import torch.distributed as dist

    return not is_distributed() or dist.get_rank() == 0


def _object_group():
    """The group for gathering Python objects: a CPU (gloo) group beside NCCL, so images do not
    pass through GPU memory."""
    global _gloo_group
    import torch.distributed as dist

    if dist.get_backend() == "gloo":
        return None
    if _gloo_group is None:
        _gloo_group = dist.new_group(backend="gloo")
    return _gloo_group


def gather_to_zero(obj):
    """``obj`` of every process, on rank zero, in rank order; [] elsewhere; [obj] on one process."""
    import torch.distributed as dist

    if not is_distributed():
        return [obj]
    zero = dist.get_rank() == 0
    out = [None] * dist.get_world_size() if zero else None
    dist.gather_object(obj, out, dst=0, group=_object_group())
    return out if zero else []


def all_gather(obj):
    """``obj`` of every process, on every process, in rank order ([obj] on one process)."""
    import torch.distributed as dist

    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj, group=_object_group())
    return out


def sum_over_ranks(*values: float):
    """Scalars summed over all processes (one small all-reduce; unchanged on one process)."""
    import torch
    import torch.distributed as dist

    if not is_distributed():
        return list(values)
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()


def max_over_ranks(values):
    """An all-reduce max of the tensor ``values`` in place (unchanged on one process)."""
    import torch.distributed as dist

    if is_distributed():
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values
