"""Photos in, a COLMAP model out: structure-from-motion with pycolmap (no COLMAP binary needed).

    .venv/bin/python scripts/imgs2poses.py PHOTOS_DIR [--out SCENE_DIR] [--camera-model SIMPLE_RADIAL]
        [--per-image-camera] [--min-registered 3] [--max-image-size 1600] [--overwrite] [--verbose]

Writes the ``colmap`` dataset layout, ready for ``configs/neus-colmap.yaml``:

    SCENE_DIR/images/      the photos (copied, unless PHOTOS_DIR already is SCENE_DIR/images)
    SCENE_DIR/database.db  features and matches
    SCENE_DIR/sparse/0/    cameras, images, points3D (.bin): the largest reconstruction

Stages (one progress line each): feature extraction, exhaustive matching, incremental mapping.
Exits with status 2 and a message saying what to try when fewer than ``--min-registered`` images
register (too few overlapping, textured views).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
CAMERA_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "OPENCV_FISHEYE",
                 "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE", "FULL_OPENCV")


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


def run_sfm(
    photos: Path,
    out: Path,
    camera_model: str = "SIMPLE_RADIAL",
    single_camera: bool = True,
    min_registered: int = 3,
    max_image_size: int = 1600,
    overwrite: bool = False,
    verbose: bool = False,
    progress=_progress,
) -> Path:
    """Run feature extraction, exhaustive matching and incremental mapping; returns ``out/sparse/0``.

    Raises SfMError (bad inputs, or fewer than ``min_registered`` images registered).
    """
    photos, out = Path(photos), Path(out)
    if not photos.is_dir():
        raise SfMError(f"photo folder '{photos}' does not exist")
    images = list_images(photos)
    if len(images) < max(2, min_registered):
        raise SfMError(
            f"'{photos}' holds {len(images)} image(s) ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
            f"structure-from-motion needs at least {max(2, min_registered)}"
        )
    if camera_model not in CAMERA_MODELS:
        raise SfMError(f"unknown camera model '{camera_model}'; choose one of {', '.join(CAMERA_MODELS)}")
    if min_registered < 2:
        raise SfMError(f"--min-registered must be at least 2, got {min_registered}")
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
    if image_dir.resolve() != photos.resolve():
        image_dir.mkdir(exist_ok=True)
        for path in images:
            shutil.copy2(path, image_dir / path.name)
    names = [p.name for p in images]

    t0 = time.time()
    progress(f"1/3 extracting features from {len(names)} images in '{image_dir}'")
    reader = pycolmap.ImageReaderOptions()
    _set(reader, "camera_model", camera_model)
    extraction = pycolmap.FeatureExtractionOptions() if hasattr(pycolmap, "FeatureExtractionOptions") else None
    if extraction is not None:
        _set(extraction, "max_image_size", max_image_size)
        if hasattr(extraction, "sift"):
            _set(extraction.sift, "max_image_size", max_image_size)
    mode = pycolmap.CameraMode.SINGLE if single_camera else pycolmap.CameraMode.PER_IMAGE
    kwargs = dict(image_names=names, camera_mode=mode, reader_options=reader, device=pycolmap.Device.cpu)
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
        raise SfMError(
            f"too few images registered: {registered} of {len(names)} (need {min_registered}). Take more, "
            "overlapping photos of a textured subject, avoid motion blur, or try --camera-model SIMPLE_PINHOLE"
        )
    # keep the largest model as sparse/0, whatever number the mapper gave it
    final = sparse / "0"
    tmp = sparse / "_best"
    tmp.mkdir(parents=True, exist_ok=True)
    best.write_binary(str(tmp))
    for child in sparse.iterdir():
        if child != tmp:
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    tmp.rename(final)
    progress(
        f"done in {time.time() - t0:.1f} s: {registered} of {len(names)} images registered, "
        f"{best.num_points3D()} points -> '{final}'"
    )
    return final


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photos", type=Path, help="folder of photos")
    parser.add_argument("--out", type=Path, default=None,
                        help="scene folder to write (default: the photo folder's parent if it is named 'images', "
                             "else PHOTOS_colmap)")
    parser.add_argument("--camera-model", default="SIMPLE_RADIAL", choices=CAMERA_MODELS)
    parser.add_argument("--per-image-camera", action="store_true", help="one camera per image (default: shared)")
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
        run_sfm(args.photos, out, args.camera_model, not args.per_image_camera, args.min_registered,
                args.max_image_size, args.overwrite, args.verbose)
    except SfMError as err:
        print(f"[imgs2poses] error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
