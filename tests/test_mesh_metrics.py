"""Accuracy / completeness / Chamfer / F-score against analytic cases (concentric spheres), and the
eval_mesh script."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from scripts.eval_mesh import main as eval_main
from utils.mesh import (
    Mesh,
    evaluate_mesh,
    load_points,
    mesh_distance_metrics,
    sample_surface,
    save_mesh,
)

REPO = Path(__file__).resolve().parents[1]


def sphere_points(n, radius=1.0, seed=0):
    rng = np.random.default_rng(seed)
    d = rng.standard_normal((n, 3))
    return radius * d / np.linalg.norm(d, axis=1, keepdims=True)


def icosphere(radius=1.0, subdivisions=4):
    return Mesh.from_trimesh(trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius))


def test_concentric_point_spheres_exact():
    # every point on the sphere of radius r is exactly d from the sphere of radius r + d, and
    # its radially scaled copy realises that distance: accuracy = completeness = chamfer = d
    r, d = 0.5, 0.02
    pred = sphere_points(3000, r)
    gt = pred * (r + d) / r
    m = mesh_distance_metrics(pred, gt, threshold=0.01)
    assert m["accuracy"] == pytest.approx(d, abs=1e-9)
    assert m["completeness"] == pytest.approx(d, abs=1e-9)
    assert m["chamfer"] == pytest.approx(d, abs=1e-9)
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["fscore"] == 0.0  # d > threshold
    m = mesh_distance_metrics(torch.from_numpy(pred), torch.from_numpy(gt), threshold=0.03)
    assert m["precision"] == 1.0 and m["recall"] == 1.0 and m["fscore"] == 1.0  # d < threshold


def test_fscore_hand_case():
    pred = np.array([[0.0, 0, 0], [1.0, 0, 0], [5.0, 0, 0]])
    gt = np.array([[0.0, 0, 0.005], [1.0, 0, 0.02]])
    m = mesh_distance_metrics(pred, gt, threshold=0.01)
    # pred -> gt: 0.005, 0.02, sqrt(4^2 + 0.02^2); gt -> pred: 0.005, 0.02
    assert m["accuracy"] == pytest.approx((0.005 + 0.02 + np.hypot(4.0, 0.02)) / 3)
    assert m["completeness"] == pytest.approx(0.0125)
    assert m["precision"] == pytest.approx(1 / 3) and m["recall"] == pytest.approx(0.5)
    assert m["fscore"] == pytest.approx(2 * (1 / 3) * 0.5 / (1 / 3 + 0.5))


def test_identical_meshes():
    mesh = icosphere(1.0, 3)
    pts = sample_surface(mesh, 5000, seed=0)
    same = mesh_distance_metrics(pts, pts)
    assert same["chamfer"] == 0.0 and same["fscore"] == 1.0
    # independent samples of one surface: only the sampling gap remains; for uniform random
    # points of density N / A the mean nearest-neighbour distance is 0.5 sqrt(A / N)
    n = 20000
    m = evaluate_mesh(mesh, mesh, n_points=n, threshold=0.05, seed=0)
    gap = 0.5 * np.sqrt(mesh.to_trimesh().area / n)
    assert m["chamfer"] < 1.2 * gap
    assert m["fscore"] == 1.0


def test_mesh_spheres_offset():
    inner, outer = icosphere(1.0), icosphere(1.05)
    far = evaluate_mesh(inner, outer, n_points=20000, threshold=0.01)
    assert far["chamfer"] == pytest.approx(0.05, abs=0.004)
    assert far["fscore"] == 0.0
    near = evaluate_mesh(inner, outer, n_points=20000, threshold=0.1)
    assert near["fscore"] == 1.0


def test_region_restriction():
    gt = sphere_points(2000, 1.0, seed=1)
    outliers = np.array([4.0, 4.0, 4.0]) + 0.1 * sphere_points(500, 1.0, seed=2)
    pred = np.concatenate([gt, outliers])
    full = mesh_distance_metrics(pred, gt, threshold=0.01)
    assert full["accuracy"] > 1.0 and full["precision"] == pytest.approx(2000 / 2500)
    box = ([-2.0, -2.0, -2.0], [2.0, 2.0, 2.0])
    cropped = mesh_distance_metrics(pred, gt, threshold=0.01, region=box)
    assert cropped["n_pred"] == 2000 and cropped["n_gt"] == 2000
    assert cropped["accuracy"] == 0.0 and cropped["fscore"] == 1.0
    # the crop applies to the ground truth too: keep only its upper half
    half = mesh_distance_metrics(gt, gt, region=([-2, -2, 0.0], [2, 2, 2]))
    assert half["n_gt"] == int((gt[:, 2] >= 0).sum())
    with pytest.raises(ValueError, match="region"):
        mesh_distance_metrics(pred, gt, region=([10, 10, 10], [11, 11, 11]))


def test_sample_surface_on_surface_and_area_weighted():
    # two disjoint squares in z = 0 (area 1) and z = 1 (area 4)
    v = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0],
                  [0, 0, 1], [2, 0, 1], [2, 2, 1], [0, 2, 1]], dtype=np.float64)
    f = np.array([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    pts = sample_surface((v, f), 20000, seed=3)
    assert pts.shape == (20000, 3) and pts.dtype == np.float64
    on_small = np.abs(pts[:, 2]) < 1e-12
    assert np.all(on_small | (np.abs(pts[:, 2] - 1.0) < 1e-12))
    assert on_small.mean() == pytest.approx(0.2, abs=0.015)
    assert pts[on_small, :2].min() >= 0 and pts[on_small, :2].max() <= 1
    # uniform within a square: the mean is its centre
    assert np.allclose(pts[~on_small, :2].mean(0), [1.0, 1.0], atol=0.03)
    assert np.array_equal(pts, sample_surface((v, f), 20000, seed=3))  # deterministic
    assert not np.array_equal(pts, sample_surface((v, f), 20000, seed=4))


def test_ground_truth_point_cloud_files(tmp_path):
    mesh = icosphere(1.0, 3)
    gt = sample_surface(mesh, 20000, seed=7) * 1.02
    np.save(tmp_path / "gt.npy", gt)
    np.savetxt(tmp_path / "gt.xyz", gt)
    trimesh.PointCloud(gt).export(tmp_path / "gt.ply")
    for name in ("gt.npy", "gt.xyz", "gt.ply"):
        assert np.allclose(load_points(tmp_path / name), gt, atol=1e-6)
        m = evaluate_mesh(mesh, tmp_path / name, n_points=20000, threshold=0.05)
        assert m["n_gt"] == 20000  # used as is, not resampled
        assert m["chamfer"] == pytest.approx(0.02, abs=0.006)


def test_eval_script_in_process(tmp_path, capsys):
    save_mesh(tmp_path / "pred.ply", icosphere(1.0, 3))
    save_mesh(tmp_path / "gt.obj", icosphere(1.05, 3))
    assert eval_main([str(tmp_path / "pred.ply"), str(tmp_path / "gt.obj"),
                      "--n-points", "5000", "--threshold", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "chamfer" in out and "fscore" in out
    with pytest.raises(SystemExit) as info:
        eval_main([str(tmp_path / "missing.ply"), str(tmp_path / "gt.obj")])
    assert info.value.code != 0
    assert "missing.ply" in capsys.readouterr().err


def test_eval_script_runs_from_anywhere(tmp_path):
    save_mesh(tmp_path / "pred.ply", icosphere(1.0, 2))
    save_mesh(tmp_path / "gt.ply", icosphere(1.05, 2))
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "eval_mesh.py"), "pred.ply", "gt.ply",
         "--n-points", "4000", "--threshold", "0.2", "--json",
         "--region", "-2", "-2", "-2", "2", "2", "2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)
    assert metrics["fscore"] == 1.0
    assert metrics["chamfer"] == pytest.approx(0.05, abs=0.01)


# ------------------------------------------------------------------------------------------------
# regions (box / sphere), point-cloud ground truth and JSON output of the script
# ------------------------------------------------------------------------------------------------
def test_unit_sphere_against_a_sphere_of_radius_1_01():
    # a unit sphere mesh against an analytic point cloud on the sphere of radius 1.01: every
    # distance is the radial gap 0.01 plus the sideways sampling gap (0.5 sqrt(A / N) = 0.0056
    # for 100k points, which adds ~0.002 in quadrature); the icosphere's chords add < 0.0002
    pred = icosphere(1.0, 5)
    gt = sphere_points(100_000, 1.01, seed=5)
    m = evaluate_mesh(pred, gt, n_points=100_000, threshold=0.03)
    assert m["chamfer"] == pytest.approx(0.01, abs=0.0025)
    assert m["accuracy"] >= 0.0098 and m["completeness"] >= 0.0098  # never below the radial gap
    assert m["fscore"] == 1.0
    # brute force on a few predicted points: the same nearest distances as the KD-tree
    pts = sample_surface(pred, 100_000, seed=0)[:40]
    d = np.array([np.sqrt(((gt - p) ** 2).sum(1)).min() for p in pts])
    assert mesh_distance_metrics(pts, gt)["accuracy"] == pytest.approx(d.mean(), rel=1e-9)


def test_sphere_region_and_region_parsing():
    from utils.mesh import Box, Sphere, as_region

    gt = sphere_points(3000, 1.0, seed=11)
    far = np.array([3.0, 0.0, 0.0]) + 0.2 * sphere_points(400, 1.0, seed=12)
    pred = np.concatenate([gt, far])
    kept = mesh_distance_metrics(pred, gt, region=Sphere([0, 0, 0], 1.5))
    assert kept["n_pred"] == 3000 and kept["accuracy"] == 0.0 and kept["fscore"] == 1.0
    # a sphere that keeps a cap of the unit sphere: counts match a brute-force test of each point
    centre, r = np.array([0.0, 0.0, 1.0]), 0.8
    inside = np.linalg.norm(gt - centre, axis=1) <= r
    cap = mesh_distance_metrics(gt, gt, region={"sphere": [0, 0, 1, 0.8]})
    assert cap["n_gt"] == cap["n_pred"] == int(inside.sum()) and 0 < inside.sum() < 3000
    # a box that holds all of the unit sphere and none of the far cluster
    box = mesh_distance_metrics(pred, gt, region=Box([-2, -2, -2], [2, 2, 2]))
    assert box["n_pred"] == 3000
    assert as_region(([-1, -1, -1], [1, 1, 1])) == Box((-1, -1, -1), (1, 1, 1))
    assert as_region({"box": [0, 0, 0, 1, 2, 3]}) == Box((0, 0, 0), (1, 2, 3))
    assert as_region(None) is None
    with pytest.raises(ValueError, match="min < max"):
        Box([0, 0, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="radius"):
        Sphere([0, 0, 0], -1.0)
    with pytest.raises(ValueError):
        as_region({"cube": [1, 2, 3]})


def test_eval_script_point_cloud_ground_truth_sphere_region_and_json_file(tmp_path, capsys):
    save_mesh(tmp_path / "pred.ply", icosphere(1.0, 4))
    gt = sphere_points(30_000, 1.01, seed=21)
    np.savetxt(tmp_path / "gt.xyz", gt)
    trimesh.PointCloud(gt).export(tmp_path / "gt_cloud.ply")  # a .ply without faces
    # restrict to the upper cap (z > 0.5) with a sphere around the pole
    out = tmp_path / "out" / "metrics.json"
    args = [str(tmp_path / "pred.ply"), str(tmp_path / "gt.xyz"), "--n-points", "30000",
            "--threshold", "0.05", "--sphere", "0", "0", "1.01", "0.9", "--output", str(out)]
    assert eval_main(args) == 0
    table = capsys.readouterr().out
    assert "inside the sphere 0 0 1.01 0.9" in table and str(out) in table
    m = json.loads(out.read_text())
    assert m["region"] == {"sphere": [0.0, 0.0, 1.01, 0.9]} and m["threshold"] == 0.05
    expected_gt = int((np.linalg.norm(gt - [0, 0, 1.01], axis=1) <= 0.9).sum())
    assert m["n_gt"] == expected_gt  # the point cloud is used as is, then cropped
    # at least the radial gap 0.01; the rest is the sampling gap of 30k points (about 0.5 sqrt(A / N) = 0.01
    # sideways, i.e. sqrt(0.01^2 + 0.01^2) at most on average)
    assert 0.0098 < m["chamfer"] < 0.0145 + 0.002 and m["fscore"] == 1.0
    # the faceless .ply gives the same ground-truth set, and --json prints the same numbers
    assert eval_main([str(tmp_path / "pred.ply"), str(tmp_path / "gt_cloud.ply"), "--n-points", "30000",
                      "--threshold", "0.05", "--sphere", "0", "0", "1.01", "0.9", "--json"]) == 0
    m2 = json.loads(capsys.readouterr().out)
    assert m2["n_gt"] == expected_gt and m2["chamfer"] == pytest.approx(m["chamfer"], rel=1e-6)
    # box and sphere together are refused; an empty region is an error, not a number
    with pytest.raises(SystemExit):
        eval_main([str(tmp_path / "pred.ply"), str(tmp_path / "gt.xyz"), "--sphere", "0", "0", "0", "1",
                   "--region", "-1", "-1", "-1", "1", "1", "1"])
    capsys.readouterr()
    assert eval_main([str(tmp_path / "pred.ply"), str(tmp_path / "gt.xyz"), "--n-points", "1000",
                      "--sphere", "5", "5", "5", "0.1"]) == 1
    assert "no predicted points inside region" in capsys.readouterr().err
