#!/usr/bin/env python
"""One command for a GPU machine: the GPU tests, the fast paths against the eager one, the main
job, the neus-blender preset on lego and bench.py --quick, in at most --budget-s (8 minutes).

    python scripts/gpu_check.py                    # on a CUDA machine
    python scripts/gpu_check.py --dry-run          # the plan and the time limits, nothing run
    python scripts/gpu_check.py --cpu-smoke        # the same plumbing on a CPU at tiny sizes (tests)

Progress goes to stderr, one line per part; at the end stdout gets ONE JSON line of figures, also
written to --out (default exp/gpu_check/gpu_check.json). Each part runs in its own process with
its own time limit (cut to what is left of the budget), so a crash or a hang costs only that part;
the JSON says for every part whether it ran, failed, timed out or was skipped and why.

Parts, in order (``--parts`` picks some):

- ``env``: device, torch / CUDA / Triton / Lightning versions, nvcc, which optional libraries
  are usable (``utils.backends``) and which requirements do not import;
- ``nerfacc_build``: nerfacc builds its CUDA extension on first use (nvcc, minutes the first
  time; cached in exp/gpu_check/torch_extensions for the next run);
- ``tests``: the dispatch and parity tests (tests/test_backends*.py, the nerfacc parity test):
  real tiny-cuda-nn / Triton / nerfacc against the PyTorch reference where installed;
- ``parity``: the same comparisons at a preset's size, as numbers (largest differences) with the
  time of a hash-grid forward + backward per kernel;
- ``speed:<variant>``: neus-blender on lego, training steps/s with the eager PyTorch path
  (``torch``), the default (``auto``: tiny-cuda-nn if installed, else Triton, and nerfacc) and each
  kernel forced; all hash-grid levels active (the cost of most of a run);
- ``main_job``: ``launch.py --config configs/neus-synthetic.yaml --train`` (the README's main job)
  on CUDA: wall time and its test metrics;
- ``blender``: neus-blender on lego for --blender-steps steps, then its test metrics on 8 views;
- ``bench``: ``scripts/bench.py --quick --json`` on CUDA, a selection of its figures;
- ``ttq``: time to 25 / 28 / 30 dB of the main job on CUDA, if budget is left.

Carried wheels: a machine without internet gets the Python packages the toolkit needs beyond
PyTorch, Triton and Lightning as wheels in the git-ignored folder ``.whl/`` (or --wheels DIR):
they are installed with ``pip install --no-index --no-deps --target`` into a temporary folder put
on PYTHONPATH for every part. tiny-cuda-nn has no wheel on PyPI (a wheel built for the machine's
CUDA can be carried); nerfacc's PyPI wheel is pure Python and compiles its kernels on first use.
Without them those parts report what is missing and the rest runs on PyTorch / Triton.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
RESULT_MARK = "GPU_CHECK_RESULT "

# (part, time limit in seconds): the limits sum to more than the budget; later parts get what is
# left, and a part with less than MIN_PART_S left is skipped
PARTS: List[Tuple[str, float]] = [
    ("env", 40), ("nerfacc_build", 100), ("tests", 90), ("parity", 45),
    ("speed:torch", 60), ("speed:auto", 60), ("speed:triton", 60), ("speed:tcnn", 60),
    ("main_job", 130), ("blender", 90), ("bench", 100), ("ttq", 120),
]
MIN_PART_S = 15.0
BUDGET_S = 480.0

# modules of requirements.txt (and test needs) beyond torch / lightning, to report what is missing
REQUIRED_MODULES = ["omegaconf", "numpy", "scipy", "cv2", "imageio", "imageio_ffmpeg", "trimesh", "networkx",
                    "PIL", "mcubes", "fast_simplification", "xatlas", "embreex", "tensorboard", "pytest", "pycolmap"]

TEST_FILES = ["tests/test_backends.py", "tests/test_backends_parity.py", "tests/test_rendering_nerfacc_parity.py",
              "tests/test_backends_dispatch.py"]
# the dispatch tests' whole-run cases run on the CPU (stand-ins): CI covers them
TEST_DESELECT = "not every_preset and not kernel_paths"

# overrides that make every kernel-capable part PyTorch (the eager reference)
EAGER = ["model.backend=torch", "model.geometry.xyz_encoding.inner.backend=torch"]
ALL_LEVELS = ["model.geometry.xyz_encoding.inner.start_level=16"]
TINY_SCENE = dict(resolution=24, n_train=6, n_val=2, n_test=3, gt_mesh_resolution=48, seed=3)
TINY_TRAIN = ["system.train_num_rays=128", "system.target_samples_per_step=8192", "model.grid.resolution=16",
              "model.grid.warmup_steps=2", "model.grid.update_every=2", "model.eval_chunk_size=4096",
              "system.train_num_rays_min=32", "model.num_samples_per_ray=64", "export.resolution=32",
              "system.eval_mesh_points=500", "system.save_video=false", "dataset.n_predict_views=1"]


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# carried wheels
# ------------------------------------------------------------------------------------------------
def install_wheels(wheel_dir: Path, target: Path, timeout: float = 120) -> Dict[str, Any]:
    """pip-install every wheel in ``wheel_dir`` (no index, no dependencies) into ``target``."""
    wheels = sorted(wheel_dir.glob("*.whl")) if wheel_dir.is_dir() else []
    if not wheels:
        return {"dir": str(wheel_dir), "installed": [], "note": "no carried wheels"}
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
           "--no-cache-dir", "--upgrade", "--target", str(target), *map(str, wheels)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    out = {"dir": str(wheel_dir), "installed": [w.name for w in wheels]}
    if proc.returncode != 0:
        out["error"] = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return out


# ------------------------------------------------------------------------------------------------
# the parent: plan, run each part in a child process, collect
# ------------------------------------------------------------------------------------------------
class Runner:
    """Runs parts as child processes within a total budget and collects their JSON results."""

    def __init__(self, budget_s: float, env: Dict[str, str], log_dir: Path, child_args: List[str]):
        self.deadline = time.monotonic() + budget_s
        self.env = env
        self.log_dir = log_dir
        self.child_args = child_args
        self.status: Dict[str, Dict[str, Any]] = {}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, limit: float, cmd: Optional[List[str]] = None) -> Optional[Dict[str, Any]]:
        """Run part ``name`` (or the command ``cmd``) for at most ``limit`` s (less if the budget
        ends first). Returns its result, or None when it failed, timed out or was skipped."""
        limit = min(limit, self.left() - 2.0)
        if limit < MIN_PART_S:
            self.status[name] = {"status": "skipped", "reason": f"budget: {max(self.left(), 0):.0f} s left"}
            log(f"{name}: skipped (budget)")
            return None
        cmd = cmd or [sys.executable, str(Path(__file__).resolve()), "--child", name, *self.child_args]
        log_path = self.log_dir / f"{name.replace(':', '_')}.log"
        log(f"{name}: running (limit {limit:.0f} s, log {log_path})")
        started = time.monotonic()
        with open(log_path, "w") as log_file:
            proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=subprocess.PIPE, stderr=log_file, text=True,
                                    start_new_session=True)
            try:
                stdout, _ = proc.communicate(timeout=limit)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)  # the part and anything it started
                proc.communicate()
                self.status[name] = {"status": "timeout", "limit_s": round(limit, 1)}
                log(f"{name}: timed out after {limit:.0f} s")
                return None
        took = round(time.monotonic() - started, 1)
        result = None
        for line in stdout.splitlines():
            if line.startswith(RESULT_MARK):
                result = json.loads(line[len(RESULT_MARK):])
        if proc.returncode != 0 or result is None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
            self.status[name] = {"status": "failed", "rc": proc.returncode, "s": took, "log_tail": tail}
            log(f"{name}: failed (exit {proc.returncode}); see {log_path}")
            return None
        self.status[name] = {"status": result.pop("_status", "ok"), "s": took}
        if "_reason" in result:
            self.status[name]["reason"] = result.pop("_reason")
        log(f"{name}: {self.status[name]['status']} in {took:.0f} s")
        return result


def find_data(candidates: Sequence[Path]) -> Optional[Path]:
    for c in candidates:
        if (c / "transforms_train.json").is_file():
            return c.resolve()
    return None


def default_data_candidates() -> List[Path]:
    return [REPO.parent / "shared" / "data" / "lego", REPO.parents[1] / "shared" / "data" / "lego",
            REPO / "shared" / "data" / "lego", REPO / "load" / "nerf_synthetic" / "lego"]


def git_commit() -> Optional[str]:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip() or None
    except Exception:
        return None


def plan(args: argparse.Namespace) -> List[Tuple[str, float]]:
    wanted = None if args.parts is None else set(args.parts.split(","))
    unknown = (wanted or set()) - {p for p, _ in PARTS}
    if unknown:
        raise SystemExit(f"error: --parts: unknown part(s) {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(p for p, _ in PARTS)}")
    return [(p, limit) for p, limit in PARTS if wanted is None or p in wanted]


def skip_reason(name: str, results: Dict[str, Any], args: argparse.Namespace) -> Optional[str]:
    """Why part ``name`` need not run, from the parts before it (None: run it)."""
    libs = (results.get("env") or {}).get("libraries", {})
    if name == "nerfacc_build" and libs.get("nerfacc"):
        return libs["nerfacc"]
    if name == "speed:tcnn" and libs.get("tcnn"):
        return libs["tcnn"]
    if name == "speed:triton":
        if libs.get("triton"):
            return libs["triton"]
        if results.get("env") and libs.get("tcnn"):
            return "auto already takes triton (no tinycudann): see speed:auto"
    if name == "ttq" and args.cpu_smoke:
        return "not in --cpu-smoke"
    return None


def summarize(results: Dict[str, Any], status: Dict[str, Any]) -> Dict[str, Any]:
    """The figures for the JSON line: speed-ups of the fast paths over the eager one."""
    speed = {k.split(":", 1)[1]: v for k, v in results.items() if k.startswith("speed:") and v}
    out: Dict[str, Any] = {"speed": speed}
    eager = (speed.get("torch") or {}).get("steps_per_s")
    if eager:
        for name, fig in speed.items():
            if name != "torch" and fig.get("steps_per_s"):
                out[f"speedup_{name}_vs_eager"] = round(fig["steps_per_s"] / eager, 3)
    return out


def parent(args: argparse.Namespace) -> int:
    out_path = Path(args.out)
    work = out_path.parent
    work.mkdir(parents=True, exist_ok=True)
    log_dir = work / "logs"
    log_dir.mkdir(exist_ok=True)
    parts = plan(args)
    started = time.monotonic()
    report: Dict[str, Any] = {"gpu_check": 1, "mode": "cpu-smoke" if args.cpu_smoke else "gpu", "commit": git_commit(),
                              "python": platform.python_version(), "budget_s": args.budget_s}
    if args.dry_run:
        report.update(parts={p: {"status": "planned", "limit_s": limit} for p, limit in parts}, dry_run=True)
        return emit(report, out_path, started)

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    site = Path(tempfile.mkdtemp(prefix="gpu_check_site_"))
    wheels = install_wheels(Path(args.wheels), site)
    report["wheels"] = wheels
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("TORCH_EXTENSIONS_DIR", str((work / "torch_extensions").resolve()))
    env.setdefault("MAX_JOBS", str(os.cpu_count() or 4))
    data = find_data([Path(args.data)] if args.data else default_data_candidates())
    if data is None:
        log("no lego scene found (--data): the speed and blender parts will fail")
    child_args = ["--work", str(work.resolve())]
    if data is not None:
        child_args += ["--data", str(data)]
    if args.cpu_smoke:
        child_args.append("--cpu-smoke")
    child_args += ["--blender-steps", str(args.blender_steps), "--speed-steps", str(args.speed_steps)]
    runner = Runner(args.budget_s - (time.monotonic() - started), env, log_dir, child_args)
    results: Dict[str, Any] = {}
    for name, limit in parts:
        reason = skip_reason(name, results, args)
        if reason is not None:
            runner.status[name] = {"status": "skipped", "reason": reason}
            log(f"{name}: skipped ({reason})")
            continue
        results[name] = runner.run(name, limit)
        if name == "nerfacc_build" and not (results[name] or {}).get("built"):
            # no part may start nerfacc's (minutes-long) build again inside its own time limit
            env["NSR_DISABLE_BACKENDS"] = ",".join(filter(None, [env.get("NSR_DISABLE_BACKENDS"), "nerfacc"]))
    report.update({k: v for k, v in results.items() if v and not k.startswith("speed:")})
    report.update(summarize(results, runner.status))
    report["parts"] = runner.status
    report["data"] = str(data) if data is not None else None
    shutil.rmtree(site, ignore_errors=True)
    return emit(report, out_path, started)


def emit(report: Dict[str, Any], out_path: Path, started: float) -> int:
    report["wall_s"] = round(time.monotonic() - started, 1)
    line = json.dumps(report, separators=(",", ":"), default=str)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(line + "\n")
    print(line, flush=True)
    return 0


# ------------------------------------------------------------------------------------------------
# the children: one part each
# ------------------------------------------------------------------------------------------------
def child(name: str, args: argparse.Namespace) -> int:
    sys.path[:0] = [str(REPO), str(REPO / "scripts")]
    import torch

    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        return child_result({"_status": "skipped", "_reason": "this torch sees no CUDA device"})
    fn = CHILD_PARTS[name.split(":", 1)[0]]
    kwargs = {"variant": name.split(":", 1)[1]} if ":" in name else {}
    return child_result(fn(args, device, **kwargs))


def child_result(result: Dict[str, Any]) -> int:
    print(RESULT_MARK + json.dumps(result, default=str), flush=True)
    return 0


def part_env(args, device) -> Dict[str, Any]:
    import importlib.util

    import pytorch_lightning as pl
    import torch

    from utils import backends

    out: Dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda, "lightning": pl.__version__,
                           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
                           or platform.machine(), "cpu_count": os.cpu_count()}
    if device.type == "cuda":
        out["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    try:
        import triton

        out["triton"] = triton.__version__
    except Exception as err:
        out["triton"] = f"not importable ({type(err).__name__})"
    nvcc = shutil.which("nvcc")
    out["nvcc"] = nvcc
    if nvcc:
        ver = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
        out["nvcc_version"] = ver.splitlines()[-1] if ver else None
    # None: usable; else why not
    out["libraries"] = {name: backends.unavailable_reason(name) for name in backends.LIBRARIES}
    for name in ("nerfacc", "tcnn"):
        mod = backends.library(name)
        if mod is not None:
            out[f"{name}_version"] = getattr(mod, "__version__", "?")
    out["missing_modules"] = [m for m in REQUIRED_MODULES if importlib.util.find_spec(m) is None]
    return out


def part_nerfacc_build(args, device) -> Dict[str, Any]:
    from utils import backends

    t = time.perf_counter()
    reason = backends.kernel_unavailable_reason("nerfacc")
    return {"built": reason is None, "reason": reason, "s": round(time.perf_counter() - t, 1)}


def part_tests(args, device) -> Dict[str, Any]:
    import pytest

    junit = Path(args.work) / "tests.xml"
    files = TEST_FILES if not args.cpu_smoke else ["tests/test_backends.py"]
    code = pytest.main(["-q", "-p", "no:cacheprovider", "-k", TEST_DESELECT, f"--junitxml={junit}", *files])
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "exit_code": int(code)}
    failures, skips = [], {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None:
            counts["failed"] += 1
            failures.append(name)
        elif case.find("error") is not None:
            counts["errors"] += 1
            failures.append(name)
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
            msg = case.find("skipped").get("message", "")
            skips[msg] = skips.get(msg, 0) + 1
        else:
            counts["passed"] += 1
    counts.update(failures=failures, skip_reasons=skips)
    if counts["failed"] or counts["errors"]:
        counts["_status"] = "failed"
    return counts


def _grid_step_time(enc, x, w, reps: int, device) -> float:
    """Median seconds of a hash-grid forward + backward: features and jacobian (as NeuS's analytic
    normals use it) where the kernel has a jacobian, else features only (tiny-cuda-nn)."""
    from measure import timed

    def step():
        enc.table.grad = None
        if enc.has_explicit_jacobian(x):
            f, j = enc.forward_with_jacobian(x)
            loss = (f * w).sum() + j.sum()
        else:
            loss = (enc(x) * w).sum()
        loss.backward()

    ts = timed(step, reps, warmup=2, device=device)
    return sorted(ts)[len(ts) // 2]


def part_parity(args, device) -> Dict[str, Any]:
    """Largest differences of the kernel paths from PyTorch at a preset's size, and timings."""
    import torch

    import models.registered  # noqa: F401  (registers the encodings)
    from models import encodings
    from utils import backends

    if device.type != "cuda":
        return {"_status": "skipped", "_reason": "needs CUDA (the CPU checks are the tests)"}
    cfg = {"n_levels": 16, "n_features_per_level": 2, "log2_hashmap_size": 19, "base_resolution": 32,
           "per_level_scale": 1.3195079108}
    n = 1 << 18
    x = torch.rand(n, 3, device=device)
    ref = encodings.make("hashgrid", dict(cfg, backend="torch")).to(device)
    with torch.no_grad():
        ref.table.uniform_(-1, 1)
    out: Dict[str, Any] = {"points": n, "grid": "16 levels x 2, 2^19", "hashgrid_fwd_bwd_ms": {}}
    w = torch.randn(n, ref.n_output_dims, device=device)
    xr = x.clone().requires_grad_()
    f_ref = ref(xr)
    g_ref = torch.autograd.grad((f_ref * w).sum(), (xr, ref.table))
    _, j_ref = ref.forward_with_jacobian(x)
    out["hashgrid_fwd_bwd_ms"]["torch"] = round(_grid_step_time(ref, x, w, 10, device) * 1e3, 3)
    for kernel in ("triton", "tcnn"):
        if backends.kernel_unavailable_reason(kernel) is not None:
            out[kernel] = {"skipped": backends.kernel_unavailable_reason(kernel)}
            continue
        enc = encodings.make("hashgrid", dict(cfg, backend=kernel)).to(device)
        enc.load_state_dict(ref.state_dict())
        try:
            xk = x.clone().requires_grad_()
            f = enc(xk)
            g = torch.autograd.grad((f * w).sum(), (xk, enc.table))
            fig = {"features_max_abs": (f - f_ref).abs().max().item(),
                   "x_grad_max_abs": (g[0] - g_ref[0]).abs().max().item(),
                   "table_grad_max_abs": (g[1] - g_ref[1]).abs().max().item(),
                   "table_grad_ref_max": g_ref[1].abs().max().item()}
            if kernel == "triton":
                _, j = enc.forward_with_jacobian(x)
                fig["jacobian_max_abs"] = (j - j_ref).abs().max().item()
                fig["jacobian_ref_max"] = j_ref.abs().max().item()
            out[kernel] = fig
            out["hashgrid_fwd_bwd_ms"][kernel] = round(_grid_step_time(enc, x, w, 10, device) * 1e3, 3)
        except Exception as err:
            out[kernel] = {"error": f"{type(err).__name__}: {err}"[:300]}
            out["_status"] = "failed"
    out["nerfacc"] = _nerfacc_parity(device) if backends.kernel_unavailable_reason("nerfacc") is None else {
        "skipped": backends.kernel_unavailable_reason("nerfacc")}
    return out


