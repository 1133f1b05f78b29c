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
from utils.geometry_metrics import (
    evaluate_mesh,
    load_points,
    mesh_distance_metrics,
    sample_surface,
)
from utils.mesh_io import Mesh, save_mesh

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
