"""Durable, atomic file writes: a crash leaves the old file or the new one, never a mix."""

from __future__ import annotations

import os
from pathlib import Path


def write_bytes_durable(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a single file so that readers see the old or the new content, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write_bytes_durable(tmp, data)
    os.replace(tmp, path)
    fsync_dir(path.parent)
