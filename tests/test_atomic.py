"""runtime/atomic.py: a folder or file appears complete or not at all, never half-written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgevision.runtime.atomic import atomic_directory, atomic_write_bytes


class Boom(RuntimeError):
    pass


def _leftovers(parent: Path, name: str) -> list[str]:
    """Hidden staging / backup folders that atomic_directory might leave next to `name`."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def _write_tree(folder: Path, marker: str) -> None:
    (folder / "a.txt").write_text(marker)
    (folder / "sub").mkdir()
    (folder / "sub" / "b.bin").write_bytes(marker.encode() * 3)


def test_success_renames_the_staging_folder_into_place(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as staging:
        # Work happens in a hidden sibling, not in the target itself.
        assert staging.parent == tmp_path.resolve()
        assert staging.name.startswith(".out.partial-")
        assert not target.exists()
        _write_tree(staging, "new")
    assert target.is_dir()
    assert (target / "a.txt").read_text() == "new"
    assert (target / "sub" / "b.bin").read_bytes() == b"newnewnew"
    assert not staging.exists()
    assert _leftovers(tmp_path, "out") == []


def test_missing_parents_are_created(tmp_path):
    target = tmp_path / "deep" / "er" / "out"
    with atomic_directory(target) as staging:
        (staging / "x").write_text("1")
    assert (target / "x").read_text() == "1"


def test_exception_inside_leaves_no_target_and_no_staging(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(Boom):
        with atomic_directory(target) as staging:
            _write_tree(staging, "half")
            raise Boom("interrupted")
    assert not target.exists()
    assert not staging.exists()
    assert _leftovers(tmp_path, "out") == []
    assert list(tmp_path.iterdir()) == []


def test_keyboard_interrupt_also_cleans_up(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(target) as staging:
            (staging / "a").write_text("x")
            raise KeyboardInterrupt
    assert not target.exists()
    assert _leftovers(tmp_path, "out") == []


def test_existing_target_is_refused_without_overwrite(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    entered = False
    with pytest.raises(FileExistsError) as info:
        with atomic_directory(target):
            entered = True
    assert not entered, "the block must not run when the target is refused"
    message = str(info.value)
    assert f"'{target}'" in message and "already exists" in message and "overwrite" in message
    assert (target / "keep.txt").read_text() == "old"
    assert _leftovers(tmp_path, "out") == []


def test_existing_file_as_target_is_refused_too(tmp_path):
    target = tmp_path / "out"
    target.write_text("a file")
    with pytest.raises(FileExistsError, match="out"):
        with atomic_directory(target):
            pass
    assert target.read_text() == "a file"


def test_overwrite_keeps_old_content_when_the_block_fails(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    _write_tree(target, "old")
    with pytest.raises(Boom):
        with atomic_directory(target, overwrite=True) as staging:
            _write_tree(staging, "new")
            # While the new folder is being written, the old one is untouched.
            assert (target / "a.txt").read_text() == "old"
            raise Boom
    assert (target / "a.txt").read_text() == "old"
    assert (target / "sub" / "b.bin").read_bytes() == b"oldoldold"
    assert sorted(p.name for p in target.iterdir()) == ["a.txt", "sub"]
    assert _leftovers(tmp_path, "out") == []


def test_overwrite_replaces_old_content_on_success(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "stale.txt").write_text("from the previous run")
    _write_tree(target, "old")
    with atomic_directory(target, overwrite=True) as staging:
        _write_tree(staging, "new")
    assert (target / "a.txt").read_text() == "new"
    # Replaced, not merged: files only the old folder had are gone.
    assert not (target / "stale.txt").exists()
    assert _leftovers(tmp_path, "out") == []  # no .out.old-* backup left behind either


def test_overwrite_with_no_existing_target_just_writes(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target, overwrite=True) as staging:
        (staging / "a").write_text("1")
    assert (target / "a").read_text() == "1"
    assert _leftovers(tmp_path, "out") == []


def test_parent_that_is_a_file_gives_a_clear_error(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    target = blocker / "out"
    entered = False
    with pytest.raises(OSError) as info:
        with atomic_directory(target):
            entered = True
    assert not entered
    assert isinstance(info.value, PermissionError)
    assert str(blocker) in str(info.value)
    assert blocker.read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root ignores directory permissions, so a read-only folder is still writable")
def test_read_only_parent_gives_a_clear_error(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match="not writable"):
            with atomic_directory(parent / "out"):
                pass
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(0o755)


def test_atomic_write_bytes_writes_and_replaces(tmp_path):
    path = tmp_path / "data.bin"
    atomic_write_bytes(path, b"first")
    assert path.read_bytes() == b"first"
    atomic_write_bytes(path, b"second, longer content")
    assert path.read_bytes() == b"second, longer content"
    atomic_write_bytes(path, b"")
    assert path.read_bytes() == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]  # no .data.bin.* temp file


def test_atomic_write_bytes_failure_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "data.bin"
    path.write_bytes(b"old")

    def failing_replace(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        atomic_write_bytes(path, b"new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]


def test_atomic_write_bytes_into_missing_folder_fails_cleanly(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic_write_bytes(tmp_path / "missing" / "data.bin", b"x")
    assert list(tmp_path.iterdir()) == []


# --- permissions: the result should look like any folder / file the user creates ---

def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask



def test_directory_mode_follows_the_umask(tmp_path):
    mask = _current_umask()
    with atomic_directory(tmp_path / "out") as staging:
        (staging / "a").write_text("x")
    (tmp_path / "plain").mkdir()
    assert (tmp_path / "out").stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777 == 0o777 & ~mask



def test_atomic_write_bytes_mode_follows_the_umask(tmp_path):
    mask = _current_umask()
    atomic_write_bytes(tmp_path / "data.bin", b"x")
    assert (tmp_path / "data.bin").stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.parametrize("relation", ["same", "parent"])
def test_an_output_folder_that_holds_an_input_is_refused_before_anything_is_touched(tmp_path, relation):
    data = tmp_path / "data"
    (data / "cat").mkdir(parents=True)
    (data / "cat" / "1.png").write_bytes(b"x")
    target = data if relation == "same" else tmp_path
    with pytest.raises(ValueError, match="is or contains the input"):
        with atomic_directory(target, overwrite=True, inputs=[data / "cat"] if relation == "same" else [data]):
            pass
    assert (data / "cat" / "1.png").read_bytes() == b"x"
    assert not list(tmp_path.glob(".*partial*"))


def test_leftovers_of_a_killed_run_are_removed_by_the_next_one(tmp_path, caplog):
    import logging
    import subprocess
    import sys

    # A run killed with -9 while writing `out`: its staging folder is named after a process that is gone.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = tmp_path / f".out.partial-{gone.pid}-x1y2"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "model.tflite").write_bytes(b"half a model")
    stale_old = tmp_path / f".out.old-{gone.pid}-z9"
    stale_old.mkdir()
    live = tmp_path / f".out.partial-{os.getpid()}-live"  # a run still writing: left alone
    live.mkdir()
    other = tmp_path / f".other.partial-{gone.pid}-q"  # another output's leftovers: not ours to judge
    other.mkdir()
    with caplog.at_level(logging.WARNING, logger="edgevision"):
        with atomic_directory(tmp_path / "out") as staging:
            (staging / "a.txt").write_text("new")
    assert not stale.exists() and not stale_old.exists() and live.is_dir() and other.is_dir()
    assert (tmp_path / "out" / "a.txt").read_text() == "new"
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"removed '{stale}', left by an interrupted earlier run (process {gone.pid})" == m for m in messages)
