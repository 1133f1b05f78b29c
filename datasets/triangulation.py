"""Sparse points for a capture that has poses but no points (instant-ngp / nerfstudio files, COLMAP
models without points3D): SIFT features matched between neighbouring views and triangulated with
the known cameras.

The points only frame the scene (``datasets/normalization.py`` fits the object's box to them), so
this is deliberately simple: no tracks, no bundle adjustment. Each pair of neighbouring views
(nearest camera centres whose optical axes differ by less than ``MAX_AXIS_ANGLE_DEG``) is matched
with Lowe's ratio test; matches far from the epipolar line the known poses predict are dropped;
the rest are triangulated by OpenCV and kept when they lie in front of both cameras, reproject
within ``max_reprojection_px`` and are seen under at least ``MIN_PARALLAX_DEG``. The features come
from OpenCV (SIFT); only the pair choice and the filters are ours.

Arrays are numpy float64 (N views, P points); poses are OpenCV camera-to-world [3, 4].
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from datasets.base import read_image
from datasets.undistort import LensCamera

log = logging.getLogger(__name__)

MAX_AXIS_ANGLE_DEG = 60.0  # views looking further apart than this rarely share features
MIN_PARALLAX_DEG = 1.5  # rays closer than this give depth mostly from noise
LOWE_RATIO = 0.75
SIFT_OFFSET_PX = 0.25  # see _features


def projection_matrix(c2w: np.ndarray, k: np.ndarray) -> np.ndarray:
    """P = K [R | t] [3, 4] of an OpenCV camera-to-world pose c2w [3, 4]."""
    rot = c2w[:, :3].T
    return k @ np.concatenate([rot, -rot @ c2w[:, 3:4]], axis=1)


def neighbour_pairs(c2w: np.ndarray, n_neighbours: int) -> List[Tuple[int, int]]:
    """Pairs (i < j) of views: each view with its ``n_neighbours`` nearest camera centres among
    those whose optical axis is within MAX_AXIS_ANGLE_DEG of its own. c2w [N, 3, 4]."""
    eyes = c2w[:, :, 3]
    axes = c2w[:, :, 2]
    dist = np.linalg.norm(eyes[:, None] - eyes[None], axis=-1)
    cos = axes @ axes.T
    dist[cos < np.cos(np.radians(MAX_AXIS_ANGLE_DEG))] = np.inf
    np.fill_diagonal(dist, np.inf)
    pairs = set()
    for i in range(len(c2w)):
        for j in np.argsort(dist[i])[:n_neighbours]:
            if np.isfinite(dist[i, j]) and dist[i, j] > 0:
                pairs.add((min(i, int(j)), max(i, int(j))))
    return sorted(pairs)


def _features(image_path: Path, camera: LensCamera, max_side: int, n_features: int):
    """SIFT keypoints of one undistorted image, in its full-size OpenCV pixel coordinates:
    (xy [K, 2], descriptors [K, 128] float32, rgb [K, 3] uint8)."""
    import cv2

    img = read_image(image_path)
    img = camera.undistort(img[..., :3] if img.shape[2] >= 3 else np.repeat(img[..., :1], 3, axis=2))  # grey photos too
    grey = cv2.cvtColor((img.clip(0, 1) * 255).astype(np.uint8), cv2.COLOR_RGB2GRAY)
    scale = min(1.0, max_side / max(grey.shape))
    if scale < 1.0:
        grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    keypoints, descriptors = cv2.SIFT_create(nfeatures=n_features).detectAndCompute(grey, None)
    if descriptors is None or not keypoints:
        return np.zeros((0, 2)), np.zeros((0, 128), np.float32), np.zeros((0, 3), np.uint8)
    # OpenCV's SIFT finds keypoints on a 2x upsampled image and halves their coordinates, which
    # puts them a quarter pixel right of and below the OpenCV pixel centres (measured: without the
    # correction the plane in tests/test_triangulation.py comes out 0.011 units, about half a
    # pixel's depth, behind where it is; with it, 0.0006)
    xy = (np.array([k.pt for k in keypoints], dtype=np.float64) - SIFT_OFFSET_PX + 0.5) / scale - 0.5
    px = np.clip(np.round(xy).astype(int), 0, [img.shape[1] - 1, img.shape[0] - 1])
    rgb = (img[px[:, 1], px[:, 0]].clip(0, 1) * 255).astype(np.uint8)
    return xy, descriptors.astype(np.float32), rgb


def _fundamental(p1: np.ndarray, p2: np.ndarray, c2w1: np.ndarray) -> np.ndarray:
    """F [3, 3] with x2^T F x1 = 0, from projection matrices p1, p2 [3, 4] and the first camera's
    centre (the epipole in view 2 is p2 @ centre1)."""
    centre = np.append(c2w1[:, 3], 1.0)
    e2 = p2 @ centre
    skew = np.array([[0, -e2[2], e2[1]], [e2[2], 0, -e2[0]], [-e2[1], e2[0], 0]])
    return skew @ p2 @ np.linalg.pinv(p1)


def _epipolar_distance(f: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """Symmetric distance (pixels) of matched points x1, x2 [M, 2] from each other's epipolar lines."""
    h1 = np.concatenate([x1, np.ones((len(x1), 1))], 1)
    h2 = np.concatenate([x2, np.ones((len(x2), 1))], 1)
    l2 = h1 @ f.T  # lines in view 2
    l1 = h2 @ f  # lines in view 1
    num = np.abs(np.sum(h2 * l2, axis=1))
    return np.maximum(num / np.linalg.norm(l2[:, :2], axis=1).clip(1e-12),
                      num / np.linalg.norm(l1[:, :2], axis=1).clip(1e-12))


