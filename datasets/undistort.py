"""Lens models of real captures, and undistortion of their images into pinhole images.

A ``LensCamera`` is one physical camera: its size, its pinhole part (fx, fy, cx, cy, in the
toolkit's convention: the image's top-left pixel *corner* at (0, 0), as COLMAP and instant-ngp use)
and its distortion. Loaders undistort every image with OpenCV onto a pinhole camera with the same
fx, fy, cx, cy, so the rest of the toolkit only sees pinhole cameras:

- OpenCV's own models (``cv2.initUndistortRectifyMap``): COLMAP SIMPLE_RADIAL, RADIAL, OPENCV,
  FULL_OPENCV, and instant-ngp/nerfstudio k1 k2 [k3 k4] p1 p2;
- fisheye models (``cv2.fisheye.initUndistortRectifyMap``, equidistant with a polynomial in the
  angle): COLMAP SIMPLE_RADIAL_FISHEYE, RADIAL_FISHEYE, OPENCV_FISHEYE, SIMPLE_FISHEYE, FISHEYE,
  and nerfstudio's OPENCV_FISHEYE;
- COLMAP models OpenCV lacks (FOV, THIN_PRISM_FISHEYE, RAD_TAN_THIN_PRISM_FISHEYE, DIVISION,
  SIMPLE_DIVISION, EUCM, ...): the same ``cv2.remap``, with maps from COLMAP's own projection
  (``pycolmap.Camera.img_from_cam``).

Pixels of the pinhole image whose ray falls outside the source image take the nearest border
colour (masks: 0). OpenCV puts pixel *centres* at integer coordinates, so the matrices handed to
OpenCV have cx - 0.5, cy - 0.5.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

import numpy as np

from datasets.base import DatasetError

# COLMAP model name -> (kind, how to read params into fx, fy, cx, cy, distortion)
_SIMPLE = ("f", "cx", "cy")
_FULL = ("fx", "fy", "cx", "cy")
COLMAP_MODELS: Dict[str, Tuple[str, Tuple[str, ...], int]] = {
    # name: (kind, pinhole parameter names, number of distortion parameters after them)
    "SIMPLE_PINHOLE": ("pinhole", _SIMPLE, 0),
    "PINHOLE": ("pinhole", _FULL, 0),
    "SIMPLE_RADIAL": ("opencv", _SIMPLE, 1),
    "RADIAL": ("opencv", _SIMPLE, 2),
    "OPENCV": ("opencv", _FULL, 4),
    "FULL_OPENCV": ("opencv", _FULL, 8),
    "SIMPLE_RADIAL_FISHEYE": ("fisheye", _SIMPLE, 1),
    "RADIAL_FISHEYE": ("fisheye", _SIMPLE, 2),
    "OPENCV_FISHEYE": ("fisheye", _FULL, 4),
    "SIMPLE_FISHEYE": ("fisheye", _SIMPLE, 0),
    "FISHEYE": ("fisheye", _FULL, 0),
}


def _opencv_coefficients(model: str, extra: np.ndarray) -> np.ndarray:
    """COLMAP distortion parameters -> OpenCV's coefficient vector (k1, k2, p1, p2[, k3, ...])."""
    if model == "SIMPLE_RADIAL":
        return np.array([extra[0], 0.0, 0.0, 0.0])
    if model == "RADIAL":
        return np.array([extra[0], extra[1], 0.0, 0.0])
    return np.asarray(extra, dtype=np.float64)  # OPENCV: k1 k2 p1 p2; FULL_OPENCV: k1 k2 p1 p2 k3 k4 k5 k6


def _fisheye_coefficients(extra: np.ndarray) -> np.ndarray:
    """COLMAP fisheye parameters -> cv2.fisheye's (k1, k2, k3, k4)."""
    out = np.zeros(4)
    out[: len(extra)] = extra
    return out


