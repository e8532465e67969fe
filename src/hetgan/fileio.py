"""Durable, atomic file writes (a crash leaves the old file or the new one, never a mix), strict
JSON, and safetensors reads with clear errors."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from safetensors import safe_open

from hetgan.errors import CheckpointError, HetganError


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


def strict_json(obj, indent: int | None = None) -> str:
    """JSON that every parser reads: NaN and infinities become null. Python's json would write
    them as NaN and Infinity, which jq, JavaScript and most other readers reject."""
    return json.dumps(_finite_or_none(obj), indent=indent, allow_nan=False)


def _finite_or_none(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: _finite_or_none(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite_or_none(value) for value in obj]
    return obj


def read_safetensors(path: Path, what: str, fix: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, read in one open. If the file is missing,
    unreadable or not safetensors, a clear error naming `what` (e.g. "generator artifact") and
    ending in `fix` (what to pass instead)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read {what} ({e.strerror or e}); {fix}") from None
    except Exception as e:  # safetensors raises several types for a malformed file
        raise CheckpointError(f"{path}: not a valid safetensors {what} ({e}); {fix}") from None


def output_path(arg: str | Path, flag: str, example: str, overwrite: bool | None = None) -> Path:
    """A file (or, for an `arg` ending in "/", a folder) that a command will write, checked before
    the work starts so that a bad path cannot lose finished work: a folder where a file is wanted
    is refused (and the reverse), and so is a parent that is a file or cannot be written. `flag`
    names the argument in the error (e.g. "--out"); `example` is a file name to suggest.

    With `overwrite` given (False or True), a file that exists already is refused unless it is
    True: a command that writes a model or samples never replaces one without being asked. An
    OpenVINO .xml brings its .bin with it."""
    text = str(arg)
    path = Path(arg)
    if text.endswith(("/", "\\")):
        if path.exists() and not path.is_dir():
            raise HetganError(f"{flag} {text}: {path} is a file, not a folder; pick another path")
    elif path.is_dir():
        raise HetganError(f"{flag} {text}: that is a folder; name a file in it, e.g. {flag} {path / example}")
    ancestor = next(p for p in path.absolute().parents if p.exists())
    if not ancestor.is_dir():
        raise HetganError(f"{flag} {text}: {ancestor} is a file, so no folder can be made there; pick another path")
    if not os.access(ancestor, os.W_OK):
        raise HetganError(f"{flag} {text}: {ancestor} is not writable; pick another path")
    if overwrite is False and not text.endswith(("/", "\\")):
        taken = [p for p in (path, path.with_suffix(".bin") if path.suffix == ".xml" else None) if p and p.exists()]
        if taken:
            raise HetganError(
                f"{flag} {text}: {taken[0]} exists already; pass --overwrite to replace it, or pick another path"
            )
    return path


def write_text(path: Path, text: str) -> None:
    """Write `text` to `path`, making its folder; a crash leaves no partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode())


def write_json(path: Path | None, obj) -> None:
    """Write `obj` as strict JSON to `path`, if given (`write_text`)."""
    if path is not None:
        write_text(path, strict_json(obj, indent=1) + "\n")


def hash_weights(digest, net: torch.nn.Module) -> None:
    """Feed every weight and buffer of `net` (name, device type, dtype, shape, bytes) into `digest`,
    a hashlib object: the key of what was computed from those weights (the real images' feature
    cache, the verified exports a process remembers)."""
    for name, tensor in net.state_dict().items():
        t = tensor.detach()
        digest.update(f"{name} {t.device.type} {t.dtype} {tuple(t.shape)}".encode())
        digest.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
