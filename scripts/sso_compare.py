#!/usr/bin/env python
"""Single-scene overfitting (EG3D's SSO experiment) as a tool: fit one scene with each geometry
representation under the same step or time budget and compare them.

    python scripts/sso_compare.py --steps 700
    python scripts/sso_compare.py --seconds 240 --steps 2000 --representations hashgrid triplane
    python scripts/sso_compare.py --steps 300 dataset.resolution=64 --out exp/sso-quick

Each representation is one ordinary training run of the toolkit (launch.py --train, then its
test: PSNR/SSIM on the test split, the mesh and, when the scene has a ground-truth surface,
Chamfer / F-score), started in a fresh process from --config (default
configs/neus-synthetic.yaml) with the representation's overrides of
``model.geometry.xyz_encoding.inner`` (see REPRESENTATIONS) plus the command's own ``key=value``
overrides, so runs differ only in the geometry encoding (and its regularizer). The run folders
are kept (--exp-dir, default exp/); tags are ``sso-<representation>``.

Per representation it reports: parameters (of the geometry encoding and of the whole model),
their bytes, the peak memory while training (resident set of the process, or the CUDA
allocator's peak on a GPU), the steps taken, the median time per training step (validation and
checkpoint steps excluded from the budget's clock), test PSNR / SSIM (and LPIPS when available)
and Chamfer / F-score. The table is printed and written as results.md and results.json in --out.

Budgets: --steps N sets trainer.max_steps (the schedules follow it). --seconds S stops each run
once S seconds of training steps have passed; the step cap is then --steps, or the config's
max_steps, so raise --steps when a fast representation would reach it before the time is up.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
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

from bench import cpu_model  # noqa: E402  (the machine description bench.py prints too)
from measure import read_status_kb, reset_peak_rss  # noqa: E402

INNER = "model.geometry.xyz_encoding.inner"

#: name -> (description, overrides of the config). Registered encodings: frequency, dense-grid,
#: hashgrid / progressive-hashgrid, triplane. The hash grid is the main preset's own.
REPRESENTATIONS: Dict[str, Dict[str, Any]] = {
    "frequency": {
        "what": "frequency-encoded MLP (6 bands, 3 x 128 hidden)",
        "overrides": [f"{INNER}.name=frequency", f"{INNER}.n_frequencies=6",
                      "model.geometry.mlp_network.n_neurons=128", "model.geometry.mlp_network.n_hidden_layers=3"],
    },
    "dense-grid": {
        "what": "dense voxel grid 64^3 x 8, TV 0.01",
        "overrides": [f"{INNER}.name=dense-grid", f"{INNER}.resolution=64", f"{INNER}.n_features=8",
                      "system.loss.lambda_tv=0.01"],
    },
    "hashgrid": {
        "what": "the config's (progressive) hash grid",
        "overrides": [],
    },
    "triplane": {
        "what": "EG3D tri-plane 3 x 128^2 x 16 (sum), TV 0.01",
        "overrides": [f"{INNER}.name=triplane", f"{INNER}.resolution=128", f"{INNER}.n_features=16",
                      f"{INNER}.aggregation=sum", "system.loss.lambda_tv=0.01"],
    },
}


# ------------------------------------------------------------------------------------------------
# child: one training run through launch.py, measured by a callback added to its Trainer
# ------------------------------------------------------------------------------------------------
def _probe_class():
    import torch

    from measure import StepClock

    class Probe(StepClock):
        """The step clock (with the time budget) plus parameter counts, the run's save folder and
        the peak memory of training."""

        def __init__(self, seconds: Optional[float], record: Dict[str, Any]):
            super().__init__(seconds=seconds)
            self.record = record

        def on_train_start(self, trainer, pl_module) -> None:
            model = pl_module.model
            enc = model.geometry.encoding
            self.record.update(
                encoding_params=sum(p.numel() for p in enc.parameters()),
                encoding_param_bytes=sum(p.numel() * p.element_size() for p in enc.parameters()),
                model_params=sum(p.numel() for p in model.parameters()),
                model_param_bytes=sum(p.numel() * p.element_size() for p in model.parameters()),
                encoding=type(getattr(enc, "inner", enc)).__name__,
                save_dir=str(pl_module.context.save_dir),
                run_dir=str(pl_module.context.save_dir.parent),
            )
            # measure the training's own peak, not the scene loading's
            self.record["rss_reset"] = reset_peak_rss()
            if pl_module.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            super().on_train_start(trainer, pl_module)

        def on_train_end(self, trainer, pl_module) -> None:
            kb = read_status_kb("VmHWM")
            cuda = pl_module.device.type == "cuda"
            self.record.update(
                steps=int(trainer.global_step),
                train_s=self.train_s,
                step_s=statistics.median(self.times[1:] or self.times) if self.times else None,
                peak_train_rss_mb=None if kb is None else kb / 1024,
                peak_train_cuda_mb=torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
            )

    return Probe


def child_main(spec_path: str) -> int:
    """Run launch.py in this process with a Probe among its callbacks; write the figures as JSON."""
    import launch

    spec = json.loads(Path(spec_path).read_text())
    record: Dict[str, Any] = {}
    code = launch.main(spec["argv"], extra_callbacks=[_probe_class()(spec["seconds"], record)])
    record["exit_code"] = code
    if code == 0 and "save_dir" in record:
        metrics = sorted(Path(record["save_dir"]).glob("test_metrics_step*.json"))
        if metrics:
            record["test_metrics_file"] = str(metrics[-1])
            record["test_metrics"] = json.loads(metrics[-1].read_text())
    Path(spec["result"]).write_text(json.dumps(record, indent=2))
    return code


# ------------------------------------------------------------------------------------------------
# parent
# ------------------------------------------------------------------------------------------------
def run_one(name: str, args: argparse.Namespace, overrides: List[str], workdir: Path) -> Dict[str, Any]:
    rep = REPRESENTATIONS[name]
    extra = [f"{k}={v}" for n, kv in (args.rep_set or []) if n == name for k, v in [kv.split("=", 1)]]
    # one device: the probe measures one process
    argv = ["--config", str(args.config), "--train", "--exp-dir", str(args.exp_dir), "--runs-dir", str(args.runs_dir),
            "--devices", "1", *rep["overrides"], *overrides, f"tag=sso-{name}", *extra]
    if args.device != "auto":
        argv += ["--accelerator", "gpu" if args.device.startswith("cuda") else args.device]
    result = workdir / f"{name}.json"
    spec = workdir / f"{name}.spec.json"
    spec.write_text(json.dumps({"argv": argv, "seconds": args.seconds, "result": str(result)}))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(spec)]
    log_path = workdir / f"{name}.log"
    t0 = time.perf_counter()
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(cmd, cwd=str(REPO_ROOT), stdout=log_file, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    record: Dict[str, Any] = json.loads(result.read_text()) if result.is_file() else {}
    record.update(representation=name, what=rep["what"], overrides=rep["overrides"] + extra, wall_s=wall,
                  exit_code=proc.returncode, log=str(log_path),
                  peak_process_rss_mb=usage.ru_maxrss / 1024)  # Linux: ru_maxrss in KB
    tm = record.get("test_metrics") or {}
    mean = tm.get("mean") or {}
    geo = tm.get("geometry") or {}
    record.update(test_psnr=_float(mean.get("psnr")), test_ssim=_float(mean.get("ssim")),
                  test_lpips=_float(mean.get("lpips")), chamfer=_float(geo.get("chamfer")),
                  fscore=_float(geo.get("fscore")), fscore_threshold=_float(geo.get("threshold")))
    if proc.returncode != 0:
        tail = log_path.read_text().splitlines()[-15:]
        record["error"] = "\n".join(tail)
    return record


def _float(v: Any) -> Optional[float]:
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _fmt(v: Any, fmt: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return fmt.format(v)


def markdown(results: Sequence[Dict[str, Any]], header: Dict[str, Any]) -> str:
    peak_kind = "CUDA" if header.get("gpu") else "RSS"
    lines = [
        f"# Single-scene overfitting: {header['config']} ({header['budget']})",
        "",
        f"Machine: CPU {header['cpu']}, GPU {header.get('gpu') or 'none'}, torch {header['torch']}, "
        f"{header['threads']} threads. Date {header['date']}. Overrides: {' '.join(header['overrides']) or 'none'}.",
        "",
        f"| representation | encoding params | model params | param MB | peak train MB ({peak_kind}) | steps | "
        f"ms/step | train s | test PSNR | SSIM | LPIPS | Chamfer | F-score |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        peak = r.get("peak_train_cuda_mb") if header.get("gpu") else r.get("peak_train_rss_mb")
        lines.append(
            f"| {r['representation']}: {r['what']} | {_fmt(r.get('encoding_params'), '{:,}')} | "
            f"{_fmt(r.get('model_params'), '{:,}')} | {_fmt((r.get('model_param_bytes') or 0) / 2**20 or None, '{:.2f}')} | "
            f"{_fmt(peak, '{:.0f}')} | {_fmt(r.get('steps'), '{}')} | "
            f"{_fmt(None if r.get('step_s') is None else r['step_s'] * 1e3, '{:.0f}')} | {_fmt(r.get('train_s'), '{:.1f}')} | "
            f"{_fmt(r.get('test_psnr'), '{:.2f}')} | {_fmt(r.get('test_ssim'), '{:.3f}')} | {_fmt(r.get('test_lpips'), '{:.3f}')} | "
            f"{_fmt(r.get('chamfer'), '{:.4f}')} | {_fmt(r.get('fscore'), '{:.3f}')} |"
        )
    failed = [r for r in results if r.get("exit_code") != 0]
    for r in failed:
        lines += ["", f"{r['representation']} failed (exit {r.get('exit_code')}); log: {r.get('log')}"]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=REPO_ROOT / "configs" / "neus-synthetic.yaml",
                   help="the preset every run starts from (default configs/neus-synthetic.yaml)")
    p.add_argument("--steps", type=int, default=None, help="training steps per representation (trainer.max_steps)")
    p.add_argument("--seconds", type=float, default=None, help="seconds of training steps per representation")
    p.add_argument("--representations", nargs="+", choices=list(REPRESENTATIONS), default=list(REPRESENTATIONS),
                   help="which to fit (default: all, in this order)")
    p.add_argument("--rep-set", nargs=2, action="append", metavar=("REPRESENTATION", "KEY=VALUE"),
                   help="an extra override for one representation only (repeatable)")
    p.add_argument("--device", default="auto", help="auto (what the machine has), cpu or cuda")
    p.add_argument("--exp-dir", type=Path, default=REPO_ROOT / "exp", help="run folders (default exp/)")
    p.add_argument("--runs-dir", type=Path, default=REPO_ROOT / "runs", help="TensorBoard logs (default runs/)")
    p.add_argument("--out", type=Path, default=None,
                   help="where results.json / results.md go (default exp/sso_compare/<date-time>)")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("override", nargs="*", help="key=value overrides of the config, for every representation")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.child is not None:
        return child_main(args.child)
    if args.steps is None and args.seconds is None:
        parser.error("give a budget: --steps N and/or --seconds S")
    if (args.steps is not None and args.steps < 1) or (args.seconds is not None and args.seconds <= 0):
        parser.error("--steps and --seconds must be positive")
    bad = [o for o in args.override if "=" not in o]
    if bad:
        parser.error(f"overrides are key=value, got {bad}")
    for name, kv in args.rep_set or []:
        if name not in REPRESENTATIONS or "=" not in kv:
            parser.error(f"--rep-set takes a representation ({', '.join(REPRESENTATIONS)}) and key=value")
    overrides = list(args.override)
    if args.steps is not None:
        overrides.append(f"trainer.max_steps={args.steps}")
    budget = " and ".join(b for b in (f"{args.steps} steps" if args.steps else "",
                                      f"{args.seconds:g} s of training" if args.seconds else "") if b)
    import torch

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = args.out or (args.exp_dir / "sso_compare" / stamp)
    out_dir.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu" else None
    header = {"config": str(args.config), "budget": budget, "date": stamp, "overrides": overrides,
              "torch": torch.__version__, "threads": torch.get_num_threads(), "gpu": gpu,
              "cpu": cpu_model()}
    results = []
    with tempfile.TemporaryDirectory(prefix="sso-") as tmp:
        for name in args.representations:
            print(f"[sso] {name}: training ({budget}) ...", file=sys.stderr, flush=True)
            r = run_one(name, args, overrides, Path(tmp))
            # keep the log next to the results
            log_copy = out_dir / f"{name}.log"
            log_copy.write_text(Path(r["log"]).read_text())
            r["log"] = str(log_copy)
            status = "ok" if r["exit_code"] == 0 else f"FAILED (exit {r['exit_code']}), see {log_copy}"
            print(f"[sso] {name}: {status}, {r.get('steps')} steps, test PSNR {_fmt(r.get('test_psnr'), '{:.2f}')}, "
                  f"Chamfer {_fmt(r.get('chamfer'), '{:.4f}')}", file=sys.stderr, flush=True)
            results.append(r)
    table = markdown(results, header)
    (out_dir / "results.json").write_text(json.dumps({"header": header, "results": results}, indent=2) + "\n")
    (out_dir / "results.md").write_text(table + "\n")
    print(json.dumps({"header": header, "results": results}, indent=2) if args.json else table)
    print(f"[sso] written: {out_dir / 'results.md'} and results.json", file=sys.stderr)
    return 0 if all(r["exit_code"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
