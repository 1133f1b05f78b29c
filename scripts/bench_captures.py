"""Real captures as a user runs them (issue 15): each preset's plain command on a capture, timed
from the outside, with its held-out metrics and a picture of its mesh.

Two modes:
- ``--smoke``: a 20-step run (``trainer.max_steps=20``) of every preset on a capture it reads,
  to show that validation, the test and the mesh scale with a short run (target: < 2 min each);
- default: the plain command of the capture presets with ``dataset.holdout_every=8`` (every 8th
  view held out and scored; Blender scenes keep their own test split), i.e. the CPU profile's
  time budget on a CPU.

Each run is a subprocess of ``launch.py`` (so the wall time includes start-up, data loading,
training, the test and the mesh export, as a user waits for them). Prints a Markdown table and
writes ``OUT/results.json``; the mesh previews are copied to ``OUT/<preset>-<capture>.png``.

    python scripts/bench_captures.py --data ../shared/data --out /tmp/captures
    python scripts/bench_captures.py --data ../shared/data --out /tmp/smoke --smoke
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]

# preset -> (capture folder under --data, or None for the embedded scene)
SMOKE_RUNS = {
    "neus-synthetic": None,
    "neus-triplane-sso": None,
    "neus-blender": "lego",
    "nerf-blender": "lego",
    "neus-dtu": "dtu_scan24",
    "neus-colmap": "beer_colmap",
    "nerf-colmap": "beer_colmap",
    "neus-ngp": "fox",
}
MEASURED_RUNS = [("neus-blender", "lego"), ("neus-dtu", "dtu_scan24"), ("neus-colmap", "beer_colmap"),
                 ("neus-ngp", "fox")]


def run_folder(exp_dir: Path) -> Optional[Path]:
    """The one run folder under exp_dir (exp/<name>/<tag@time>/), or None."""
    runs = [p for name in exp_dir.iterdir() if name.is_dir() for p in name.iterdir() if p.is_dir()]
    return runs[0] if len(runs) == 1 else None


def read_results(run: Path) -> Dict:
    """Held-out metrics, mesh size and the preview of a finished run."""
    save = run / "save"
    out: Dict = {}
    metrics = sorted(save.glob("test_metrics_step*.json"))
    if metrics:
        data = json.loads(metrics[-1].read_text())
        out.update({k: data["mean"].get(k) for k in ("psnr", "psnr_masked", "ssim")})
        out["n_images"] = data.get("n_images")
        out["not_scored"] = len(data.get("images_not_scored", {}).get("indices", []))
        out["resolution"] = data.get("resolution")
    meshes = sorted(p for p in save.glob("mesh_step*.ply"))
    if meshes:
        import trimesh

        mesh = trimesh.load(meshes[-1], process=False)
        out["mesh"] = {"faces": int(len(mesh.faces)), "watertight": bool(mesh.is_watertight),
                       "components": int(len(mesh.split(only_watertight=False)))}
    previews = sorted(save.glob("mesh_step*_preview.png"))
    out["preview"] = str(previews[-1]) if previews else None
    return out


def run_one(preset: str, root: Optional[Path], out: Path, extra: List[str]) -> Dict:
    tag = f"{preset}-{root.name if root else 'embedded'}"
    exp = out / "exp" / tag
    if exp.exists():
        shutil.rmtree(exp)
    exp.mkdir(parents=True)
    cmd = [sys.executable, "launch.py", "--config", f"configs/{preset}.yaml", "--train", "--exp-dir", str(exp),
           "--runs-dir", str(out / "runs"), *([f"dataset.root_dir={root}"] if root else []), *extra]
    print("$", " ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    with open(out / f"{tag}.log", "w") as log:
        code = subprocess.call(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    result = {"preset": preset, "capture": root.name if root else "embedded", "exit": code,
              "wall_s": round(time.perf_counter() - t0, 1), "command": " ".join(cmd[1:])}
    run = run_folder(exp)
    if run is not None:
        result.update(read_results(run))
        if result.get("preview"):
            shutil.copy(result["preview"], out / f"{tag}.png")
    print(json.dumps(result), flush=True)
    return result


def fmt(x, digits=2):
    return "-" if x is None else f"{x:.{digits}f}"


def table(results: List[Dict]) -> str:
    rows = ["| preset | capture | exit | wall | PSNR | PSNR (masked) | SSIM | scored / left out | mesh faces | parts |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        mesh = r.get("mesh") or {}
        rows.append(f"| {r['preset']} | {r['capture']} | {r['exit']} | {r['wall_s'] / 60:.1f} min | {fmt(r.get('psnr'))} | "
                    f"{fmt(r.get('psnr_masked'))} | {fmt(r.get('ssim'), 3)} | {r.get('n_images', '-')} / "
                    f"{r.get('not_scored', '-')} | {mesh.get('faces', '-')} | {mesh.get('components', '-')} |")
    return "\n".join(rows)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder holding the captures (lego, dtu_scan24, ...)")
    parser.add_argument("--out", type=Path, required=True, help="where logs, runs, previews and results.json go")
    parser.add_argument("--smoke", action="store_true", help="20-step runs of every preset")
    parser.add_argument("--only", nargs="*", help="run only these presets")
    parser.add_argument("extra", nargs="*", help="config overrides added to every run (key=value)")
    args = parser.parse_args(argv)
    # "--only neus-blender key=value" puts the override into --only's list: take it back out
    only = [name for name in args.only or [] if "=" not in name]
    args.extra = [*(name for name in args.only or [] if "=" in name), *args.extra]
    known = {p for p, _ in MEASURED_RUNS} | set(SMOKE_RUNS)
    unknown = [name for name in only if name not in known]
    if unknown:
        parser.error(f"--only: unknown preset(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    args.only = only
    return args


def main() -> int:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        plan = [(p, c) for p, c in SMOKE_RUNS.items()]
        extra = ["trainer.max_steps=20", *args.extra]
    else:
        plan = MEASURED_RUNS
        extra = list(args.extra)
    results = []
    for preset, capture in plan:
        if args.only and preset not in args.only:
            continue
        root = None if capture is None else (args.data / capture).resolve()
        if root is not None and not root.is_dir():
            print(f"skipping {preset}: {root} is not there", flush=True)
            continue
        holdout = [] if args.smoke or "blender" in preset else ["dataset.holdout_every=8"]
        results.append(run_one(preset, root, args.out, holdout + extra))
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(table(results))
    return 0 if all(r["exit"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
