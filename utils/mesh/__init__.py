"""Triangle meshes: extraction from a field, the Mesh container, clean-up, decimation, UV
texture baking, files, CPU rendering, previews and geometry metrics.

Modules (each importable on its own; optional libraries are imported inside the functions that
need them, so importing this package never fails without them):

- ``extract``: isosurface of a field given as a plain callable, in one pass or block by block.
- ``backends``: marching cubes of a dense grid (PyMCubes, optional torchmcubes).
- ``grid``: sampling a field on a regular grid in chunks.
- ``mesh``: the ``Mesh`` container (vertex colours or UVs + texture) and similarity transforms.
- ``cleanup``: dropping small disconnected pieces, filling small holes (scipy, trimesh).
- ``decimate``: simplification to a face budget (fast-simplification).
- ``texture``: UV unwrapping (xatlas) and baking a colour function into a texture.
- ``io``: reading and writing PLY, OBJ (+MTL+PNG) and GLB files.
- ``render``: ray-cast rendering from pinhole cameras (trimesh + embreex).
- ``preview``: turntable images/videos and TensorBoard's mesh plugin.
- ``metrics``: accuracy / completeness / Chamfer / F-score against a ground truth.

A typical export: ``extract_isosurface`` -> ``clean_mesh`` -> ``decimate`` -> ``bake_texture``
(in the field's frame) -> ``Mesh.transformed`` (to world) -> ``save_mesh`` (.glb / .obj) and
``save_turntable``.
"""
from utils.mesh.backends import NonFiniteFieldError, marching_cubes, torchmcubes_available
from utils.mesh.cleanup import (
    CleanupReport,
    clean_mesh,
    component_labels,
    fill_small_holes,
    remove_small_components,
)
from utils.mesh.decimate import decimate
from utils.mesh.extract import DEFAULT_BLOCK_SIZE, extract_isosurface
from utils.mesh.grid import EmptySurfaceError
from utils.mesh.io import SUPPORTED_SAVE_EXTENSIONS, load_mesh, load_trimesh, save_mesh
from utils.mesh.mesh import Mesh, apply_similarity, check_similarity
from utils.mesh.metrics import (
    Box,
    Sphere,
    as_region,
    evaluate_mesh,
    load_points,
    mesh_distance_metrics,
    mesh_region,
    sample_surface,
)
from utils.mesh.preview import add_mesh_to_tensorboard, save_turntable, turntable_cameras
from utils.mesh.render import MeshRenderer, Rendering, look_at, render_mesh
from utils.mesh.texture import (
    UVAtlas,
    bake_texture,
    dilate_texture,
    rasterize_uv,
    sample_texture,
    unwrap_uv,
)

__all__ = [
    "Box",
    "CleanupReport",
    "DEFAULT_BLOCK_SIZE",
    "EmptySurfaceError",
    "Mesh",
    "MeshRenderer",
    "NonFiniteFieldError",
    "Rendering",
    "SUPPORTED_SAVE_EXTENSIONS",
    "Sphere",
    "UVAtlas",
    "add_mesh_to_tensorboard",
    "apply_similarity",
    "as_region",
    "bake_texture",
    "check_similarity",
    "clean_mesh",
    "component_labels",
    "decimate",
    "dilate_texture",
    "evaluate_mesh",
    "extract_isosurface",
    "fill_small_holes",
    "load_mesh",
    "load_points",
    "load_trimesh",
    "look_at",
    "marching_cubes",
    "mesh_distance_metrics",
    "mesh_region",
    "rasterize_uv",
    "remove_small_components",
    "render_mesh",
    "sample_surface",
    "sample_texture",
    "save_mesh",
    "save_turntable",
    "torchmcubes_available",
    "turntable_cameras",
    "unwrap_uv",
]
