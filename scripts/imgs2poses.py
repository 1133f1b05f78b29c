"""Photos in, a COLMAP model out: structure-from-motion with pycolmap (no COLMAP binary needed).

    .venv/bin/python scripts/imgs2poses.py PHOTOS_DIR [--out SCENE_DIR] [--camera-model SIMPLE_RADIAL]
        [--camera-mode auto|single|per-size|per-image] [--min-registered 3] [--max-image-size 1600]
        [--overwrite] [--verbose]

Writes the ``colmap`` dataset layout, ready for ``configs/neus-colmap.yaml``:

    SCENE_DIR/images/      the photos (copied, unless PHOTOS_DIR already is SCENE_DIR/images)
    SCENE_DIR/database.db  features and matches
    SCENE_DIR/sparse/0/    cameras, images, points3D (.bin): the largest reconstruction

First every photo is opened: files that cannot be read are listed by name and left out. The
cameras follow the photos (``--camera-mode auto``): one shared camera when all photos have one
size (and one EXIF camera and focal length), one camera per group of photos that share them
when there are a few such groups (e.g. portrait and landscape shots), else one per photo. (COLMAP
drops every photo whose size differs from the first one's when told to share one camera.)

Stages (one progress line each): feature extraction, exhaustive matching, incremental mapping.
Exits with status 2 and a message naming the likely causes it can see (unreadable files, photos
without features, photos that match no other, too few photos) when fewer than
``--min-registered`` images register.
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import sqlite3
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
CAMERA_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "OPENCV_FISHEYE",
                 "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE", "FULL_OPENCV")
CAMERA_MODES = ("auto", "single", "per-size", "per-image")
MIN_FEATURES = 100  # fewer SIFT features than this: the photo is unlikely to register
MIN_INLIERS = 15  # COLMAP's default minimum of verified matches for an image pair
SMALL_SIDE = 300  # photos smaller than this (shorter side) give few features


class SfMError(RuntimeError):
    """Structure-from-motion could not produce a usable model; the message says why and what to try."""


def list_images(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _progress(msg: str) -> None:
    print(f"[imgs2poses] {msg}", flush=True)


def _set(options, name: str, value) -> None:
    """Set an option if this pycolmap version has it (option names moved between versions)."""
    if hasattr(options, name):
        setattr(options, name, value)


def _examples(names: Sequence[str], k: int = 3) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:k])
    return shown + (f" and {len(names) - k} more" if len(names) > k else "")


# --------------------------------------------------------------------------- the photos
@dataclasses.dataclass
class Photo:
    """What structure-from-motion needs to know about one readable photo."""

    name: str
    width: int
    height: int
    mode: str  # PIL's mode: 'RGB', 'L', 'RGBA', 'I;16', ...
    camera: str = ""  # EXIF make and model ('' when absent)
    focal_mm: Optional[float] = None  # EXIF focal length (None when absent)

    @property
    def group(self) -> Tuple:
        """Photos with the same group can share one camera: same size, EXIF camera and focal length."""
        return self.width, self.height, self.camera, self.focal_mm


@dataclasses.dataclass
class Survey:
    photos: List[Photo]
    unreadable: List[Tuple[str, str]]  # (file name, why)

    def sizes(self) -> List[Tuple[int, int]]:
        return sorted({(p.width, p.height) for p in self.photos})


def survey_photos(paths: Sequence[Path]) -> Survey:
    """Open (and decode) every photo: its size, mode and EXIF camera and focal length, or why it
    cannot be read."""
    from PIL import Image

    photos, unreadable = [], []
    for path in paths:
        try:
            with Image.open(path) as img:
                exif = img.getexif()
                img.load()  # decodes: a truncated or corrupt file fails here, not in COLMAP
                camera = " ".join(str(exif.get(tag, "")).strip("\x00 ") for tag in (0x010F, 0x0110)).strip()
                focal = exif.get_ifd(0x8769).get(0x920A)
                photos.append(Photo(path.name, img.width, img.height, img.mode, camera,
                                    float(focal) if focal else None))
        except Exception as err:  # PIL raises many kinds for bad files
            unreadable.append((path.name, str(err).split("\n")[0] or type(err).__name__))
    return Survey(photos, unreadable)


def camera_groups(survey: Survey, mode: str) -> "OrderedDict[Tuple, List[str]]":
    """The photos that share a camera -> {group key: photo names}, for ``mode`` (auto, single,
    per-size, per-image). 'single' with photos of several sizes is refused (COLMAP would drop every
    photo whose size differs from the first)."""
    if mode not in CAMERA_MODES:
        raise SfMError(f"unknown camera mode '{mode}'; choose one of {', '.join(CAMERA_MODES)}")
    by_group: "OrderedDict[Tuple, List[str]]" = OrderedDict()
    for photo in survey.photos:
        by_group.setdefault(photo.group, []).append(photo.name)
    if mode == "single":
        sizes = survey.sizes()
        if len(sizes) > 1:
            raise SfMError(
                f"--camera-mode single needs photos of one size, but they are {len(sizes)} sizes "
                f"({', '.join(f'{w}x{h}' for w, h in sizes[:4])}{', ...' if len(sizes) > 4 else ''}); "
                "use --camera-mode auto (one camera per size)"
            )
        return OrderedDict([("all", [p.name for p in survey.photos])])
    if mode == "per-image" or (mode == "auto" and len(by_group) > len(survey.photos) / 2):
        return OrderedDict(((p.name,), [p.name]) for p in survey.photos)
    if mode == "per-size":
        by_size: "OrderedDict[Tuple, List[str]]" = OrderedDict()
        for photo in survey.photos:
            by_size.setdefault((photo.width, photo.height), []).append(photo.name)
        return by_size
    return by_group  # auto with a few groups (one group: a single shared camera)


def describe_cameras(survey: Survey, groups: "OrderedDict[Tuple, List[str]]") -> str:
    n = len(survey.photos)
    sizes = survey.sizes()
    if len(groups) == 1:
        return f"one camera for all {n} photos ({sizes[0][0]}x{sizes[0][1]})"
    if len(groups) == n:
        return f"one camera per photo ({len(sizes)} image size(s))"
    return f"{len(groups)} cameras, one per image size / EXIF camera ({', '.join(f'{w}x{h}' for w, h in sizes[:4])})"


def photo_notes(survey: Survey) -> List[str]:
    """Warnings about usable but odd photos."""
    notes = []
    if survey.unreadable:
        notes.append(f"left out {len(survey.unreadable)} file(s) that cannot be read as images: "
                     + "; ".join(f"'{n}' ({why})" for n, why in survey.unreadable[:5]))
    small = [p.name for p in survey.photos if min(p.width, p.height) < SMALL_SIDE]
    if small:
        notes.append(f"{len(small)} photo(s) are smaller than {SMALL_SIDE} px on a side ({_examples(small)}): "
                     "few features; use the full-size photos")
    no_exif = [p.name for p in survey.photos if p.focal_mm is None]
    if no_exif and len(no_exif) == len(survey.photos):
        notes.append("no photo has an EXIF focal length: COLMAP starts from a guess (1.2 x the larger side) "
                     "and refines it")
    elif no_exif:
        notes.append(f"{len(no_exif)} photo(s) have no EXIF focal length ({_examples(no_exif)})")
    odd = [f"'{p.name}' ({p.mode})" for p in survey.photos if p.mode not in ("RGB", "L", "RGBA", "LA", "P")]
    if odd:
        notes.append(f"{len(odd)} photo(s) have an unusual pixel format: {', '.join(odd[:3])}")
    return notes


# --------------------------------------------------------------------------- what went wrong
def database_stats(database: Path) -> Tuple[Dict[str, int], Dict[str, int]]:
    """From COLMAP's database.db (read with sqlite3: its schema is stable): (features per imported
    photo, number of other photos each one has at least MIN_INLIERS verified matches with)."""
    features: Dict[str, int] = {}
    partners: Dict[str, int] = {}
    if not database.is_file():
        return features, partners
    con = sqlite3.connect(str(database))
    try:
        names = dict(con.execute("SELECT image_id, name FROM images"))
        for image_id, rows in con.execute("SELECT image_id, rows FROM keypoints"):
            features[names.get(image_id, str(image_id))] = int(rows)
        partners = {name: 0 for name in names.values()}
        for pair_id, rows in con.execute("SELECT pair_id, rows FROM two_view_geometries"):
            if rows is None or rows < MIN_INLIERS:
                continue
            a, b = divmod(int(pair_id), 2147483647)  # COLMAP's pair id: id1 * kMaxNumImages + id2
            for image_id in (a, b):
                if image_id in names:
                    partners[names[image_id]] += 1
    except sqlite3.DatabaseError:
        pass
    finally:
        con.close()
    return features, partners


def failure_causes(survey: Survey, names: Sequence[str], features: Dict[str, int],
                   partners: Dict[str, int], camera_mode: str) -> List[str]:
    """The likely causes of a failed registration that the inputs and the database show."""
    causes = []
    if survey.unreadable:
        causes.append(f"{len(survey.unreadable)} file(s) cannot be read as images and were left out: "
                      + _examples([n for n, _ in survey.unreadable]))
    missing = [n for n in names if n not in features]
    if missing and features:
        causes.append(f"COLMAP did not import {len(missing)} photo(s) ({_examples(missing)})")
    few = sorted((n for n in names if n in features and features[n] < MIN_FEATURES), key=lambda n: features[n])
    if few:
        causes.append(f"{len(few)} of {len(names)} photos have fewer than {MIN_FEATURES} features (e.g. "
                      + ", ".join(f"'{n}': {features[n]}" for n in few[:3])
                      + "): too little texture, blur, or too small")
    lonely = [n for n in names if n in partners and partners[n] == 0 and features.get(n, 0) >= MIN_FEATURES]
    if partners and all(v == 0 for v in partners.values()):
        causes.append(f"no two photos share {MIN_INLIERS} verified feature matches: they do not overlap, show "
                      "different scenes, or the subject is too uniform or shiny")
    elif lonely:
        causes.append(f"{len(lonely)} photo(s) match no other photo ({_examples(lonely)}): take overlapping "
                      "photos between them")
    if len(names) < 5:
        causes.append(f"only {len(names)} readable photos: 20-100 overlapping photos work best")
    sizes = survey.sizes()
    if camera_mode == "single" and len(sizes) > 1:
        causes.append(f"photos of {len(sizes)} sizes share one camera")
    return causes


# --------------------------------------------------------------------------- the pipeline
def run_sfm(
    photos: Path,
    out: Path,
    camera_model: str = "SIMPLE_RADIAL",
    camera_mode: str = "auto",
    min_registered: int = 3,
    max_image_size: int = 1600,
    overwrite: bool = False,
    verbose: bool = False,
    progress=_progress,
) -> Path:
    """Run feature extraction (one call per camera group), exhaustive matching and incremental
    mapping; returns ``out/sparse/0``.

    Raises SfMError (bad inputs, or fewer than ``min_registered`` images registered, with the
    likely causes).
    """
    photos, out = Path(photos), Path(out)
    if not photos.is_dir():
        raise SfMError(f"photo folder '{photos}' does not exist")
    if camera_model not in CAMERA_MODELS:
        raise SfMError(f"unknown camera model '{camera_model}'; choose one of {', '.join(CAMERA_MODELS)}")
    if min_registered < 2:
        raise SfMError(f"--min-registered must be at least 2, got {min_registered}")
    needed = max(2, min_registered)
    files = list_images(photos)
    if len(files) < needed:
        raise SfMError(
            f"'{photos}' holds {len(files)} image(s) ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
            f"structure-from-motion needs at least {needed}"
        )
    survey = survey_photos(files)
    for note in photo_notes(survey):
        progress(f"note: {note}")
    if len(survey.photos) < needed:
        raise SfMError(
            f"only {len(survey.photos)} of the {len(files)} files in '{photos}' can be read as images (need "
            f"{needed}); unreadable: " + "; ".join(f"'{n}' ({why})" for n, why in survey.unreadable[:5])
        )
    groups = camera_groups(survey, camera_mode)
    try:
        import pycolmap
    except ImportError as err:
        raise SfMError(f"structure-from-motion needs pycolmap: `.venv/bin/pip install pycolmap` ({err})") from err

    if not verbose and hasattr(pycolmap, "logging"):
        try:  # COLMAP's own per-image log lines would bury the stage lines
            pycolmap.logging.minloglevel = 1
        except Exception:
            pass
    image_dir = out / "images"
    database = out / "database.db"
    sparse = out / "sparse"
    if sparse.exists() or database.exists():
        if not overwrite:
            raise SfMError(f"'{out}' already holds a database.db or sparse/; pass --overwrite to redo it")
        database.unlink(missing_ok=True)
        shutil.rmtree(sparse, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    names = [p.name for p in survey.photos]
    if image_dir.resolve() != photos.resolve():
        image_dir.mkdir(exist_ok=True)
        for name in names:
            shutil.copy2(photos / name, image_dir / name)

    t0 = time.time()
    progress(f"1/3 extracting features from {len(names)} images in '{image_dir}': {describe_cameras(survey, groups)}")
    reader = pycolmap.ImageReaderOptions()
    _set(reader, "camera_model", camera_model)
    extraction = pycolmap.FeatureExtractionOptions() if hasattr(pycolmap, "FeatureExtractionOptions") else None
    if extraction is not None:
        _set(extraction, "max_image_size", max_image_size)
        if hasattr(extraction, "sift"):
            _set(extraction.sift, "max_image_size", max_image_size)
    for members in groups.values():
        # each call starts a new camera, which SINGLE mode shares among the call's photos
        kwargs = dict(image_names=members, camera_mode=pycolmap.CameraMode.SINGLE, reader_options=reader,
                      device=pycolmap.Device.cpu)
        if extraction is not None:
            kwargs["extraction_options"] = extraction
        pycolmap.extract_features(str(database), str(image_dir), **kwargs)

    progress(f"2/3 matching all {len(names) * (len(names) - 1) // 2} image pairs ({time.time() - t0:.1f} s)")
    pycolmap.match_exhaustive(str(database), device=pycolmap.Device.cpu)

    progress(f"3/3 incremental mapping ({time.time() - t0:.1f} s)")
    sparse.mkdir(parents=True, exist_ok=True)
    options = pycolmap.IncrementalPipelineOptions()
    _set(options, "random_seed", 0)
    _set(options, "min_model_size", min(min_registered, 3))
    _set(options, "multiple_models", False)
    try:
        maps = pycolmap.incremental_mapping(str(database), str(image_dir), str(sparse), options=options)
    except Exception as err:  # pycolmap raises when no initial pair can be found
        maps = {}
        progress(f"mapping failed: {err}")
    best = max(maps.values(), key=lambda r: r.num_reg_images(), default=None) if maps else None
    registered = best.num_reg_images() if best is not None else 0
    if registered < min_registered:
        shutil.rmtree(sparse, ignore_errors=True)
        features, partners = database_stats(database)
        causes = failure_causes(survey, names, features, partners, camera_mode)
        hint = ("likely causes: " + "; ".join(causes)) if causes else (
            "take more, overlapping photos of a textured subject, avoid motion blur, or try --camera-model "
            "SIMPLE_PINHOLE")
        raise SfMError(f"too few images registered: {registered} of {len(names)} (need {min_registered}); {hint}")
    # keep the largest model as sparse/0, whatever number the mapper gave it
    final = sparse / "0"
    tmp = sparse / "_best"
    tmp.mkdir(parents=True, exist_ok=True)
    best.write_binary(str(tmp))
    for child in sparse.iterdir():
        if child != tmp:
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    tmp.rename(final)
    left = sorted(set(names) - {im.name for im in best.images.values()})
    progress(
        f"done in {time.time() - t0:.1f} s: {registered} of {len(names)} images registered, "
        f"{best.num_points3D()} points -> '{final}'"
        + (f"; not registered: {_examples(left)}" if left else "")
    )
    return final


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photos", type=Path, help="folder of photos")
    parser.add_argument("--out", type=Path, default=None,
                        help="scene folder to write (default: the photo folder's parent if it is named 'images', "
                             "else PHOTOS_colmap)")
    parser.add_argument("--camera-model", default="SIMPLE_RADIAL", choices=CAMERA_MODELS)
    parser.add_argument("--camera-mode", default="auto", choices=CAMERA_MODES,
                        help="which photos share a camera (auto: one per image size and EXIF camera, or one "
                             "per photo when most differ)")
    parser.add_argument("--per-image-camera", action="store_true", help="the same as --camera-mode per-image")
    parser.add_argument("--min-registered", type=int, default=3)
    parser.add_argument("--max-image-size", type=int, default=1600)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="show COLMAP's own log")
    args = parser.parse_args(argv)
    out = args.out
    if out is None:
        photos = args.photos.resolve()
        out = photos.parent if photos.name == "images" else photos.with_name(photos.name + "_colmap")
    try:
        run_sfm(args.photos, out, args.camera_model, "per-image" if args.per_image_camera else args.camera_mode,
                args.min_registered, args.max_image_size, args.overwrite, args.verbose)
    except SfMError as err:
        print(f"[imgs2poses] error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
