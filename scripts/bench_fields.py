"""Throughput of the field encodings + MLPs on this machine (points per second, forward + backward).

    .venv/bin/python scripts/bench_fields.py [--quick] [--json] [--threads N] [--points N] [--device cpu|cuda]

Each case is timed as a training step would run it: gradients set to None, forward, a scalar
loss, backward; the median of several repetitions after a warm-up. A float32 matrix-multiply
in the same process gives a machine baseline (GFLOP/s, measured before and after the cases),
so that numbers from a noisy, shared machine can be compared as ratios.

Cases: hash grid (16 levels x 2 features, 2^19 table) + 64-wide 1-hidden-layer MLP;
EG3D tri-plane (3 x 256^2 x 16, sum) + MLP, and the same sampling by F.grid_sample;
dense grid (64^3 x 8) + MLP; frequency encoding (6 bands) + MLP; and the analytic-SDF-gradient
path (forward_with_jacobian + the MLP's hand-written input gradient + an eikonal-style loss)
for the hash grid and the tri-plane. MLP outputs: 16 (an SDF + 15 features).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from typing import Callable, Dict, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from models.encodings import encodings  # noqa: E402
from models.encodings import registered as _enc  # noqa: E402,F401
from models.networks import networks  # noqa: E402
from models.networks import registered as _net  # noqa: E402,F401
from measure import synchronize, timed  # noqa: E402,F401  (re-exported for the other scripts)

N_OUT = 16


def matmul_gflops(reps: int, device="cpu", size: int = 1024) -> float:
    """float32 size x size matrix multiply on ``device``: GFLOP/s of the median repetition."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    ts = timed(lambda: a @ b, max(reps, 5), warmup=2, device=device)
    return 2 * size**3 / statistics.median(ts) / 1e9


def mlp(n_in: int, sdf: bool = False):
    cfg = {"n_neurons": 64, "n_hidden_layers": 1, "backend": "torch"}
    if sdf:
        cfg.update(activation="softplus", sphere_init=True, weight_norm=True)
    return networks.make("mlp", cfg, n_input_dims=n_in, n_output_dims=N_OUT)


def train_step(enc, net, x) -> Callable[[], None]:
    params = list(enc.parameters()) + list(net.parameters())

    def step():
        for p in params:
            p.grad = None
        net(enc(x)).sum().backward()

    return step


def analytic_sdf_step(enc, net, x) -> Callable[[], None]:
    params = list(enc.parameters()) + list(net.parameters())

    def step():
        for p in params:
            p.grad = None
        feats, jac = enc.forward_with_jacobian(x)
        out, d_sdf = net.forward_with_input_grad(feats)
        grad = torch.einsum("nf,nfd->nd", d_sdf, jac)
        (out.sum() + ((grad.norm(dim=-1) - 1) ** 2).sum()).backward()

    return step


def grid_sample_step(planes: torch.nn.Parameter, net, x) -> Callable[[], None]:
    params = [planes] + list(net.parameters())

    def step():
        for p in params:
            p.grad = None
        g = x * 2 - 1
        coords = torch.stack([g[:, [0, 1]], g[:, [0, 2]], g[:, [1, 2]]])[:, :, None, :]
        feats = F.grid_sample(planes, coords, align_corners=True).sum(0)[..., 0].t()
        net(feats).sum().backward()

    return step


#: case key -> printed name
CASE_NAMES = {
    "hashgrid": "hashgrid 16x2 2^19 + mlp",
    "hashgrid-analytic": "hashgrid analytic sdf grad",
    "triplane": "triplane 3x256^2x16 + mlp",
    "triplane-grid-sample": "triplane by F.grid_sample + mlp",
    "triplane-analytic": "triplane analytic sdf grad",
    "dense-grid": "dense grid 64^3x8 + mlp",
    "frequency": "frequency 6 bands + mlp",
}


