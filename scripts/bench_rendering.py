"""Benchmark of the pure-PyTorch rendering core on CPU.

Scene: 4096 rays looking at a sphere shell occupying a 128^3 occupancy grid in [-1, 1]^3, marched
with the step instant-nsr-pl uses (sqrt(3) * 2 / 1024), which gives ~64 occupied samples per ray.
Times (median over repetitions, after a warm-up):
  (a) marching + compositing forward and backward (weights from density, accumulated rgb,
      opacity and depth, backward from a loss), the field replaced by fixed leaf tensors;
  (b) a 64-wide, 2-hidden-layer MLP field (3 -> 64 -> 64 -> 4) forward and backward on the same
      S points;
and the peak memory of marching, of compositing and of (a) for two ray counts, to show it grows
linearly with S (the resident-set high-water mark above the level before the call, reset before
each call, in a fresh process per ray count with glibc returning freed blocks; Linux only, else
"n/a" and only the bytes of the packed tensors are reported).

    python scripts/bench_rendering.py [--rays 4096] [--reps 5] [--threads N] [--json] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from measure import fix_mmap_threshold, peak_extra_bytes, timed  # noqa: E402
from models.rendering import (  # noqa: E402
    OccupancyGrid,
    accumulate_along_rays,
    ray_marching,
    render_weight_from_density,
)

BOX = [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]
STEP = math.sqrt(3) * 2 / 1024
SHELL_RADIUS, SHELL_HALF_WIDTH = 0.6, 0.04


# ------------------------------------------------------------------------------------------------
# scene
# ------------------------------------------------------------------------------------------------
def make_grid(res: int = 128, device="cpu") -> OccupancyGrid:
    grid = OccupancyGrid(BOX, resolution=res).to(device)
    c = (torch.arange(res, device=device) + 0.5) / res * 2 - 1
    r = torch.stack(torch.meshgrid(c, c, c, indexing="ij")).norm(dim=0)
    grid.set_binary((r - SHELL_RADIUS).abs() < SHELL_HALF_WIDTH)
    return grid


def make_rays(n: int, seed: int = 0, device="cpu"):
    """Rays from cameras on a sphere of radius 2.5 towards the shell (jittered)."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(n, 3, generator=g), dim=-1) * 2.5
    targets = torch.randn(n, 3, generator=g) * 0.3
    return centres.to(device), F.normalize(targets - centres, dim=-1).to(device)


