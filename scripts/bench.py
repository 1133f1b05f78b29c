#!/usr/bin/env python
"""The toolkit's benchmark in one command: prints a table (or one JSON object) of

- field throughput per encoding (points/s, forward + backward; scripts/bench_fields.py) beside a
  float32 matrix-multiply baseline (GFLOP/s);
- the rendering core (scripts/bench_rendering.py): marching + compositing forward and backward
  and the stand-in field's forward + backward, in seconds per 4096-ray batch;
- training-step throughput per preset (samples/s and steps/s) on the embedded scene, through the
  toolkit's own data module, system and a Lightning Trainer;
- rendering one validation image (rays/s) and mesh extraction (marching cubes of the trained
  field) at 256^3 and 512^3;
- time to quality: training steps and seconds (evaluation excluded) until the PSNR on test
  views first passes 25 and 28 dB (NeuS preset on the embedded scene);
- the peak memory of each (resident-set high-water mark of the process while the part ran, or
  the CUDA allocator's peak on a GPU).

Each time is the median of several repetitions (--reps; steps for training); the header names
the machine (CPU model / GPU name, threads, torch version).

    python scripts/bench.py                       # everything (~20-30 min on a 2-core CPU)
    python scripts/bench.py --quick --json        # a reduced set, under two minutes on that CPU
    python scripts/bench.py --device cuda --save docs/bench-gpu   # + bench.json / bench.md there

--tiny shrinks every size further (seconds; for the tests). Sizes can also be set one by one.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
for p in (REPO_ROOT, REPO_ROOT / "scripts"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import torch  # noqa: E402

import bench_fields  # noqa: E402
import bench_rendering  # noqa: E402
from measure import PeakMemory, StepClock, read_status_kb, timed  # noqa: E402

MAIN_PRESET = "neus-synthetic"
ALL_PRESETS = ["neus-synthetic", "neus-triplane-sso", "neus-blender", "nerf-blender"]
SYNTHETIC_PRESETS = {"neus-synthetic", "neus-triplane-sso"}

# the embedded scene per mode: options of the `synthetic` loader (full: the main preset's scene in
# its default folder; each is rendered there on first use, outside any timing; tiny: a temporary folder)
SCENES: Dict[str, Dict[str, Any]] = {
    "full": dict(root_dir=str(REPO_ROOT / "load" / "synthetic" / "128px-seed0")),
    "quick": dict(resolution=64, n_train=24, n_val=2, n_test=4, gt_mesh_resolution=128,
                  root_dir=str(REPO_ROOT / "load" / "synthetic" / "bench-quick-64px")),
    "tiny": dict(resolution=24, n_train=6, n_val=2, n_test=3, gt_mesh_resolution=48, seed=3),
}

# per mode: what runs and how big
MODES: Dict[str, Dict[str, Any]] = {
    "full": dict(reps=5, points=1 << 18, fields=list(bench_fields.CASE_NAMES), rays=4096, grid_res=128,
                 presets=ALL_PRESETS, train_warmup=10, train_steps=30, mesh_res=[256, 512], mesh_reps=3,
                 ttq=True, rendering_memory=True, val_warmup=1),
    "quick": dict(reps=3, points=1 << 16, fields=["hashgrid", "triplane", "dense-grid", "frequency"], rays=4096,
                  grid_res=128, presets=[MAIN_PRESET], train_warmup=3, train_steps=8, mesh_res=[256], mesh_reps=1,
                  ttq=False, rendering_memory=False, val_warmup=1),
    "tiny": dict(reps=1, points=1 << 10, fields=["hashgrid", "triplane"], rays=256, grid_res=32,
                 presets=[MAIN_PRESET], train_warmup=1, train_steps=2, mesh_res=[64], mesh_reps=1,
                 ttq=False, rendering_memory=False, val_warmup=0),
}

# training overrides that shrink a preset for --tiny (as the tests' tiny runs)
TINY_TRAIN = ["system.train_num_rays=128", "system.target_samples_per_step=8192", "model.grid.resolution=16",
              "model.grid.warmup_steps=2", "model.grid.update_every=2", "model.eval_chunk_size=4096",
              "system.train_num_rays_min=32"]

log = logging.getLogger("bench")


# ------------------------------------------------------------------------------------------------
# machine and memory
# ------------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> Dict[str, Any]:
    import pytorch_lightning as pl

    info = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "lightning": pl.__version__,
        "python": platform.python_version(),
        "gpu": None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    # which kernel a CPU hash grid takes under backend "auto" (figures differ by ~2x between them)
    from models import encodings

    probe = encodings.make("hashgrid", {"n_levels": 1, "log2_hashmap_size": 4})
    info["hashgrid_kernel"] = probe.backend_for(torch.empty(1, 3, device=device))
    return info


def median_or_none(values: Sequence[float]) -> Optional[float]:
    return statistics.median(values) if values else None


def median_not_reached_last(values: Sequence[Optional[float]]) -> Optional[float]:
    """Median where None means 'never reached' (larger than any number); None if the median is."""
    if not values:
        return None
    ordered = sorted(values, key=lambda v: (v is None, v if v is not None else 0.0))
    n = len(ordered)
    mid = ordered[(n - 1) // 2: n // 2 + 1]
    if any(v is None for v in mid):
        return None
    return sum(mid) / len(mid)


# ------------------------------------------------------------------------------------------------
# training, rendering and meshing through the toolkit
# ------------------------------------------------------------------------------------------------
def scene_overrides(preset: str, scene: Dict[str, Any], scene_dir: Optional[str]) -> List[str]:
    """Dataset overrides pointing ``preset`` at the embedded scene (the Blender presets read the
    scene's folder, which is in the Blender layout)."""
    opts = dict(scene)
    if scene_dir is not None:
        opts["root_dir"] = scene_dir
    if preset in SYNTHETIC_PRESETS:
        return [f"dataset.{k}={v}" for k, v in opts.items()]
    root = opts.get("root_dir") or f"load/synthetic/{opts.get('resolution', 128)}px-seed{opts.get('seed', 0)}"
    res = opts.get("resolution", 128)
    return [f"dataset.root_dir={root}", f"dataset.img_wh=[{res},{res}]"]


def ensure_scene(scene: Dict[str, Any], scene_dir: Optional[str]) -> None:
    """Render the embedded scene once (outside any timing) if its folder is missing."""
    import datasets
    import datasets.registered  # noqa: F401

    opts = dict(scene)
    if scene_dir is not None:
        opts["root_dir"] = scene_dir
    datasets.make("synthetic", opts, path="dataset")


def build(preset: str, overrides: List[str], save_dir: Path, device: torch.device, max_steps: int,
          callbacks: Sequence = ()):
    """The parts of a training run of ``preset`` for ``max_steps`` steps on ``device``, made by the
    toolkit's own build path (systems/build.py) with the extra ``callbacks``; no validation, no
    periodic checkpoints, outputs under ``save_dir``."""
    from systems.build import build_run, load_experiment
    from utils.run_dir import create_run

    if device.type == "cuda":
        accel = ["trainer.accelerator=gpu", f"trainer.devices=[{device.index or 0}]"]
    else:
        accel = ["trainer.accelerator=cpu", "trainer.devices=1"]
    never = 10**9
    _, cfg = load_experiment(str(REPO_ROOT / "configs" / f"{preset}.yaml"), [
        *overrides, *accel, f"trainer.max_steps={max_steps}", "trainer.limit_val_batches=0",
        f"trainer.val_check_interval={never}", f"checkpoint.every_n_train_steps={never}",
        "checkpoint.save_last=false", "trainer.enable_progress_bar=false"])
    run_paths = create_run(save_dir / "exp", save_dir / "runs", cfg.name, "bench")
    return build_run(cfg, run_paths, "train", extra_callbacks=callbacks)


def bench_train(preset: str, overrides: List[str], device: torch.device, warmup: int, steps: int,
                save_dir: Path, val_reps: int, val_warmup: int = 1) -> Dict[str, Any]:
    """Training-step throughput of a preset (median over the steps after ``warmup``), then the
    time to render one validation image with the trained weights. Returns figures and the
    trained run's parts for meshing."""
    clock = StepClock()
    parts = build(preset, overrides, save_dir, device, warmup + steps, [clock])
    with PeakMemory(device) as mem:
        parts.trainer.fit(parts.system, datamodule=parts.datamodule)
    out: Dict[str, Any] = {"preset": preset, "timed_steps": len(clock.times[warmup:]), "warmup_steps": warmup,
                           **clock.summary(skip=warmup), "train_peak_mb": mem.mb}
    out.update(bench_val_render(parts.system, parts.datamodule, device, val_reps, val_warmup))
    return out, parts


@torch.no_grad()
def bench_val_render(system, dm, device: torch.device, reps: int, warmup: int = 1) -> Dict[str, Any]:
    """Render validation image 0 whole (as validation does) ``reps`` times: rays/s of the median."""
    from datasets.datamodule import ImageRays

    system.to(device)
    system.eval()
    dataset = ImageRays(dm.split("val"), dm.cfg.eval_background)
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in dataset[0].items()}
    n_rays = batch["rays_o"].shape[0]
    with PeakMemory(device) as mem:
        times = timed(lambda: system.render_image(batch), reps, warmup=warmup, device=device)
    t = statistics.median(times)
    return {"val_image_rays": n_rays, "render_val_s": t, "render_val_rays_per_s": n_rays / t,
            "render_val_peak_mb": mem.mb}


