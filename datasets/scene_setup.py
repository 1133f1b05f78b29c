"""A picture (and a PLY) of a scene's set-up: the cameras, the sparse points and the model's box,
so a user can check the framing before a long run.

``write_scene_setup(scene, save_dir)`` writes, in the *scene* frame the model works in:

- ``scene_setup.png``: the box [-radius, radius]^3 (model.radius, orange), the cameras as frusta
  (blue: training views, red: views only validated/tested), the sparse points (their colours) and,
  when the box was cut at a floor or wall (``dataset.normalization.cut_at_plane``), a patch of that
  plane (purple grid), seen orthographically from the top (+z), the front (-y) and the side (+x)
  at one scale; below, three training photos with the box's edges, the plane and the points
  projected into them. The box should enclose the object with a small margin, and in the photos
  its outline should frame the object and the plane lie on the floor or wall.
- ``scene_setup.ply``: the same as vertices (points, frustum corners, box corners, plane patch),
  edges (box, frusta) and faces (frusta, plane patch), for MeshLab / Blender / Open3D.

A scene says what to draw through ``Scene.setup_overview()`` (a ``SceneOverview``; None: nothing).
Arrays are numpy (N cameras, P points).
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Tuple

import numpy as np

if TYPE_CHECKING:
    from datasets.normalization import SupportPlane

log = logging.getLogger(__name__)

BOX_COLOUR = (255, 150, 0)
TRAIN_COLOUR = (40, 110, 255)
EVAL_COLOUR = (230, 40, 40)
PICKED_COLOUR = (0, 170, 60)  # the cameras whose photos are shown
POINT_GREY = (110, 110, 110)
PLANE_COLOUR = (170, 60, 200)  # the floor or wall the box was cut at
PANEL = 400  # pixels per panel side
TITLE = 22  # pixels of the strip above each panel that names it


@dataclasses.dataclass
class SceneOverview:
    """What the set-up picture shows, in scene coordinates.

    c2w [N, 3, 4] OpenCV camera-to-scene, intrinsics [N, 4] (fx, fy, cx, cy) at sizes [N, 2]
    (H, W), is_train [N] bool, points [P, 3] with optional colours points_rgb [P, 3] uint8,
    radius (the box is [-radius, radius]^3), load_image(i) -> rgb [H_i, W_i, 3] float of view i
    (None: no photos), and the support plane the box was cut at (None: none)."""

    c2w: np.ndarray
    intrinsics: np.ndarray
    sizes: np.ndarray
    is_train: np.ndarray
    radius: float
    names: List[str] = dataclasses.field(default_factory=list)
    points: Optional[np.ndarray] = None
    points_rgb: Optional[np.ndarray] = None
    load_image: Optional[Callable[[int], np.ndarray]] = None
    points_label: str = "sparse points"
    plane: Optional["SupportPlane"] = None


# --------------------------------------------------------------------------- geometry
def box_corners(radius: float) -> np.ndarray:
    """The 8 corners [8, 3] of [-radius, radius]^3 (bit i of the index: axis i at +radius)."""
    idx = np.arange(8)
    return radius * np.stack([(idx >> a & 1) * 2.0 - 1.0 for a in range(3)], -1)


BOX_EDGES = np.array([(i, i | 1 << a) for i in range(8) for a in range(3) if not i >> a & 1])  # [12, 2]


def frustum_corners(c2w: np.ndarray, intrinsics: np.ndarray, sizes: np.ndarray, depth: float) -> np.ndarray:
    """Each camera's centre and its image corners' rays at ``depth`` along the optical axis ->
    [N, 5, 3] (centre, then top-left, top-right, bottom-right, bottom-left)."""
    h, w = sizes[:, 0].astype(float), sizes[:, 1].astype(float)
    fx, fy, cx, cy = intrinsics.T
    us = np.stack([np.zeros_like(w), w, w, np.zeros_like(w)], -1)  # [N, 4]
    vs = np.stack([np.zeros_like(h), np.zeros_like(h), h, h], -1)
    cam = np.stack([(us - cx[:, None]) / fx[:, None], (vs - cy[:, None]) / fy[:, None], np.ones_like(us)], -1) * depth
    world = np.einsum("nij,nkj->nki", c2w[:, :, :3], cam) + c2w[:, None, :, 3]
    return np.concatenate([c2w[:, None, :, 3], world], axis=1)


FRUSTUM_EDGES = np.array([(0, 1), (0, 2), (0, 3), (0, 4), (1, 2), (2, 3), (3, 4), (4, 1)])
FRUSTUM_FACES = np.array([(0, 1, 2), (0, 2, 3), (0, 3, 4), (0, 4, 1)])


def plane_patch(plane: "SupportPlane", radius: float, n_lines: int = 7) -> Tuple[np.ndarray, np.ndarray]:
    """A square patch of the plane, 1.5 radius from its centre (the plane's point nearest the
    scene's centre) to its sides: (corners [4, 3] in order around it, grid segments [2 n_lines, 2, 3])."""
    n = np.asarray(plane.normal, dtype=np.float64)
    n = n / np.linalg.norm(n)
    helper = np.eye(3)[int(np.argmin(np.abs(n)))]  # the axis least along the normal
    u = np.cross(n, helper)
    u /= np.linalg.norm(u)
    v = np.cross(n, u)
    centre, half = n * plane.offset, 1.5 * radius
    corners = centre + half * np.array([-u - v, u - v, u + v, -u + v])
    t = np.linspace(-half, half, n_lines)[:, None]
    along_v = np.stack([centre + t * u - half * v, centre + t * u + half * v], 1)
    along_u = np.stack([centre - half * u + t * v, centre + half * u + t * v], 1)
    return corners, np.concatenate([along_v, along_u])


def project(points: np.ndarray, c2w: np.ndarray, intrinsics: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Points [P, 3] seen by one camera (c2w [3, 4], intrinsics [4]) -> (pixels [P, 2], in front [P] bool)."""
    cam = (points - c2w[:, 3]) @ c2w[:, :3]
    z = cam[:, 2]
    zs = np.where(z > 1e-9, z, 1e-9)
    uv = np.stack([intrinsics[0] * cam[:, 0] / zs + intrinsics[2], intrinsics[1] * cam[:, 1] / zs + intrinsics[3]], -1)
    return uv, z > 1e-9


# --------------------------------------------------------------------------- drawing
VIEWS = (  # (title, horizontal axis, its sign, vertical axis, its sign)
    ("top (looking down -z): x right, y up", 0, 1.0, 1, 1.0),
    ("front (looking along +y): x right, z up", 0, 1.0, 2, 1.0),
    ("side (looking along -x): y right, z up", 1, 1.0, 2, 1.0),
)


def _text(img: np.ndarray, text: str, org: Tuple[int, int], scale: float = 0.42, colour=(20, 20, 20),
          outline: bool = True) -> None:
    import cv2

    if outline:  # legible over drawings
        cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 3, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def _titled(panel: np.ndarray, title: str, colour=(20, 20, 20)) -> np.ndarray:
    """The panel [H, W, 3] below a white strip holding its title -> [TITLE + H, W, 3]."""
    strip = np.full((TITLE, panel.shape[1], 3), 255, np.uint8)
    _text(strip, title, (6, 16), 0.45, colour, outline=False)
    return np.concatenate([strip, panel], 0)


def _ortho_panel(ov: SceneOverview, title: str, ax_u: int, sign_u: float, ax_v: int, sign_v: float,
                 extent: float, frusta: np.ndarray, picked: Sequence[int]) -> np.ndarray:
    """One orthographic view [PANEL, PANEL, 3] uint8 of the scene, ``extent`` scene units from the
    centre to the panel's edge."""
    import cv2

    img = np.full((PANEL, PANEL, 3), 250, np.uint8)
    scale = (PANEL / 2 - 14) / extent
    centre = PANEL / 2

    def px(p: np.ndarray) -> np.ndarray:
        return np.stack([centre + sign_u * p[..., ax_u] * scale, centre - sign_v * p[..., ax_v] * scale], -1)

    # axes through the origin
    cv2.line(img, (0, PANEL // 2), (PANEL, PANEL // 2), (225, 225, 225), 1)
    cv2.line(img, (PANEL // 2, 0), (PANEL // 2, PANEL), (225, 225, 225), 1)
    if ov.plane is not None:
        for a, b in np.round(px(plane_patch(ov.plane, ov.radius)[1])).astype(int):
            cv2.line(img, tuple(a), tuple(b), PLANE_COLOUR, 1, cv2.LINE_AA)  # under the points
    if ov.points is not None and len(ov.points):
        q = np.round(px(ov.points)).astype(int)
        ok = (q >= 0).all(1) & (q < PANEL).all(1)
        colours = ov.points_rgb[ok] if ov.points_rgb is not None else np.broadcast_to(POINT_GREY, (int(ok.sum()), 3))
        for (x, y), c in zip(q[ok], colours):
            cv2.circle(img, (int(x), int(y)), 1, tuple(int(v) for v in c), -1)
    corners = px(box_corners(ov.radius))
    for a, b in BOX_EDGES:
        cv2.line(img, tuple(np.round(corners[a]).astype(int)), tuple(np.round(corners[b]).astype(int)), BOX_COLOUR, 2,
                 cv2.LINE_AA)
    order = [i for i in range(len(frusta)) if i not in picked] + list(picked)  # the picked ones on top
    for i in order:
        colour = PICKED_COLOUR if i in picked else TRAIN_COLOUR if ov.is_train[i] else EVAL_COLOUR
        f = np.round(px(frusta[i])).astype(int)
        for a, b in FRUSTUM_EDGES:
            cv2.line(img, tuple(f[a]), tuple(f[b]), colour, 1, cv2.LINE_AA)
        if i in picked:
            _text(img, str(picked.index(i) + 1), (int(f[0][0]) + 4, int(f[0][1]) - 4), 0.45, PICKED_COLOUR)
    unit = 10 ** np.floor(np.log10(extent))  # a scale bar of a round length
    bar = int(round(unit * scale))
    cv2.line(img, (8, PANEL - 10), (8 + bar, PANEL - 10), (20, 20, 20), 2)
    _text(img, f"{unit:g}", (12 + bar, PANEL - 6), 0.38)
    return _titled(img, title)


def _photo_panel(ov: SceneOverview, index: int, number: int) -> np.ndarray:
    """View ``index``'s photo [PANEL, PANEL, 3] uint8 with the box's edges and the points projected into it."""
    import cv2

    img = np.clip(ov.load_image(index)[..., :3] * 255 + 0.5, 0, 255).astype(np.uint8)
    h, w = img.shape[:2]
    s = min(PANEL / w, PANEL / h)
    nw, nh = max(1, int(round(w * s))), max(1, int(round(h * s)))
    small = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    small = (0.75 * small + 0.25 * 255).astype(np.uint8)  # paler, so the overlay stands out
    k = ov.intrinsics[index] * np.array([nw / w, nh / h, nw / w, nh / h])
    c2w = ov.c2w[index]
    if ov.points is not None and len(ov.points):
        uv, front = project(ov.points, c2w, k)
        ok = front & (uv >= 0).all(1) & (uv[:, 0] < nw) & (uv[:, 1] < nh)
        xy = uv[ok].astype(int)
        # one half-transparent pixel per point: the object stays visible under them
        small[xy[:, 1], xy[:, 0]] = (0.5 * small[xy[:, 1], xy[:, 0]] + 0.5 * np.array([0, 90, 255])).astype(np.uint8)
    if ov.plane is not None:
        _draw_segments(small, plane_patch(ov.plane, ov.radius)[1], c2w, k, PLANE_COLOUR)
    corners = box_corners(ov.radius)
    _draw_segments(small, corners[BOX_EDGES], c2w, k, BOX_COLOUR)
    panel = np.full((PANEL, PANEL, 3), 250, np.uint8)
    top, left = (PANEL - nh) // 2, (PANEL - nw) // 2
    panel[top:top + nh, left:left + nw] = small
    name = ov.names[index] if ov.names else str(index)
    return _titled(panel, f"{number}: {name} with the box and the points", PICKED_COLOUR)


def _draw_segments(img: np.ndarray, segments: np.ndarray, c2w: np.ndarray, intrinsics: np.ndarray, colour) -> None:
    """Draw 3D segments [K, 2, 3] into the photo img [H, W, 3] of the camera (c2w [3, 4],
    intrinsics [4]), sampled along their length so that only the parts in front of it are drawn."""
    import cv2

    t = np.linspace(0, 1, 64)[:, None]
    for a, b in segments:
        uv, front = project(a + t * (b - a), c2w, intrinsics)
        for j in range(len(t) - 1):
            if front[j] and front[j + 1] and np.abs(uv[j:j + 2]).max() < 1e5:
                cv2.line(img, tuple(np.round(uv[j]).astype(int)), tuple(np.round(uv[j + 1]).astype(int)),
                         colour, 1, cv2.LINE_AA)


def draw_scene_setup(ov: SceneOverview) -> np.ndarray:
    """The set-up picture [H, W, 3] uint8: three orthographic views and up to three photos with the
    box drawn in, and a legend."""
    n = len(ov.c2w)
    eyes = ov.c2w[:, :, 3]
    # one scale for the three views: the box and every camera in sight
    extent = 1.12 * max(ov.radius, float(np.abs(eyes).max()) if n else ov.radius)
    frusta = frustum_corners(ov.c2w, ov.intrinsics, ov.sizes, depth=0.08 * extent)
    train = np.nonzero(ov.is_train)[0]
    picked = sorted({int(train[int(f * len(train))]) for f in (0.0, 1 / 3, 2 / 3)}) if len(train) else []
    top = np.concatenate([_ortho_panel(ov, t, u, su, v, sv, extent, frusta, picked) for t, u, su, v, sv in VIEWS], 1)
    rows = [top]
    if ov.load_image is not None and picked:
        photos = [_photo_panel(ov, i, k + 1) for k, i in enumerate(picked)]
        photos += [np.full((TITLE + PANEL, PANEL, 3), 250, np.uint8)] * (3 - len(photos))
        rows.append(np.concatenate(photos, 1))
    legend = np.full((58 if ov.plane is None else 82, top.shape[1], 3), 255, np.uint8)
    inside = ""
    if ov.points is not None and len(ov.points):
        k = int((np.abs(ov.points) <= ov.radius).all(1).sum())
        inside = f"; {len(ov.points)} {ov.points_label}, {k} ({100 * k / len(ov.points):.0f}%) inside the box"
    _text(legend, f"orange: the model's box, radius {ov.radius:g} (model.radius){inside}", (8, 20), 0.45, (0, 0, 0))
    n_train = int(ov.is_train.sum())
    _text(legend, f"cameras: {n_train} training (blue), {n - n_train} validation/test only (red), "
                  f"numbered green: the photos below", (8, 44), 0.45, (0, 0, 0))
    if ov.plane is not None:
        rests = "stands on" if ov.plane.kind == "floor" else "hangs on"
        _text(legend, f"purple: the {ov.plane.kind} the object {rests} ({100 * ov.plane.share:.0f}% of its points); "
                      "the box starts in front of it: left to the background, out of the mesh "
                      "(dataset.normalization.cut_at_plane)", (8, 68), 0.45, (0, 0, 0))
    rows.append(legend)
    grid = np.concatenate(rows, 0)
    return grid


# --------------------------------------------------------------------------- PLY
def write_setup_ply(ov: SceneOverview, path: Path) -> Path:
    """The set-up as an ASCII PLY (scene frame): points, frusta (edges and faces), box (edges)."""
    depth = 0.08 * 1.12 * max(ov.radius, float(np.abs(ov.c2w[:, :, 3]).max()) if len(ov.c2w) else ov.radius)
    frusta = frustum_corners(ov.c2w, ov.intrinsics, ov.sizes, depth)
    vertices: List[np.ndarray] = []
    colours: List[np.ndarray] = []
    edges: List[np.ndarray] = []
    faces: List[np.ndarray] = []
    count = 0
    if ov.points is not None and len(ov.points):
        vertices.append(ov.points)
        colours.append(ov.points_rgb if ov.points_rgb is not None else np.tile(POINT_GREY, (len(ov.points), 1)))
        count += len(ov.points)
    vertices.append(box_corners(ov.radius))
    colours.append(np.tile(BOX_COLOUR, (8, 1)))
    edges.append(np.concatenate([BOX_EDGES + count, np.tile(BOX_COLOUR, (12, 1))], 1))
    count += 8
    if ov.plane is not None:  # a square patch of it, two triangles
        vertices.append(plane_patch(ov.plane, ov.radius)[0])
        colours.append(np.tile(PLANE_COLOUR, (4, 1)))
        faces.append(np.array([(0, 1, 2), (0, 2, 3)]) + count)
        count += 4
    for i, f in enumerate(frusta):
        colour = TRAIN_COLOUR if ov.is_train[i] else EVAL_COLOUR
        vertices.append(f)
        colours.append(np.tile(colour, (5, 1)))
        edges.append(np.concatenate([FRUSTUM_EDGES + count, np.tile(colour, (8, 1))], 1))
        faces.append(FRUSTUM_FACES + count)
        count += 5
    v = np.concatenate(vertices)
    c = np.concatenate(colours).astype(np.uint8)
    e = np.concatenate(edges).astype(np.int64)
    fc = np.concatenate(faces).astype(np.int64) if faces else np.zeros((0, 3), np.int64)
    header = (
        "ply\nformat ascii 1.0\ncomment nsr-toolkit scene set-up, scene frame: sparse points, model box "
        f"(radius {ov.radius:g}), camera frusta{', support plane' if ov.plane is not None else ''}\n"
        f"element vertex {len(v)}\nproperty float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\n"
        f"element face {len(fc)}\nproperty list uchar int vertex_indices\n"
        f"element edge {len(e)}\nproperty int vertex1\nproperty int vertex2\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    )
    lines = [header]
    lines += [f"{x:.6g} {y:.6g} {z:.6g} {r} {g} {b}\n" for (x, y, z), (r, g, b) in zip(v, c)]
    lines += [f"3 {a} {b} {d}\n" for a, b, d in fc]
    lines += [f"{a} {b} {r} {g} {bb}\n" for a, b, r, g, bb in e]
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(lines))
    tmp.replace(path)
    return path


def write_scene_setup(scene, save_dir: Path) -> Optional[Tuple[Path, Path]]:
    """``save_dir``/scene_setup.png and .ply of ``scene`` (see the module's docstring); None when
    the scene has nothing to show. A failure to draw or to write them is a warning, not fatal: the
    picture is a check, not an output of the run (a full disk stops the run where it writes outputs)."""
    try:
        ov = scene.setup_overview()
    except Exception as err:  # noqa: BLE001 (a diagnostic must not stop the run)
        log.warning("scene set-up picture skipped: %s", err)
        return None
    if ov is None:
        return None
    import imageio.v3 as iio

    save_dir = Path(save_dir)
    try:
        picture = draw_scene_setup(ov)
    except Exception as err:  # noqa: BLE001
        log.warning("scene set-up picture skipped: %s", err)
        return None
    png = save_dir / "scene_setup.png"
    try:
        save_dir.mkdir(parents=True, exist_ok=True)
        iio.imwrite(png, picture)
        ply = write_setup_ply(ov, save_dir / "scene_setup.ply")
    except OSError as err:
        log.warning("cannot write the scene set-up picture into '%s': %s", save_dir, err.strerror or err)
        return None
    log.info("check the framing: %s (cameras, %s and the model's box; also %s)", png,
             ov.points_label if ov.points is not None else "no points", ply.name)
    return png, ply