class Field(torch.nn.Module):
    """x [N, 3] -> sigma [N], rgb [N, 3]."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(3, width), torch.nn.ReLU(),
            torch.nn.Linear(width, width), torch.nn.ReLU(),
            torch.nn.Linear(width, 4),
        )

    def forward(self, x):
        out = self.mlp(x)
        return F.softplus(out[:, 0]), torch.sigmoid(out[:, 1:])


# ------------------------------------------------------------------------------------------------
# the measured pieces
# ------------------------------------------------------------------------------------------------
def march(rays_o, rays_d, grid, backend: str = "torch"):
    return ray_marching(rays_o, rays_d, grid=grid, render_step_size=STEP, backend=backend)


def composite(samples, raw_sigma, raw_rgb, target, n_rays, backend: str = "torch"):
    ray_indices, t_starts, t_ends = samples
    sigma, rgb = F.softplus(raw_sigma), torch.sigmoid(raw_rgb)
    weights, _, _ = render_weight_from_density(t_starts, t_ends, sigma, ray_indices, n_rays, backend=backend)
    color = accumulate_along_rays(weights, rgb, ray_indices, n_rays, backend=backend)
    opacity = accumulate_along_rays(weights, None, ray_indices, n_rays, backend=backend)
    depth = accumulate_along_rays(weights, ((t_starts + t_ends) / 2)[:, None], ray_indices, n_rays, backend=backend)
    return F.mse_loss(color, target) + 1e-2 * opacity.mean() + 1e-3 * depth.mean()


def pipeline_without_field(rays_o, rays_d, grid, raw_sigma, raw_rgb, target, backend: str = "torch"):
    """(a): march, composite, backward into the (stand-in) field outputs."""
    samples = march(rays_o, rays_d, grid, backend)
    loss = composite(samples, raw_sigma, raw_rgb, target, rays_o.shape[0], backend)
    loss.backward()
    return samples


def field_fwd_bwd(field, x):
    sigma, rgb = field(x)
    (sigma.mean() + rgb.mean()).backward()


def time_ms(fn, reps: int, warmup: int = 1, device="cpu"):
    """(median, min) wall time in ms over reps calls after warm-up calls (the min is less
    sensitive to other processes on a shared machine); synchronized on CUDA."""
    times = timed(fn, reps, warmup=warmup, device=device)
    return statistics.median(times) * 1e3, min(times) * 1e3


def run(n_rays: int, reps: int, device="cpu", backend: str = "torch", memory: bool = True,
        grid_res: int = 128) -> Dict[str, object]:
    """Times of marching, compositing, (a) and (b) for n_rays rays (keys ``<part>_ms`` and
    ``<part>_min_ms``), samples per ray, and with ``memory`` the peak-memory children (CPU)."""
    torch.manual_seed(0)
    grid = make_grid(grid_res, device)
    grid.pyramid()  # built once per grid state (cached), as during training between updates
    field = Field().to(device)
    results: Dict[str, object] = {"rays": n_rays, "threads": torch.get_num_threads(), "step": STEP,
                                  "device": str(device), "backend": backend}

    rays_o, rays_d = make_rays(n_rays, device=device)
    samples = march(rays_o, rays_d, grid, backend)
    n_samples = samples[0].numel()
    ray_indices, t_starts, t_ends = samples
    x = rays_o[ray_indices] + ((t_starts + t_ends) / 2)[:, None] * rays_d[ray_indices]
    with torch.no_grad():
        sigma0, rgb0 = field.mlp(x)[:, 0], field.mlp(x)[:, 1:]
    raw_sigma = sigma0.clone().requires_grad_()
    raw_rgb = rgb0.clone().requires_grad_()
    target = torch.rand(n_rays, 3, device=device)
    results["samples"] = n_samples
    results["samples_per_ray"] = n_samples / n_rays
    results["samples_per_hit_ray"] = n_samples / max(1, int(torch.unique(ray_indices).numel()))

    def step_a():
        raw_sigma.grad = raw_rgb.grad = None
        pipeline_without_field(rays_o, rays_d, grid, raw_sigma, raw_rgb, target, backend)

    def step_composite():
        raw_sigma.grad = raw_rgb.grad = None
        composite(samples, raw_sigma, raw_rgb, target, n_rays, backend).backward()

    def step_b():
        field.zero_grad(set_to_none=True)
        field_fwd_bwd(field, x)

    for key, fn in (
        ("march", lambda: march(rays_o, rays_d, grid, backend)),
        ("composite_fwd_bwd", step_composite),
        ("a_march_composite", step_a),
        ("b_field_fwd_bwd", step_b),
    ):
        results[f"{key}_ms"], results[f"{key}_min_ms"] = time_ms(fn, reps, device=device)
    results["ratio_a_over_b"] = results["a_march_composite_ms"] / results["b_field_fwd_bwd_ms"]
    results["ratio_a_over_b_min"] = results["a_march_composite_min_ms"] / results["b_field_fwd_bwd_min_ms"]

    # memory for this ray count and half of it, each in a fresh process (see measure_memory)
    if memory:
        results["memory"] = [_memory_in_subprocess(n, torch.get_num_threads()) for n in (n_rays // 2, n_rays)]
    return results


def measure_memory(n_rays: int) -> Dict[str, object]:
    """Peak memory (above the level before each call) of marching, of compositing fwd+bwd and of
    both together, for n_rays rays; meant to run in a fresh process, after one warm-up run."""
    fix_mmap_threshold()
    grid = make_grid()
    grid.pyramid()
    rays_o, rays_d = make_rays(n_rays, seed=1)
    samples = march(rays_o, rays_d, grid)
    n_samples = samples[0].numel()
    raw_sigma = torch.zeros(n_samples, requires_grad=True)
    raw_rgb = torch.zeros(n_samples, 3, requires_grad=True)
    target = torch.rand(n_rays, 3)
    pipeline_without_field(rays_o, rays_d, grid, raw_sigma, raw_rgb, target)  # warm-up
    peaks = {}
    for name, fn in (
        ("march", lambda: march(rays_o, rays_d, grid)),
        ("composite_fwd_bwd", lambda: composite(samples, raw_sigma, raw_rgb, target, n_rays).backward()),
        ("a", lambda: pipeline_without_field(rays_o, rays_d, grid, raw_sigma, raw_rgb, target)),
    ):
        raw_sigma.grad = raw_rgb.grad = None
        peaks[name] = peak_extra_bytes(fn)
    return {
        "rays": n_rays,
        "samples": n_samples,
        "packed_bytes": n_samples * (8 + 4 + 4),  # ray_indices int64 + t_starts + t_ends float32
        "peak_march_bytes": peaks["march"],
        "peak_composite_fwd_bwd_bytes": peaks["composite_fwd_bwd"],
        "peak_a_bytes": peaks["a"],
        "peak_a_bytes_per_sample": None if peaks["a"] is None else peaks["a"] / n_samples,
    }


def _memory_in_subprocess(n_rays: int, threads: int) -> Dict[str, object]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", str(n_rays), "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def print_table(r: Dict[str, object]) -> None:
    print(f"rendering core benchmark ({r['backend']} backend, {r['device']}, {r['threads']} threads)")
    print(f"  rays {r['rays']}, samples S = {r['samples']} ({r['samples_per_ray']:.1f} per ray, "
          f"{r['samples_per_hit_ray']:.1f} per ray that hits), step {r['step']:.5f}")
    rows = [
        ("marching", "march"),
        ("compositing fwd+bwd", "composite_fwd_bwd"),
        ("(a) marching + compositing fwd+bwd", "a_march_composite"),
        ("(b) field (MLP 3-64-64-4) fwd+bwd", "b_field_fwd_bwd"),
    ]
    print(f"  {'':38s} {'median ms':>10s} {'min ms':>8s}")
    for name, key in rows:
        print(f"  {name:38s} {r[key + '_ms']:10.1f} {r[key + '_min_ms']:8.1f}")
    print(f"  {'ratio (a) / (b)':38s} {r['ratio_a_over_b']:10.2f} {r['ratio_a_over_b_min']:8.2f}")
    print("  peak memory above the start (MB), measured separately:")
    print(f"  {'rays':>8s} {'S':>9s} {'packed':>8s} {'marching':>9s} {'compositing':>12s} {'(a)':>7s} {'(a) B/sample':>13s}")

    def mb(x):
        return "n/a" if x is None else f"{x / 2**20:.1f}"

    for m in r.get("memory", []):
        per = "n/a" if m["peak_a_bytes_per_sample"] is None else f"{m['peak_a_bytes_per_sample']:.0f}"
        print(f"  {m['rays']:8d} {m['samples']:9d} {mb(m['packed_bytes']):>8s} {mb(m['peak_march_bytes']):>9s} "
              f"{mb(m['peak_composite_fwd_bwd_bytes']):>12s} {mb(m['peak_a_bytes']):>7s} {per:>13s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rays", type=int, default=4096)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu; memory is measured on cpu only)")
    parser.add_argument("--backend", default="torch", choices=["torch", "auto", "nerfacc"],
                        help="rendering backend (default torch)")
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child is not None:
        print(json.dumps(measure_memory(args.memory_child)))
        return
    results = run(args.rays, args.reps, args.device, args.backend, memory=torch.device(args.device).type == "cpu")
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_table(results)


if __name__ == "__main__":
    main()
