"""Tiny captures of the embedded analytic scene written in the DTU, COLMAP and instant-ngp layouts,
with every camera (pose, intrinsics, distortion) and the world frame known.

The analytic scene lives in its own frame A (inside [-1, 1]^3, z up). Each capture's world frame
W is a known similarity of A (``A_TO_WORLD``), so a loader's normalization can be checked against
it. Images are rendered through the *distorted* lens: each subpixel of the distorted image is
unprojected with OpenCV (``cv2.undistortPoints``) and sphere-traced, so undistortion can be
checked against an independent pinhole render.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from datasets.cameras import look_at
from datasets.normalization import similarity, transform_points, transform_poses
from datasets.synthetic import shade, sphere_trace
from datasets.undistort import LensCamera


def axis_angle(axis, angle: float) -> np.ndarray:
    """Rotation matrix [3, 3] about ``axis`` by ``angle`` radians."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


# sphere-tracing steps: enough for all but grazing rays, and half the default's time
MAX_STEPS = 64

# the world of the captures: A scaled by 2.5, turned (so A's up is not the world's z), moved
A_TO_WORLD = np.linalg.inv(similarity(1.0 / 2.5, axis_angle([1.0, 0.3, -0.2], 0.9).T, [4.0, -2.0, 1.5]))


def camera_positions(n: int, distance: float = 2.7, seed: int = 0) -> np.ndarray:
    """``n`` camera centres [n, 3] (frame A) on a band of the sphere, above and below the equator."""
    rng = np.random.default_rng(seed)
    az = 2 * math.pi * (np.arange(n) + rng.uniform(0, 0.3, n)) / n
    el = np.radians(np.where(np.arange(n) % 2 == 0, 30.0, 5.0) + rng.uniform(-5, 5, n))
    return distance * np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], -1)


def poses_a(n: int, distance: float = 2.7, seed: int = 0) -> np.ndarray:
    """OpenCV c2w [n, 3, 4] (frame A) looking at the origin, z up."""
    up = torch.tensor([0.0, 0.0, 1.0])
    return np.stack([look_at(torch.tensor(c, dtype=torch.float32), torch.zeros(3), up).double().numpy()
                     for c in camera_positions(n, distance, seed)])


def unproject(lens: LensCamera, pixels: np.ndarray) -> np.ndarray:
    """Camera-space directions (z = 1) [N, 3] of distorted pixel positions [N, 2] (corner origin)."""
    import cv2

    if lens.kind == "pinhole":
        x = (pixels[:, 0] - lens.cx) / lens.fx
        y = (pixels[:, 1] - lens.cy) / lens.fy
    else:
        k = np.array([[lens.fx, 0, lens.cx - 0.5], [0, lens.fy, lens.cy - 0.5], [0, 0, 1.0]])
        pts = (pixels - 0.5).reshape(-1, 1, 2).astype(np.float64)
        if lens.kind == "opencv":
            crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12)
            if hasattr(cv2, "undistortPointsIter"):  # OpenCV 4
                und = cv2.undistortPointsIter(pts, k, lens.dist, None, None, crit)
            else:
                und = cv2.undistortPoints(pts, k, lens.dist, criteria=crit)
        elif lens.kind == "fisheye":
            und = cv2.fisheye.undistortPoints(pts, k, lens.dist.reshape(4, 1))
        else:
            raise ValueError(lens.kind)
        x, y = und[:, 0, 0], und[:, 0, 1]
    return np.stack([x, y, np.ones_like(x)], -1)


def render_views(c2w_a: np.ndarray, lenses: List[LensCamera], supersample: int = 2) -> List[np.ndarray]:
    """RGBA images [H, W, 4] float in [0, 1] of the analytic scene seen through each lens from
    c2w [N, 3, 4] (frame A); all views are sphere-traced in one batch."""
    s = supersample
    origins, directions, shapes = [], [], []
    for c2w_i, lens in zip(c2w_a, lenses):
        h, w = lens.height, lens.width
        jj, ii = np.meshgrid((np.arange(h * s) + 0.5) / s, (np.arange(w * s) + 0.5) / s, indexing="ij")
        dirs = unproject(lens, np.stack([ii.ravel(), jj.ravel()], -1))
        c2w = torch.from_numpy(np.asarray(c2w_i)).float()
        d = torch.nn.functional.normalize(torch.from_numpy(dirs).float() @ c2w[:, :3].T, dim=-1)
        origins.append(c2w[:, 3].expand_as(d))
        directions.append(d)
        shapes.append((h, w))
    o = torch.cat(origins).contiguous()
    d = torch.cat(directions)
    hit, t = sphere_trace(o, d, max_steps=MAX_STEPS)
    colour = torch.zeros_like(o)
    if hit.any():
        colour[hit] = shade(o[hit] + t[hit, None] * d[hit])
    out, start = [], 0
    for h, w in shapes:
        n = h * s * w * s
        premult = colour[start:start + n].reshape(h, s, w, s, 3).mean(dim=(1, 3))
        alpha = hit[start:start + n].float().reshape(h, s, w, s, 1).mean(dim=(1, 3))
        out.append(torch.cat([(premult / alpha.clamp_min(1e-6)).clamp(0, 1), alpha], -1).numpy())
        start += n
    return out


