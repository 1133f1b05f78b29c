"""scripts/bench.py (the --tiny set: key set, types and the figures that can be known beforehand)
and scripts/sso_compare.py on the tiny scene with a budget of one step."""
import json
import math
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_SCENE

REPO = Path(__file__).resolve().parents[1]

QUICK_KEYS = ["device", "matmul_gflops", "field_hashgrid_pts_per_s", "field_triplane_pts_per_s", "render_field_s",
              "render_march_composite_s", "train_samples_per_s", "mesh_256_s"]


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@pytest.mark.slow
def test_bench_tiny_json(tiny_scene_dir, capsys):
    import scripts.bench as bench

    assert bench.SCENES["tiny"] == TINY_SCENE  # the tests' tiny scene is the bench's tiny scene
    code = bench.main(["--tiny", "--json", "--scene-dir", str(tiny_scene_dir), "--mesh-res", "32",
                       "--ttq", "--ttq-psnr", "0", "99", "--ttq-every", "1", "--ttq-max-steps", "2",
                       "--ttq-reps", "1", "--ttq-images", "1"])
    assert code == 0
    out = capsys.readouterr().out
    r = json.loads(out)  # stdout holds the JSON object and nothing else
    for key in QUICK_KEYS:
        assert key in r
    assert r["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    for key in ("matmul_gflops", "field_hashgrid_pts_per_s", "field_triplane_pts_per_s", "render_field_s",
                "render_march_composite_s", "train_samples_per_s", "train_steps_per_s", "render_val_rays_per_s"):
        assert is_number(r[key]) and r[key] > 0, key
    assert r["mesh_256_s"] is None and r["mesh_512_s"] is None  # not measured at --mesh-res 32
    assert is_number(r["mesh_32_s"]) and r["mesh"]["mesh_32"]["faces"] > 0
    assert r["field_dense_grid_pts_per_s"] is None  # not in the tiny set: null, not made up
    # the sizes the tiny set promises
    assert r["field_points"] == 1024 and r["render_rays"] == 256
    train = r["train"]["neus-synthetic"]
    assert train["timed_steps"] == 2 and train["val_image_rays"] == TINY_SCENE["resolution"] ** 2
    # steps/s is the inverse of the median step time
    assert train["steps_per_s"] == pytest.approx(1 / train["step_s"])
    m = r["machine"]
    assert m["torch"] == torch.__version__ and m["threads"] >= 1 and m["cpu"]
    # time to quality: PSNR >= 0 holds at the first evaluation (step 1), 99 dB is never reached
    assert r["ttq_0_steps"] == 1 and r["ttq_0_s"] > 0
    assert r["ttq_99_steps"] is None and r["ttq_99_s"] is None
    curve = r["ttq"][0]["curve"]
    assert [c["step"] for c in curve] == [1, 2]
    assert curve[1]["train_s"] > curve[0]["train_s"] > 0


def test_bench_table_names_the_machine():
    import scripts.bench as bench

    fake = {"mode": "quick", "device": "cpu", "reps": 3, "bench_wall_s": 1.0,
            "machine": {"cpu": "Test CPU 9000", "cpu_count": 2, "gpu": None, "threads": 2, "torch": "9.9",
                        "lightning": "2.x", "python": "3.11"},
            "matmul_gflops": 100.0, "matmul_gflops_after": 90.0, "field_points": 65536,
            "field_hashgrid_pts_per_s": 250000.0, "render_rays": 4096, "render_samples": 1000,
            "render_march_composite_s": 0.05, "render_field_s": 0.2, "render_core_peak_mb": None, "train": {},
            "mesh": {"mesh_256": {"s": 1.5, "faces": 10, "peak_mb": 12.0}}, "mesh_model": "neus-synthetic after 5 steps",
            "rss_baseline_mb": 321.0}
    table = bench.format_table(fake)
    assert "Test CPU 9000" in table and "torch 9.9" in table and "2 torch threads" in table
    assert "250,000 points/s" in table and "50.0 ms" in table and "1.50 s (10 faces)" in table
    assert "321 MB resident" in table and "neus-synthetic after 5 steps" in table


