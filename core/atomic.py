"""Crash-safe writes: a reader sees the old state or the new one, never half of one.

One helper for every directory and file the project writes that something else reads: the
trainer's state and adapters, the backend's checkpoints, the bootstrapped model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Makes a rename or a new entry in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def write_file_atomic(path: Path, content: bytes) -> None:
    """Writes a temp file beside `path`, fsyncs it, and os.replace()s it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextmanager
def atomic_dir(dest: Path, replace: bool = False) -> Iterator[Path]:
    """Yields an empty temp dir beside `dest` (same filesystem, so the rename is atomic).

    On a clean exit its files are fsynced and it is renamed to `dest`; on any exception it is
    removed, leaving neither `dest` nor a partial directory behind. An existing `dest` is an error
    (FileExistsError, before anything is written), unless `replace`: then it is moved aside just
    before the rename and removed after it, so a reader finds the old directory or the new one.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() and not replace:
        raise FileExistsError(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    old = None
    try:
        yield tmp
        for entry in tmp.iterdir():
            if entry.is_file():
                fsync_file(entry)
        fsync_dir(tmp)
        if replace and dest.exists():
            old = dest.with_name(f".{dest.name}.old-{time.time_ns()}")
            os.rename(dest, old)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not dest.exists():
            os.rename(old, dest)  # the new one never arrived: the old one stays
        raise
    fsync_dir(dest.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
