#!/usr/bin/env python
"""Compare a reconstructed mesh with a ground-truth mesh or point cloud.

    python scripts/eval_mesh.py PRED GT [--threshold 0.01] [--n-points 100000]
        [--region XMIN YMIN ZMIN XMAX YMAX ZMAX | --sphere CX CY CZ R] [--seed 0]
        [--json] [--output metrics.json]

PRED: a mesh file (.ply, .obj, ...). GT: a mesh file, or a point cloud (.ply without faces,
.npy, .xyz/.txt/.pts), used as is. Both must be in the same frame; distances and --threshold
are in the ground truth's units. With --region (an axis-aligned box) or --sphere, the points
of both sets outside it are dropped before the distances. Prints accuracy (pred -> gt),
completeness (gt -> pred), Chamfer ((acc + comp) / 2), precision, recall and F-score at the
threshold, as a table or as JSON (--json); --output also writes the JSON to a file.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from utils.mesh import Box, Sphere, evaluate_mesh  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Accuracy / completeness / Chamfer / F-score of a mesh against ground truth "
                    "(in ground-truth units).")
    p.add_argument("pred", type=Path, help="predicted mesh file")
    p.add_argument("gt", type=Path, help="ground-truth mesh or point-cloud file")
    p.add_argument("--threshold", type=float, default=0.01,
                   help="distance threshold for precision/recall/F-score (default 0.01)")
    p.add_argument("--n-points", type=int, default=100_000,
                   help="points sampled on each mesh surface (default 100000)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--region", type=float, nargs=6, default=None,
                       metavar=("XMIN", "YMIN", "ZMIN", "XMAX", "YMAX", "ZMAX"),
                       help="evaluate only points (of both sets) inside this axis-aligned box")
    where.add_argument("--sphere", type=float, nargs=4, default=None, metavar=("CX", "CY", "CZ", "R"),
                       help="evaluate only points (of both sets) inside this sphere")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--output", "-o", type=Path, default=None,
                   help="also write the metrics (with the settings used) to this JSON file")
    return p


def format_table(metrics: dict) -> str:
    rows = [("accuracy", "pred -> gt mean distance"),
            ("completeness", "gt -> pred mean distance"),
            ("chamfer", "(accuracy + completeness) / 2"),
            ("precision", f"pred points within {metrics['threshold']:g}"),
            ("recall", f"gt points within {metrics['threshold']:g}"),
            ("fscore", "2 P R / (P + R)")]
    lines = [f"{'metric':<14}{'value':>14}  note"]
    for key, note in rows:
        lines.append(f"{key:<14}{metrics[key]:>14.6g}  {note}")
    where = ""
    if metrics.get("region"):
        (kind, values), = metrics["region"].items()
        where = f" inside the {kind} {' '.join(f'{v:g}' for v in values)}"
    lines.append(f"({metrics['n_pred']} predicted and {metrics['n_gt']} ground-truth points{where})")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for label, path in (("predicted mesh", args.pred), ("ground truth", args.gt)):
        if not path.is_file():
            parser.error(f"{label} file not found: {path}")
    if args.threshold <= 0:
        parser.error("--threshold must be positive")
    if args.n_points < 1:
        parser.error("--n-points must be positive")
    region = None
    if args.region is not None:
        if any(lo >= hi for lo, hi in zip(args.region[:3], args.region[3:])):
            parser.error("--region needs XMIN < XMAX, YMIN < YMAX and ZMIN < ZMAX")
        region = Box(args.region[:3], args.region[3:])
    elif args.sphere is not None:
        if not args.sphere[3] > 0:
            parser.error("--sphere needs a positive radius R")
        region = Sphere(args.sphere[:3], args.sphere[3])
    try:
        metrics = evaluate_mesh(args.pred, args.gt, n_points=args.n_points,
                                threshold=args.threshold, region=region, seed=args.seed)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    metrics = dict(metrics, threshold=args.threshold,
                   region=None if region is None else region.to_dict(),
                   pred=str(args.pred), gt=str(args.gt), n_points=args.n_points, seed=args.seed)
    if args.output is not None:
        try:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(metrics, indent=2) + "\n")
        except OSError as e:
            print(f"error: cannot write '{args.output}': {e}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(format_table(metrics))
        if args.output is not None:
            print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
