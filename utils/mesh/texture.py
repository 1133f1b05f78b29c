"""UV texture baking: unwrap a mesh with xatlas, then fill a texture image with a colour
function evaluated on the surface, and sample such a texture bilinearly.

UV and image conventions are those of ``utils.mesh.mesh`` (u right, v up; image row 0 at the
top): texel (row i, column j) has its centre at ``u = (j + 0.5) / W``, ``v = 1 - (i + 0.5) / H``,
so a point at (u, v) sits at pixel position ``x = u W``, ``y = (1 - v) H``.

Baking, step by step:

1. ``unwrap_uv``: xatlas cuts the surface into charts and packs them into the square, at least
   ``padding`` texels apart. Vertices on chart seams are repeated (one UV each).
2. ``rasterize_uv``: every texel whose centre lies inside a UV triangle, or within
   ``ring`` texels of one (the nearest triangle wins), gets that triangle and the barycentric
   coordinates of the nearest point of it. The ring makes bilinear lookups near chart borders
   read colours of the surface rather than of the background.
3. The 3D point and the interpolated vertex normal of each such texel go to ``color_fn`` in
   chunks.
4. ``dilate_texture`` spreads the colours ``padding`` more texels past the charts (so mipmaps
   and bilinear filtering do not pull in the background) and paints the rest with the mean
   colour.

Axis names in shapes: N points, V vertices, F faces, H x W texels.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Callable, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from utils.mesh.mesh import Mesh

__all__ = ["UVAtlas", "bake_texture", "dilate_texture", "rasterize_uv", "sample_texture",
           "unwrap_uv"]

logger = logging.getLogger(__name__)

ColorFn = Callable[[Tensor, Tensor], Tensor]

# candidate (texel, triangle) pairs handled at once while rasterizing (~300 bytes of
# temporaries each, so ~300 MiB)
_RASTER_CHUNK = 2**20


def _check_size(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


@dataclasses.dataclass
class UVAtlas:
    """A UV layout of a mesh.

    vertex_map: [V'] int64, the input vertex each output vertex copies (seams repeat vertices).
    faces: [F, 3] int64 into the output vertices (the input's faces, same order).
    uvs: [V', 2] float32 in [0, 1] (v up).
    """

    vertex_map: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray


def unwrap_uv(mesh: Mesh, texture_size: int = 1024, padding: int = 4) -> UVAtlas:
    """Cut ``mesh`` into charts and pack them into the unit square with xatlas.

    texture_size: the texture's width and height in texels, which the packing is planned for;
    padding: texels kept free between charts (at that size). Takes about 20 s for 50k faces on
    one CPU core (xatlas' chart search dominates): decimate before unwrapping.
    mesh: vertices [V, 3], faces [F, 3]. Returns a ``UVAtlas``.
    """
    import xatlas

    texture_size = _check_size(texture_size, "texture_size")
    if isinstance(padding, bool) or not isinstance(padding, (int, np.integer)) or padding < 0:
        raise ValueError(f"padding must be an int >= 0 texels, got {padding!r}")
    if mesh.num_faces == 0:
        raise ValueError("cannot unwrap an empty mesh (0 faces)")
    t0 = time.perf_counter()
    atlas = xatlas.Atlas()
    atlas.add_mesh(mesh.vertices.detach().cpu().numpy().astype(np.float32),
                   mesh.faces.detach().cpu().numpy().astype(np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = texture_size
    pack.padding = int(padding)
    pack.bilinear = True  # one more texel around each chart, for bilinear lookups
    atlas.generate(xatlas.ChartOptions(), pack)
    if atlas.atlas_count != 1:
        raise RuntimeError(f"xatlas packed the charts into {atlas.atlas_count} atlases instead "
                           f"of one at texture_size={texture_size}; try a larger size")
    vmapping, faces, uvs = atlas[0]
    # xatlas plans for about texture_size but may end up a little larger (it reports width x
    # height); UVs are normalised to that, so the texture is just scaled to texture_size
    logger.info("uv unwrap: %d charts, %d -> %d vertices, %dx%d atlas (%.0f%% used) in %.1f s",
                atlas.chart_count, mesh.num_vertices, len(vmapping), atlas.width, atlas.height,
                100 * atlas.utilization, time.perf_counter() - t0)
    return UVAtlas(np.asarray(vmapping, dtype=np.int64), np.asarray(faces, dtype=np.int64),
                   np.clip(np.asarray(uvs, dtype=np.float32), 0.0, 1.0))


def rasterize_uv(uvs: Tensor, faces: Tensor, width: int, height: int,
                 ring: float = 1.5) -> Tuple[Tensor, Tensor, Tensor]:
    """Which triangle each texel belongs to, vectorised over all (texel, triangle) pairs.

    uvs [V, 2] (v up), faces [F, 3]. A texel gets the triangle its centre lies in, or, within
    ``ring`` texels of triangles, the nearest one (distance 0 inside wins over the ring).
    Triangles of zero area in UV space are left out.
    Returns (face [H, W] int64, -1 where no triangle is near; bary [H, W, 3] float32,
    the barycentric coordinates of the point of that triangle nearest to the texel centre;
    inside [H, W] bool, texels whose centre lies in their triangle).
    """
    width, height = _check_size(width, "width"), _check_size(height, "height")
    uvs = torch.as_tensor(uvs, dtype=torch.float64).cpu()
    faces = torch.as_tensor(faces, dtype=torch.int64).cpu()
    px = torch.stack([uvs[:, 0] * width, (1.0 - uvs[:, 1]) * height], dim=-1)  # pixel coords
    tri = px[faces]  # [F, 3, 2]
    lo = tri.amin(dim=1) - ring
    hi = tri.amax(dim=1) + ring
    # texel centres c + 0.5 inside [lo, hi]
    j0 = torch.ceil(lo[:, 0] - 0.5).clamp(0, width - 1).long()
    j1 = torch.floor(hi[:, 0] - 0.5).clamp(-1, width - 1).long()
    i0 = torch.ceil(lo[:, 1] - 0.5).clamp(0, height - 1).long()
    i1 = torch.floor(hi[:, 1] - 0.5).clamp(-1, height - 1).long()
    nx = (j1 - j0 + 1).clamp(min=0)
    ny = (i1 - i0 + 1).clamp(min=0)
    # triangles without area in UV space (xatlas leaves the slivers marching cubes makes at
    # u = v = 0) cover nothing and must not claim the texels around their point
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    flat = (e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]).abs() <= 1e-12
    count = torch.where(flat, torch.zeros_like(nx), nx * ny)
    best = torch.full((height * width,), math.inf, dtype=torch.float64)
    face_of = torch.full((height * width,), -1, dtype=torch.int64)
    bary_of = torch.zeros(height * width, 3, dtype=torch.float32)
    ends = torch.cumsum(count, 0)
    start = 0
    while start < len(count):
        # faces [start, stop) with about _RASTER_CHUNK candidate texels together
        base = int(ends[start - 1]) if start else 0
        stop = int(torch.searchsorted(ends, base + _RASTER_CHUNK, right=True))
        stop = max(stop, start + 1)
        n = count[start:stop]
        f = torch.arange(start, stop).repeat_interleave(n)
        if len(f):
            k = torch.arange(len(f)) - (torch.cumsum(n, 0) - n).repeat_interleave(n)
            jj = j0[f] + k % nx[f]
            ii = i0[f] + torch.div(k, nx[f], rounding_mode="floor")
            p = torch.stack([jj + 0.5, ii + 0.5], dim=-1).double()
            w, dist = _nearest_barycentric(tri[f], p)
            keep = dist <= ring
            f, w, dist, texel = f[keep], w[keep], dist[keep], (ii * width + jj)[keep]
            best.scatter_reduce_(0, texel, dist, reduce="amin")
            win = dist <= best[texel]
            face_of[texel[win]] = f[win]
            bary_of[texel[win]] = w[win].float()
        start = stop
    inside = best == 0.0
    return (face_of.view(height, width), bary_of.view(height, width, 3),
            inside.view(height, width))


def _nearest_barycentric(tri: Tensor, p: Tensor) -> Tuple[Tensor, Tensor]:
    """Barycentric coordinates [K, 3] of the point of each 2D triangle tri [K, 3, 2] nearest to
    p [K, 2], and the distance [K] (0 inside). Degenerate triangles count as their edges."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    v0, v1, v2 = b - a, c - a, p - a
    d = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    safe = torch.where(d.abs() > 1e-12, d, torch.ones_like(d))
    w1 = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / safe
    w2 = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / safe
    w = torch.stack([1.0 - w1 - w2, w1, w2], dim=-1)
    inside = (d.abs() > 1e-12) & (w >= 0).all(dim=-1)
    # outside: the nearest point lies on one of the edges (a, b), (b, c), (c, a)
    best_d = torch.full_like(d, math.inf)
    best_w = torch.zeros_like(w)
    for s, e, (ks, ke) in ((a, b, (0, 1)), (b, c, (1, 2)), (c, a, (2, 0))):
        seg = e - s
        t = ((p - s) * seg).sum(-1) / (seg * seg).sum(-1).clamp_min(1e-24)
        t = t.clamp(0.0, 1.0)
        dist = (s + t[:, None] * seg - p).norm(dim=-1)
        better = dist < best_d
        best_d = torch.where(better, dist, best_d)
        we = torch.zeros_like(w)
        we[:, ks], we[:, ke] = 1.0 - t, t
        best_w = torch.where(better[:, None], we, best_w)
    w = torch.where(inside[:, None], w, best_w)
    return w, torch.where(inside, torch.zeros_like(best_d), best_d)


def dilate_texture(image: np.ndarray, mask: np.ndarray, texels: int) -> np.ndarray:
    """Spread the colours of ``mask``ed texels ``texels`` steps outward (each new texel gets the
    mean of its filled 3x3 neighbours), then paint every texel still empty with the mean colour.

    image [H, W, 3] float32, mask [H, W] bool -> [H, W, 3] float32. OpenCV's box filter does the
    neighbour sums; ``cv2.inpaint`` is not used because it would also read the empty background.
    """
    import cv2

    img = np.where(mask[..., None], image, 0.0).astype(np.float32)
    filled = mask.astype(np.float32)
    if not mask.any():
        return img
    mean = img[mask].mean(axis=0)
    for _ in range(int(texels)):
        total = cv2.boxFilter(img * filled[..., None], -1, (3, 3), normalize=False,
                              borderType=cv2.BORDER_CONSTANT)
        weight = cv2.boxFilter(filled, -1, (3, 3), normalize=False,
                               borderType=cv2.BORDER_CONSTANT)
        grow = (weight > 0) & (filled == 0)
        if not grow.any():
            break
        img[grow] = total[grow] / weight[grow][:, None]
        filled[grow] = 1.0
    img[filled == 0] = mean
    return img


def sample_texture(texture: Tensor, uvs: Tensor) -> Tensor:
    """Bilinear texture lookup. texture [H, W, 3] (float in [0, 1] or uint8), uvs [N, 2]
    (v up) -> colours [N, 3] float32; coordinates outside [0, 1] read the border texels."""
    tex = texture if isinstance(texture, Tensor) else torch.as_tensor(np.asarray(texture))
    if tex.dtype == torch.uint8:
        tex = tex.float() / 255.0
    uv = torch.as_tensor(uvs, device=tex.device).to(torch.float32)
    # grid_sample with align_corners=False: -1 and +1 are the outer edges of the border texels,
    # x to the right, y down (row 0 at y = -1), i.e. x = 2u - 1, y = 1 - 2v
    grid = torch.stack([2.0 * uv[:, 0] - 1.0, 1.0 - 2.0 * uv[:, 1]], dim=-1)
    out = torch.nn.functional.grid_sample(
        tex.float().permute(2, 0, 1)[None], grid[None, None], mode="bilinear",
        padding_mode="border", align_corners=False)
    return out[0, :, 0].T.contiguous()


def bake_texture(mesh: Mesh, color_fn: ColorFn, texture_size: int = 1024, padding: int = 4,
                 chunk_size: int = 2**16, device: Optional[Union[str, torch.device]] = None,
                 ring: float = 1.5) -> Mesh:
    """A UV-textured copy of ``mesh`` whose texture holds ``color_fn`` on the surface.

    mesh: vertices [V, 3] in the frame ``color_fn`` expects (bake in the field's scene
        coordinates, then ``.transformed(...)``: UVs and texture go along). A mesh that already
        has UVs keeps them (re-baking); otherwise it is unwrapped with ``unwrap_uv``.
    color_fn: (points [N, 3], unit normals [N, 3]) float32 on ``device`` -> rgb [N, 3] in [0, 1];
        called under ``torch.no_grad()`` on chunks of at most ``chunk_size`` points. Normals are
        the area-weighted vertex normals interpolated across each triangle (pointing outward).
    texture_size: the square texture's width and height in texels (a positive int).
    padding: texels between charts, and how far colours are spread past them.
    ring: texels around each UV triangle that take the colour of its nearest point.
    Returns a Mesh with vertices [V', 3] (seam vertices repeated), the input's faces (renumbered),
    uvs [V', 2] and texture [texture_size, texture_size, 3] float32; vertex colours dropped.
    """
    texture_size = _check_size(texture_size, "texture_size")
    chunk_size = _check_size(chunk_size, "chunk_size")
    if mesh.num_faces == 0:
        raise ValueError("cannot bake a texture for an empty mesh (0 faces)")
    device = torch.device(device) if device is not None else torch.device("cpu")
    t0 = time.perf_counter()
    vertices = mesh.vertices.detach().cpu().double()
    if mesh.uvs is not None:
        normals = mesh.vertex_normals().detach().cpu().double()
        faces, uvs = mesh.faces.detach().cpu(), mesh.uvs.detach().cpu()
    else:
        normals = mesh.vertex_normals().detach().cpu().double()
        atlas = unwrap_uv(mesh, texture_size, padding)
        vmap = torch.from_numpy(atlas.vertex_map)
        vertices, normals = vertices[vmap], normals[vmap]
        faces, uvs = torch.from_numpy(atlas.faces), torch.from_numpy(atlas.uvs)
    t_unwrap = time.perf_counter()
    face, bary, _ = rasterize_uv(uvs, faces, texture_size, texture_size, ring=ring)
    texel = torch.nonzero(face.reshape(-1) >= 0).reshape(-1)
    texel_face = face.reshape(-1)[texel]
    texel_bary = bary.reshape(-1, 3)[texel]
    colors = torch.empty(len(texel), 3)
    with torch.no_grad():
        for s in range(0, len(texel), chunk_size):
            f = faces[texel_face[s:s + chunk_size]]  # [N, 3]
            w = texel_bary[s:s + chunk_size].double()[..., None]  # [N, 3, 1]
            points = (vertices[f] * w).sum(1).float()
            normal = torch.nn.functional.normalize((normals[f] * w).sum(1), dim=-1).float()
            c = color_fn(points.to(device), normal.to(device))
            if not isinstance(c, Tensor) or tuple(c.shape) != (len(f), 3):
                raise ValueError(f"color_fn must return rgb [N, 3] for [N, 3] points, got "
                                 f"{tuple(getattr(c, 'shape', ())) or type(c).__name__} for "
                                 f"N={len(f)}")
            colors[s:s + chunk_size] = c.detach().float().clamp(0.0, 1.0).cpu()
    t_color = time.perf_counter()
    image = np.zeros((texture_size * texture_size, 3), dtype=np.float32)
    image[texel.numpy()] = colors.numpy()
    mask = np.zeros(texture_size * texture_size, dtype=bool)
    mask[texel.numpy()] = True
    image = dilate_texture(image.reshape(texture_size, texture_size, 3),
                           mask.reshape(texture_size, texture_size), padding)
    logger.info("texture: %dx%d, %d texels on the surface (%.0f%%); unwrap %.1f s, colour %.1f "
                "s, total %.1f s", texture_size, texture_size, len(texel),
                100.0 * len(texel) / texture_size**2, t_unwrap - t0, t_color - t_unwrap,
                time.perf_counter() - t0)
    return Mesh(vertices.float(), faces, None, uvs, torch.from_numpy(image))