def test_time_to_quality_median_counts_misses_as_slowest():
    from scripts.bench import median_not_reached_last as med

    assert med([300, None, 100]) == 300  # sorted: 100, 300, never
    assert med([None, None, 100]) is None  # most runs never got there
    assert med([100, 200]) == 150 and med([100, None]) is None and med([]) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_bench_cuda_without_cuda_is_refused():
    import scripts.bench as bench

    with pytest.raises(SystemExit, match="CUDA"):
        bench.pick_device("cuda")
    assert bench.pick_device("auto").type == "cpu"


@pytest.mark.slow
def test_sso_compare_tiny(tmp_path, tiny_scene_dir, capsys):
    import scripts.sso_compare as sso

    overrides = [f"dataset.root_dir={tiny_scene_dir}"] + [f"dataset.{k}={v}" for k, v in TINY_SCENE.items()] + [
        "trainer.enable_progress_bar=false", "export.resolution=32", "export.texture.size=64", "export.preview.frames=4", "export.preview.size=32", "system.eval_mesh_points=2000",
        "system.train_num_rays=128", "model.grid.resolution=16", "system.save_video=false",
        "checkpoint.every_n_train_steps=2", "trainer.val_check_interval=2"]
    out = tmp_path / "out"
    # a time budget that runs out after the first step, under a step cap of 3
    code = sso.main(["--seconds", "1e-6", "--steps", "3", "--representations", "triplane", "frequency",
                     "--exp-dir", str(tmp_path / "exp"), "--runs-dir", str(tmp_path / "runs"), "--out", str(out),
                     "--device", "cpu", *overrides])
    assert code == 0
    table = capsys.readouterr().out
    data = json.loads((out / "results.json").read_text())
    assert (out / "results.md").read_text().strip() == table.strip()
    by_name = {r["representation"]: r for r in data["results"]}
    assert list(by_name) == ["triplane", "frequency"]
    tri, freq = by_name["triplane"], by_name["frequency"]
    # parameters counted independently: 3 planes of 128^2 x 16; the frequency encoding has none
    assert tri["encoding_params"] == 3 * 128 * 128 * 16 and tri["encoding_param_bytes"] == 4 * 3 * 128 * 128 * 16
    assert freq["encoding_params"] == 0 and freq["model_params"] > 0
    # the rest differs only by the geometry MLP (by hand: weights + biases + one weight-norm gain per
    # output row): frequency 39 -> 128 -> 128 -> 128 -> 14, tri-plane 19 -> 64 -> 14
    def mlp(sizes):
        return sum(a * b + 2 * b for a, b in zip(sizes[:-1], sizes[1:]))

    assert freq["model_params"] - (tri["model_params"] - tri["encoding_params"]) == \
        mlp([39, 128, 128, 128, 14]) - mlp([19, 64, 14])
    for r in (tri, freq):
        assert r["exit_code"] == 0 and r["steps"] == 1  # stopped by the time budget, not the cap
        assert r["step_s"] > 0 and r["train_s"] >= r["step_s"]
        assert r["peak_train_rss_mb"] is None or r["peak_train_rss_mb"] > 10
        assert is_number(r["test_psnr"]) and is_number(r["test_ssim"]) and is_number(r["chamfer"])
        run = Path(r["run_dir"])
        assert run.name.startswith(f"sso-{r['representation']}@")
        # the figures are the run's own test metrics file
        saved = json.loads(Path(r["test_metrics_file"]).read_text())
        assert saved["mean"]["psnr"] == pytest.approx(r["test_psnr"])
        assert saved["geometry"]["chamfer"] == pytest.approx(r["chamfer"])
    assert "| triplane:" in table and "| frequency:" in table and "786,432" in table


def test_bench_captures_takes_overrides_written_after_only(tmp_path):
    """``--only PRESET key=value``: argparse hands the override to --only; it must reach the runs."""
    from scripts.bench_captures import parse_args

    args = parse_args(["--data", str(tmp_path), "--out", str(tmp_path), "--only", "neus-blender", "a.b=1.5"])
    assert args.only == ["neus-blender"] and args.extra == ["a.b=1.5"]
    args = parse_args(["--data", str(tmp_path), "--out", str(tmp_path), "c=2", "--only", "neus-dtu"])
    assert args.only == ["neus-dtu"] and args.extra == ["c=2"]
    with pytest.raises(SystemExit):
        parse_args(["--data", str(tmp_path), "--out", str(tmp_path), "--only", "neus-blendr"])