def field_cases(x: torch.Tensor) -> Dict[str, Callable[[], Callable[[], None]]]:
    """Case key -> builder of a step function (forward + backward of one field on x [N, 3]);
    modules are made on x's device."""
    dev = x.device
    hg = {"name": "hashgrid", "backend": "torch"}
    tp = {"resolution": 256, "n_features": 16}

    def enc(name, cfg):
        return encodings.make(name, cfg).to(dev)

    def net(n_in, sdf=False):
        return mlp(n_in, sdf).to(dev)

    return {
        "hashgrid": lambda: train_step(e := enc("hashgrid", hg), net(e.n_output_dims), x),
        "hashgrid-analytic": lambda: analytic_sdf_step(e := enc("hashgrid", hg), net(e.n_output_dims, sdf=True), x),
        "triplane": lambda: train_step(enc("triplane", tp), net(16), x),
        "triplane-grid-sample": lambda: grid_sample_step(
            torch.nn.Parameter(torch.randn(3, 16, 256, 256, device=dev) * 0.1), net(16), x),
        "triplane-analytic": lambda: analytic_sdf_step(enc("triplane", tp), net(16, sdf=True), x),
        "dense-grid": lambda: train_step(e := enc("dense-grid", {}), net(e.n_output_dims), x),
        "frequency": lambda: train_step(e := enc("frequency", {}), net(e.n_output_dims), x),
    }


def run_fields(n: int, reps: int, device="cpu", cases: Optional[Sequence[str]] = None,
               baseline: bool = True, on_case: Optional[Callable[[str, Callable[[], None]], object]] = None) -> Dict:
    """Time the field cases (all, or the keys in ``cases``) on n points; each row holds
    ``key``, ``case``, ``points_per_s`` (median), ``best_points_per_s``, ``ms_per_step``.
    With ``baseline`` the matmul GFLOP/s is measured before and after the cases. ``on_case(key,
    step)``, when given, is called after timing a case and its return value stored as the row's
    ``extra`` (bench.py measures peak memory there)."""
    torch.manual_seed(0)
    x = torch.rand(n, 3, device=device)
    builders = field_cases(x)
    keys = list(builders) if cases is None else list(cases)
    unknown = [k for k in keys if k not in builders]
    if unknown:
        raise ValueError(f"unknown field case(s) {unknown}; known: {list(builders)}")
    info: Dict[str, object] = {}
    if baseline:
        info["matmul_gflops_before"] = matmul_gflops(reps, device)
    rows = []
    for key in keys:
        step = builders[key]()
        ts = timed(step, reps, device=device)
        med = statistics.median(ts)
        row = {"key": key, "case": CASE_NAMES[key], "points_per_s": n / med, "ms_per_step": med * 1e3,
               "best_points_per_s": n / min(ts)}
        if on_case is not None:
            row["extra"] = on_case(key, step)
        rows.append(row)
        del step
    if baseline:
        info["matmul_gflops_after"] = matmul_gflops(reps, device)
    info.update({
        "points_per_step": n,
        "repetitions": reps,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "results": rows,
    })
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer points and repetitions (well under a minute)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--points", type=int, default=None, help="points per step (default 2^18, quick 2^16)")
    ap.add_argument("--device", default="cpu", help="torch device (default cpu)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.points or (1 << 16 if args.quick else 1 << 18)
    reps = 3 if args.quick else 5
    info = run_fields(n, reps, args.device)
    rows = info["results"]
    gflops_before, gflops_after = info["matmul_gflops_before"], info["matmul_gflops_after"]
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print(f"points/step {n}, median of {reps} after a warm-up, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), device {args.device}")
    print(f"float32 1024^2 matmul: {gflops_before:.1f} GFLOP/s before, {gflops_after:.1f} after")
    print(f"{'case':36s} {'points/s':>12s} {'best':>12s} {'ms/step':>9s}")
    for r in rows:
        print(f"{r['case']:36s} {r['points_per_s']:12,.0f} {r['best_points_per_s']:12,.0f} {r['ms_per_step']:9.1f}")


if __name__ == "__main__":
    main()