@torch.no_grad()
def bench_mesh(parts, device: torch.device, resolutions: Sequence[int], reps: int) -> Dict[str, Any]:
    """Marching cubes of the trained field (as --export does, without colours or the file), at each
    resolution: median seconds, faces, peak memory."""
    from utils.mesh import EmptySurfaceError, extract_isosurface

    cfg, system = parts.cfg, parts.system
    system.to(device)
    system.eval()
    model = system.model
    field, level = model.isosurface_field(cfg.export.threshold)
    r = float(model.cfg.radius)
    bounds = (torch.full((3,), -r, device=device), torch.full((3,), r, device=device))
    out: Dict[str, Any] = {}
    for res in resolutions:
        meshes: list = []

        def extract():
            meshes[:] = [extract_isosurface(field, bounds, res, threshold=level, chunk_size=cfg.export.chunk_size,
                                            coarse_to_fine=cfg.export.coarse_to_fine, device=device,
                                            backend=cfg.export.backend)]
        try:
            with PeakMemory(device) as mem:
                times = timed(extract, reps, warmup=0, device=device)
        except EmptySurfaceError as err:
            out[f"mesh_{res}"] = {"s": None, "faces": None, "peak_mb": None, "note": f"no surface: {err}"}
            continue
        out[f"mesh_{res}"] = {"s": statistics.median(times), "faces": int(meshes[0].faces.shape[0]), "peak_mb": mem.mb}
    return out


