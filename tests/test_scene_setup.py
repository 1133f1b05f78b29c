"""save/scene_setup.png and .ply: the cameras, the sparse points and the model's box, in the scene frame."""
import logging

import numpy as np
import pytest

from datasets.base import Scene
from datasets.blender import BlenderScene
from datasets.scene_setup import BOX_COLOUR, PANEL, TITLE, write_scene_setup
from tests import capture_fixtures as fx
from utils.config import parse_component

try:
    import pycolmap  # noqa: F401
except ImportError:
    pycolmap = None


def read_ply(path):
    """(vertices [V, 3], colours [V, 3], faces [F, 3], edges [E, 2]) of the ASCII PLY the set-up writes,
    read by its header's element counts (an independent reader)."""
    lines = path.read_text().splitlines()
    end = lines.index("end_header")
    counts = {ln.split()[1]: int(ln.split()[2]) for ln in lines[:end] if ln.startswith("element")}
    body = [ln.split() for ln in lines[end + 1:]]
    v = np.array(body[:counts["vertex"]], dtype=float)
    f = np.array(body[counts["vertex"]:counts["vertex"] + counts["face"]], dtype=int)
    e = np.array(body[counts["vertex"] + counts["face"]:], dtype=int)
    assert len(e) == counts["edge"]
    return v[:, :3], v[:, 3:].astype(int), f[:, 1:], e[:, :2]


def orange(img):
    return (np.abs(img.astype(int) - np.array(BOX_COLOUR)).sum(-1) < 60)


@pytest.mark.skipif(pycolmap is None, reason="pycolmap is not installed")
def test_capture_setup_picture_and_ply(tmp_path, caplog):
    import imageio.v3 as iio

    from datasets.colmap import ColmapScene

    capture = fx.write_colmap(tmp_path / "c", n=3, model="PINHOLE", sizes=[(24, 18), (22, 18), (20, 20)])
    scene = ColmapScene(parse_component(ColmapScene.Config, {"root_dir": str(capture.root)}), scene_radius=0.8)
    with caplog.at_level(logging.INFO):
        png, ply = write_scene_setup(scene, tmp_path / "save")
    assert "check the framing" in caplog.text and str(png) in caplog.text
    img = iio.imread(png)
    assert img.shape[1] == 3 * PANEL and img.shape[0] > 2 * (PANEL + TITLE)
    # the top view: the box is an orange square centred on the panel (the scene's origin)
    top = orange(img[TITLE:TITLE + PANEL, :PANEL])
    ys, xs = np.nonzero(top)
    assert abs(xs.mean() - PANEL / 2) < 3 and abs(ys.mean() - PANEL / 2) < 3
    assert abs((xs.max() - xs.min()) - (ys.max() - ys.min())) <= 2
    # the PLY, in the scene frame: the sparse points as they are, the box's corners at +-radius,
    # a frustum (apex at the camera centre) per view
    v, colours, faces, edges = read_ply(ply)
    pts = scene.points_scene
    assert np.allclose(v[:len(pts)], pts, atol=1e-4 * np.abs(pts).max())
    corners = v[len(pts):len(pts) + 8]
    assert np.allclose(np.abs(corners), 0.8) and len(np.unique(corners, axis=0)) == 8
    apexes = v[len(pts) + 8::5]
    assert np.allclose(apexes, scene.c2w_scene[:, :, 3], atol=1e-4)
    assert len(faces) == 4 * len(scene.views) and len(edges) == 12 + 8 * len(scene.views)
    box_edges = edges[:12] - len(pts)
    assert all(np.sum(np.abs(corners[a] - corners[b]) > 1e-6) == 1 for a, b in box_edges)  # along one axis


def test_blender_setup_shows_the_ground_truth_surface(tiny_scene_dir, tmp_path):
    from datasets.synthetic import SyntheticScene
    from tests.conftest import TINY_SCENE

    scene = SyntheticScene(parse_component(SyntheticScene.Config, {**TINY_SCENE, "root_dir": str(tiny_scene_dir)}))
    png, ply = write_scene_setup(scene, tmp_path)
    v, _, faces, _ = read_ply(ply)
    n_cams = TINY_SCENE["n_train"] + TINY_SCENE["n_val"] + TINY_SCENE["n_test"]
    assert len(faces) == 4 * n_cams
    pts = v[: len(v) - 8 - 5 * n_cams]
    assert len(pts) > 100 and np.abs(pts).max() < 1.0  # the analytic object inside the box
    plain = BlenderScene(parse_component(BlenderScene.Config, {"root_dir": str(tiny_scene_dir)}))
    assert plain.setup_overview().points is None


def test_nothing_to_show_or_a_failure_does_not_stop_a_run(tmp_path, caplog, monkeypatch):
    class Bare(Scene):
        pass

    assert write_scene_setup(Bare(None), tmp_path) is None

    def broken(self):
        raise RuntimeError("no cameras here")

    monkeypatch.setattr(Bare, "setup_overview", broken)
    with caplog.at_level(logging.WARNING):
        assert write_scene_setup(Bare(None), tmp_path) is None
    assert "scene set-up picture skipped: no cameras here" in caplog.text
    assert not list(tmp_path.iterdir())


