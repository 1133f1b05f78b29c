"""Run folders: ``exp/<name>/<tag>@<YYYYmmdd-HHMMSS>/{config,code,ckpt,save}`` and TensorBoard logs
under ``runs/<name>/<same>``. A folder is created exclusively, so an earlier run is never
overwritten: a clash gets a ``-1``, ``-2``... suffix."""
from __future__ import annotations

import dataclasses
import shutil
import subprocess
import time
from pathlib import Path
from typing import Optional, Sequence


class RunFolderError(OSError):
    """A run folder that cannot be created or written; the message names the path."""


@dataclasses.dataclass
class RunPaths:
    root: Path
    tb_dir: Path

    @property
    def config_dir(self) -> Path:
        return self.root / "config"

    @property
    def code_dir(self) -> Path:
        return self.root / "code"

    @property
    def ckpt_dir(self) -> Path:
        return self.root / "ckpt"

    @property
    def save_dir(self) -> Path:
        return self.root / "save"

    @property
    def version(self) -> str:
        return self.root.name


def run_folder_name(tag: str, timestamp: Optional[str] = None) -> str:
    timestamp = timestamp or time.strftime("%Y%m%d-%H%M%S")
    return f"{tag}@{timestamp}" if tag else f"@{timestamp}"


def create_run(exp_dir: str | Path, runs_dir: str | Path, name: str, tag: str, timestamp: Optional[str] = None) -> RunPaths:
    """Make a fresh run folder (never reusing an existing one) with its config/, code/, ckpt/, save/."""
    parent = Path(exp_dir) / name
    base = run_folder_name(tag, timestamp)
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunFolderError(f"cannot create the experiment folder '{parent}': {err.strerror or err}") from err
    for attempt in range(1000):
        candidate = parent / (base if attempt == 0 else f"{base}-{attempt}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        except OSError as err:
            raise RunFolderError(f"cannot create the run folder '{candidate}': {err.strerror or err}") from err
        break
    else:
        raise RunFolderError(f"too many runs named '{base}' in '{parent}'")
    paths = RunPaths(root=candidate, tb_dir=Path(runs_dir) / name / candidate.name)
    for sub in (paths.config_dir, paths.code_dir, paths.ckpt_dir, paths.save_dir):
        sub.mkdir()
    return paths


def snapshot_code(repo_root: Path, dest: Path) -> int:
    """Copy the git-tracked sources of ``repo_root`` into ``dest``; returns the number of files.

    Outside a git checkout, the Python and YAML files of the toolkit's folders are copied.
    """
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo_root, capture_output=True, check=True, timeout=30
        ).stdout.decode()
        files = [f for f in out.split("\0") if f]
    except (OSError, subprocess.SubprocessError):
        files = [
            str(p.relative_to(repo_root))
            for folder in ("configs", "datasets", "models", "systems", "utils", "scripts")
            for p in (repo_root / folder).rglob("*")
            if p.suffix in (".py", ".yaml")
        ] + ["launch.py"]
    count = 0
    for rel in files:
        src = repo_root / rel
        if not src.is_file() or src.suffix not in (".py", ".yaml", ".yml", ".txt", ".md", ".toml", ".sh"):
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
        count += 1
    return count


def find_last_checkpoint(exp_dir: str | Path, name: str, tag: str = "") -> Path:
    """The newest checkpoint among the runs of ``name`` (and ``tag``, if given)."""
    parent = Path(exp_dir) / name
    pattern = f"{tag}@*/ckpt/*.ckpt" if tag else "*/ckpt/*.ckpt"
    found = sorted(parent.glob(pattern), key=lambda p: (p.stat().st_mtime, p.name == "last.ckpt"))
    if not found:
        where = f"'{parent}'" + (f" with tag '{tag}'" if tag else "")
        raise FileNotFoundError(f"--resume last: no checkpoint found in the runs of {where}")
    return found[-1]


# ------------------------------------------------------------------------------------------------
# runs that fail
# ------------------------------------------------------------------------------------------------
FAILED_FILE = "FAILED"  # in a run folder kept after a failure: the error, one line
# written when the folder is made, so not an output of the run itself
_SETUP_OUTPUTS = {"scene_to_world.json", "scene_setup.png", "scene_setup.ply"}


def wrote_outputs(paths: RunPaths) -> bool:
    """Whether a run wrote something worth keeping: a checkpoint, or a file under save/ other than
    what making the folder wrote."""
    if any(paths.ckpt_dir.glob("*.ckpt")):
        return True
    return any(p.is_file() and p.name not in _SETUP_OUTPUTS for p in paths.save_dir.rglob("*")) \
        if paths.save_dir.is_dir() else False


def discard_run(paths: RunPaths, made: Sequence[Path] = ()) -> None:
    """Remove a run's folder and its TensorBoard folder (a run that failed before it did anything),
    then those of the folders in ``made`` (the parents this run created) that are left empty."""
    for folder in (paths.root, paths.tb_dir):
        shutil.rmtree(folder, ignore_errors=True)
    for folder in sorted(made, key=lambda p: len(Path(p).parts), reverse=True):  # deepest first
        try:
            Path(folder).rmdir()  # only when empty
        except OSError:
            pass


def mark_failed(paths: RunPaths, message: str) -> Optional[Path]:
    """Write ``message`` into the run folder's FAILED file (None when that cannot be written)."""
    path = paths.root / FAILED_FILE
    try:
        path.write_text(message.strip() + "\n")
    except OSError:
        return None
    return path
