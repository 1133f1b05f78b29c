"""Scene normalization for real captures: a similarity transform from the input's world frame to
the scene frame the model works in.

``x_scene = s * R @ (x_world - c)``: ``c`` is the centre of the object of interest, ``R`` turns
the scene's up direction onto +z, and ``s`` scales the object to fill the model's bounds. Each
part is estimated from the cameras or from the sparse points (``NormalizationConfig``):

- centre: ``lookat`` (the point closest to all optical axes), ``cameras`` (the mean camera
  centre), ``points`` (the per-axis median of the sparse points), ``object`` (the centre of the
  object's box, below) or ``none`` (the world origin);
- up: ``cameras`` (the mean of the cameras' up vectors), ``points`` (the normal of a RANSAC plane
  fit of the sparse points, turned towards the cameras) or ``none`` (keep the world's axes);
- scale: ``cameras`` (the median camera distance to the centre becomes ``camera_distance`` x
  ``radius``), ``points`` (the ``points_percentile`` of the sparse points' distances to the centre
  becomes ``radius``), ``object`` (the object's box, below, fills the model's box) or ``none``
  (keep the world's units).

The object's box (``object_box``): the sparse points that lie inside at least
``object_min_view_fraction`` of the cameras' view frustums and nearer the look-at point than the
median camera are the object's (the surroundings of an inward-facing capture are behind some
cameras; stray points far off are in few views); the box spans their ``100 - object_percentile``
to ``object_percentile`` percentiles along each axis of the up-aligned frame, widened by
``object_margin`` on every side. With too few such points it falls back to ``lookat`` /
``cameras`` with a warning. When a fifth or more of them lie on one plane that all cameras face
(``support_plane``: a floor, table top or wall the object stands on or hangs from; on by
``cut_at_plane``), the frame is turned to lie along that plane and the box starts just in front of
it, so the plane is rendered by the background model and is not part of the mesh.

The scene stores the inverse, ``scene_to_world`` [4, 4], which mesh export applies so that meshes
land on the input's sparse points and cameras; ``write_scene_transform`` saves it as JSON.
Arrays here are numpy float64 (N cameras, P points).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Literal, Optional, Tuple

import numpy as np

from datasets.base import DatasetError
from utils.config import checked, in_range, non_negative, positive

log = logging.getLogger(__name__)


@dataclasses.dataclass
class NormalizationConfig:
    center: Literal["lookat", "cameras", "points", "object", "none"] = "lookat"
    up: Literal["cameras", "points", "none"] = "cameras"
    scale: Literal["cameras", "points", "object", "none"] = "cameras"
    # (the object of interest ends inside a sphere of the model's radius, model.radius)
    # scale 'cameras': the cameras' median distance to the centre becomes camera_distance x radius
    camera_distance: float = checked(positive(), default=2.5)
    # scale 'points': this percentile of the sparse points' distances to the centre becomes radius
    points_percentile: float = checked(in_range(0, 100, lo_open=True), default=90.0)
    # center/scale 'object': the box of the points in at least this fraction of the cameras' views,
    # between their (100 - object_percentile) and object_percentile percentiles per axis, widened
    # by object_margin (a fraction of its half-size) on every side, fills the model's box
    object_min_view_fraction: float = checked(in_range(0, 1), default=0.5)
    object_percentile: float = checked(in_range(50, 100, lo_open=True), default=97.5)
    object_margin: float = checked(non_negative(), default=0.15)
    # 'object': when most of the object's points lie on one plane that all cameras face (a floor,
    # table top or wall), the box starts just in front of it, turned to lie along it: the plane is
    # left to the background model and stays out of the mesh
    cut_at_plane: bool = True
    # when the input has no sparse points (instant-ngp files, COLMAP models without points3D) and
    # 'object' or up 'points' needs them: triangulate them from the images with the given poses
    triangulate: bool = True


def needs_points(cfg: NormalizationConfig) -> bool:
    """Whether ``cfg`` would use sparse points an input lacks, and lets them be triangulated."""
    return cfg.triangulate and bool({"object", "points"} & {cfg.center, cfg.scale, cfg.up})


# --------------------------------------------------------------------------- estimates
def camera_centres(c2w: np.ndarray) -> np.ndarray:
    """Camera positions of OpenCV poses c2w [N, 3, 4] -> [N, 3]."""
    return np.asarray(c2w, dtype=np.float64)[:, :3, 3]


def lookat_center(c2w: np.ndarray) -> Tuple[np.ndarray, float]:
    """The point closest (least squares) to all optical axes of c2w [N, 3, 4] (OpenCV, +z forward).

    Returns (centre [3], conditioning in [0, 1]: the smallest over the largest eigenvalue of the
    normal equations; near 0 when the axes are (nearly) parallel and the point is ill-defined).
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    d = c2w[:, :3, 2] / np.linalg.norm(c2w[:, :3, 2], axis=-1, keepdims=True)
    o = c2w[:, :3, 3]
    proj = np.eye(3)[None] - d[:, :, None] * d[:, None, :]  # [N, 3, 3] projectors orthogonal to each axis
    a = proj.sum(0)
    b = (proj @ o[:, :, None]).sum(0)[:, 0]
    eig = np.linalg.eigvalsh(a)
    cond = float(eig[0] / max(eig[-1], 1e-300))
    return np.linalg.solve(a + 1e-12 * np.eye(3), b), cond


