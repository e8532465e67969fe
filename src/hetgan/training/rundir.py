"""The run directory: a fixed layout that is never overwritten, and the writers that fill it.

runs/00003-dcgan_mnist/
  config.yaml          resolved config (what `--resume` reads back)
  log.txt              human-readable log
  metrics.jsonl        one JSON object per logged step
  samples/             fixed-seed grids over time (step-NNNNNNNNN.png, final.png)
  checkpoints/         resumable training state (see checkpoint.py)
  generator.safetensors  the deployable artifact (G_ema + config + version)
  .lock                held by the `train` writing the run (`run_lock`)
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from hetgan.config import TrainConfig, dump_yaml, from_dict, to_dict
from hetgan.data import absolute_path, absolute_spec
from hetgan.errors import HetganError
from hetgan.fileio import atomic_write_bytes, strict_json
from hetgan.version import __version__

log = logging.getLogger("hetgan")


def new_run_dir(out: str | Path | None, preset: str, root: str | Path = "runs") -> Path:
    """Create a fresh run directory: `out`, or `root/NNNNN-<preset>` with the next free number."""
    if out is not None:
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise HetganError(f"{path}: is a file; --out names the run directory to create, e.g. --out runs/mine")
        if path.exists() and any(path.iterdir()):
            raise HetganError(
                f"{path}: output directory exists and is not empty; a run directory is never "
                f"overwritten. Continue it with --resume {path}, or choose another --out"
            )
        path.mkdir(parents=True, exist_ok=True)
        return path
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    numbers = [int(m.group(1)) for p in root.iterdir() if (m := re.match(r"(\d{5})-", p.name))]
    number = max(numbers, default=-1) + 1
    while True:  # mkdir without exist_ok is the lock against a concurrent run taking the number
        path = root / f"{number:05d}-{preset}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            number += 1


LOCK_NAME = ".lock"


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run directory while a `train` writes to it, so that a second
    `train --resume` of the same run (another terminal, a scheduler's retry) is refused instead
    of interleaving two runs' checkpoints and metrics. The OS drops the lock when the process
    ends, however it ends (SIGKILL too), so no stale lock is left. POSIX only (fcntl.flock)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    with open(run_dir / LOCK_NAME, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown process"
            raise HetganError(
                f"{run_dir} is being written by another `hetgan train` ({holder}); "
                "wait for it to finish, or stop it (Ctrl-C saves a checkpoint) and resume then"
            ) from None
        except OSError as e:  # a file system without locks (some network mounts): go on unguarded
            log.warning("cannot lock %s (%s): a second train of this run would not be refused", run_dir, e)
            yield
            return
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {platform.node()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_config(run_dir: Path, cfg: TrainConfig) -> None:
    atomic_write_bytes(run_dir / "config.yaml", dump_yaml(cfg).encode())


@contextmanager
def run_log(run_dir: Path) -> Iterator[None]:
    """Write the "hetgan" logger's INFO and above to run_dir/log.txt while the block runs, and
    hand the caller's logging only what the caller's levels ask for.

    log.txt must be complete however train() was called, so the logger is lowered to INFO for the
    block if it was above (the default WARNING of an API caller). Lowering it alone would send the
    INFO records on to the caller's handlers too (a script with logging.basicConfig() at WARNING
    would print every step line): instead the block's records stop at this logger, and those at
    or above the level it had go on to the handlers above it, as before.
    """
    handler = logging.FileHandler(run_dir / "log.txt", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    level, effective, propagate = log.level, log.getEffectiveLevel(), log.propagate
    forward = ToParentHandlers(effective) if propagate and log.parent is not None else None
    log.setLevel(min(effective, logging.INFO))
    log.addHandler(handler)
    if forward:
        log.propagate = False
        log.addHandler(forward)
    try:
        yield
    finally:
        log.removeHandler(handler)
        if forward:
            log.removeHandler(forward)
        log.propagate = propagate
        log.setLevel(level)
        handler.close()


class ToParentHandlers(logging.Handler):
    """Hands a record to the handlers above the "hetgan" logger (the caller's), if it reaches the
    level the caller's configuration gave that logger."""

    def emit(self, record: logging.LogRecord) -> None:
        parent = log.parent
        while parent is not None:
            for handler in parent.handlers:
                if record.levelno >= handler.level:
                    handler.handle(record)
            if not parent.propagate:
                break
            parent = parent.parent
        if not log.parent.hasHandlers() and record.levelno >= logging.lastResort.level:
            logging.lastResort.handle(record)  # what Python does when nobody configured logging


class MetricsWriter:
    """Appends one JSON line per record to metrics.jsonl, flushed so a crash loses at most one."""

    def __init__(self, run_dir: Path, board=None, enabled: bool = True) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.board = board  # hetgan.training.tensorboard.Board: each record goes there too
        self.enabled = enabled  # False on the data-parallel ranks other than rank 0

    def truncate_after(self, step: int) -> None:
        """On resume: drop records newer than the checkpoint, which the resumed run will redo."""
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except ValueError:  # a line cut short by a kill
                continue
        atomic_write_bytes(self.path, ("\n".join(kept) + "\n" if kept else "").encode())

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(strict_json(record) + "\n")
        if self.board is not None:
            self.board.record(record)


def machine_info(device: torch.device) -> dict:
    """What a run or a benchmark ran on: platform, CPU model, versions, device (GPU name), threads,
    and every GPU the machine has, with the CUDA version."""
    info = {
        "platform": platform.platform(),
        "processor": processor(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "hetgan": __version__,
        "device": str(device),
    }
    model = cpu_model()
    if model:
        info["cpu_model"] = model
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    if torch.cuda.is_available():  # G or D may sit on a GPU other than `device`, or on none
        info["cuda"] = torch.version.cuda
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def processor() -> str:
    """The processor as Python names it (x86_64 where it names none)."""
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """What a benchmark's header calls the device: the GPU's name, or the processor."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else processor()


def provenance(cfg: TrainConfig, device: torch.device) -> dict:
    """When, on what and with which config a benchmark ran: the head of a `bench` or `tune`
    record, the date in UTC (e.g. 2026-11-22T10:15:03+00:00)."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "config": to_dict(cfg),
    }


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (Linux), which platform.processor() leaves empty."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def write_machine(run_dir: Path, device: torch.device) -> None:
    """machine_info for the report."""
    atomic_write_bytes(run_dir / "machine.json", strict_json(machine_info(device), indent=1).encode())


def with_absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """cfg with data.spec's path and train.evalnet made absolute: the run's config.yaml (and its
    generator's config) then names the same files whatever directory the run is resumed, sampled
    or evaluated from. A run made before paths were stored this way meant them from the working
    directory, as they are read here."""
    return from_dict(absolute_paths(to_dict(cfg)))


def absolute_paths(raw: dict) -> dict:
    """`with_absolute_paths` on a config's dict form (a checkpoint's, which may be older)."""
    out = {**raw, "data": dict(raw.get("data", {})), "train": dict(raw.get("train", {}))}
    if isinstance(out["data"].get("spec"), str):
        out["data"]["spec"] = absolute_spec(out["data"]["spec"])
    if isinstance(out["train"].get("evalnet"), str) and out["train"]["evalnet"]:
        out["train"]["evalnet"] = absolute_path(out["train"]["evalnet"])
    if "distill" in raw:
        out["distill"] = dict(raw["distill"])
        for key in ("teacher", "init"):
            if isinstance(out["distill"].get(key), str) and out["distill"][key]:
                out["distill"][key] = absolute_path(out["distill"][key])
    return out
