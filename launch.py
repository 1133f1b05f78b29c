#!/usr/bin/env python
"""Fit, validate, test, predict or export one scene from a YAML preset.

    python launch.py --config configs/neus-synthetic.yaml --train
    python launch.py --config configs/neus-synthetic.yaml --train trainer.max_steps=500 tag=quick
    python launch.py --config exp/<name>/<run>/config/parsed.yaml --test --resume exp/<name>/<run>/ckpt/last.ckpt
    python launch.py --config configs/neus-synthetic.yaml --export --resume last

Every ``key=value`` argument after the flags overrides the config (OmegaConf dot-list).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

log = logging.getLogger("launch")
ACTIONS = ("train", "validate", "test", "predict", "export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s --config PATH (--train|--validate|--test|--predict|--export) [options] [key=value ...]",
    )
    parser.add_argument("--config", required=True, help="path to a YAML preset or a run's config/parsed.yaml")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--train", action="store_true", help="fit, then test with the final weights")
    action.add_argument("--validate", action="store_true", help="render and score the validation split")
    action.add_argument("--test", action="store_true", help="render and score the test split, save a video and a mesh")
    action.add_argument("--predict", action="store_true", help="render the dataset's predict cameras (an orbit)")
    action.add_argument("--export", action="store_true", help="export the mesh from a checkpoint")
    parser.add_argument("--resume", metavar="CKPT",
                        help="checkpoint path, or 'last' for the newest checkpoint of this config's name (and tag). "
                             "With --train the whole trainer state is restored; otherwise the weights are loaded")
    parser.add_argument("--resume-weights-only", action="store_true",
                        help="with --train: start a new run (step 0, fresh optimizer) from the checkpoint's weights")
    parser.add_argument("--accelerator", choices=["auto", "cpu", "gpu", "cuda", "mps"], help="default: what the machine has")
    parser.add_argument("--devices", help="number of devices, 'auto', or a comma list of indices")
    parser.add_argument("--gpu", help="GPU indices, e.g. 0 or 0,1 (implies --accelerator gpu)")
    parser.add_argument("--num-nodes", type=int, help="machines in a distributed run")
    parser.add_argument("--exp-dir", default="exp", help="where run folders go (default: exp/)")
    parser.add_argument("--runs-dir", default="runs", help="where TensorBoard logs go (default: runs/)")
    parser.add_argument("--seed", type=int, help="random seed (overrides the config's seed)")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    return parser


def cli_overrides(args: argparse.Namespace) -> List[str]:
    """The flags that are config keys in disguise, as dot-list overrides."""
    out = []
    if args.seed is not None:
        out.append(f"seed={args.seed}")
    if args.gpu is not None:
        ids = [int(i) for i in str(args.gpu).split(",") if i.strip() != ""]  # (checked by main)
        out += ["trainer.accelerator=gpu", f"trainer.devices={ids}"]
    if args.accelerator is not None:
        out.append(f"trainer.accelerator={args.accelerator}")
    if args.devices is not None:
        value = args.devices
        if "," in value:
            value = "[" + value + "]"
        out.append(f"trainer.devices={value}")
    if args.num_nodes is not None:
        out.append(f"trainer.num_nodes={args.num_nodes}")
    return out


def main(argv: Optional[Sequence[str]] = None, extra_callbacks: Sequence = ()) -> int:
    """Run the command line ``argv`` (default: sys.argv); ``extra_callbacks`` join the run's
    Lightning callbacks (e.g. a benchmark's probe). Returns the exit status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extras = parser.parse_known_args(argv)
    args.argv = argv
    unknown_flags = [e for e in extras if e.startswith("--")]
    if unknown_flags:
        parser.error(f"unknown option(s) {unknown_flags}; config overrides are written key=value")
    if args.gpu is not None and not all(i.strip().isdigit() for i in str(args.gpu).split(",") if i.strip()):
        parser.error(f"argument --gpu: expected GPU indices such as 0 or 0,1, got '{args.gpu}'")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    action = next(a for a in ACTIONS if getattr(args, a))

    from utils.config import ConfigError
    from utils.distributed import launch_rank, started_by_lightning_launcher
    from systems.run import RunError, RunInterrupted, run

    rank = launch_rank()
    prefix = "" if rank == 0 else f"[rank {rank}] "
    try:
        return run(action, args, list(extras) + cli_overrides(args), REPO_ROOT, extra_callbacks=extra_callbacks)
    except RunInterrupted as err:
        if rank == 0:
            print(f"interrupted: {err}", file=sys.stderr)
        # a rank that Lightning's launcher started leaves the report (and exit status) to rank 0:
        # its launcher would kill rank 0 on seeing a child fail
        return 0 if started_by_lightning_launcher() else err.exit_code
    except (ConfigError, RunError) as err:
        print(f"{prefix}error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prefix}interrupted (Ctrl-C)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
