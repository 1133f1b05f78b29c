import os
import time

import pytest

from utils.run_dir import RunFolderError, create_run, find_last_checkpoint, run_folder_name, snapshot_code


def test_run_folder_layout(tmp_path):
    run = create_run(tmp_path / "exp", tmp_path / "runs", "scene", "quick", timestamp="20260101-120000")
    assert run.root == tmp_path / "exp" / "scene" / "quick@20260101-120000"
    for sub in ("config", "code", "ckpt", "save"):
        assert (run.root / sub).is_dir()
    assert run.tb_dir == tmp_path / "runs" / "scene" / "quick@20260101-120000"


def test_clash_gets_new_name_and_keeps_old_files(tmp_path):
    first = create_run(tmp_path, tmp_path / "runs", "scene", "t", timestamp="20260101-120000")
    (first.save_dir / "keep.txt").write_text("old")
    second = create_run(tmp_path, tmp_path / "runs", "scene", "t", timestamp="20260101-120000")
    third = create_run(tmp_path, tmp_path / "runs", "scene", "t", timestamp="20260101-120000")
    assert len({first.root, second.root, third.root}) == 3
    assert second.root.name == "t@20260101-120000-1"
    assert (first.save_dir / "keep.txt").read_text() == "old"


def test_untagged_name():
    assert run_folder_name("", "20260101-120000") == "@20260101-120000"


def test_unwritable_exp_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RunFolderError) as err:
        create_run(blocker / "exp", tmp_path / "runs", "scene", "t")
    assert str(blocker) in str(err.value)


def test_find_last_checkpoint_picks_newest(tmp_path):
    a = create_run(tmp_path, tmp_path / "runs", "scene", "t", timestamp="20260101-120000")
    b = create_run(tmp_path, tmp_path / "runs", "scene", "u", timestamp="20260101-130000")
    old = a.ckpt_dir / "last.ckpt"
    new = b.ckpt_dir / "step0000010.ckpt"
    old.write_text("a")
    new.write_text("b")
    now = time.time()
    os.utime(old, (now - 100, now - 100))
    os.utime(new, (now, now))
    assert find_last_checkpoint(tmp_path, "scene") == new
    assert find_last_checkpoint(tmp_path, "scene", tag="t") == old
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        find_last_checkpoint(tmp_path, "other")


def test_snapshot_code_copies_tracked_sources(tmp_path):
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    n = snapshot_code(repo, tmp_path)
    assert n > 10
    assert (tmp_path / "launch.py").is_file() and (tmp_path / "utils" / "run_dir.py").is_file()
