"""The real images' features, embedded once: kept in this process and on disk, for every evaluator
of the same data under the same feature network.

Embedding the reference images is the fixed cost of every evaluation (5000 digits take seconds
on a CPU; Inception features of 10,000 images, minutes): training evaluates many times in one
process, and `hetgan eval`, `compress` and a search start new processes over the same data. The
key hashes the network's class and weights, the device it runs on and the images' pixels, so any
change to any of them computes afresh; a cached file is the float32 array that was computed, so a
hit gives the same numbers to the bit.

On disk the features live under `hetgan_cache_dir() / "real-features"` (`$HETGAN_CACHE_DIR`,
else `$XDG_CACHE_HOME/hetgan`, else `~/.cache/hetgan`), at most `DISK_BUDGET_BYTES` in all, the
least recently used removed first; `HETGAN_CACHE_DIR=off` keeps them in memory only. A cached
file that cannot be read (cut short, not an array, the wrong shape) is computed again and
replaced, never trusted.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from hetgan.fileio import atomic_write_bytes, hash_weights

log = logging.getLogger("hetgan")
MEMORY_ENTRIES = 4  # newest kept; a few arrays of N x D float32
DISK_BUDGET_BYTES = 1 << 30  # all cached features on disk together
FORMAT = "hetgan real features v2"  # in the key: a new layout never reads an old file (v2: channels-last on a CPU)
_memory: dict[str, np.ndarray] = {}  # newest last


def hetgan_cache_dir() -> Path | None:
    """Where hetgan keeps what it can compute again: `$HETGAN_CACHE_DIR`, else
    `$XDG_CACHE_HOME/hetgan`, else `~/.cache/hetgan`; None when `HETGAN_CACHE_DIR=off`."""
    chosen = os.environ.get("HETGAN_CACHE_DIR")
    if chosen == "off":
        return None
    if chosen:
        return Path(chosen)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hetgan"


def feature_key(net: torch.nn.Module, images_uint8: np.ndarray) -> str:
    """A digest of the network (class, weights, device) and of the images (shape, pixels)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(FORMAT.encode())
    digest.update(f"{type(net).__module__}.{type(net).__qualname__}".encode())
    hash_weights(digest, net)
    digest.update(str(images_uint8.shape).encode())
    digest.update(np.ascontiguousarray(images_uint8).tobytes())
    return digest.hexdigest()


def cached_features(net: torch.nn.Module, images_uint8: np.ndarray, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """`compute()` (the features of `images_uint8` under `net`), or the array an earlier call for
    the same network and images computed: from this process, else from disk. The result is
    read-only, shared by the evaluators that asked for it."""
    key = feature_key(net, images_uint8)
    if key in _memory:
        _memory[key] = _memory.pop(key)  # the newest again
        return _memory[key]
    folder = hetgan_cache_dir()
    path = folder / "real-features" / f"{key}.npy" if folder else None
    features = _read(path, len(images_uint8)) if path else None
    if features is None:
        features = np.ascontiguousarray(compute(), dtype=np.float32)
        if path:
            _write(path, features)
    features.flags.writeable = False
    _memory[key] = features
    while len(_memory) > MEMORY_ENTRIES:
        _memory.pop(next(iter(_memory)))
    return features


def forget_in_memory() -> None:
    """Drop this process's copies (the disk cache stays), as a fresh process starts."""
    _memory.clear()


def _read(path: Path, rows: int) -> np.ndarray | None:
    try:
        features = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError) as e:  # cut short, not an .npy, an object array
        log.warning("the cached real features %s cannot be read (%s); computing them again", path, e)
        return None
    if features.dtype != np.float32 or features.ndim != 2 or len(features) != rows:
        log.warning("the cached real features %s are not %d rows of float32; computing them again", path, rows)
        return None
    os.utime(path)  # recently used: the last to be removed
    return features


def _write(path: Path, features: np.ndarray) -> None:
    """Keep `features` at `path` (atomically), then remove the least recently used files past the
    budget. A cache that cannot be written (read-only home, full disk) only costs the next
    process the time to compute them."""
    buf = io.BytesIO()
    np.save(buf, features, allow_pickle=False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buf.getvalue())
        _trim(path.parent, keep=path)
    except OSError as e:
        log.warning("could not cache the real features in %s (%s); the next process computes them again", path, e)


def _trim(folder: Path, keep: Path) -> None:
    entries = []
    for f in folder.glob("*.npy"):
        try:
            stat = f.stat()
        except FileNotFoundError:  # another process trimmed it first
            continue
        entries.append((stat.st_mtime, stat.st_size, f))
    total = 0
    for _, size, f in sorted(entries, key=lambda e: e[0], reverse=True):  # newest first
        total += size
        if total > DISK_BUDGET_BYTES and f != keep:
            f.unlink(missing_ok=True)
