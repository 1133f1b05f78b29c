"""scripts/gpu_check.py without a GPU: the plan, the time limits, carried wheels, and (slow) its
parts running on the CPU at tiny sizes."""
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import scripts.gpu_check as gc

REPO = Path(__file__).resolve().parents[1]


def test_dry_run_prints_one_json_line_and_writes_it(tmp_path, capsys):
    out = tmp_path / "r" / "check.json"
    assert gc.main(["--dry-run", "--out", str(out), "--parts", "env,tests,speed:auto"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    assert report == json.loads(out.read_text())
    assert list(report["parts"]) == ["env", "tests", "speed:auto"]
    assert all(p["status"] == "planned" for p in report["parts"].values())
    assert sum(limit for _, limit in gc.PARTS) > gc.BUDGET_S == report["budget_s"] == 480


def test_unknown_part_is_refused():
    with pytest.raises(SystemExit, match="unknown part.*speed:jax"):
        gc.main(["--dry-run", "--parts", "env,speed:jax"])


def test_parts_get_their_limit_and_what_is_left_of_the_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(gc, "MIN_PART_S", 0.2)
    runner = gc.Runner(budget_s=60, env=dict(__import__("os").environ), log_dir=tmp_path, child_args=[])
    py = sys.executable
    ok = runner.run("ok", 30, [py, "-c", f"print('noise'); print({gc.RESULT_MARK!r} + '{{\"x\": 1}}')"])
    assert ok == {"x": 1} and runner.status["ok"]["status"] == "ok"
    assert runner.run("slow", 0.5, [py, "-c", "import time; time.sleep(30)"]) is None
    assert runner.status["slow"] == {"status": "timeout", "limit_s": 0.5}
    assert runner.run("bad", 30, [py, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"]) is None
    assert runner.status["bad"]["status"] == "failed" and runner.status["bad"]["log_tail"] == ["boom"]
    runner.deadline = 0.0  # the budget is spent
    assert runner.run("late", 30, [py, "-c", "pass"]) is None
    assert runner.status["late"]["status"] == "skipped"


def test_skips_follow_what_env_found():
    args = gc.build_parser().parse_args([])
    env = {"env": {"libraries": {"nerfacc": "nerfacc is not installed", "tcnn": "tinycudann is not installed",
                                 "triton": None, "torchmcubes": None}}}
    assert gc.skip_reason("nerfacc_build", env, args) == "nerfacc is not installed"
    assert gc.skip_reason("speed:tcnn", env, args) == "tinycudann is not installed"
    assert "auto already takes triton" in gc.skip_reason("speed:triton", env, args)
    assert gc.skip_reason("speed:torch", env, args) is None
    env["env"]["libraries"]["tcnn"] = None
    assert gc.skip_reason("speed:triton", env, args) is None


def test_summary_compares_each_fast_path_with_the_eager_one():
    s = gc.summarize({"speed:torch": {"steps_per_s": 10.0}, "speed:auto": {"steps_per_s": 25.0},
                      "speed:tcnn": None}, {})
    assert s["speedup_auto_vs_eager"] == 2.5 and "speedup_tcnn_vs_eager" not in s


def test_carried_wheels_are_installed_into_a_target(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "carried_probe-1.0-py3-none-any.whl", "w") as z:
        z.writestr("carried_probe/__init__.py", "VALUE = 42\n")
        info = "carried_probe-1.0.dist-info"
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: carried-probe\nVersion: 1.0\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    target = tmp_path / "site"
    out = gc.install_wheels(wheels, target)
    assert out["installed"] == ["carried_probe-1.0-py3-none-any.whl"] and "error" not in out
    probe = subprocess.run([sys.executable, "-c", "import carried_probe; print(carried_probe.VALUE)"],
                           env={"PYTHONPATH": str(target)}, capture_output=True, text=True)
    assert probe.stdout.strip() == "42"
    assert gc.install_wheels(tmp_path / "none", target)["installed"] == []


@pytest.mark.slow
def test_cpu_smoke_runs_its_parts(tmp_path):
    """The parts as children, on the CPU at tiny sizes: environment report and a speed variant."""
    out = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--cpu-smoke", "--out", str(out),
                           "--parts", "env,speed:torch", "--budget-s", "300"], cwd=REPO, capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["mode"] == "cpu-smoke"
    assert report["parts"]["env"]["status"] == "ok" and report["parts"]["speed:torch"]["status"] == "ok"
    assert set(report["env"]["libraries"]) == {"nerfacc", "tcnn", "triton", "torchmcubes"}
    speed = report["speed"]["torch"]
    assert speed["steps_per_s"] > 0 and speed["kernels"]["model.backend"] == "torch"
    assert "model.geometry.xyz_encoding.inner.backend=torch" in speed["overrides"]
