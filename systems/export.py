"""Mesh export: a model's surface as files people can use, and its geometry scores.

    extract (marching cubes, block-wise when large)     -> the surface in the scene frame
    clean (drop floaters), decimate (export.max_faces)  -> the full mesh: vertex colours, world frame
    decimate (texture.max_faces), unwrap, bake           -> the textured mesh (.glb, .obj+.mtl+.png)
    turntable                                            -> a preview (.png grid, .mp4), TensorBoard

Every step is in utils/mesh (which knows nothing of models); this module feeds it the model's
field and colours and decides names and frames. Files go to ``save_dir`` as ``mesh_<tag>.<fmt>``,
``mesh_<tag>_textured.<fmt>`` and ``mesh_<tag>_preview.{png,mp4}``.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

from models.base import BaseModel
from utils.experiment import ExportConfig
from utils.mesh import Mesh

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ExportedMesh:
    """What an export wrote: the full mesh's files (the first is the one scored), the textured
    mesh's files, the preview's files, and the face counts."""

    mesh_paths: List[Path]
    textured_paths: List[Path] = dataclasses.field(default_factory=list)
    preview_paths: List[Path] = dataclasses.field(default_factory=list)
    faces: int = 0
    textured_faces: int = 0


@torch.no_grad()
def extract_surface(model: BaseModel, cfg: ExportConfig) -> Mesh:
    """The model's surface by marching cubes in the scene frame (no colours), cleaned as
    export.clean says."""
    from utils.mesh import clean_mesh, extract_isosurface

    device = model.aabb.device
    r = float(model.cfg.radius)
    field, level = model.isosurface_field(cfg.threshold)
    skip = model.known_empty_fn() if cfg.use_occupancy_grid else None
    bounds = (torch.full((3,), -r, device=device), torch.full((3,), r, device=device))
    mesh = extract_isosurface(
        field, bounds, cfg.resolution, threshold=level, chunk_size=cfg.chunk_size, coarse_to_fine=cfg.coarse_to_fine,
        skip_fn=skip, device=device, backend=cfg.backend, progress=True, block_size=cfg.block_size,
    )
    if cfg.clean.enabled:
        mesh, report = clean_mesh(mesh, min_faces=cfg.clean.min_faces, min_fraction=cfg.clean.min_fraction,
                                  fill_holes=cfg.clean.fill_holes)
        log.info("mesh clean-up: %s", report)
    return mesh


def _decimated(mesh: Mesh, max_faces: Optional[int]) -> Mesh:
    from utils.mesh import decimate

    if max_faces is None or mesh.num_faces <= max_faces:
        return mesh
    t0 = time.perf_counter()
    out = decimate(mesh, target_faces=int(max_faces))
    log.info("mesh decimated from %d to %d faces in %.1f s", mesh.num_faces, out.num_faces, time.perf_counter() - t0)
    return out


def _to_output_frame(mesh: Mesh, cfg: ExportConfig, scene_to_world: Tensor) -> Mesh:
    return mesh.transformed(scene_to_world) if cfg.world_coordinates else mesh


def _save(mesh: Mesh, save_dir: Path, stem: str, formats: Sequence[str]) -> List[Path]:
    from utils.mesh import save_mesh

    paths = []
    for fmt in formats:
        path = save_mesh(Path(save_dir) / f"{stem}.{fmt}", mesh)
        paths.append(path)
        log.info("mesh: %s (%d vertices, %d faces)", path, mesh.num_vertices, mesh.num_faces)
    return paths


@torch.no_grad()
def export_mesh(model: BaseModel, cfg: ExportConfig, scene_to_world: Tensor, save_dir: Path, tag: str,
                tensorboard=None, global_step: Optional[int] = None,
                up: Sequence[float] = (0.0, 0.0, 1.0)) -> ExportedMesh:
    """Extract ``model``'s surface and write what export.* asks for (see the module docstring),
    in the input's world frame (``scene_to_world`` [4, 4]) when cfg.world_coordinates.
    ``tensorboard``: a SummaryWriter for the mesh plugin (optional); ``up`` [3]: the scene frame's
    up direction, which the preview shows up."""
    from utils.mesh import bake_texture, save_turntable
    from utils.mesh.preview import add_mesh_to_tensorboard

    device = model.aabb.device
    was_training = model.training
    model.eval()
    try:
        surface = extract_surface(model, cfg)
        full = _decimated(surface, cfg.max_faces)
        if cfg.vertex_colors:
            full.vertex_colors = model.surface_colors(full.vertices.to(device), full.vertex_normals().to(device)).cpu()
        result = ExportedMesh(_save(_to_output_frame(full, cfg, scene_to_world), save_dir, f"mesh_{tag}", cfg.formats),
                              faces=full.num_faces)
        shown = full
        if cfg.texture.enabled and cfg.texture.formats:
            light = _decimated(Mesh(surface.vertices, surface.faces), cfg.texture.max_faces)
            t0 = time.perf_counter()
            textured = bake_texture(light, model.surface_colors, texture_size=cfg.texture.size, device=device)
            log.info("texture: %dx%d baked in %.1f s", cfg.texture.size, cfg.texture.size, time.perf_counter() - t0)
            result.textured_paths = _save(_to_output_frame(textured, cfg, scene_to_world), save_dir,
                                          f"mesh_{tag}_textured", cfg.texture.formats)
            result.textured_faces = textured.num_faces
            shown = textured
    finally:
        model.train(was_training)
    if cfg.preview.enabled:
        # in the scene frame (+z is up for every loader that normalizes the scene; DTU says its own)
        t0 = time.perf_counter()
        stem = Path(save_dir) / f"mesh_{tag}_preview"
        save_turntable(shown, image_path=stem.with_suffix(".png"), video_path=stem.with_suffix(".mp4"),
                       n_frames=cfg.preview.frames, size=cfg.preview.size, up=up)
        result.preview_paths = [stem.with_suffix(".png"), stem.with_suffix(".mp4")]
        log.info("mesh preview: %s (+ .mp4) in %.1f s", result.preview_paths[0], time.perf_counter() - t0)
        if cfg.preview.tensorboard and tensorboard is not None:
            add_mesh_to_tensorboard(tensorboard, "mesh", shown, global_step=global_step)
    return result


def score_mesh(mesh_path: Path, gt_path: str, n_points: int, threshold: float,
               region: Optional[Sequence[float]] = None) -> Dict[str, object]:
    """Accuracy / completeness / Chamfer / F-score of a mesh file against the ground-truth surface
    (both in world units), optionally only inside ``region`` (see utils.mesh.metrics.mesh_region)."""
    from utils.mesh.metrics import evaluate_mesh, mesh_region

    box = mesh_region(region)
    metrics = evaluate_mesh(str(mesh_path), gt_path, n_points=n_points, threshold=threshold, region=box)
    log.info("mesh vs ground truth: %s", ", ".join(f"{k}={v:.5f}" for k, v in metrics.items()))
    return dict(metrics, threshold=float(threshold), region=None if box is None else box.to_dict())


def mesh_failure(err: BaseException) -> str:
    """One line saying why a mesh could not be made or scored, with what to change when it is memory."""
    from systems.evaluation import failure_reason
    from utils.memory import is_out_of_memory

    if is_out_of_memory(err):
        return "out of memory (lower export.resolution or export.chunk_size)"
    return failure_reason(err)


def export_and_score(model: BaseModel, context, system_cfg, tensorboard=None, step: int = 0) -> Dict[str, object]:
    """The test's mesh: export it (context.export) as ``mesh_step<step>.*`` and score it against
    the scene's ground-truth surface when there is one (system_cfg.eval_mesh_*; the scores are also
    logged to TensorBoard as test/mesh_<metric>) -> entries for the test metrics:
    {"geometry": scores}, or "mesh" / "geometry": "skipped: <reason>" when the mesh cannot be
    extracted or written, or not scored (the other test outputs are written all the same)."""
    try:
        exported = export_mesh(model, context.export, context.scene_to_world, context.save_dir, f"step{step:07d}",
                               tensorboard=tensorboard, global_step=step, up=context.up)
    except Exception as err:  # noqa: BLE001 (an empty surface, too little memory, a full disk...)
        reason = mesh_failure(err)
        log.error("mesh export failed: %s; the other test outputs are written", reason)
        return {"mesh": f"skipped: {reason}"}
    if not context.gt_mesh_path or not exported.mesh_paths or not context.export.world_coordinates:
        return {}
    try:
        scores = score_mesh(exported.mesh_paths[0], context.gt_mesh_path, system_cfg.eval_mesh_points,
                            system_cfg.eval_mesh_threshold, system_cfg.eval_mesh_region)
    except Exception as err:  # noqa: BLE001 (e.g. an unreadable ground truth, or no points in the region)
        reason = mesh_failure(err)
        log.error("mesh scoring failed: %s", reason)
        return {"geometry": f"skipped: {reason}"}
    if tensorboard is not None:
        for key, value in scores.items():
            if isinstance(value, float) and key != "threshold":
                tensorboard.add_scalar(f"test/mesh_{key}", value, step)
    return {"geometry": scores}
