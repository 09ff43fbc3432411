"""Atomic, durable file writes: a reader never sees half a file, a crash never leaves one.

The bytes go to a temporary file in the destination folder, are flushed and fsynced, and the temporary file
is renamed over the destination with :func:`os.replace`; then the folder entry is fsynced. On failure the
temporary file is removed and the destination is left as it was.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_bytes", "fsync_dir"]

PathLike = str | os.PathLike[str]


def fsync_dir(folder: PathLike) -> None:
    """Flush a directory entry to disk (POSIX); best effort, a no-op where unsupported."""
    if os.name == "nt":
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _temporary(dest: Path) -> Path:
    """A fresh hidden name beside ``dest`` for its temporary file."""
    return dest.with_name(f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _commit(tmp: Path, dest: Path) -> None:
    """Rename the (already written and fsynced) ``tmp`` over ``dest``; remove ``tmp`` if that fails."""
    try:
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(dest.parent)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: temporary file in the same folder, flush, fsync, os.replace.

    The parent folder is created if needed. On failure the temporary file is removed and ``path`` is left as
    it was.

    Returns:
        The destination path.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(dest)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(tmp, flags, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _commit(tmp, dest)
    return dest


def atomic_write(path: PathLike, write: Callable[[Path], object]) -> Path:
    """Atomically replace ``path`` with a file that ``write(tmp)`` produces (for writers that want a path,
    such as safetensors): ``write`` fills a temporary file beside ``path``, which is fsynced and renamed.

    The parent folder must exist (a missing one is the caller's error, reported by ``write``). On failure
    the temporary file is removed and ``path`` is left as it was.

    Returns:
        The destination path.
    """
    dest = Path(path)
    tmp = _temporary(dest)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _commit(tmp, dest)
    return dest