def camera_up(c2w: np.ndarray) -> np.ndarray:
    """Mean of the cameras' up vectors (OpenCV: up is -y) of c2w [N, 3, 4] -> unit [3]."""
    up = -np.asarray(c2w, dtype=np.float64)[:, :3, 1].sum(0)
    n = np.linalg.norm(up)
    if n < 1e-8:
        raise DatasetError("the cameras' up vectors cancel out: cannot tell up (set dataset.normalization.up: none)")
    return up / n


def fit_plane(points: np.ndarray, seed: int = 0, iters: int = 256) -> Tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The dominant plane of points [P, 3]: RANSAC with an inlier band of 1% of the points'
    5-95% extent, then a least-squares refit of its inliers -> (unit normal [3], a point on it [3],
    inlier mask [P] bool, band half-width)."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.shape[0] < 3:
        raise DatasetError(f"a plane fit needs at least 3 sparse points, got {pts.shape[0]}")
    rng = np.random.default_rng(seed)
    lo, hi = np.percentile(pts, [5, 95], axis=0)
    threshold = 0.01 * float(np.linalg.norm(hi - lo)) + 1e-12
    best, best_count = None, -1
    for _ in range(iters):
        a, b, c = pts[rng.choice(len(pts), 3, replace=False)]
        n = np.cross(b - a, c - a)
        if np.linalg.norm(n) < 1e-12:
            continue
        n /= np.linalg.norm(n)
        count = int((np.abs((pts - a) @ n) < threshold).sum())
        if count > best_count:
            best, best_count = (n, a), count
    if best is None:
        raise DatasetError("the sparse points are collinear: no plane to fit")
    n, a = best
    inliers = np.abs((pts - a) @ n) < threshold
    if inliers.sum() >= 3:
        a = pts[inliers].mean(0)
        n = np.linalg.svd(pts[inliers] - a, full_matrices=False)[2][-1]
        inliers = np.abs((pts - a) @ n) < threshold
    return n / np.linalg.norm(n), a, inliers, threshold


def ground_plane_up(points: np.ndarray, towards: np.ndarray, seed: int = 0, iters: int = 256) -> np.ndarray:
    """Normal of the dominant plane of points [P, 3] (``fit_plane``), turned to the side of
    ``towards`` [3] (e.g. the mean camera centre) -> unit [3]."""
    n, a, _, _ = fit_plane(points, seed, iters)
    return -n if float((np.asarray(towards, dtype=np.float64) - a) @ n) < 0 else n


