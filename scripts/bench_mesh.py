#!/usr/bin/env python
"""Benchmark of the mesh library: block-wise isosurface extraction at high resolution, then
clean-up and decimation, with wall time and peak resident memory per resolution.

    python scripts/bench_mesh.py                                  # analytic SDF, 512^3 and 1024^3
    python scripts/bench_mesh.py --sizes 512 1024 2048 --json     # one JSON object
    python scripts/bench_mesh.py --config exp/<run>/config/parsed.yaml --checkpoint last.ckpt
    python scripts/bench_mesh.py --config configs/neus-synthetic.yaml --sizes 256 \
        dataset.resolution=32

The field is an analytic SDF (a sphere beside a torus, and three small floaters) unless
--config names a toolkit config, in which case the model's isosurface field is used (with
--checkpoint's weights; without it, the untrained model, whose geometric initialisation is a
sphere for NeuS). Each resolution runs in a child process, so its peak memory (VmHWM, the
resident-set high-water mark from /proc/self/status) is its own: "base" after imports, "extract"
after extraction, "cleanup" after clean-up, "total" after decimation too. --extras adds texture
baking (xatlas unwrap + bake) of the decimated mesh and CPU render times. Threads: --threads
(default 1, so figures from a shared machine stay comparable).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
for _p in (REPO_ROOT, REPO_ROOT / "scripts"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from measure import read_status_kb  # noqa: E402


def peak_rss_mib() -> Optional[float]:
    """VmHWM of this process in MiB (None where /proc is missing)."""
    kb = read_status_kb("VmHWM")
    return None if kb is None else kb / 1024.0


def analytic_field():
    """SDF of a sphere (radius 0.4 at x = -0.4), a torus beside it (radii 0.3 / 0.1 at x = 0.45,
    axis z) and three floaters (radius 0.03) for the clean-up to remove, in [-1, 1]^3:
    (field_fn, bounds, threshold, skip_fn)."""
    import torch

    floaters = torch.tensor([[0.0, 0.6, 0.5], [-0.6, -0.6, -0.6], [0.7, -0.5, 0.4]])

    def sdf(p):
        sphere = (p - torch.tensor([-0.4, 0.0, 0.0], device=p.device)).norm(dim=-1) - 0.4
        q = p - torch.tensor([0.45, 0.0, 0.0], device=p.device)
        ring = torch.stack([q[:, :2].norm(dim=-1) - 0.3, q[:, 2]], dim=-1).norm(dim=-1) - 0.1
        dust = torch.cdist(p, floaters.to(p.device)).amin(dim=-1) - 0.03
        return torch.minimum(torch.minimum(sphere, ring), dust)

    bounds = (torch.full((3,), -1.0), torch.full((3,), 1.0))
    return sdf, bounds, 0.0, None


def model_field(config: str, checkpoint: Optional[str], device: str, overrides: Sequence[str]):
    """The isosurface field of a toolkit model built from ``config`` (as launch.py builds it)."""
    import torch

    from systems.config import RunContext
    from systems.build import build_scene, build_system, load_experiment
    from utils.checkpoint import restore_weights

    _, cfg = load_experiment(config, list(overrides))
    scene = build_scene(cfg)
    context = RunContext(save_dir=Path(tempfile.gettempdir()) / "bench_mesh",
                         scene_to_world=scene.scene_to_world, gt_mesh_path=scene.gt_mesh_path,
                         export=cfg.export)
    system = build_system(cfg, context)
    if checkpoint:
        restore_weights(system, checkpoint)
    system.to(device).eval()
    system.apply_step_state()
    model = system.model
    field, level = model.isosurface_field(cfg.export.threshold)
    skip = model.known_empty_fn() if cfg.export.use_occupancy_grid else None
    r = float(model.cfg.radius)
    bounds = (torch.full((3,), -r, device=device), torch.full((3,), r, device=device))
    return field, bounds, level, skip


def child(args: argparse.Namespace) -> Dict[str, Any]:
    """One resolution, in this process: extraction, clean-up, decimation."""
    import torch

    torch.set_num_threads(args.threads)
    if args.progress:  # the extraction's plan and memory estimates are logged at INFO
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    from utils.mesh import clean_mesh, decimate, extract_isosurface

    if args.config:
        field, bounds, level, skip = model_field(args.config, args.checkpoint, args.device,
                                                 args.overrides)
    else:
        field, bounds, level, skip = analytic_field()
    out: Dict[str, Any] = {"resolution": args.child, "block_size": args.block_size,
                           "base_peak_mib": peak_rss_mib()}
    t0 = time.perf_counter()
    mesh = extract_isosurface(field, bounds, args.child, threshold=level, skip_fn=skip,
                              device=args.device, block_size=args.block_size,
                              progress=args.progress)
    out["extract_s"] = time.perf_counter() - t0
    out["extract_peak_mib"] = peak_rss_mib()
    out["vertices"], out["faces"] = mesh.num_vertices, mesh.num_faces
    t0 = time.perf_counter()
    mesh, report = clean_mesh(mesh, min_fraction=0.01)
    out["cleanup_s"] = time.perf_counter() - t0
    out["cleanup"] = str(report)
    out["cleanup_peak_mib"] = peak_rss_mib()
    target = min(args.decimate, mesh.num_faces)
    t0 = time.perf_counter()
    small = decimate(mesh, target_faces=target)
    out["decimate_s"] = time.perf_counter() - t0
    out["decimated_faces"] = small.num_faces
    if args.extras:
        out.update(extras(mesh, small, args))
    out["total_peak_mib"] = peak_rss_mib()
    return out


def extras(mesh, small, args: argparse.Namespace) -> Dict[str, Any]:
    """Texture baking of the decimated mesh and rendering of a 100k-face version."""
    import math

    import torch

    from utils.mesh import MeshRenderer, bake_texture, decimate, look_at

    out: Dict[str, Any] = {}
    t0 = time.perf_counter()
    baked = bake_texture(small, lambda p, n: (torch.sin(4.0 * p) + 1.0) / 2.0,
                         texture_size=args.texture_size)
    out["bake_s"] = time.perf_counter() - t0
    out["bake_texture_size"] = args.texture_size
    render_mesh = decimate(mesh, target_faces=min(100_000, mesh.num_faces))
    out["render_faces"] = render_mesh.num_faces
    for name, m in (("vertex", render_mesh), ("textured", baked)):
        t0 = time.perf_counter()
        renderer = MeshRenderer(m)
        c2w = look_at([0.0, -2.5, 1.0], [0.0, 0.0, 0.0])
        renderer.render(c2w, [100.0, 100.0, 64.0, 64.0], 128, 128)  # builds the BVH
        out[f"render_{name}_first_128_s"] = time.perf_counter() - t0
        for size in (128, 400):
            f = 0.5 * size / math.tan(math.radians(20))
            t0 = time.perf_counter()
            renderer.render(c2w, [f, f, size / 2, size / 2], size, size)
            out[f"render_{name}_{size}_s"] = time.perf_counter() - t0
    return out


def run_child(size: int, args: argparse.Namespace) -> Dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(size),
           "--block-size", str(args.block_size), "--threads", str(args.threads),
           "--decimate", str(args.decimate), "--device", args.device]
    if args.config:
        cmd += ["--config", args.config]
    if args.checkpoint:
        cmd += ["--checkpoint", args.checkpoint]
    cmd += list(args.overrides)
    if args.progress:
        cmd.append("--progress")
    if args.extras:
        cmd += ["--extras", "--texture-size", str(args.texture_size)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        return {"resolution": size, "error": f"exit status {proc.returncode}",
                "wall_s": time.perf_counter() - t0}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(rows: Sequence[Dict[str, Any]]) -> str:
    head = (f"{'res':>6} {'extract s':>10} {'peak MiB':>9} {'faces':>11} {'clean s':>8} "
            f"{'decim s':>8} {'-> faces':>9} {'total peak':>10}")
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['resolution']:>6} {r['error']}")
            continue
        lines.append(
            f"{r['resolution']:>6} {_fmt(r['extract_s'], '10.2f')} "
            f"{_fmt(r['extract_peak_mib'], '9.0f')} {r['faces']:>11,} "
            f"{_fmt(r['cleanup_s'], '8.2f')} "
            f"{_fmt(r['decimate_s'], '8.2f')} {r['decimated_faces']:>9,} "
            f"{_fmt(r['total_peak_mib'], '10.0f')}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024],
                   help="grid resolutions (points per axis); default 512 1024")
    p.add_argument("--block-size", type=int, default=64, help="cells per block edge (default 64)")
    p.add_argument("--decimate", type=int, default=50_000, help="face budget (default 50000)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--device", default="cpu", help="where the field runs (default cpu)")
    p.add_argument("--config", default=None, help="a toolkit config: bench its model's field")
    p.add_argument("--checkpoint", default=None, help="weights for --config")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides for --config (as launch.py takes them)")
    p.add_argument("--extras", action="store_true",
                   help="also bake a texture for the decimated mesh and time renders (128^2, "
                        "400^2) of a 100k-face version of the mesh")
    p.add_argument("--texture-size", type=int, default=1024, help="for --extras (default 1024)")
    p.add_argument("--progress", action="store_true", help="show extraction progress and its log")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args)))
        return 0
    rows: List[Dict[str, Any]] = []
    for size in args.sizes:
        rows.append(run_child(size, args))
        if not args.json:
            print(format_table(rows[-1:]).splitlines()[-1] if rows[:-1] else format_table(rows),
                  flush=True)
    result = {"machine": {"cpu": platform.processor() or platform.machine(),
                          "cores": os.cpu_count(), "threads": args.threads},
              "field": args.config or "analytic sphere + torus + 3 floaters", "rows": rows}
    if args.json:
        print(json.dumps(result, indent=1))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