def test_a_full_disk_leaves_the_picture_out_with_a_warning(tmp_path, caplog, monkeypatch):
    import errno

    import imageio.v3 as iio

    from datasets.scene_setup import SceneOverview

    class TwoCameras(Scene):
        def setup_overview(self):
            c2w = fx.poses_a(2, distance=3.0)
            return SceneOverview(c2w=c2w, intrinsics=np.tile([20.0, 20.0, 16.0, 12.0], (2, 1)),
                                 sizes=np.tile([24, 32], (2, 1)), is_train=np.array([True, False]), radius=1.0)

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(iio, "imwrite", full)
    with caplog.at_level(logging.WARNING):
        assert write_scene_setup(TwoCameras(None), tmp_path / "save") is None
    assert "cannot write the scene set-up picture" in caplog.text and "No space left on device" in caplog.text
    monkeypatch.undo()
    png, _ = write_scene_setup(TwoCameras(None), tmp_path / "save")  # no photos: the views and the legend
    assert iio.imread(png).shape[0] < 2 * PANEL


def test_the_plane_the_box_was_cut_at_is_drawn_in_the_views_the_photos_and_the_ply(tmp_path):
    """A floor z = -1.1 (under the box of radius 1): a purple grid in the front and side views (seen
    edge-on: one horizontal line below the box), and in the photos; a square of it in the PLY."""
    import imageio.v3 as iio

    from datasets.normalization import SupportPlane
    from datasets.scene_setup import PLANE_COLOUR, SceneOverview

    floor = SupportPlane(np.array([0.0, 0.0, 1.0]), -1.1, 0.05, "floor", 0.4)
    c2w = fx.poses_a(3, distance=3.0)

    class Floored(Scene):
        def __init__(self, plane):
            super().__init__(None)
            self.plane = plane

        def setup_overview(self):
            return SceneOverview(c2w=c2w, intrinsics=np.tile([40.0, 40.0, 32.0, 24.0], (3, 1)),
                                 sizes=np.tile([48, 64], (3, 1)), is_train=np.ones(3, bool), radius=1.0,
                                 load_image=lambda i: np.full((48, 64, 3), 0.5), plane=self.plane)

    def purple(img):
        return np.abs(img.astype(int) - np.array(PLANE_COLOUR)).sum(-1) < 60

    png, ply = write_scene_setup(Floored(floor), tmp_path / "with")
    img = iio.imread(png)
    front = purple(img[TITLE:TITLE + PANEL, PANEL:2 * PANEL])
    ys, _ = np.nonzero(front)
    box_bottom = np.nonzero(orange(img[TITLE:TITLE + PANEL, PANEL:2 * PANEL]))[0].max()
    assert len(ys) > 100 and np.ptp(ys) <= 2 and ys.min() > box_bottom  # edge-on, below the box
    assert purple(img[TITLE:TITLE + PANEL, :PANEL]).sum() > 1000  # seen from the top: a grid
    assert purple(img[2 * TITLE + PANEL:2 * TITLE + 2 * PANEL]).any()  # in the photos
    v, colours, faces, _ = read_ply(ply)
    square = v[(np.abs(colours - np.array(PLANE_COLOUR)).sum(-1) == 0)]
    assert len(square) == 4 and np.allclose(square[:, 2], -1.1) and np.allclose(np.abs(square[:, :2]), 1.5)
    assert len(faces) == 4 * 3 + 2
    png, ply = write_scene_setup(Floored(None), tmp_path / "without")
    assert not purple(iio.imread(png)).any() and len(read_ply(ply)[2]) == 4 * 3


def shared(name):
    from tests.conftest import SHARED_DATA

    return pytest.mark.skipif(not (SHARED_DATA / name).is_dir(), reason=f"shared data not present at {SHARED_DATA / name}")


@shared("beer_colmap")
@pytest.mark.skipif(pycolmap is None, reason="pycolmap is not installed")
def test_shared_beer_colmap_box_and_picture(tmp_path):
    """neus-colmap's object box on a real phone capture: the cameras outside it, most sparse points
    (the can and the floor around it) inside, the walls and strays outside; the picture is written."""
    from systems.build import build_scene, load_experiment
    from tests.conftest import SHARED_DATA

    _, cfg = load_experiment("configs/neus-colmap.yaml", [f"dataset.root_dir={SHARED_DATA / 'beer_colmap'}",
                                                          "dataset.img_downscale=8"])
    scene = build_scene(cfg)
    eyes = scene.c2w_scene[:, :, 3]
    assert not (np.abs(eyes) < 1.0).all(-1).any()
    inside = (np.abs(scene.points_scene) <= 1.0).all(-1).mean()
    assert 0.6 < inside < 0.97
    png, _ = write_scene_setup(scene, tmp_path)
    assert png.is_file()
