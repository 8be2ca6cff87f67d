"""Atomic file writes: write a sibling ``<name>.tmp``, then rename it over the target.

A reader (or a run interrupted half-way) sees either the old file or the new one, never a
torn one: ``os.replace`` is atomic on POSIX and Windows within one directory.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "fsync_path", "write_bytes_atomic", "write_text_atomic"]


def fsync_path(path: Path) -> None:
    """Flush ``path`` (a file or a directory) to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], *, durable: bool = False) -> Iterator[Path]:
    """Yield the temporary path to write; on success it replaces ``target``, on error it is
    removed and ``target`` is left as it was. ``durable`` also fsyncs the file and directory
    (for checkpoints, which must survive a power cut)."""
    final = Path(target)
    tmp = final.with_name(final.name + ".tmp")
    try:
        yield tmp
        if durable:
            fsync_path(tmp)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        fsync_path(final.parent)


def write_text_atomic(target: str | os.PathLike[str], text: str, *, durable: bool = False) -> None:
    """Write ``text`` to ``target`` atomically (see :func:`atomic_path`)."""
    with atomic_path(target, durable=durable) as tmp:
        tmp.write_text(text)


def write_bytes_atomic(
    target: str | os.PathLike[str], data: bytes, *, durable: bool = False
) -> None:
    """Write ``data`` to ``target`` atomically (see :func:`atomic_path`)."""
    with atomic_path(target, durable=durable) as tmp:
        tmp.write_bytes(data)
