"""Mesh export: a model's surface by marching cubes, coloured and in the input's world frame, and
its geometry scores against a ground-truth surface."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

from models.base import BaseModel
from utils.experiment import ExportConfig

log = logging.getLogger(__name__)


@torch.no_grad()
def export_mesh(model: BaseModel, cfg: ExportConfig, scene_to_world: Tensor, save_dir: Path, tag: str) -> List[Path]:
    """Marching cubes of ``model``'s surface (``cfg``: resolution, threshold, formats, ...), with
    vertex colours, mapped by ``scene_to_world`` [4, 4] when cfg.world_coordinates, written as
    ``save_dir/mesh_<tag>.<fmt>`` -> the written paths."""
    from utils.mesh import extract_isosurface
    from utils.mesh import save_mesh

    device = model.aabb.device
    was_training = model.training
    model.eval()
    try:
        r = float(model.cfg.radius)
        field, level = model.isosurface_field(cfg.threshold)
        skip = model.known_empty_fn() if cfg.use_occupancy_grid else None
        bounds = (torch.full((3,), -r, device=device), torch.full((3,), r, device=device))
        mesh = extract_isosurface(
            field, bounds, cfg.resolution, threshold=level, chunk_size=cfg.chunk_size,
            coarse_to_fine=cfg.coarse_to_fine, skip_fn=skip, device=device, backend=cfg.backend, progress=True,
        )
        if cfg.vertex_colors:
            mesh.vertex_colors = model.surface_colors(mesh.vertices.to(device)).cpu()
        if cfg.world_coordinates:
            mesh = mesh.transformed(scene_to_world)
    finally:
        model.train(was_training)
    paths = []
    for fmt in cfg.formats:
        path = Path(save_dir) / f"mesh_{tag}.{fmt}"
        save_mesh(path, mesh)
        paths.append(path)
        log.info("mesh: %s (%d vertices, %d faces)", path, mesh.vertices.shape[0], mesh.faces.shape[0])
    return paths


def score_mesh(mesh_path: Path, gt_path: str, n_points: int, threshold: float,
               region: Optional[Sequence[float]] = None) -> Dict[str, object]:
    """Accuracy / completeness / Chamfer / F-score of a mesh file against the ground-truth surface
    (both in world units), optionally only inside ``region`` (see utils.mesh.metrics.mesh_region)."""
    from utils.mesh.metrics import evaluate_mesh, mesh_region

    box = mesh_region(region)
    metrics = evaluate_mesh(str(mesh_path), gt_path, n_points=n_points, threshold=threshold, region=box)
    log.info("mesh vs ground truth: %s", ", ".join(f"{k}={v:.5f}" for k, v in metrics.items()))
    return dict(metrics, threshold=float(threshold), region=None if box is None else box.to_dict())