@dataclasses.dataclass
class LensCamera:
    """A camera with lens distortion.

    kind: 'pinhole' (none), 'opencv' (dist = OpenCV's k1 k2 p1 p2 [k3 [k4 k5 k6]]), 'fisheye'
    (dist = cv2.fisheye's k1 k2 k3 k4) or 'colmap' (any other COLMAP model; ``colmap`` holds the
    pycolmap.Camera whose projection is used).
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    kind: str = "pinhole"
    dist: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    model: str = "PINHOLE"
    colmap: Any = None
    _maps: Optional[Tuple[np.ndarray, np.ndarray]] = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def intrinsics(self) -> np.ndarray:
        """The pinhole camera the undistorted image has: [4] (fx, fy, cx, cy)."""
        return np.array([self.fx, self.fy, self.cx, self.cy], dtype=np.float64)

    @property
    def is_distorted(self) -> bool:
        if self.kind == "pinhole":
            return False
        if self.kind == "opencv":
            return bool(np.any(self.dist != 0))
        return True  # a fisheye is never a pinhole, even without polynomial terms

    def opencv_matrix(self) -> np.ndarray:
        """K [3, 3] of the undistorted pinhole in OpenCV's pixel-centre convention (our principal
        point is measured from the image corner)."""
        return np.array([[self.fx, 0.0, self.cx - 0.5], [0.0, self.fy, self.cy - 0.5], [0.0, 0.0, 1.0]])

    def undistort_maps(self) -> Tuple[np.ndarray, np.ndarray]:
        """Source positions for ``cv2.remap``: (map_x [H, W], map_y [H, W]) float32, OpenCV pixel
        coordinates in the distorted image of each pixel of the pinhole image."""
        if self._maps is not None:
            return self._maps
        import cv2

        size = (int(self.width), int(self.height))
        k = self.opencv_matrix()
        if self.kind == "opencv":
            maps = cv2.initUndistortRectifyMap(k, self.dist, None, k, size, cv2.CV_32FC1)
        elif self.kind == "fisheye":
            maps = cv2.fisheye.initUndistortRectifyMap(k, self.dist.reshape(4, 1), np.eye(3), k, size, cv2.CV_32FC1)
        elif self.kind == "colmap":
            j, i = np.meshgrid(np.arange(self.height) + 0.5, np.arange(self.width) + 0.5, indexing="ij")
            rays = np.stack([(i - self.cx) / self.fx, (j - self.cy) / self.fy, np.ones_like(i)], -1).reshape(-1, 3)
            src = np.asarray(self.colmap.img_from_cam(rays), dtype=np.float64).reshape(self.height, self.width, 2)
            src = np.where(np.isfinite(src), src - 0.5, -1e6)  # COLMAP's corner origin -> OpenCV's centres
            maps = (src[..., 0].astype(np.float32), src[..., 1].astype(np.float32))
        else:
            j, i = np.meshgrid(np.arange(self.height, dtype=np.float32), np.arange(self.width, dtype=np.float32),
                               indexing="ij")
            maps = (i, j)
        self._maps = (np.asarray(maps[0], np.float32), np.asarray(maps[1], np.float32))
        return self._maps

    def undistort(self, img: np.ndarray, is_mask: bool = False) -> np.ndarray:
        """The pinhole image of a distorted image [H, W, C] (float) -> [H, W, C]."""
        if not self.is_distorted:
            return img
        import cv2

        if img.shape[0] != self.height or img.shape[1] != self.width:
            raise DatasetError(
                f"an image is {img.shape[1]}x{img.shape[0]} but its camera is {self.width}x{self.height}"
            )
        map_x, map_y = self.undistort_maps()
        border = cv2.BORDER_CONSTANT if is_mask else cv2.BORDER_REPLICATE
        out = cv2.remap(img, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=border, borderValue=0)
        return out if out.ndim == 3 else out[..., None]


def from_colmap(camera: Any, source: str) -> LensCamera:
    """A LensCamera from a pycolmap.Camera (any model but the spherical ones)."""
    model = camera.model.name if hasattr(camera.model, "name") else str(camera.model)
    params = np.asarray(camera.params, dtype=np.float64)
    width, height = int(camera.width), int(camera.height)
    if model in COLMAP_MODELS:
        kind, names, n_extra = COLMAP_MODELS[model]
        n_pin = len(names)
        if params.shape[0] != n_pin + n_extra:
            raise DatasetError(f"{source}: camera {camera.camera_id} ({model}) has {params.shape[0]} parameters")
        if n_pin == 3:
            fx = fy = params[0]
            cx, cy = params[1], params[2]
        else:
            fx, fy, cx, cy = params[:4]
        extra = params[n_pin:]
        if kind == "opencv":
            dist = _opencv_coefficients(model, extra)
        elif kind == "fisheye":
            dist = _fisheye_coefficients(extra)
        else:
            dist = np.zeros(0)
        return LensCamera(width, height, float(fx), float(fy), float(cx), float(cy), kind, dist, model)
    spherical = camera.is_spherical() if callable(getattr(camera, "is_spherical", None)) else getattr(
        camera, "is_spherical", False)
    if spherical or model == "EQUIRECTANGULAR":
        raise DatasetError(f"{source}: camera {camera.camera_id} is {model}, a spherical camera: not supported")
    try:
        fx, fy = float(camera.focal_length_x), float(camera.focal_length_y)
        cx, cy = float(camera.principal_point_x), float(camera.principal_point_y)
    except Exception as err:  # a model without a focal length
        raise DatasetError(f"{source}: camera {camera.camera_id} ({model}) has no focal length: {err}") from err
    return LensCamera(width, height, fx, fy, cx, cy, "colmap", params, model, colmap=camera)


def from_opencv_params(
    width: int, height: int, fx: float, fy: float, cx: float, cy: float,
    k1: float = 0.0, k2: float = 0.0, p1: float = 0.0, p2: float = 0.0, k3: float = 0.0, k4: float = 0.0,
    fisheye: bool = False,
) -> LensCamera:
    """A LensCamera from instant-ngp / nerfstudio style parameters (OPENCV or OPENCV_FISHEYE)."""
    if fisheye:
        return LensCamera(width, height, fx, fy, cx, cy, "fisheye", np.array([k1, k2, k3, k4], dtype=np.float64),
                          "OPENCV_FISHEYE")
    dist = np.array([k1, k2, p1, p2] + ([k3] if k3 else []), dtype=np.float64)
    kind = "opencv" if np.any(dist != 0) else "pinhole"
    return LensCamera(width, height, fx, fy, cx, cy, kind, dist, "OPENCV" if kind == "opencv" else "PINHOLE")