def _nerfacc_parity(device) -> Dict[str, Any]:
    import torch

    from models.rendering import OccupancyGrid, ray_marching, render_weight_from_density

    g = torch.Generator().manual_seed(0)
    grid = OccupancyGrid([-1.5] * 3 + [1.5] * 3, resolution=128).to(device)
    grid.set_binary((torch.rand(grid.binaries.shape, generator=g) < 0.2).to(device))
    o = (torch.randn(8192, 3, generator=g) * 3).to(device)
    d = torch.nn.functional.normalize(-o + torch.randn(8192, 3, generator=g).to(device) * 0.3, dim=-1)
    kw = dict(grid=grid, render_step_size=3 ** 0.5 * 3 / 1024)
    a = ray_marching(o, d, backend="torch", **kw)
    b = ray_marching(o, d, backend="nerfacc", **kw)
    counts_a = torch.bincount(a[0], minlength=8192)
    counts_b = torch.bincount(b[0], minlength=8192)
    same = (counts_a == counts_b).float().mean().item()
    sig = torch.rand(a[0].shape[0], generator=g).to(device) * 10
    wa = render_weight_from_density(a[1], a[2], sig, a[0], 8192, backend="torch")[0]
    wb = render_weight_from_density(a[1], a[2], sig, a[0], 8192, backend="nerfacc")[0]
    return {"rays_with_same_sample_count": same, "samples_torch": int(a[0].numel()), "samples_nerfacc": int(b[0].numel()),
            "weights_max_abs": (wa - wb).abs().max().item()}