def render(c2w_a: np.ndarray, lens: LensCamera, supersample: int = 2) -> np.ndarray:
    """RGBA [H, W, 4] float in [0, 1] of the analytic scene seen through ``lens`` from c2w [3, 4] (frame A)."""
    return render_views(np.asarray(c2w_a)[None], [lens], supersample)[0]


def surface_points(c2w_a: np.ndarray, lenses: List[LensCamera], stride: int = 2) -> np.ndarray:
    """Analytic surface points [P, 3] (frame A) hit by every ``stride``-th pixel centre's pinhole ray
    of each view c2w [N, 3, 4]."""
    origins, directions = [], []
    for c2w_i, lens in zip(c2w_a, lenses):
        jj, ii = np.meshgrid(np.arange(0, lens.height, stride) + 0.5, np.arange(0, lens.width, stride) + 0.5,
                             indexing="ij")
        dirs = unproject(LensCamera(lens.width, lens.height, lens.fx, lens.fy, lens.cx, lens.cy),
                         np.stack([ii.ravel(), jj.ravel()], -1))
        c2w = torch.from_numpy(np.asarray(c2w_i)).float()
        d = torch.nn.functional.normalize(torch.from_numpy(dirs).float() @ c2w[:, :3].T, dim=-1)
        origins.append(c2w[:, 3].expand_as(d))
        directions.append(d)
    o, d = torch.cat(origins).contiguous(), torch.cat(directions)
    hit, t = sphere_trace(o, d, max_steps=MAX_STEPS)
    return (o[hit] + t[hit, None] * d[hit]).double().numpy()


def iio_read(path: Path) -> np.ndarray:
    """An 8-bit image file as float [H, W, C] in [0, 1]."""
    import imageio.v3 as iio

    return np.asarray(iio.imread(path), dtype=np.float64) / 255.0


def _png(path: Path, img: np.ndarray) -> None:
    import imageio.v3 as iio

    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, (np.clip(img, 0, 1) * 255.0 + 0.5).astype(np.uint8))


@dataclasses.dataclass
class Capture:
    """What a builder wrote: the folder and the truth about it."""

    root: Path
    c2w_a: np.ndarray  # [N, 3, 4] OpenCV poses in the analytic frame
    c2w_world: np.ndarray  # [N, 3, 4] OpenCV poses in the capture's world frame
    lenses: List[LensCamera]
    a_to_world: np.ndarray  # [4, 4]
    names: List[str]
    points_world: Optional[np.ndarray] = None


def pinhole(size: int = 28, focal: float = 36.0) -> LensCamera:
    return LensCamera(size, size, focal, focal * 1.02, size / 2 + 0.7, size / 2 - 0.4)


# --------------------------------------------------------------------------- DTU
def write_dtu(root: Path, n: int = 4, size: int = 28, masks: bool = True) -> Capture:
    """DTU layout: image/000000.png, mask/000.png (3-channel), cameras_sphere.npz with P = K [R|t]
    in a world frame given by a non-identity scale_mat (scale_mat maps frame A -> world)."""
    scale_mat = np.eye(4)
    scale_mat[:3, :3] *= 2.5
    scale_mat[:3, 3] = [10.0, -4.0, 30.0]
    c2w_a = poses_a(n, seed=1)
    lens = pinhole(size)
    cams = {}
    c2w_world = transform_poses(scale_mat, c2w_a)
    names = []
    images = render_views(c2w_a, [lens] * n)
    for i in range(n):
        rgba = images[i]
        name = f"{i:06d}.png"
        names.append(name)
        _png(root / "image" / name, rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:]) * 0.1)
        if masks:
            _png(root / "mask" / f"{i:03d}.png", np.repeat(rgba[..., 3:], 3, axis=2))
        k = np.array([[lens.fx, 0, lens.cx], [0, lens.fy, lens.cy], [0, 0, 1.0]])
        r = c2w_world[i, :, :3].T
        t = -r @ c2w_world[i, :, 3]
        p = np.eye(4)
        p[:3] = 3.7 * (k @ np.concatenate([r, t[:, None]], 1))  # P is defined up to scale
        cams[f"world_mat_{i}"] = p
        cams[f"scale_mat_{i}"] = scale_mat
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "cameras_sphere.npz", **cams)
    return Capture(root, c2w_a, c2w_world, [lens] * n, scale_mat, names)


