"""Atomic, verifiable checkpoints: tensors in safetensors, everything else in JSON, never pickle.

A checkpoint is a directory `step-NNNNNNNNN/` holding `tensors.safetensors`, `state.json` and
`manifest.json` (sha256 and size of the other two). It is written into a hidden temp directory,
each file fsynced, the manifest written last, then renamed into place in one step, so a crash or
SIGKILL at any moment leaves either the complete new checkpoint or none of it. Old checkpoints
are deleted only after the new one is committed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from hetgan.errors import CheckpointError
from hetgan.fileio import fsync_dir, write_bytes_durable

log = logging.getLogger("hetgan")

TENSORS, STATE, MANIFEST = "tensors.safetensors", "state.json", "manifest.json"
PREFIX = "step-"


def save_checkpoint(root: Path, step: int, tensors: dict[str, torch.Tensor], state: dict[str, Any], keep: int) -> Path:
    """Commit a checkpoint for `step` under `root` and prune to the newest `keep`."""
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):  # left by a process killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"{PREFIX}{step:09d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    blobs = {
        TENSORS: save_safetensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()}),
        STATE: json.dumps(state, indent=1, sort_keys=True).encode(),
    }
    manifest = {name: {"sha256": hashlib.sha256(d).hexdigest(), "bytes": len(d)} for name, d in blobs.items()}
    blobs[MANIFEST] = json.dumps(manifest, indent=1).encode()  # written last
    try:
        tmp.mkdir()
        for name, data in blobs.items():
            write_bytes_durable(tmp / name, data)
        fsync_dir(tmp)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)  # the partial write goes at once, not at the next save
        raise unwritten(root, final, e, sum(len(d) for d in blobs.values())) from e
    if final.exists():  # re-saving a step (interrupt right after resume): swap atomically-ish
        old = root / f".tmp-old-{final.name}-{os.getpid()}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old)
    else:
        os.rename(tmp, final)
    fsync_dir(root)
    for old_ckpt in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old_ckpt)
    return final


def unwritten(root: Path, final: Path, error: OSError, needed: int) -> CheckpointError:
    """What a failed checkpoint write says: which, why, how much it needed, what is left, and how
    to go on."""
    last = list_checkpoints(root)
    kept = f"the last good checkpoint, {last[-1]}, is intact" if last else "there is no earlier checkpoint"
    why = "the disk is full" if error.errno in (errno.ENOSPC, errno.EDQUOT) else "the write failed"
    return CheckpointError(
        f"could not write checkpoint {final}: {why} ({error.strerror or error}; it needs "
        f"{needed / 2**20:.1f} MiB). Nothing partial was left behind and {kept}. Free space on "
        f"{root} (df -h {root}), then continue with: hetgan train --resume {root.parent}"
    )


def list_checkpoints(root: Path) -> list[Path]:
    """Committed checkpoint directories, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)]
    return sorted(found, key=lambda p: p.name)


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify one checkpoint against its manifest; raise CheckpointError if it fails."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: manifest missing or unreadable ({e})") from None
    blobs = {}
    for name in (TENSORS, STATE):
        try:
            data = (path / name).read_bytes()
            expected = manifest[name]
        except (OSError, KeyError) as e:
            raise CheckpointError(f"{path}: {name} missing ({e})") from None
        if len(data) != expected["bytes"] or hashlib.sha256(data).hexdigest() != expected["sha256"]:
            raise CheckpointError(
                f"{path / name}: {len(data)} bytes do not match the manifest "
                f"({expected['bytes']} bytes, sha256 {expected['sha256'][:12]}...); truncated or corrupt"
            )
        blobs[name] = data
    return load_safetensors(blobs[TENSORS]), json.loads(blobs[STATE])


def load_latest_checkpoint(root: Path) -> tuple[Path, dict[str, torch.Tensor], dict[str, Any]]:
    """The newest checkpoint that verifies; warns about and skips any newer corrupt ones."""
    candidates = list_checkpoints(root)
    if not candidates:
        raise CheckpointError(
            f"{root}: no checkpoints to resume from; the run stopped before its first one was saved, "
            "so start it again with another --out (or delete this run directory)"
        )
    for path in reversed(candidates):
        try:
            tensors, state = read_checkpoint(path)
        except CheckpointError as e:
            log.warning("ignoring corrupt checkpoint: %s; trying the previous one", e)
            continue
        return path, tensors, state
    raise CheckpointError(f"{root}: every checkpoint is corrupt ({len(candidates)} tried)")


def flatten_optimizer(prefix: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimiser state_dict into tensors (for safetensors) and JSON-able rest."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, param_state in sd["state"].items():
        for key, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    # A captured step (StepGraph) keeps the learning rates as device tensors: saved as numbers.
    groups = [{k: v.item() if torch.is_tensor(v) else v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def restore_optimizer(prefix: str, opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    """Load the saved optimiser state into `opt`, keeping `opt`'s own settings (betas, fused,
    foreach...), which come from the run's current config: torch's load_state_dict would take the
    saved ones, so a run resumed with --allow-config-change would keep its old betas, or its old
    Adam implementation while the trainer relied on the new one's device-side skip."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith(prefix + "."):
            idx, key = name[len(prefix) + 1 :].split(".", 1)
            state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    groups = [
        {**saved, **{k: v for k, v in live.items() if k != "params"}}
        for saved, live in zip(meta["param_groups"], opt.param_groups, strict=True)
    ]
    opt.load_state_dict({"state": state, "param_groups": groups})
    match_parameter_layouts(opt)


def match_parameter_layouts(opt: torch.optim.Optimizer) -> None:
    """Give each state tensor its parameter's strides. Checkpoints hold contiguous tensors and
    load_state_dict casts dtype and device only, so a channels_last parameter got a contiguous
    exp_avg on resume, which CUDA's fused Adam refuses ("params, grads, exp_avgs, and exp_avg_sqs
    must have same dtype, device, and layout"; seen on an H100)."""
    for param, param_state in opt.state.items():
        for key, value in param_state.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                param_state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)
