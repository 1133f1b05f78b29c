"""scripts/imgs2poses.py: which photos share a camera, unreadable and odd files, and the causes a
failed registration names. (SfM itself does not register tiny generated images; the decisions,
the options handed to pycolmap and the messages are what is checked.)"""
import sqlite3

import numpy as np
import pytest

from scripts.imgs2poses import (
    MIN_FEATURES,
    Photo,
    SfMError,
    Survey,
    camera_groups,
    failure_causes,
    photo_notes,
    run_sfm,
    survey_photos,
)

try:
    import pycolmap
except ImportError:
    pycolmap = None
needs_pycolmap = pytest.mark.skipif(pycolmap is None, reason="pycolmap is not installed")


def write_photo(path, width, height, seed=0, exif=None, flat=False):
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = np.full((height, width, 3), 128, np.uint8) if flat else (rng.random((height, width, 3)) * 255).astype(np.uint8)
    img = Image.fromarray(pixels)
    path.parent.mkdir(parents=True, exist_ok=True)
    if exif:
        tags = Image.Exif()
        tags[0x010F], tags[0x0110] = exif[0], exif[1]
        tags.get_ifd(0x8769)[0x920A] = exif[2]
        img.save(path, exif=tags)
    else:
        img.save(path)


def test_survey_reads_sizes_and_exif_and_names_unreadable_files(tmp_path):
    write_photo(tmp_path / "a.jpg", 80, 60, exif=("Acme", "Phone 1", 4.25))
    write_photo(tmp_path / "b.jpg", 80, 60, seed=1, exif=("Acme", "Phone 1", 4.25))
    write_photo(tmp_path / "c.png", 60, 80, seed=2)
    (tmp_path / "bad.jpg").write_bytes(b"not an image at all" * 10)
    whole = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    survey = survey_photos(sorted(tmp_path.iterdir()))
    by_name = {p.name: p for p in survey.photos}
    assert sorted(by_name) == ["a.jpg", "b.jpg", "c.png"]
    assert (by_name["a.jpg"].width, by_name["a.jpg"].height, by_name["a.jpg"].focal_mm) == (80, 60, 4.25)
    assert by_name["a.jpg"].camera == "Acme Phone 1" and by_name["c.png"].focal_mm is None
    assert by_name["a.jpg"].group == by_name["b.jpg"].group != by_name["c.png"].group
    assert sorted(n for n, _ in survey.unreadable) == ["bad.jpg", "cut.jpg"]
    notes = " | ".join(photo_notes(survey))
    assert "left out 2 file(s) that cannot be read" in notes and "'bad.jpg'" in notes and "'cut.jpg'" in notes
    assert "1 photo(s) have no EXIF focal length ('c.png')" in notes
    assert "smaller than 300 px" in notes


def photos(*sizes, camera="", focal=None):
    return [Photo(f"{i:03d}.jpg", w, h, "RGB", camera, focal) for i, (w, h) in enumerate(sizes)]


def test_camera_groups_follow_the_photos():
    one = Survey(photos(*[(4000, 3000)] * 6), [])
    assert list(camera_groups(one, "auto").values()) == [[p.name for p in one.photos]]
    # portrait and landscape shots of one phone: two cameras
    turned = Survey(photos(*([(4000, 3000)] * 8 + [(3000, 4000)] * 4)), [])
    groups = list(camera_groups(turned, "auto").values())
    assert len(groups) == 2 and sorted(map(len, groups)) == [4, 8]
    # COLMAP's undistorted output: every image a few pixels different -> one camera each
    undistorted = Survey(photos((1000, 656), (1000, 662), (1000, 659), (998, 660), (1000, 657)), [])
    assert [len(g) for g in camera_groups(undistorted, "auto").values()] == [1] * 5
    with pytest.raises(SfMError, match=r"single needs photos of one size.*1000x656.*--camera-mode auto"):
        camera_groups(undistorted, "single")
    # two zoom settings (EXIF focal) of one size: two cameras in auto, one in per-size
    zoom = Survey(photos(*[(4000, 3000)] * 4, camera="Acme", focal=4.2) + [
        Photo(f"z{i}.jpg", 4000, 3000, "RGB", "Acme", 8.0) for i in range(4)], [])
    assert len(camera_groups(zoom, "auto")) == 2 and len(camera_groups(zoom, "per-size")) == 1
    assert len(camera_groups(one, "per-image")) == 6