def time_to_quality(overrides: List[str], device: torch.device, thresholds: Sequence[float], every: int,
                    n_images: int, max_steps: Optional[int], seed: int, save_dir: Path) -> Dict[str, Any]:
    """Train the main preset; every ``every`` steps render ``n_images`` test views (evenly spaced)
    and take their mean PSNR; record the first step (and training seconds, evaluation excluded)
    at which it reaches each threshold. Stops when all are reached or at max_steps.
    Returns (figures, the trained run's parts)."""
    from datasets.datamodule import ImageRays
    from systems.build import build_scene, load_experiment
    from systems.evaluation import image_metrics

    extra = [f"seed={seed}"]
    _, cfg = load_experiment(str(REPO_ROOT / "configs" / f"{MAIN_PRESET}.yaml"), overrides + extra)
    test = build_scene(cfg).load_split("test")
    if not test.has_ground_truth:
        return {"note": "the test split has no ground truth"}, None
    idx = sorted({round(i * (len(test) - 1) / max(1, n_images - 1)) for i in range(min(n_images, len(test)))})
    images = ImageRays(test, cfg.dataset.eval_background)
    curve: List[Dict[str, float]] = []
    reached: Dict[float, Dict[str, float]] = {}

    @torch.no_grad()
    def evaluate(trainer, pl_module, clock: StepClock) -> None:
        step = trainer.global_step
        if step % every != 0 and step < trainer.max_steps:
            return
        was_training = pl_module.training
        pl_module.eval()
        values = []
        for i in idx:
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in images[i].items()}
            out = pl_module.render_image(batch)
            values.append(image_metrics(batch, out, batch["height"], batch["width"])["psnr"])
        pl_module.train(was_training)
        value = sum(values) / len(values)
        curve.append({"step": step, "train_s": clock.train_s, "psnr": value})
        for thr in thresholds:
            if thr not in reached and value >= thr:
                reached[thr] = {"steps": step, "s": clock.train_s}
        if len(reached) == len(thresholds):
            trainer.should_stop = True

    steps = max_steps or cfg.trainer.max_steps
    parts = build(MAIN_PRESET, overrides + extra, save_dir, device, steps, [StepClock(on_step=evaluate)])
    with PeakMemory(device) as mem:
        parts.trainer.fit(parts.system, datamodule=parts.datamodule)
    out: Dict[str, Any] = {"test_views": idx, "eval_every": every, "max_steps": steps, "curve": curve,
                           "peak_mb": mem.mb}
    for thr in thresholds:
        hit = reached.get(thr)
        out[f"{thr:g}"] = hit if hit else {"steps": None, "s": None}
    return out, parts


