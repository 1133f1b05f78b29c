"""The embedded default scene: an analytic signed-distance shape rendered into the Blender layout.

When its folder is missing, ``synthetic`` renders the scene (sphere tracing in PyTorch, 2x2
supersampled so edges carry partial alpha) into ``transforms_{train,val,test}.json`` + RGBA
PNGs, and writes the exact surface (marching cubes of the analytic SDF, vertices projected onto
the zero level set) as ``gt_mesh.ply``. The output depends only on the config's scene options
and seed; later runs reuse the folder. Then it loads like any Blender scene.

The shape: a rounded slab, a sphere and a torus blended by a smooth union, inside the box
[-1, 1]^3, z up. Its colour is procedural (per-part hues with smooth stripes and a checker), lit
by a fixed light in world space, so the appearance is view-independent but not trivial.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from datasets import register
from datasets.base import DatasetError
from datasets.blender import BlenderScene
from datasets.cameras import camera_rays, look_at, orbit_poses, pixel_directions
from utils.config import at_least, checked, in_range, positive

GENERATOR_VERSION = 1
LIGHT_DIR = (0.45, -0.35, 0.82)


# --------------------------------------------------------------------------- the analytic scene
def _smooth_union(a: Tensor, b: Tensor, k: float) -> Tuple[Tensor, Tensor]:
    """Polynomial smooth minimum of two SDFs; also returns the blend weight of ``b`` in [0, 1]."""
    h = (0.5 + 0.5 * (a - b) / k).clamp(0.0, 1.0)
    return torch.lerp(a, b, h) - k * h * (1.0 - h), h


def scene_parts(x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """SDFs of the three parts at points x [N, 3] -> (slab [N], sphere [N], torus [N])."""
    # rounded slab (a thick rounded tile) at the bottom
    q = (x - x.new_tensor([0.0, 0.0, -0.32])).abs() - x.new_tensor([0.5, 0.42, 0.1])
    slab = q.clamp_min(0.0).norm(dim=-1) + q.max(dim=-1).values.clamp_max(0.0) - 0.06
    # sphere resting on it, a little off centre
    sphere = (x - x.new_tensor([0.08, 0.05, 0.12])).norm(dim=-1) - 0.36
    # torus around the sphere, tilted about the x axis
    c, s = math.cos(0.5), math.sin(0.5)
    p = x - x.new_tensor([-0.05, 0.0, 0.05])
    p = torch.stack([p[:, 0], c * p[:, 1] - s * p[:, 2], s * p[:, 1] + c * p[:, 2]], dim=-1)
    ring = torch.stack([p[:, :2].norm(dim=-1) - 0.5, p[:, 2]], dim=-1)
    torus = ring.norm(dim=-1) - 0.11
    return slab, sphere, torus


def scene_sdf(x: Tensor) -> Tensor:
    """Signed distance bound of the scene at x [N, 3] -> [N] (negative inside)."""
    slab, sphere, torus = scene_parts(x)
    d, _ = _smooth_union(slab, sphere, 0.08)
    d, _ = _smooth_union(d, torus, 0.06)
    return d


def scene_albedo(x: Tensor) -> Tensor:
    """Procedural surface colour at x [N, 3] -> [N, 3] in [0, 1]."""
    slab, sphere, torus = scene_parts(x)
    d01, w_sphere = _smooth_union(slab, sphere, 0.08)
    _, w_torus = _smooth_union(d01, torus, 0.06)
    checker = 0.5 + 0.5 * torch.sin(7.0 * x[:, 0]) * torch.sin(7.0 * x[:, 1])
    slab_rgb = torch.stack([0.85 - 0.35 * checker, 0.7 - 0.2 * checker, 0.35 + 0.45 * checker], dim=-1)
    stripes = 0.5 + 0.5 * torch.sin(9.0 * x[:, 2] + 3.0 * x[:, 0])
    sphere_rgb = torch.stack([0.9 - 0.2 * stripes, 0.3 + 0.45 * stripes, 0.25 + 0.1 * stripes], dim=-1)
    hue = 0.5 + 0.5 * torch.cos(3.0 * torch.atan2(x[:, 1], x[:, 0]))
    torus_rgb = torch.stack([0.2 + 0.2 * hue, 0.45 + 0.3 * hue, 0.85 - 0.3 * hue], dim=-1)
    rgb = torch.lerp(slab_rgb, sphere_rgb, w_sphere[:, None])
    return torch.lerp(rgb, torus_rgb, w_torus[:, None]).clamp(0.0, 1.0)


def scene_normal(x: Tensor, eps: float = 1e-4) -> Tensor:
    """Unit outward normals at x [N, 3] by central differences of the SDF -> [N, 3]."""
    offsets = torch.eye(3, dtype=x.dtype) * eps
    grad = torch.stack(
        [scene_sdf(x + offsets[i]) - scene_sdf(x - offsets[i]) for i in range(3)], dim=-1
    )
    return torch.nn.functional.normalize(grad, dim=-1)


def shade(x: Tensor) -> Tensor:
    """Lit colour at surface points x [N, 3] -> [N, 3]: albedo x (ambient + diffuse from a fixed light)."""
    light = torch.nn.functional.normalize(x.new_tensor(LIGHT_DIR), dim=0)
    lambert = (scene_normal(x) @ light).clamp_min(0.0)
    return (scene_albedo(x) * (0.4 + 0.6 * lambert[:, None])).clamp(0.0, 1.0)


def sphere_trace(rays_o: Tensor, rays_d: Tensor, max_steps: int = 128, bound: float = 1.0) -> Tuple[Tensor, Tensor]:
    """First surface hit along unit rays [R, 3] -> (hit [R] bool, t [R]).

    Starts where each ray enters the bounding sphere of radius ``bound`` and only keeps
    iterating on rays that have neither hit nor left it.
    """
    b = (rays_o * rays_d).sum(-1)
    disc = b * b - (rays_o * rays_o).sum(-1) + bound * bound
    t = (-b - disc.clamp_min(0.0).sqrt()).clamp_min(0.0)
    t_exit = -b + disc.clamp_min(0.0).sqrt()
    hit = torch.zeros_like(t, dtype=torch.bool)
    active = torch.nonzero(disc > 0).flatten()
    for _ in range(max_steps):
        if active.numel() == 0:
            break
        d = scene_sdf(rays_o[active] + t[active, None] * rays_d[active])
        t[active] += 0.95 * d
        converged = d.abs() < 2e-5
        hit[active[converged]] = True
        left = t[active] > t_exit[active]
        active = active[~(converged | left)]
    return hit, t


# --------------------------------------------------------------------------- writing the dataset
def _camera_positions(n: int, radius: float, generator: torch.Generator) -> Tensor:
    """``n`` camera centres spread evenly over a sphere (a jittered Fibonacci lattice) -> [n, 3]."""
    k = torch.arange(n, dtype=torch.float64) + 0.5
    jitter = (torch.rand(n, generator=generator, dtype=torch.float64) - 0.5) * 0.6
    z = 1.0 - 2.0 * (k + jitter).clamp(0.01, n - 0.01) / n
    phi = math.pi * (3.0 - math.sqrt(5.0)) * k + 2 * math.pi * torch.rand(1, generator=generator, dtype=torch.float64)
    r = (1.0 - z * z).sqrt()
    return (torch.stack([r * phi.cos(), r * phi.sin(), z], dim=-1) * radius).float()


def _render_view(c2w: Tensor, width: int, height: int, focal: float, supersample: int) -> np.ndarray:
    """RGBA [H, W, 4] float in [0, 1] (straight alpha) of the scene seen from c2w [3, 4] (OpenCV)."""
    s = supersample
    intrinsics = torch.tensor([focal * s, focal * s, width * s / 2.0, height * s / 2.0])
    dirs = pixel_directions(width * s, height * s, intrinsics).reshape(-1, 3)
    rays_o, rays_d = camera_rays(dirs, c2w)
    hit, t = sphere_trace(rays_o, rays_d)
    colour = torch.zeros_like(rays_o)
    if hit.any():
        colour[hit] = shade(rays_o[hit] + t[hit, None] * rays_d[hit])
    # box-filter the s x s subpixels: premultiplied colour and coverage
    def pool(v: Tensor) -> Tensor:
        v = v.reshape(height, s, width, s, -1)
        return v.mean(dim=(1, 3))

    premult = pool(colour)
    alpha = pool(hit.float()[:, None])
    rgb = premult / alpha.clamp_min(1e-6)
    return torch.cat([rgb.clamp(0, 1), alpha], dim=-1).numpy()


def _write_split(root: Path, split: str, poses: Tensor, width: int, height: int, focal: float, supersample: int) -> None:
    import imageio.v3 as iio

    (root / split).mkdir(parents=True, exist_ok=True)
    camera_angle_x = 2.0 * math.atan(0.5 * width / focal)
    frames = []
    for i, c2w in enumerate(poses):
        rgba = _render_view(c2w, width, height, focal, supersample)
        iio.imwrite(root / split / f"r_{i}.png", (rgba * 255.0 + 0.5).astype(np.uint8))
        opengl = c2w.clone()
        opengl[:, 1:3] *= -1  # OpenCV -> OpenGL axes, as the Blender layout stores them
        matrix = torch.cat([opengl, torch.tensor([[0.0, 0.0, 0.0, 1.0]])], dim=0)
        frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": matrix.tolist()})
    meta = {"camera_angle_x": camera_angle_x, "frames": frames}
    (root / f"transforms_{split}.json").write_text(json.dumps(meta, indent=1))


def write_ground_truth_mesh(path: Path, resolution: int = 256) -> None:
    """Marching cubes of the analytic SDF over [-1, 1]^3, vertices projected onto its zero set."""
    from utils.mesh import extract_isosurface, save_mesh

    mesh = extract_isosurface(
        scene_sdf, (torch.full((3,), -1.0), torch.full((3,), 1.0)), resolution, coarse_to_fine=True
    )
    v = mesh.vertices.double()
    for _ in range(4):  # Newton steps onto sdf = 0
        v.requires_grad_(True)
        d = scene_sdf(v)
        (grad,) = torch.autograd.grad(d.sum(), v)
        v = (v - d[:, None] * grad / grad.pow(2).sum(-1, keepdim=True).clamp_min(1e-12)).detach()
    mesh.vertices = v.float()
    save_mesh(path, mesh)


def generate(root: Path, cfg: "SyntheticScene.Config", progress=print) -> None:
    """Render the scene into ``root`` (written to a temporary folder first, then renamed)."""
    generator = torch.Generator().manual_seed(cfg.seed)
    w = h = cfg.resolution
    focal = 0.5 * w / math.tan(0.5 * math.radians(cfg.fov_deg))
    up = torch.tensor([0.0, 0.0, 1.0])
    origin = torch.zeros(3)

    def poses_at(centres: Tensor) -> Tensor:
        return torch.stack([look_at(c, origin, up) for c in centres])

    train = poses_at(_camera_positions(cfg.n_train, cfg.camera_distance, generator))
    val = poses_at(_camera_positions(cfg.n_val, cfg.camera_distance, generator))
    test = orbit_poses(cfg.n_test, cfg.camera_distance, elevation_deg=25.0, elevation_swing_deg=15.0)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".tmp-", dir=root.parent))
    try:
        for split, poses in (("train", train), ("val", val), ("test", test)):
            progress(f"[synthetic] rendering {len(poses)} {split} views at {w}x{h} into {root}")
            _write_split(tmp, split, poses, w, h, focal, cfg.supersample)
        progress("[synthetic] writing the ground-truth mesh")
        write_ground_truth_mesh(tmp / "gt_mesh.ply", cfg.gt_mesh_resolution)
        (tmp / "scene.json").write_text(json.dumps(_identity(cfg), indent=1))
        try:
            os.replace(tmp, root)  # atomic: a half-written scene is never mistaken for a cached one
        except OSError:
            # another process (e.g. another rank of a torchrun job) rendered it first: use theirs
            if not (root / "scene.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _identity(cfg: "SyntheticScene.Config") -> dict:
    """What determines the rendered files; a cached folder is reused only when it matches."""
    keys = ("seed", "resolution", "n_train", "n_val", "n_test", "fov_deg", "camera_distance", "supersample",
            "gt_mesh_resolution")
    return {"generator_version": GENERATOR_VERSION, **{k: getattr(cfg, k) for k in keys}}


@register("synthetic")
class SyntheticScene(BlenderScene):
    @dataclasses.dataclass
    class Config(BlenderScene.Config):
        # None: load/synthetic/<size>px-seed<seed> under the working directory
        root_dir: Optional[str] = None  # type: ignore[assignment]
        seed: int = checked(in_range(0, 2**32 - 1), default=0)
        resolution: int = checked(at_least(1), default=128)  # image width and height
        n_train: int = checked(at_least(1), default=100)
        n_val: int = checked(at_least(1), default=4)
        n_test: int = checked(at_least(1), default=30)
        fov_deg: float = checked(in_range(0, 180, lo_open=True, hi_open=True), default=40.0)
        camera_distance: float = checked(positive(), default=2.7)
        supersample: int = checked(at_least(1), default=2)
        # marching-cubes grid of the ground-truth surface
        gt_mesh_resolution: int = checked(at_least(2), default=256)

    def __init__(self, cfg: "SyntheticScene.Config", scene_radius: float = 1.0) -> None:
        root = Path(cfg.root_dir or f"load/synthetic/{cfg.resolution}px-seed{cfg.seed}")
        meta_path = root / "scene.json"
        if root.is_file():
            raise DatasetError(f"dataset.root_dir: '{root}' is a file, not a folder (a generated scene's folder, or "
                               "one that does not exist yet)")
        if not root.exists():
            generate(root, cfg)
        elif not meta_path.is_file():
            raise DatasetError(
                f"'{root}' exists but holds no scene.json: not a generated synthetic scene "
                "(remove it or point dataset.root_dir elsewhere)"
            )
        else:
            stored = json.loads(meta_path.read_text())
            wanted = _identity(cfg)
            differ = {k: (stored.get(k), v) for k, v in wanted.items() if stored.get(k) != v}
            if differ:
                detail = ", ".join(f"{k}: cached {a} vs config {b}" for k, (a, b) in differ.items())
                raise DatasetError(
                    f"the cached synthetic scene in '{root}' was made with other options ({detail}); "
                    "set dataset.root_dir to a new folder or remove the old one"
                )
        cfg = dataclasses.replace(cfg, root_dir=str(root))
        super().__init__(cfg, scene_radius)
        self.gt_mesh_path = str(root / "gt_mesh.ply")

    def surface_points(self):
        """Up to 4000 vertices of the ground-truth surface (for the set-up picture)."""
        import trimesh

        vertices = np.asarray(trimesh.load(self.gt_mesh_path, process=False).vertices, dtype=np.float64)
        return vertices[:: max(1, len(vertices) // 4000)], "ground-truth surface points"