def test_failure_causes_name_what_the_database_shows():
    survey = Survey(photos(*[(640, 480)] * 6), [("broken.jpg", "cannot identify image file")])
    names = [p.name for p in survey.photos]
    features = {n: 2000 for n in names}
    features["001.jpg"] = 12
    partners = {n: 2 for n in names}
    partners["004.jpg"] = partners["005.jpg"] = 0
    causes = " | ".join(failure_causes(survey, names, features, partners, "auto"))
    assert "'broken.jpg'" in causes
    assert f"1 of 6 photos have fewer than {MIN_FEATURES} features (e.g. '001.jpg': 12)" in causes
    assert "2 photo(s) match no other photo ('004.jpg', '005.jpg')" in causes
    nothing = failure_causes(survey, names, features, {n: 0 for n in names}, "auto")
    assert any("no two photos share" in c for c in nothing)
    assert any("did not import 1 photo(s) ('003.jpg')" in c
               for c in failure_causes(survey, names, {n: 2000 for n in names if n != "003.jpg"}, partners, "auto"))


@needs_pycolmap
def test_photos_of_two_sizes_get_a_camera_each(tmp_path, monkeypatch):
    """Two sizes: one extraction call per size, each sharing one camera among its photos (the
    database holds two cameras of those sizes, and every photo); the failure names the causes."""
    import scripts.imgs2poses as i2p

    for i in range(3):
        write_photo(tmp_path / "photos" / f"l{i}.png", 96, 64, seed=i)
        write_photo(tmp_path / "photos" / f"p{i}.png", 64, 96, seed=10 + i)
    calls = []
    original = pycolmap.extract_features

    def recording(database, image_dir, **kwargs):
        calls.append((list(kwargs["image_names"]), kwargs["camera_mode"]))
        return original(database, image_dir, **kwargs)

    monkeypatch.setattr(pycolmap, "extract_features", recording)
    with pytest.raises(SfMError) as err:
        run_sfm(tmp_path / "photos", tmp_path / "scene", progress=lambda *_: None)
    assert sorted(sorted(names) for names, _ in calls) == [["l0.png", "l1.png", "l2.png"],
                                                           ["p0.png", "p1.png", "p2.png"]]
    assert all(mode == pycolmap.CameraMode.SINGLE for _, mode in calls)
    con = sqlite3.connect(str(tmp_path / "scene" / "database.db"))
    cameras = sorted(con.execute("SELECT width, height FROM cameras").fetchall())
    images = dict(con.execute("SELECT name, camera_id FROM images").fetchall())
    con.close()
    assert cameras == [(64, 96), (96, 64)] and len(images) == 6
    assert len({images[f"l{i}.png"] for i in range(3)}) == 1 != len({images["l0.png"], images["p0.png"]})
    message = str(err.value)
    assert message.startswith("too few images registered: 0 of 6 (need 3); likely causes:")
    assert "overlapping photos of a textured subject" not in message  # a cause, not the generic hint
    assert f"share {i2p.MIN_INLIERS} verified feature matches" in message


@needs_pycolmap
def test_unreadable_and_textureless_photos_are_named(tmp_path):
    for i in range(4):
        write_photo(tmp_path / "photos" / f"{i}.png", 128, 128, flat=True)
    (tmp_path / "photos" / "4.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(SfMError) as err:
        run_sfm(tmp_path / "photos", tmp_path / "scene", progress=lambda *_: None)
    message = str(err.value)
    assert "0 of 4" in message and "'4.jpg'" in message and f"fewer than {MIN_FEATURES} features" in message
    # too few readable photos: refused before any work
    for i in range(3):
        (tmp_path / "photos" / f"{i}.png").write_bytes(b"")
    with pytest.raises(SfMError, match=r"only 1 of the 5 files .* can be read as images.*'0.png'"):
        run_sfm(tmp_path / "photos", tmp_path / "other", progress=lambda *_: None)
