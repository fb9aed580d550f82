"""Write a whole output folder or file so that an interruption never leaves a half-written one that
looks complete: everything goes to a hidden temporary sibling first and is renamed into place last."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def _check_parent_writable(target: Path) -> Path:
    parent = target.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PermissionError(f"Cannot create the output folder's parent '{parent}': {err.strerror}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"Output location '{parent}' is not writable")
    return parent


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `target`, on any error it is removed.

    An existing `target` is refused unless `overwrite`; it is then swapped out only after the new
    folder is complete, so the old one survives a failed run.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"Output folder '{target}' already exists; choose another or pass overwrite (--overwrite)")
    parent = _check_parent_writable(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=parent))
    try:
        yield staging
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=parent))
            os.replace(target, old / target.name)
            os.replace(staging, target)
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
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