# ------------------------------------------------------------------------------------------------
# the whole run
# ------------------------------------------------------------------------------------------------
def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but this torch sees no CUDA device")
    return device


def run(args: argparse.Namespace) -> Dict[str, Any]:
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    size = dict(MODES[mode])
    for key in ("reps", "points", "rays", "train_warmup", "train_steps", "mesh_reps"):
        if getattr(args, key) is not None:
            size[key] = getattr(args, key)
    for key in ("fields", "presets", "mesh_res"):
        if getattr(args, key) is not None:
            size[key] = getattr(args, key)
    if args.ttq is not None:
        size["ttq"] = args.ttq
    device = pick_device(args.device)
    reps = size["reps"]
    res: Dict[str, Any] = {"mode": mode, "device": str(device), "machine": machine_info(device), "reps": reps}
    kb = read_status_kb("VmRSS")
    res["rss_baseline_mb"] = None if kb is None else kb / 1024  # the process after imports, before any part
    started = time.perf_counter()

    # baseline and fields
    res["matmul_gflops"] = bench_fields.matmul_gflops(reps, device)

    def field_peak(key, step):
        with PeakMemory(device) as mem:
            step()
        return mem.mb

    fields = bench_fields.run_fields(size["points"], reps, device, size["fields"], baseline=False, on_case=field_peak)
    res["field_points"] = size["points"]
    for key in bench_fields.CASE_NAMES:
        res[f"field_{key.replace('-', '_')}_pts_per_s"] = None
    for row in fields["results"]:
        k = row["key"].replace("-", "_")
        res[f"field_{k}_pts_per_s"] = row["points_per_s"]
        res[f"field_{k}_peak_mb"] = row["extra"]
    res["matmul_gflops_after"] = bench_fields.matmul_gflops(reps, device)

    # rendering core
    backend = "torch" if device.type == "cpu" else "auto"
    with PeakMemory(device) as mem:
        rc = bench_rendering.run(size["rays"], reps, device, backend=backend,
                                 memory=size["rendering_memory"] and device.type == "cpu", grid_res=size["grid_res"])
    res["render_rays"] = rc["rays"]
    res["render_samples"] = rc["samples"]
    res["render_march_composite_s"] = rc["a_march_composite_ms"] / 1e3
    res["render_field_s"] = rc["b_field_fwd_bwd_ms"] / 1e3
    res["render_core_peak_mb"] = mem.mb
    if "memory" in rc:
        res["render_core_memory"] = rc["memory"]

    # training, validation render and mesh, per preset on the embedded scene
    scene = SCENES[mode]
    tiny = TINY_TRAIN if mode == "tiny" else []
    res["train"] = {}
    for key in ("train_samples_per_s", "train_steps_per_s", "train_peak_mb", "render_val_rays_per_s", "render_val_s",
                "mesh_256_s", "mesh_512_s"):
        res[key] = None
    mesh_model = None
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        scene_dir = args.scene_dir
        if mode == "tiny" and scene_dir is None:
            scene_dir = str(Path(tmp) / "scene")  # rendered there (seconds), removed at the end
        ensure_scene(scene, scene_dir)
        for i, preset in enumerate(size["presets"]):
            overrides = scene_overrides(preset, scene, scene_dir) + tiny + list(args.override)
            fig, parts = bench_train(preset, overrides, device, size["train_warmup"], size["train_steps"],
                                     Path(tmp) / preset, reps, size["val_warmup"])
            res["train"][preset] = fig
            if i == 0:
                res["train_preset"] = preset
                res["train_samples_per_s"] = fig["samples_per_s"]
                res["train_steps_per_s"] = fig["steps_per_s"]
                res["train_peak_mb"] = fig["train_peak_mb"]
                res["render_val_rays_per_s"] = fig["render_val_rays_per_s"]
                res["render_val_s"] = fig["render_val_s"]
                mesh_model = (parts, f"{preset} after {size['train_warmup'] + size['train_steps']} steps")
                res["render_val_model"] = mesh_model[1]
            del parts
            gc.collect()

        # time to quality
        thresholds = args.ttq_psnr
        for thr in thresholds:
            res[f"ttq_{thr:g}_steps"] = None
            res[f"ttq_{thr:g}_s"] = None
        if size["ttq"]:
            runs = []
            for rep in range(args.ttq_reps):
                overrides = scene_overrides(MAIN_PRESET, scene, scene_dir) + tiny + list(args.override)
                run_, parts = time_to_quality(overrides, device, thresholds, args.ttq_every, args.ttq_images,
                                              args.ttq_max_steps, args.ttq_seed + rep, Path(tmp) / f"ttq{rep}")
                runs.append(run_)
                if rep == 0 and parts is not None:  # mesh a trained model rather than a barely trained one
                    mesh_model = (parts, f"{MAIN_PRESET} after its time-to-quality run "
                                         f"({run_['curve'][-1]['step'] if run_.get('curve') else '?'} steps)")
                del parts
            res["ttq"] = runs
            for thr in thresholds:
                # a run that never got there counts as infinitely slow
                steps = [r.get(f"{thr:g}", {}).get("steps") for r in runs]
                secs = [r.get(f"{thr:g}", {}).get("s") for r in runs]
                res[f"ttq_{thr:g}_steps"] = median_not_reached_last(steps)
                res[f"ttq_{thr:g}_s"] = median_not_reached_last(secs)
            res["ttq_peak_mb"] = median_or_none([r["peak_mb"] for r in runs if r.get("peak_mb") is not None])

        # a validation image and mesh extraction with the main preset's most trained model
        if mesh_model is not None and res.get("ttq"):
            parts, what = mesh_model
            fig = bench_val_render(parts.system, parts.datamodule, device, reps, size["val_warmup"])
            res.update(render_val_model=what, render_val_rays_per_s=fig["render_val_rays_per_s"],
                       render_val_s=fig["render_val_s"], render_val_peak_mb=fig["render_val_peak_mb"],
                       render_val_rays=fig["val_image_rays"])
        if mesh_model is not None and size["mesh_res"]:
            parts, what = mesh_model
            res["mesh_model"] = what
            res["mesh"] = bench_mesh(parts, device, size["mesh_res"], size["mesh_reps"])
            for key, m in res["mesh"].items():
                res[f"{key}_s"] = m["s"]
        mesh_model = None
    res["bench_wall_s"] = time.perf_counter() - started
    return res