def _preset_overrides(args, device, preset: str) -> List[str]:
    """Data overrides: lego (or the tiny embedded scene in --cpu-smoke)."""
    if args.cpu_smoke:
        scene = _tiny_scene(args)
        if preset == "neus-synthetic":
            return [f"dataset.root_dir={scene}"] + [f"dataset.{k}={v}" for k, v in TINY_SCENE.items()] + TINY_TRAIN
        return [f"dataset.root_dir={scene}", f"dataset.img_wh=[{TINY_SCENE['resolution']},{TINY_SCENE['resolution']}]",
                *TINY_TRAIN]
    if preset == "neus-synthetic":
        return []
    if args.data is None:
        raise SystemExit("no lego scene found: pass --data PATH/TO/nerf_synthetic/lego")
    return [f"dataset.root_dir={args.data}"]


def _tiny_scene(args) -> str:
    from datasets.synthetic import SyntheticScene
    from utils.config import parse_component

    root = Path(args.work) / "tiny_scene"
    if not (root / "transforms_train.json").is_file():
        SyntheticScene(parse_component(SyntheticScene.Config, {**TINY_SCENE, "root_dir": str(root)}))
    return str(root)


def _kernel_choices(system, device) -> Dict[str, str]:
    """Which implementation each kernel-capable module takes for tensors on ``device``."""
    import torch

    from models.rendering import uses_nerfacc

    out = {"model.backend": "nerfacc" if uses_nerfacc(system.model.cfg.backend, device) else "torch"}
    probe = torch.empty(1, 3, device=device)
    for name, module in system.model.named_modules():
        if hasattr(module, "backend_for") and hasattr(module, "table"):
            out[name] = module.backend_for(probe)
    return out


