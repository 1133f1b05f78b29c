#!/usr/bin/env python
"""How good the exported meshes of a finished run are, as a user would check them:

- geometry: the full (cleaned) mesh against the scene's ground-truth surface, and the same mesh
  decimated to --faces faces (default 50000): Chamfer, F-score, and the Chamfer ratio;
- appearance: the textured mesh (mesh_*_textured.glb) rendered from the test cameras on the CPU
  (utils.mesh.render, ray casting, unlit: the baked colours as they are; --supersample x
  --supersample rays per pixel, box-filtered, as the embedded scene's images are rendered, so
  silhouette pixels carry partial coverage as the test images do) against the test images,
  beside the field's own test PSNR (from the run's test_metrics_*.json).

    python scripts/bench_export.py exp/neus-synthetic/@20261129-120000 [--faces 50000] [--json]

The run folder needs config/parsed.yaml and save/ with the meshes of its test (the README's main
command writes them); the test images come from the run's dataset.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def newest(save: Path, pattern: str) -> Optional[Path]:
    found = sorted(save.glob(pattern))
    return found[-1] if found else None


def geometry(mesh_path: Path, gt_path: str, faces: int, cfg) -> Dict[str, Any]:
    """Scores of the full mesh and of it decimated to ``faces`` faces against the ground truth."""
    from systems.export import score_mesh
    from utils.mesh import decimate, load_mesh, save_mesh

    args = (gt_path, cfg.system.eval_mesh_points, cfg.system.eval_mesh_threshold, cfg.system.eval_mesh_region)
    full = load_mesh(mesh_path)
    out: Dict[str, Any] = {"full_faces": full.num_faces, "full": score_mesh(mesh_path, *args)}
    t0 = time.perf_counter()
    small = decimate(full, target_faces=min(faces, full.num_faces))
    out["decimate_s"] = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = save_mesh(Path(tmp) / "decimated.ply", small)
        out["decimated_faces"] = small.num_faces
        out["decimated"] = score_mesh(path, *args)
    out["chamfer_ratio"] = out["decimated"]["chamfer"] / out["full"]["chamfer"]
    return out


def appearance(glb: Path, scene, background: str, supersample: int = 4) -> Dict[str, Any]:
    """Mean PSNR over the test views of the textured mesh rendered from the test cameras
    (``supersample``^2 rays per pixel, box-filtered)."""
    import torch

    from datasets.datamodule import BACKGROUNDS, composite
    from systems.metrics import psnr
    from utils.mesh import MeshRenderer, load_mesh

    test = scene.load_split("test")
    if not test.has_ground_truth:
        return {"note": "the test split has no ground truth"}
    mesh = load_mesh(glb)
    world_to_scene = torch.linalg.inv(scene.scene_to_world.double()).float()
    renderer = MeshRenderer(mesh.transformed(world_to_scene))
    bg = BACKGROUNDS.get(background, 1.0)
    values, t0 = [], time.perf_counter()
    for i in range(len(test)):
        (h, w), c2w, k, s = test.size(i), test.c2w[i], test.intrinsics[i] * supersample, supersample
        fine = renderer.render(c2w.numpy(), k.numpy(), w * s, h * s, shading="unlit", background=(bg, bg, bg)).rgb.float()
        image = torch.nn.functional.avg_pool2d(fine.permute(2, 0, 1)[None], s)[0].permute(1, 2, 0)
        gt = composite(test.image(i), test.mask(i), torch.full((h, w, 3), bg))
        values.append(float(psnr(image.float().clamp(0, 1), gt)))
    return {"views": len(values), "psnr": sum(values) / len(values), "psnr_min": min(values),
            "render_s": time.perf_counter() - t0, "faces": mesh.num_faces, "supersample": supersample}


def run(args: argparse.Namespace) -> Dict[str, Any]:
    from systems.build import build_scene, load_experiment

    root = Path(args.run)
    save = root / "save"
    _, cfg = load_experiment(str(root / "config" / "parsed.yaml"), list(args.override))
    scene = build_scene(cfg)
    res: Dict[str, Any] = {"run": str(root)}
    metrics_path = newest(save, "test_metrics_step*.json")
    if metrics_path is not None:
        data = json.loads(metrics_path.read_text())
        res["field_test_psnr"] = (data.get("mean") or {}).get("psnr")
    mesh_path = newest(save, "mesh_*[!d].ply")  # not a *_textured one
    if mesh_path is not None and scene.gt_mesh_path:
        res["geometry"] = geometry(mesh_path, scene.gt_mesh_path, args.faces, cfg)
    glb = newest(save, "mesh_*_textured.glb")
    if glb is not None:
        res["textured"] = appearance(glb, scene, cfg.dataset.eval_background, args.supersample)
        if res.get("field_test_psnr") is not None and "psnr" in res["textured"]:
            res["textured_psnr_gap_db"] = res["field_test_psnr"] - res["textured"]["psnr"]
    return res


def format_table(r: Dict[str, Any]) -> str:
    def f(v, spec=".5f"):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)

    lines = [f"run: {r['run']}"]
    g = r.get("geometry")
    if g:
        lines += ["| mesh | faces | Chamfer | F-score |", "|---|---|---|---|",
                  f"| full, cleaned | {g['full_faces']:,} | {f(g['full']['chamfer'])} | {f(g['full']['fscore'], '.3f')} |",
                  f"| decimated | {g['decimated_faces']:,} | {f(g['decimated']['chamfer'])} | "
                  f"{f(g['decimated']['fscore'], '.3f')} |",
                  f"Chamfer ratio decimated / full: {f(g['chamfer_ratio'], '.3f')}"]
    t = r.get("textured")
    if t and "psnr" in t:
        lines.append(f"textured mesh ({t['faces']:,} faces) from the {t['views']} test cameras: {t['psnr']:.2f} dB "
                     f"(min {t['psnr_min']:.2f}); the field's own test PSNR: {f(r.get('field_test_psnr'), '.2f')} dB; "
                     f"gap {f(r.get('textured_psnr_gap_db'), '.2f')} dB")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run folder (exp/<name>/<tag>@<time>)")
    p.add_argument("--faces", type=int, default=50000, help="decimation target (default 50000)")
    p.add_argument("--supersample", type=int, default=4, help="rays per pixel side for the mesh renders (default 4)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("override", nargs="*", metavar="key=value", help="config overrides (e.g. dataset.root_dir=...)")
    args = p.parse_args(argv)
    res = run(args)
    print(json.dumps(res) if args.json else format_table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