# --------------------------------------------------------------------------- COLMAP
def colmap_camera(model: str, size: int = 28, camera_id: int = 1, width: Optional[int] = None,
                  height: Optional[int] = None):
    """A pycolmap.Camera of ``model`` with mild, known distortion, ``size`` x ``size`` pixels (or
    ``width`` x ``height``, the principal point near the centre); returns (camera, LensCamera)."""
    import pycolmap

    from datasets.undistort import from_colmap

    f = 30.0
    width = width or size
    height = height or size
    params = {
        "SIMPLE_PINHOLE": [f, size / 2 + 0.3, size / 2 - 0.2],
        "PINHOLE": [f, f * 1.03, size / 2 + 0.3, size / 2 - 0.2],
        "SIMPLE_RADIAL": [f, size / 2 + 0.3, size / 2 - 0.2, -0.08],
        "RADIAL": [f, size / 2 + 0.3, size / 2 - 0.2, -0.08, 0.02],
        "OPENCV": [f, f * 1.03, size / 2 + 0.3, size / 2 - 0.2, -0.3, 0.05, 0.004, -0.003],
        "FULL_OPENCV": [f, f * 1.03, size / 2 + 0.3, size / 2 - 0.2, -0.08, 0.02, 0.002, -0.001, 0.01, 0.02, -0.01, 0.005],
        "SIMPLE_RADIAL_FISHEYE": [f, size / 2 + 0.3, size / 2 - 0.2, 0.05],
        "RADIAL_FISHEYE": [f, size / 2 + 0.3, size / 2 - 0.2, 0.05, -0.01],
        "OPENCV_FISHEYE": [f, f * 1.03, size / 2 + 0.3, size / 2 - 0.2, 0.05, -0.01, 0.004, -0.001],
        "SIMPLE_FISHEYE": [f, size / 2 + 0.3, size / 2 - 0.2],
        "FISHEYE": [f, f * 1.03, size / 2 + 0.3, size / 2 - 0.2],
        "FOV": [f, f * 1.03, size / 2 + 0.3, size / 2 - 0.2, 0.3],
        "THIN_PRISM_FISHEYE": [f, f * 1.03, size / 2 + 0.3, size / 2 - 0.2, 0.05, -0.01, 0.002, -0.001, 0.004, -0.001,
                               0.001, 0.002],
        "DIVISION": [f, f * 1.03, size / 2 + 0.3, size / 2 - 0.2, -0.05],
    }[model]
    # the principal point near the centre of a width x height image
    one_focal = model.startswith(("SIMPLE", "RADIAL"))  # params f, cx, cy, ... (else fx, fy, cx, cy, ...)
    params[1 if one_focal else 2] += (width - size) / 2
    params[2 if one_focal else 3] += (height - size) / 2
    cam = pycolmap.Camera.create_from_model_name(camera_id, model, f, width, height)
    cam.params = params
    return cam, from_colmap(cam, "fixture")


def _rigid(w2c: np.ndarray):
    import pycolmap

    return pycolmap.Rigid3d(pycolmap.Rotation3d(w2c[:, :3]), w2c[:, 3])


def add_colmap_camera(recon, camera) -> None:
    """Add a pycolmap.Camera to a Reconstruction (pycolmap >= 3.12 wants a rig for it)."""
    if hasattr(recon, "add_camera_with_trivial_rig"):
        recon.add_camera_with_trivial_rig(camera)
    else:  # pycolmap < 3.12
        recon.add_camera(camera)


def add_colmap_image(recon, name: str, camera_id: int, image_id: int, c2w: np.ndarray) -> None:
    """Add a registered image with the OpenCV camera-to-world pose c2w [3, 4] to a Reconstruction."""
    import pycolmap

    w2c = np.concatenate([c2w[:, :3].T, (-c2w[:, :3].T @ c2w[:, 3])[:, None]], 1)
    image = pycolmap.Image(name=name, camera_id=camera_id, image_id=image_id)
    if hasattr(recon, "add_image_with_trivial_frame"):
        recon.add_image_with_trivial_frame(image, _rigid(w2c))
    else:  # pycolmap < 3.12
        image.cam_from_world = _rigid(w2c)
        recon.add_image(image)
        recon.register_image(image_id)