# ------------------------------------------------------------------------------------------------
# output
# ------------------------------------------------------------------------------------------------
def _num(v: Any, fmt: str = "{:,.0f}") -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return fmt.format(v)


def format_table(r: Dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        f"# nsr-toolkit benchmark ({r['mode']}): device {r['device']}",
        "",
        f"Machine: CPU {m['cpu']} ({m['cpu_count']} cores), GPU {m['gpu'] or 'none'}, {m['threads']} torch threads, "
        f"hash-grid kernel {m.get('hashgrid_kernel', '?')}, torch {m['torch']}, Lightning {m['lightning']}, Python {m['python']}. Times are medians of "
        f"{r['reps']} repetitions (training: of the timed steps). Memory: peak while the part ran "
        f"({'CUDA allocator' if r['device'].startswith('cuda') else 'process resident set'}; the process held "
        f"{_num(r.get('rss_baseline_mb'), '{:.0f}')} MB resident before the first part).",
        "",
        "| what | figure | peak MB |",
        "|---|---|---|",
        f"| matmul 1024^2 float32 (before / after the fields) | {_num(r['matmul_gflops'], '{:.1f}')} / "
        f"{_num(r['matmul_gflops_after'], '{:.1f}')} GFLOP/s | |",
    ]
    for key, name in bench_fields.CASE_NAMES.items():
        k = key.replace("-", "_")
        if r.get(f"field_{k}_pts_per_s") is not None:
            lines.append(f"| field: {name} ({r['field_points']:,} points, fwd+bwd) | "
                         f"{_num(r[f'field_{k}_pts_per_s'])} points/s | {_num(r.get(f'field_{k}_peak_mb'), '{:.0f}')} |")
    lines.append(f"| rendering core: marching + compositing fwd+bwd ({r['render_rays']} rays, "
                 f"{r['render_samples']:,} samples) | {_num(r['render_march_composite_s'] * 1e3, '{:.1f}')} ms | "
                 f"{_num(r['render_core_peak_mb'], '{:.0f}')} |")
    lines.append(f"| rendering core: field MLP fwd+bwd on the same samples | "
                 f"{_num(r['render_field_s'] * 1e3, '{:.1f}')} ms | |")
    for preset, t in r.get("train", {}).items():
        lines.append(f"| train step: {preset} ({t['timed_steps']} steps after {t['warmup_steps']}) | "
                     f"{_num(t['samples_per_s'])} samples/s, {_num(t['steps_per_s'], '{:.2f}')} steps/s "
                     f"({_num(t['samples_per_step'])} samples/step) | {_num(t['train_peak_mb'], '{:.0f}')} |")
        lines.append(f"| render a validation image: {preset} ({t['val_image_rays']:,} rays) | "
                     f"{_num(t['render_val_rays_per_s'])} rays/s ({_num(t['render_val_s'], '{:.2f}')} s) | "
                     f"{_num(t['render_val_peak_mb'], '{:.0f}')} |")
    if r.get("render_val_model") and r.get("ttq"):
        lines.append(f"| render a validation image: {r['render_val_model']} ({r['render_val_rays']:,} rays) | "
                     f"{_num(r['render_val_rays_per_s'])} rays/s ({_num(r['render_val_s'], '{:.2f}')} s) | "
                     f"{_num(r.get('render_val_peak_mb'), '{:.0f}')} |")
    for key, m_ in r.get("mesh", {}).items():
        res_ = key.split("_")[1]
        figure = f"{_num(m_['s'], '{:.2f}')} s ({m_['faces']:,} faces)" if m_["s"] is not None else m_.get("note", "-")
        lines.append(f"| mesh extraction {res_}^3 ({r.get('mesh_model')}) | {figure} | {_num(m_.get('peak_mb'), '{:.0f}')} |")
    if r.get("ttq"):
        for key in sorted(k for k in r if k.startswith("ttq_") and k.endswith("_steps")):
            thr = key[4:-6]
            lines.append(f"| time to test PSNR >= {thr} dB ({MAIN_PRESET}, median of {len(r['ttq'])}) | "
                         f"{_num(r[key])} steps, {_num(r[f'ttq_{thr}_s'], '{:.0f}')} s | {_num(r.get('ttq_peak_mb'), '{:.0f}')} |")
    lines.append("")
    lines.append(f"(benchmark wall time {r['bench_wall_s']:.0f} s)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a reduced set (under two minutes on a 2-core CPU)")
    size.add_argument("--tiny", action="store_true", help="tiny sizes everywhere (seconds; for tests)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--save", type=Path, default=None, help="also write bench.json and bench.md into this folder")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--reps", type=int, default=None, help="repetitions per figure")
    p.add_argument("--points", type=int, default=None, help="points per field step")
    p.add_argument("--fields", nargs="+", choices=list(bench_fields.CASE_NAMES), default=None, help="field cases")
    p.add_argument("--rays", type=int, default=None, help="rays of the rendering-core batch")
    p.add_argument("--presets", nargs="+", choices=ALL_PRESETS, default=None, help="presets to train (first: main)")
    p.add_argument("--train-warmup", type=int, default=None, help="training steps before timing")
    p.add_argument("--train-steps", type=int, default=None, help="timed training steps")
    p.add_argument("--mesh-res", type=int, nargs="+", default=None, help="marching-cubes resolutions")
    p.add_argument("--mesh-reps", type=int, default=None, help="repetitions per mesh resolution")
    p.add_argument("--scene-dir", default=None, help="the embedded scene's folder (rendered there if missing)")
    ttq = p.add_mutually_exclusive_group()
    ttq.add_argument("--ttq", dest="ttq", action="store_true", default=None, help="measure time to quality")
    ttq.add_argument("--no-ttq", dest="ttq", action="store_false", help="skip time to quality")
    p.add_argument("--ttq-psnr", type=float, nargs="+", default=[25.0, 28.0], help="PSNR thresholds (dB)")
    p.add_argument("--ttq-every", type=int, default=50, help="evaluate every N steps (default 50)")
    p.add_argument("--ttq-images", type=int, default=6, help="test views evaluated, evenly spaced (default 6)")
    p.add_argument("--ttq-max-steps", type=int, default=None, help="step cap (default: the preset's max_steps)")
    p.add_argument("--ttq-reps", type=int, default=3, help="training runs (seeds) for the median (default 3)")
    p.add_argument("--ttq-seed", type=int, default=42, help="seed of the first time-to-quality run")
    p.add_argument("override", nargs="*", help="key=value config overrides for every training run")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="pytorch_lightning")
    warnings.filterwarnings("ignore", module="lightning")
    # anything the work prints (scene rendering, Lightning) goes to stderr; stdout gets the result
    with contextlib.redirect_stdout(sys.stderr):
        results = run(args)
    table = format_table(results)
    if args.save is not None:
        args.save.mkdir(parents=True, exist_ok=True)
        (args.save / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.save / "bench.md").write_text(table + "\n")
    print(json.dumps(results, indent=2) if args.json else table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
