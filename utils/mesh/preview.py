"""Looking at a mesh: a shaded turntable (PNG grid + MP4) rendered on the CPU, and logging to
TensorBoard's mesh plugin.

Axis names in shapes: V vertices, F faces, H x W pixels.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from utils.mesh.mesh import Mesh
from utils.mesh.render import MeshRenderer, look_at
from utils.mesh.texture import sample_texture

__all__ = ["add_mesh_to_tensorboard", "save_turntable", "turntable_cameras"]

PathLike = Union[str, Path]


def turntable_cameras(mesh: Mesh, n_views: int, size: int = 256, elevation_deg: float = 20.0,
                      fov_deg: float = 40.0, up: Sequence[float] = (0.0, 0.0, 1.0)
                      ) -> List[Tuple[np.ndarray, np.ndarray]]:
    """``n_views`` cameras on a circle around the mesh's bounding sphere, ``elevation_deg`` above
    its equator (the plane normal to ``up``), framing the whole mesh in a square image of
    ``size`` pixels. Returns [(c2w [3, 4], intrinsics [4] = fx, fy, cx, cy)] (OpenCV axes)."""
    if isinstance(n_views, bool) or not isinstance(n_views, int) or n_views < 1:
        raise ValueError(f"n_views must be a positive int, got {n_views!r}")
    v = mesh.vertices.detach().cpu().double().numpy()
    if len(v) == 0:
        raise ValueError("cannot frame an empty mesh (0 vertices)")
    centre = 0.5 * (v.min(0) + v.max(0))
    radius = max(float(np.linalg.norm(v - centre, axis=1).max()), 1e-9)
    half_fov = math.radians(fov_deg) / 2
    distance = 1.05 * radius / math.sin(half_fov)
    up = np.asarray(up, dtype=np.float64)
    up /= np.linalg.norm(up)
    # two directions spanning the equator plane
    a = np.cross(up, [1.0, 0.0, 0.0] if abs(up[0]) < 0.9 else [0.0, 1.0, 0.0])
    a /= np.linalg.norm(a)
    b = np.cross(up, a)
    focal = 0.5 * size / math.tan(half_fov)
    intrinsics = np.array([focal, focal, size / 2.0, size / 2.0])
    el = math.radians(elevation_deg)
    cams = []
    for k in range(n_views):
        az = 2 * math.pi * k / n_views
        direction = math.cos(el) * (math.cos(az) * a + math.sin(az) * b) + math.sin(el) * up
        cams.append((look_at(centre + distance * direction, centre, up), intrinsics))
    return cams


def _grid(frames: Sequence[np.ndarray], columns: int, gap: int = 2) -> np.ndarray:
    """Frames [H, W, 3] uint8 -> one image, ``columns`` frames per row, white gaps."""
    h, w = frames[0].shape[:2]
    rows = math.ceil(len(frames) / columns)
    out = np.full((rows * h + (rows - 1) * gap, columns * w + (columns - 1) * gap, 3), 255,
                  dtype=np.uint8)
    for k, f in enumerate(frames):
        r, c = divmod(k, columns)
        out[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = f
    return out


def save_turntable(mesh: Mesh, image_path: Optional[PathLike] = None,
                   video_path: Optional[PathLike] = None, n_frames: int = 36, grid_views: int = 8,
                   columns: int = 4, size: int = 256, elevation_deg: float = 20.0,
                   up: Sequence[float] = (0.0, 0.0, 1.0), fps: int = 12,
                   background: Sequence[float] = (1.0, 1.0, 1.0)) -> List[np.ndarray]:
    """Render a Lambert-shaded turntable of ``mesh`` (its texture or vertex colours as albedo,
    else grey) from ``n_frames`` cameras around it; save a PNG grid of ``grid_views`` evenly
    spaced views (``columns`` per row) and/or the frames as an MP4 (or GIF, by extension), at
    ``fps``. ``up``: the world direction shown up. Returns the frames [size, size, 3] uint8.
    About 0.1-0.3 s per 256^2 frame on one core for a 100k-face mesh."""
    from utils.saving import save_image, save_video

    renderer = MeshRenderer(mesh)

    def frames_for(n: int) -> List[np.ndarray]:
        out = []
        for c2w, k in turntable_cameras(mesh, n, size, elevation_deg, up=up):
            img = renderer.render(c2w, k, size, size, "lambert", background).rgb
            out.append((img.numpy().clip(0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))
        return out

    frames = frames_for(n_frames)
    if image_path is not None:
        if n_frames % grid_views == 0:  # the grid's views are frames already made
            views = frames[::n_frames // grid_views]
        else:
            views = frames_for(grid_views)
        save_image(image_path, _grid(views, min(columns, grid_views)))
    if video_path is not None:
        save_video(video_path, frames, fps=fps)
    return frames


def add_mesh_to_tensorboard(writer, tag: str, mesh: Mesh, global_step: Optional[int] = None,
                            max_faces: int = 100_000) -> Mesh:
    """Log ``mesh`` to TensorBoard's mesh plugin (``SummaryWriter.add_mesh``).

    Meshes above ``max_faces`` are decimated first (a browser renders the plugin's meshes; a
    few 100k faces is what it stays responsive with). Colours: the vertex colours, the texture
    sampled at each vertex's UV, or grey. Returns the Mesh that was logged (vertex-coloured).
    """
    from utils.mesh.decimate import decimate

    if mesh.num_faces == 0:
        raise ValueError(f"cannot log an empty mesh (0 faces) as '{tag}'")
    if isinstance(max_faces, bool) or not isinstance(max_faces, int) or max_faces < 1:
        raise ValueError(f"max_faces must be a positive int, got {max_faces!r}")
    colors = mesh.vertex_colors
    if mesh.texture is not None:
        colors = sample_texture(mesh.texture, mesh.uvs)
    if colors is None:
        colors = torch.full((mesh.num_vertices, 3), 0.8)
    vertices, faces, colors = mesh.vertices.detach().cpu(), mesh.faces.detach().cpu(), \
        colors.detach().cpu()
    if mesh.uvs is not None:  # one vertex per position again, so decimation sees no seams
        unique, first, node = np.unique(vertices.numpy(), axis=0, return_index=True,
                                        return_inverse=True)
        node = torch.from_numpy(node.reshape(-1))
        vertices, faces, colors = torch.from_numpy(unique), node[faces], colors[first]
    plain = Mesh(vertices, faces, colors)
    if plain.num_faces > max_faces:
        plain = decimate(plain, target_faces=max_faces)
    colors8 = (plain.vertex_colors.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8)
    writer.add_mesh(tag, vertices=plain.vertices[None], colors=colors8[None],
                    faces=plain.faces.to(torch.int32)[None], global_step=global_step)
    return plain