def _reprojection_error(p: np.ndarray, points: np.ndarray, xy: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(pixel error [M], depth [M]) of points [M, 3] projected by p [3, 4] against xy [M, 2]."""
    h = np.concatenate([points, np.ones((len(points), 1))], 1) @ p.T
    depth = h[:, 2]
    proj = h[:, :2] / np.where(np.abs(depth) > 1e-12, depth, 1e-12)[:, None]
    return np.linalg.norm(proj - xy, axis=1), depth


def triangulate_points(
    image_paths: Sequence[Path], cameras: Sequence[LensCamera], c2w: np.ndarray, *, n_neighbours: int = 4,
    max_side: int = 800, n_features: int = 4000, max_reprojection_px: float = 2.0, max_points: int = 50000,
    max_views: int = 120, seed: int = 0,
) -> Tuple[np.ndarray, np.ndarray]:
    """Sparse points seen by pairs of neighbouring views with known poses: image files and their
    lenses (N), c2w [N, 3, 4] OpenCV camera-to-world -> (points [P, 3] float64, rgb [P, 3] uint8),
    in the poses' frame; P may be 0. ``max_side`` bounds the side (pixels) features are found at;
    the error bound is in full-size pixels. Of more than ``max_views`` views, that many spread
    over the list are used: framing needs no more, and time and memory grow with the views."""
    import cv2

    c2w = np.asarray(c2w, dtype=np.float64)
    chosen = np.unique(np.linspace(0, len(c2w) - 1, min(len(c2w), max_views)).round().astype(int))
    pairs = [(int(chosen[i]), int(chosen[j])) for i, j in neighbour_pairs(c2w[chosen], n_neighbours)]
    if not pairs:
        return np.zeros((0, 3)), np.zeros((0, 3), np.uint8)
    used = sorted({i for pair in pairs for i in pair})
    log.info("triangulating sparse points: SIFT on %d views, matching %d pairs ...", len(used), len(pairs))
    feats = {i: _features(Path(image_paths[i]), cameras[i], max_side, n_features) for i in used}
    proj = {i: projection_matrix(c2w[i], cameras[i].opencv_matrix()) for i in used}
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    out_points, out_rgb = [], []
    for i, j in pairs:
        (xy1, d1, rgb1), (xy2, d2, _) = feats[i], feats[j]
        if len(xy1) < 2 or len(xy2) < 2:
            continue
        knn = matcher.knnMatch(d1, d2, k=2)
        good = [m[0] for m in knn if len(m) == 2 and m[0].distance < LOWE_RATIO * m[1].distance]
        if not good:
            continue
        a = np.array([m.queryIdx for m in good])
        b = np.array([m.trainIdx for m in good])
        x1, x2 = xy1[a], xy2[b]
        epi = _epipolar_distance(_fundamental(proj[i], proj[j], c2w[i]), x1, x2)
        keep = epi < max_reprojection_px
        if not keep.any():
            continue
        a, x1, x2 = a[keep], x1[keep], x2[keep]
        h = cv2.triangulatePoints(proj[i], proj[j], x1.T, x2.T)
        pts = (h[:3] / np.where(np.abs(h[3]) > 1e-12, h[3], 1e-12)).T
        err1, z1 = _reprojection_error(proj[i], pts, x1)
        err2, z2 = _reprojection_error(proj[j], pts, x2)
        ray1 = pts - c2w[i][:, 3]
        ray2 = pts - c2w[j][:, 3]
        cos = np.sum(ray1 * ray2, 1) / (np.linalg.norm(ray1, axis=1) * np.linalg.norm(ray2, axis=1)).clip(1e-12)
        ok = ((z1 > 0) & (z2 > 0) & (err1 < max_reprojection_px) & (err2 < max_reprojection_px)
              & (cos < np.cos(np.radians(MIN_PARALLAX_DEG))) & np.all(np.isfinite(pts), axis=1))
        out_points.append(pts[ok])
        out_rgb.append(rgb1[a[ok]])
    if not out_points:
        return np.zeros((0, 3)), np.zeros((0, 3), np.uint8)
    points = np.concatenate(out_points)
    rgb = np.concatenate(out_rgb)
    if len(points) > max_points:
        pick = np.random.default_rng(seed).choice(len(points), max_points, replace=False)
        points, rgb = points[np.sort(pick)], rgb[np.sort(pick)]
    return points, rgb


def points_for_framing(views, needed: bool, source: str) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """Triangulated points [P, 3] (world) and colours [P, 3] uint8 for a capture without sparse
    points whose normalization needs some (``needed``); ``views`` are its CaptureViews. (None, None)
    when not needed or when nothing could be matched (warned: the normalization falls back)."""
    if not needed or len(views) < 2:
        return None, None
    points, rgb = triangulate_points([v.image_path for v in views], [v.camera for v in views],
                                     np.stack([v.c2w for v in views]))
    if len(points) == 0:
        log.warning("%s has no sparse points, and none could be triangulated from its images", source)
        return None, None
    log.info("%s has no sparse points: %d were triangulated from its images with the given poses", source, len(points))
    return points, rgb