def part_speed(args, device, variant: str) -> Dict[str, Any]:
    """neus-blender training steps/s with one kernel choice (bench.py's timing)."""
    import bench

    preset = "neus-blender"
    overrides = _preset_overrides(args, device, preset)
    if not args.cpu_smoke:
        overrides += ALL_LEVELS
    if variant in ("tcnn", "triton"):
        from utils import backends

        reason = backends.kernel_unavailable_reason(variant)
        if reason is not None:
            return {"_status": "skipped", "_reason": reason}
    if variant == "torch":
        overrides += EAGER
    elif variant in ("tcnn", "triton"):
        overrides += [f"model.geometry.xyz_encoding.inner.backend={variant}"]
    warmup, steps = (1, 2) if args.cpu_smoke else (max(10, args.speed_steps // 3), args.speed_steps)
    with tempfile.TemporaryDirectory(prefix="gpu_check_speed_") as tmp:
        fig, parts = bench.bench_train(preset, overrides, device, warmup, steps, Path(tmp), 3, 1)
        fig["kernels"] = _kernel_choices(parts.system, device)
    fig["variant"] = variant
    fig["overrides"] = [o for o in overrides if not o.startswith("dataset.")]
    return fig


def _launch(args, argv: List[str]) -> Tuple[int, float, Path]:
    import launch

    exp = Path(args.work) / "exp"
    t = time.perf_counter()
    code = launch.main(["--exp-dir", str(exp), "--runs-dir", str(Path(args.work) / "runs"), *argv])
    return code, time.perf_counter() - t, exp


def _metrics(exp: Path, name_glob: str) -> Dict[str, Any]:
    runs = sorted(exp.glob(f"{name_glob}/*/save"), key=lambda p: p.stat().st_mtime)
    if not runs:
        return {}
    files = sorted(runs[-1].glob("test_metrics_step*.json"))
    if not files:
        return {}
    m = json.loads(files[-1].read_text())
    out = dict(m.get("mean", {}))
    geo = m.get("geometry") or {}
    out.update({k: geo[k] for k in ("chamfer", "fscore") if k in geo})
    out["metrics_file"] = str(files[-1])
    return out


def part_main_job(args, device) -> Dict[str, Any]:
    accel = ["--accelerator", "cpu"] if args.cpu_smoke else ["--accelerator", "gpu", "--devices", "1"]
    extra = _preset_overrides(args, device, "neus-synthetic")
    if args.cpu_smoke:
        extra += ["trainer.max_steps=4", "trainer.val_check_interval=2"]
    code, wall, exp = _launch(args, ["--config", "configs/neus-synthetic.yaml", "--train", *accel, "tag=gpu-check",
                                     *extra])
    out = {"exit_code": code, "wall_s": round(wall, 1), **_metrics(exp, "neus-synthetic")}
    if code != 0:
        out["_status"] = "failed"
    return out


def part_blender(args, device) -> Dict[str, Any]:
    accel = ["--accelerator", "cpu"] if args.cpu_smoke else ["--accelerator", "gpu", "--devices", "1"]
    steps = 4 if args.cpu_smoke else args.blender_steps
    extra = _preset_overrides(args, device, "neus-blender") + [
        f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}", "dataset.max_images_val=1",
        "dataset.max_images_test=8", f"checkpoint.every_n_train_steps={steps}", "system.save_video=false"]
    if not args.cpu_smoke:
        extra.append("export.resolution=256")
    code, wall, exp = _launch(args, ["--config", "configs/neus-blender.yaml", "--train", *accel, "tag=gpu-check",
                                     *extra])
    out = {"exit_code": code, "steps": steps, "wall_s": round(wall, 1), **_metrics(exp, "neus-blender-*")}
    if code != 0:
        out["_status"] = "failed"
    return out


BENCH_KEYS = ["matmul_gflops", "field_hashgrid_pts_per_s", "field_triplane_pts_per_s", "render_march_composite_s",
              "render_field_s", "train_steps_per_s", "train_samples_per_s", "render_val_rays_per_s", "mesh_256_s",
              "bench_wall_s"]


def part_bench(args, device) -> Dict[str, Any]:
    cmd = [sys.executable, str(REPO / "scripts" / "bench.py"), "--json", "--device", str(device)]
    if args.cpu_smoke:
        cmd += ["--tiny", "--scene-dir", _tiny_scene(args), "--mesh-res", "32"]
    else:
        cmd.append("--quick")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    sys.stderr.write(proc.stderr[-20000:])
    if proc.returncode != 0:
        return {"_status": "failed", "exit_code": proc.returncode}
    r = json.loads(proc.stdout)
    return {k: r.get(k) for k in BENCH_KEYS}


def part_ttq(args, device) -> Dict[str, Any]:
    """Time to 25 / 28 / 30 dB test PSNR of the main job with the default (fast) path."""
    import bench

    with tempfile.TemporaryDirectory(prefix="gpu_check_ttq_") as tmp:
        fig, _ = bench.time_to_quality([], device, [25.0, 28.0, 30.0], every=50, n_images=4, max_steps=850, seed=42,
                                       save_dir=Path(tmp))
    fig.pop("curve", None)
    return fig


CHILD_PARTS = {"env": part_env, "nerfacc_build": part_nerfacc_build, "tests": part_tests, "parity": part_parity,
               "speed": part_speed, "main_job": part_main_job, "blender": part_blender, "bench": part_bench,
               "ttq": part_ttq}


# ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--out", default=str(REPO / "exp" / "gpu_check" / "gpu_check.json"),
                   help="where the JSON line is written too (logs beside it)")
    p.add_argument("--budget-s", type=float, default=BUDGET_S, help=f"total time limit (default {BUDGET_S:.0f})")
    p.add_argument("--parts", default=None, help="comma-separated parts to run (default: all)")
    p.add_argument("--data", default=None, help="the lego scene (NeRF-synthetic layout); default: ../shared/data/lego")
    p.add_argument("--wheels", default=str(REPO / ".whl"), help="folder of carried wheels (default .whl/)")
    p.add_argument("--blender-steps", type=int, default=600, help="training steps of the blender part")
    p.add_argument("--speed-steps", type=int, default=40, help="timed training steps per speed variant")
    p.add_argument("--cpu-smoke", action="store_true", help="run the plumbing on the CPU at tiny sizes")
    p.add_argument("--dry-run", action="store_true", help="print the plan as the JSON line; run nothing")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child is not None:
        return child(args.child, args)
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
