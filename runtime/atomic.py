"""Write a whole output folder or file so that an interruption never leaves a half-written one that
looks complete: everything goes to a hidden temporary sibling first and is renamed into place last."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator


log = logging.getLogger("edgevision")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def refuse_inputs(target: Path, inputs: Iterable[str | os.PathLike]) -> None:
    """An output folder that is, or contains, one of the command's inputs would be deleted when it is
    replaced: refuse it."""
    resolved = target.resolve()
    for item in inputs:
        source = Path(item).resolve()
        if source == resolved or resolved in source.parents:
            raise ValueError(f"Output folder '{target}' is or contains the input '{item}'; choose another output folder")


def check_output_folder(target: str | os.PathLike, overwrite: bool) -> None:
    """Refuse an output folder that exists (without overwrite) or cannot be written, before a command
    spends minutes on its work; creates nothing."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"Output folder '{target}' already exists; choose another or pass --overwrite")
    ancestor = target.resolve().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise PermissionError(f"Cannot write '{target}' under '{ancestor}': it is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PermissionError(f"Output location '{ancestor}' is not writable")


def _check_parent_writable(target: Path) -> Path:
    parent = target.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PermissionError(f"Cannot create the output folder's parent '{parent}': {err.strerror}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"Output location '{parent}' is not writable")
    return parent


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_leftovers(target: str | os.PathLike) -> list[Path]:
    """Remove the hidden staging and old copies of `target` that a killed earlier run left beside it
    (`.NAME.partial-PID-*`, `.NAME.old-PID-*` whose process is gone), saying so; returns them. A run
    still writing keeps its folder."""
    target = Path(target)
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(?:partial|old)-(\d+)-")
    removed = []
    with contextlib.suppress(OSError):
        for leftover in target.parent.iterdir():
            match = pattern.match(leftover.name)
            if match and leftover.is_dir() and not leftover.is_symlink() and not _alive(int(match.group(1))):
                shutil.rmtree(leftover, ignore_errors=True)
                log.warning("removed '%s', left by an interrupted earlier run (process %s)", leftover, match.group(1))
                removed.append(leftover)
    return removed


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, overwrite: bool = False,
                     inputs: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `target`, on any error it is removed.

    An existing `target` is refused unless `overwrite`; it is then swapped out only after the new
    folder is complete, so the old one survives a failed run. `inputs` are the paths the command
    reads: a target that is or contains one of them is refused.
    """
    target = Path(target)
    refuse_inputs(target, inputs)
    check_output_folder(target, overwrite)
    parent = _check_parent_writable(target)
    remove_leftovers(target)
    # The pid in the name tells a later run whether this folder's writer is still alive.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-{os.getpid()}-", dir=parent))
    # mkdtemp makes a private (0700) folder; the result must be readable like any other new folder
    # (a device service often runs as another user).
    os.chmod(staging, 0o777 & ~_umask())
    try:
        yield staging
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-{os.getpid()}-", dir=parent))
            os.replace(target, old / target.name)
            try:
                os.replace(staging, target)
            except BaseException:
                os.replace(old / target.name, target)  # put the previous folder back
                shutil.rmtree(old, ignore_errors=True)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file via a temporary sibling and a rename (readers see the old file or the new one)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would make the file private
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