@dataclasses.dataclass
class SupportPlane:
    """A plane the object stands on or hangs from (a floor, table top or wall): every camera is on
    the side ``normal`` [3] points to; ``normal @ x == offset`` on it. The object's box starts
    ``gap`` in front of it, so the plane itself is left to the background model and the mesh."""

    normal: np.ndarray
    offset: float
    gap: float
    kind: Literal["floor", "wall"]
    share: float  # of the points on it

    def transformed(self, m: np.ndarray) -> "SupportPlane":
        """The same plane after the similarity m [4, 4] (x' = m @ [x, 1]): normal, offset and gap
        in the new frame."""
        m = np.asarray(m, dtype=np.float64)
        scale = similarity_scale(m)
        normal = m[:3, :3] @ self.normal / scale
        on_plane = transform_points(m, self.normal * self.offset)
        return dataclasses.replace(self, normal=normal, offset=float(normal @ on_plane), gap=self.gap * scale)


#: a support plane holds at least this share of the object's points ...
MIN_PLANE_SHARE = 0.2
#: ... has at least this share of the cameras in front of it ...
MIN_CAMERAS_IN_FRONT = 0.95
#: ... and leaves at least this share of the object's points in front of it (else the plane is the object)
MIN_FRONT_SHARE = 0.05
#: along a support plane, the object's extent counts its points higher than this share of its height
STANDING_SHARE = 0.1


def support_plane(points: np.ndarray, eyes: np.ndarray, up: np.ndarray) -> Optional[SupportPlane]:
    """The floor or wall behind the object's points [P, 3], seen from camera centres eyes [N, 3],
    with ``up`` [3] the scene's up direction; None when the dominant plane of the points is not one
    (too few of the points on it, cameras on both sides, nothing in front, or slanted 30-60 degrees
    from level / upright)."""
    pts = np.asarray(points, dtype=np.float64)
    if len(pts) < MIN_OBJECT_POINTS:
        return None
    n, a, inliers, band = fit_plane(pts)
    if float((eyes.mean(0) - a) @ n) < 0:
        n = -n
    offset = float(n @ a)
    # start the box beyond the plane's noise: 3 sigma of its inliers' distances (robust, from
    # their median absolute deviation), and at least the RANSAC band (1% of the points' extent)
    residual = pts[inliers] @ n - offset
    sigma = 1.4826 * float(np.median(np.abs(residual - np.median(residual))))
    gap = max(3.0 * sigma, band)
    if inliers.mean() < MIN_PLANE_SHARE:
        return None
    if np.mean(eyes @ n - offset > gap) < MIN_CAMERAS_IN_FRONT:
        return None
    if (pts @ n - offset > gap).sum() < max(MIN_OBJECT_POINTS, MIN_FRONT_SHARE * len(pts)):
        return None
    level = float(n @ (np.asarray(up, dtype=np.float64) / np.linalg.norm(up)))
    if level > np.cos(np.radians(30)):
        kind = "floor"
    elif abs(level) < np.cos(np.radians(60)):
        kind = "wall"
    else:
        return None
    return SupportPlane(n, offset, gap, kind, float(inliers.mean()))


def plane_frame(plane: SupportPlane, up: np.ndarray) -> Tuple[np.ndarray, int]:
    """A rotation [3, 3] into a frame where the plane is axis-aligned with the object on its + side,
    and that axis: a floor's normal becomes +z (the scene's up), a wall's +x with z the given up
    made perpendicular to the wall."""
    if plane.kind == "floor":
        return rotation_to_z(plane.normal), 2
    x = plane.normal
    z = np.asarray(up, dtype=np.float64) - (np.asarray(up, dtype=np.float64) @ x) * x
    z /= np.linalg.norm(z)
    return np.stack([x, np.cross(z, x), z]), 0