def write_colmap(root: Path, n: int = 5, size: int = 28, model: str = "OPENCV", shared_camera: bool = True,
                 binary: bool = True, masks: bool = False, sizes: Optional[List[Tuple[int, int]]] = None) -> Capture:
    """COLMAP layout: images/r_i.png rendered through ``model``'s distortion, sparse/0 (binary or
    text, via pycolmap) in the world A_TO_WORLD(A), points3D on the analytic surface. ``sizes``:
    each image's (width, height), one camera per image (as COLMAP's image_undistorter writes)."""
    import pycolmap

    c2w_a = poses_a(n, seed=2)
    c2w_world = transform_poses(A_TO_WORLD, c2w_a)
    recon = pycolmap.Reconstruction()
    if sizes is not None:
        shared_camera = False
    cameras = [colmap_camera(model, size, 1 if shared_camera else i + 1,
                             *(sizes[i] if sizes is not None else (None, None))) for i in range(n)]
    lenses = [lens for _, lens in cameras]
    images = render_views(c2w_a, lenses)
    names = []
    for i in range(n):
        camera_id = 1 if shared_camera else i + 1
        cam, lens = cameras[i]
        if camera_id not in recon.cameras:
            add_colmap_camera(recon, cam)
        rgba = images[i]
        name = f"r_{i}.png"
        names.append(name)
        _png(root / "images" / name, rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:]) * 0.1)
        if masks:
            _png(root / "masks" / f"{name}.png", rgba[..., 3])
        add_colmap_image(recon, name, camera_id, i + 1, c2w_world[i])
    pts_world = transform_points(A_TO_WORLD, surface_points(c2w_a, lenses, stride=4))
    for p in pts_world:
        recon.add_point3D(p, pycolmap.Track(), np.array([128, 128, 128], dtype=np.uint8))
    sparse = root / "sparse" / "0"
    sparse.mkdir(parents=True, exist_ok=True)
    (recon.write_binary if binary else recon.write_text)(str(sparse))
    return Capture(root, c2w_a, c2w_world, lenses, A_TO_WORLD, names, pts_world)


# --------------------------------------------------------------------------- instant-ngp
def write_ngp(root: Path, n: int = 5, size: int = 28, missing: int = 1, distortion: bool = True,
              sizes: Optional[List[Tuple[int, int]]] = None) -> Capture:
    """transforms.json (global fl_x, fl_y, cx, cy, w, h, k1, k2, p1, p2, aabb_scale; OpenGL poses in the
    world A_TO_WORLD(A)) with images/r_i.png; the last ``missing`` frames name images that do not exist.
    ``sizes``: each image's (width, height), written per frame with its own w, h, fl_x, fl_y, cx, cy
    (as nerfstudio does for mixed cameras)."""
    from datasets.undistort import from_opencv_params

    coeffs = dict(k1=-0.06, k2=0.01, p1=0.001, p2=-0.002) if distortion else {}
    wh = sizes if sizes is not None else [(size, size)] * n
    lenses = [from_opencv_params(w, h, 31.0 + 0.5 * i * (sizes is not None), 31.5, w / 2 - 0.3, h / 2 + 0.5, **coeffs)
              for i, (w, h) in enumerate(wh)]
    c2w_a = poses_a(n + missing, seed=3)
    c2w_world = transform_poses(A_TO_WORLD, c2w_a)
    frames, names = [], []
    images = render_views(c2w_a[:n], lenses)
    for i in range(n + missing):
        name = f"r_{i}.png"
        if i < n:
            rgba = images[i]
            _png(root / "images" / name, rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:]) * 0.1)
            names.append(name)
        opengl = np.eye(4)
        opengl[:3] = c2w_world[i]
        opengl[:3, 1:3] *= -1
        frame = {"file_path": f"images/{name}", "transform_matrix": opengl.tolist()}
        if sizes is not None and i < n:
            lens = lenses[i]
            frame.update({"fl_x": lens.fx, "fl_y": lens.fy, "cx": lens.cx, "cy": lens.cy, "w": lens.width,
                          "h": lens.height})
        frames.append(frame)
    lens = lenses[0]
    meta = {"fl_x": lens.fx, "fl_y": lens.fy, "cx": lens.cx, "cy": lens.cy, "w": lens.width, "h": lens.height,
            "aabb_scale": 4, **{k: coeffs.get(k, 0.0) for k in ("k1", "k2", "p1", "p2")}, "frames": frames}
    root.mkdir(parents=True, exist_ok=True)
    (root / "transforms.json").write_text(json.dumps(meta, indent=1))
    return Capture(root, c2w_a[:n], c2w_world[:n], lenses, A_TO_WORLD, names)