def view_fraction(points: np.ndarray, c2w: np.ndarray, intrinsics: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The fraction of cameras whose view frustum holds each point (in front, projecting inside the
    image; occlusion ignored): points [P, 3], c2w [N, 3, 4] OpenCV, intrinsics [N, 4] (fx, fy, cx,
    cy), sizes [N, 2] (H, W) -> [P] in [0, 1]."""
    pts = np.asarray(points, dtype=np.float64)
    seen = np.zeros(len(pts))
    for pose, (fx, fy, cx, cy), (h, w) in zip(np.asarray(c2w, np.float64), intrinsics, sizes):
        cam = (pts - pose[:, 3]) @ pose[:, :3]
        z = cam[:, 2]
        zs = np.where(z > 1e-12, z, 1.0)
        u = fx * cam[:, 0] / zs + cx
        v = fy * cam[:, 1] / zs + cy
        seen += (z > 1e-12) & (u >= 0) & (u <= w) & (v >= 0) & (v <= h)
    return seen / max(1, len(c2w))


def object_points(points: np.ndarray, c2w: np.ndarray, centre: np.ndarray, min_view_fraction: float,
                  intrinsics: Optional[np.ndarray] = None, sizes: Optional[np.ndarray] = None) -> np.ndarray:
    """Which sparse points [P, 3] belong to the object the cameras c2w [N, 3, 4] surround: nearer
    ``centre`` [3] than the median camera and, when intrinsics [N, 4] and sizes [N, 2] are given,
    inside at least ``min_view_fraction`` of the view frustums -> bool [P]."""
    pts = np.asarray(points, dtype=np.float64)
    eyes = camera_centres(c2w)
    keep = np.linalg.norm(pts - centre, axis=-1) < np.median(np.linalg.norm(eyes - centre, axis=-1))
    if intrinsics is not None and sizes is not None:
        keep &= view_fraction(pts, c2w, intrinsics, sizes) >= min_view_fraction
    return keep


def object_box(points: np.ndarray, rotation: np.ndarray, percentile: float) -> Tuple[np.ndarray, np.ndarray]:
    """The box of the object's points [K, 3] in the frame turned by ``rotation`` [3, 3]: per axis
    their (100 - percentile) and percentile percentiles -> (lo [3], hi [3]), in the turned frame."""
    turned = np.asarray(points, dtype=np.float64) @ np.asarray(rotation, dtype=np.float64).T
    lo, hi = np.percentile(turned, [100.0 - percentile, percentile], axis=0)
    return lo, hi


#: fewer object points than this: the object's box is not trusted (fall back to the cameras)
MIN_OBJECT_POINTS = 20


def rotation_to_z(up: np.ndarray) -> np.ndarray:
    """The smallest rotation [3, 3] that turns the unit vector ``up`` [3] onto +z."""
    up = np.asarray(up, dtype=np.float64) / np.linalg.norm(up)
    z = np.array([0.0, 0.0, 1.0])
    v = np.cross(up, z)
    c = float(up @ z)
    if np.linalg.norm(v) < 1e-12:
        return np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
    k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + k + k @ k * (1.0 / (1.0 + c))


def similarity(scale: float, rotation: np.ndarray, center: np.ndarray) -> np.ndarray:
    """The 4x4 matrix of ``x -> scale * rotation @ (x - center)``."""
    m = np.eye(4)
    m[:3, :3] = scale * np.asarray(rotation, dtype=np.float64)
    m[:3, 3] = -m[:3, :3] @ np.asarray(center, dtype=np.float64)
    return m


def similarity_scale(m: np.ndarray) -> float:
    """The scale s of a similarity m [4, 4] (``s R x + t``)."""
    return abs(float(np.linalg.det(np.asarray(m, dtype=np.float64)[:3, :3]))) ** (1.0 / 3.0)


def invert_similarity(m: np.ndarray) -> np.ndarray:
    """Inverse of a similarity [4, 4] (``s R x + t``) without a general matrix inverse."""
    m = np.asarray(m, dtype=np.float64)
    inv = np.eye(4)
    inv[:3, :3] = m[:3, :3].T / similarity_scale(m) ** 2
    inv[:3, 3] = -inv[:3, :3] @ m[:3, 3]
    return inv


def transform_points(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points [..., 3] mapped by the 4x4 matrix m -> [..., 3]."""
    m = np.asarray(m, dtype=np.float64)
    return np.asarray(points, dtype=np.float64) @ m[:3, :3].T + m[:3, 3]


def transform_poses(m: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """Camera-to-world poses c2w [N, 3, 4] mapped by the similarity m [4, 4] -> [N, 3, 4].

    The camera centres move with m; the axes are rotated by m's rotation (its scale removed), so
    the result is again a rigid pose and pixel rays map to the same physical rays.
    """
    m = np.asarray(m, dtype=np.float64)
    c2w = np.asarray(c2w, dtype=np.float64)
    rot = m[:3, :3] / similarity_scale(m)
    out = np.empty_like(c2w)
    out[:, :3, :3] = rot[None] @ c2w[:, :3, :3]
    out[:, :3, 3] = transform_points(m, c2w[:, :3, 3])
    return out


# --------------------------------------------------------------------------- the whole transform
@dataclasses.dataclass
class SceneFraming:
    """What ``frame_scene`` chose: the world -> scene similarity [4, 4], and the support plane the
    scene box was cut at (``cut_at_plane``), in the scene frame (None: no cut)."""

    world_to_scene: np.ndarray
    plane: Optional[SupportPlane] = None


def normalization_transform(
    c2w: np.ndarray, points: Optional[np.ndarray], cfg: NormalizationConfig, source: str, radius: float = 1.0,
    intrinsics: Optional[np.ndarray] = None, sizes: Optional[np.ndarray] = None,
) -> np.ndarray:
    """``frame_scene``'s world -> scene similarity [4, 4] alone."""
    return frame_scene(c2w, points, cfg, source, radius, intrinsics, sizes).world_to_scene


def frame_scene(
    c2w: np.ndarray, points: Optional[np.ndarray], cfg: NormalizationConfig, source: str, radius: float = 1.0,
    intrinsics: Optional[np.ndarray] = None, sizes: Optional[np.ndarray] = None,
) -> SceneFraming:
    """The world -> scene similarity for cameras c2w [N, 3, 4] (OpenCV, world) and optional
    sparse points [P, 3] (world), as chosen by ``cfg``, fitting the object into a sphere of
    ``radius`` (the model's; with 'object', into its box), and the support plane the box was cut
    at. ``intrinsics`` [N, 4] and ``sizes`` [N, 2] (H, W) let 'object' use the cameras' view
    frustums. ``source`` names the input in errors."""
    c2w = np.asarray(c2w, dtype=np.float64)
    has_points = points is not None and len(points) > 0
    for key in ("center", "up", "scale"):
        if getattr(cfg, key) == "points" and not has_points:
            raise DatasetError(
                f"dataset.normalization.{key}: 'points' needs sparse points, but {source} has none "
                "(choose 'cameras')"
            )
    if radius <= 0 or cfg.camera_distance <= 0 or not 0 < cfg.points_percentile <= 100:
        raise DatasetError(
            "dataset.normalization: model.radius and camera_distance must be positive and points_percentile in (0, 100]"
        )
    if not 50 < cfg.object_percentile <= 100 or cfg.object_margin < 0 or not 0 <= cfg.object_min_view_fraction <= 1:
        raise DatasetError(
            "dataset.normalization: object_percentile must be in (50, 100], object_margin >= 0 and "
            "object_min_view_fraction in [0, 1]"
        )
    pts = np.asarray(points, dtype=np.float64) if has_points else None
    eyes = camera_centres(c2w)

    # up
    if cfg.up == "cameras":
        rotation = rotation_to_z(camera_up(c2w))
    elif cfg.up == "points":
        up = ground_plane_up(pts, eyes.mean(0))
        rotation = rotation_to_z(up)
    else:
        rotation = np.eye(3)

    # centre
    center_mode, scale_mode = cfg.center, cfg.scale
    box = None
    cut_plane = None  # (world frame) when the box is cut at a support plane
    if "object" in (center_mode, scale_mode):
        box = _object_box_or_none(c2w, pts, cfg, rotation, source, intrinsics, sizes)
        if box is None:  # (warned) the cameras decide instead
            center_mode = "lookat" if center_mode == "object" else center_mode
            scale_mode = "cameras" if scale_mode == "object" else scale_mode
        else:
            rotation = box.rotation
            if box.plane is not None and (center_mode, scale_mode) == ("object", "object"):
                box = _box_against_plane(box, cfg.object_margin)
                cut_plane = box.plane
    if center_mode == "lookat":
        center = _lookat_or_fallback(c2w, pts, eyes, source)
    elif center_mode == "cameras":
        center = eyes.mean(0)
    elif center_mode == "points":
        center = np.median(pts, axis=0)
    elif center_mode == "object":
        center = rotation.T @ (0.5 * (box.lo + box.hi))
    else:
        center = np.zeros(3)

    # scale
    if scale_mode == "cameras":
        dist = float(np.median(np.linalg.norm(eyes - center, axis=-1)))
        if not dist > 1e-12:
            raise DatasetError(f"{source}: the cameras sit at the scene centre: cannot scale from camera distances")
        scale = cfg.camera_distance * radius / dist
    elif scale_mode == "points":
        dist = float(np.percentile(np.linalg.norm(pts - center, axis=-1), cfg.points_percentile))
        if not dist > 1e-12:
            raise DatasetError(f"{source}: the sparse points all sit at the scene centre: cannot scale from them")
        scale = radius / dist
    elif scale_mode == "object":
        c = rotation @ center
        half = float(np.max(np.maximum(box.hi - c, c - box.lo))) * (1.0 + cfg.object_margin)
        if not half > 1e-12:
            raise DatasetError(f"{source}: the object's sparse points all sit at one place: cannot scale from them")
        scale = radius / half
    else:
        scale = 1.0
    m = similarity(scale, rotation, center)
    if not np.all(np.isfinite(m)):
        raise DatasetError(f"{source}: the scene normalization is not finite (check the camera poses)")
    if scale_mode == "object":
        inside = int((np.abs(transform_points(m, eyes)) < radius).all(-1).sum())
        if inside:
            log.warning(
                "%s: %d camera(s) are inside the scene box fitted to the sparse points: the fit may have caught "
                "the surroundings; check save/scene_setup.png, or set dataset.normalization.scale: cameras",
                source, inside,
            )
    return SceneFraming(m, None if cut_plane is None else cut_plane.transformed(m))


def _box_against_plane(box: ObjectBox, margin: float) -> ObjectBox:
    """The box moved along its cut axis so that the cube the model fills (its largest half-size,
    widened by ``margin``, on every side of its centre) starts where the plane's gap ends: the
    object keeps its margin on every other side, and nothing behind the plane is in the box."""
    half = 0.5 * float(np.max(box.hi - box.lo)) * (1.0 + margin)
    lo, hi = box.lo.copy(), box.hi.copy()
    centre = 0.5 * (lo + hi)
    centre[box.cut_axis] = box.cut_at + half
    # a box of 2 * half / (1 + margin) about that centre keeps the cube's face at cut_at
    lo[box.cut_axis] = centre[box.cut_axis] - half / (1.0 + margin)
    hi[box.cut_axis] = centre[box.cut_axis] + half / (1.0 + margin)
    return dataclasses.replace(box, lo=lo, hi=hi)


def _lookat_or_fallback(c2w: np.ndarray, pts: Optional[np.ndarray], eyes: np.ndarray, source: str) -> np.ndarray:
    """The cameras' look-at point, or (axes nearly parallel, with a warning) the points' median / the mean camera."""
    if len(c2w) < 2:
        raise DatasetError(f"{source}: the look-at centre needs at least 2 cameras")
    center, cond = lookat_center(c2w)
    if cond < 1e-4:
        log.warning(
            "%s: the cameras' optical axes are nearly parallel, so their look-at point is ill-defined; "
            "centring on the %s instead", source, "sparse points" if pts is not None else "mean camera",
        )
        center = np.median(pts, axis=0) if pts is not None else eyes.mean(0)
    return center


@dataclasses.dataclass
class ObjectBox:
    """The object's box in a turned frame: ``x_turned = rotation @ x``, spanning lo [3] .. hi [3].
    With a support ``plane`` (world frame), ``cut_axis`` is the turned axis along its normal and
    ``cut_at`` where the box must start on it (the box may not reach behind the plane)."""

    lo: np.ndarray
    hi: np.ndarray
    rotation: np.ndarray
    plane: Optional[SupportPlane] = None
    cut_axis: Optional[int] = None

    @property
    def cut_at(self) -> float:
        """The plane's position along ``cut_axis``, plus its gap."""
        return self.plane.offset + self.plane.gap


def _object_box_or_none(c2w, pts, cfg: NormalizationConfig, rotation: np.ndarray, source: str, intrinsics,
                        sizes) -> Optional[ObjectBox]:
    """The object's box for 'object', or None, with a warning naming the key, when there are too few
    of its points to trust. With ``cut_at_plane`` (and an up direction), a floor or wall the object
    rests on turns the frame to lie along it and bounds the box (``support_plane``)."""
    eyes = camera_centres(c2w)
    if pts is None:
        log.warning("%s has no sparse points: dataset.normalization 'object' uses the cameras instead "
                    "(look-at centre, camera_distance %g)", source, cfg.camera_distance)
        return None
    centre = _lookat_or_fallback(c2w, pts, eyes, source)
    keep = object_points(pts, c2w, centre, cfg.object_min_view_fraction, intrinsics, sizes)
    if keep.sum() < MIN_OBJECT_POINTS:
        log.warning(
            "%s: only %d of %d sparse points lie in at least %g of the cameras' views and nearer than the cameras "
            "(dataset.normalization.object_min_view_fraction): the scene box follows the cameras instead "
            "(look-at centre, camera_distance %g)", source, int(keep.sum()), len(pts), cfg.object_min_view_fraction,
            cfg.camera_distance,
        )
        return None
    obj = pts[keep]
    plane = support_plane(obj, eyes, rotation[2]) if cfg.cut_at_plane and cfg.up != "none" else None
    if plane is None:
        return ObjectBox(*object_box(obj, rotation, cfg.object_percentile), rotation)
    turned_rotation, axis = plane_frame(plane, rotation[2])
    height = obj @ plane.normal - plane.offset
    front = height > plane.gap
    top = float(np.percentile(height[front], cfg.object_percentile))
    # along the plane only what stands out by a tenth of the object's height counts: flat things
    # on the plane (papers, frames, the plane's own noise) do not widen the box
    tall = front & (height > plane.gap + STANDING_SHARE * top)
    lo, hi = object_box(obj[tall if tall.sum() >= MIN_OBJECT_POINTS else front], turned_rotation,
                        cfg.object_percentile)
    box = ObjectBox(lo, hi, turned_rotation, plane, axis)
    box.lo[axis], box.hi[axis] = box.cut_at, plane.offset + top  # it rests on (or hangs from) the plane
    log.info("%s: the object %s a %s (%.0f%% of its sparse points lie on it); the scene box starts in front of it "
             "(dataset.normalization.cut_at_plane)", source, "stands on" if plane.kind == "floor" else "hangs on",
             plane.kind, 100.0 * plane.share)
    return box


def write_scene_transform(path: Path, scene_to_world: np.ndarray, **info) -> Path:
    """Save ``scene_to_world`` [4, 4] (and its inverse) as JSON at ``path``; returns the path."""
    m = np.asarray(scene_to_world, dtype=np.float64)
    payload = {
        "scene_to_world": m.tolist(),
        "world_to_scene": invert_similarity(m).tolist(),
        "scale": similarity_scale(m),  # one scene unit in world units
        "note": "x_world = scene_to_world @ [x_scene, 1]; exported meshes are already in world coordinates",
        **info,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)
    return path


def mean_elevation_deg(eyes: np.ndarray, up: np.ndarray) -> float:
    """Mean elevation (degrees) of positions eyes [N, 3] above the plane through the origin normal to up [3]."""
    up = np.asarray(up, dtype=np.float64) / np.linalg.norm(up)
    r = np.linalg.norm(eyes, axis=-1).clip(1e-12)
    return float(np.degrees(np.arcsin(np.clip((eyes @ up) / r, -1, 1))).mean())

