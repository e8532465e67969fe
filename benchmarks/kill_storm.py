"""A SIGKILL storm under torchrun: a rank killed at a random moment, again and again, and the run
still ends bit for bit as one that was never interrupted.

    python benchmarks/kill_storm.py [--kills 10] [--nproc 2] [--kimg 30] [--snapshot-kimg 0.5]
                                    [--max-wait 8] [--seed 0] [--json FILE] [--out DIR]
                                    [--reference RUN]

1. The reference: `hetgan train --preset mlp_ring8` under torchrun on --nproc ranks (gloo), to its end;
   or `--reference RUN`, a finished uninterrupted run of those settings that you already have (its
   config.yaml and world size must be the storm's, but for train.keep_checkpoints, which only says
   how many old checkpoints stay on disk; what the storm sets is checked before it starts, the rest
   after it).
2. The storm: the same command with `--resume auto` under `torchrun --max-restarts`. `--kills` times,
   once the ranks of an attempt are up, a random one of them gets SIGKILL after a random wait of 0
   to --max-wait seconds: in the middle of start-up, of resuming, of a step or of writing a
   checkpoint (the first kill waits for the first checkpoint, so that the run has one to resume
   from). torchrun then restarts every rank, and hetgan resumes from the newest checkpoint that
   was written whole.
3. Both runs compared: the final generator and the newest checkpoint's tensors bit for bit, and
   every metrics.jsonl record but its img/s; no partial checkpoint left behind.

It exits 1 if the storm's run differs from the reference or fails to finish.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from hetgan.config import load_yaml
from hetgan.fileio import write_json

ROOT = Path(__file__).resolve().parents[1]
NO_REFERENCE = "leave out --reference and the storm trains its own uninterrupted run"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def storm_settings(args: argparse.Namespace) -> dict:
    """What both runs set, by config name (the rest is the preset's): train_args passes these,
    and a `--reference` run must have been trained with them."""
    return {
        "preset": "mlp_ring8", "seed": args.seed, "train.kimg": args.kimg, "train.snapshot_kimg": args.snapshot_kimg,
        "train.log_interval": 5, "train.grid_kimg": args.kimg,
    }  # fmt: skip


def train_args(out: Path, args: argparse.Namespace) -> list[str]:
    s = storm_settings(args)
    return [
        "-m", "hetgan", "train", "--preset", s["preset"], "--no-progress", "--seed", str(s["seed"]),
        "--kimg", str(s["train.kimg"]), "--snapshot-kimg", str(s["train.snapshot_kimg"]),
        "--set", f"train.log_interval={s['train.log_interval']}", "--set", f"train.grid_kimg={s['train.grid_kimg']}",
        "--out", str(out), "--resume", "auto",
    ]  # fmt: skip


def world_size(run: Path) -> int:
    """The world size a run was trained on: torchrun's runs name it in their log, one process's not."""
    found = re.search(r"world size (\d+)", (run / "log.txt").read_text())
    return int(found[1]) if found else 1


def ranks(launcher: subprocess.Popen) -> dict[int, int]:
    """{rank: pid} of the worker processes torchrun has running now (its children with a RANK)."""
    found = {}
    try:
        children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    except OSError:
        return found
    for pid in children:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        env = dict(e.split(b"=", 1) for e in environ if b"=" in e)
        if b"RANK" in env:
            found[int(env[b"RANK"])] = int(pid)
    return found


def newest_checkpoint(run: Path) -> str | None:
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("step-*")) if (run / "checkpoints").is_dir() else []
    return ckpts[-1] if ckpts else None


def storm(out: Path, args: argparse.Namespace, log: Path) -> tuple[int, list[dict]]:
    """The run under `--kills` SIGKILLs: (torchrun's exit status, one record per kill)."""
    rng = random.Random(args.seed)
    cmd = [*TORCHRUN, f"--nproc-per-node={args.nproc}", f"--max-restarts={args.kills + 1}", *train_args(out, args)]
    kills: list[dict] = []
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            killed: set[int] = set()
            while len(kills) < args.kills and proc.poll() is None:
                up = ranks(proc)
                if len(up) < args.nproc or killed & set(up.values()) or not (kills or newest_checkpoint(out)):
                    time.sleep(0.02)  # this attempt's ranks are not all up yet (the first kill: no checkpoint yet)
                    continue
                started = time.monotonic()
                wait = rng.uniform(0, args.max_wait)
                while time.monotonic() - started < wait and proc.poll() is None:
                    time.sleep(0.01)
                rank = rng.randrange(args.nproc)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(up[rank], signal.SIGKILL)
                killed |= set(up.values())
                newest = newest_checkpoint(out)
                kills.append({"rank": rank, "after_s": round(wait, 2), "newest_checkpoint": newest})
                print(f"kill {len(kills)}: rank {rank} after {wait:.2f} s (newest checkpoint {newest})", flush=True)
            code = proc.wait(timeout=args.timeout)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    return code, kills


def final_state(run: Path) -> dict:
    newest = sorted((run / "checkpoints").glob("step-*"))[-1]
    tensors = load_file(newest / "tensors.safetensors")
    tensors.pop("rng.torch_cpu", None)  # torch's own start-up draws from it in every process
    return tensors | {f"artifact.{k}": v for k, v in load_file(run / "generator.safetensors").items()}


def records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "img_per_s"} for line in lines]


def storm_settings_missing(reference: Path, args: argparse.Namespace) -> list[str]:
    """The settings the storm trains with that `reference` was not trained with (checked before
    the storm; settings_differ compares everything after it)."""
    cfg = load_yaml(reference / "config.yaml")
    want = storm_settings(args)
    have = {name: functools.reduce(getattr, name.split("."), cfg) for name in want}
    want["world size"], have["world size"] = args.nproc, world_size(reference)
    return [f"{name} {have[name]}, not {want[name]}" for name in want if have[name] != want[name]]


def settings_differ(reference: Path, run: Path) -> list[str]:
    """The lines of config.yaml, and the world size, in which `reference` was trained otherwise
    than `run` ("reference: LINE / storm: LINE"; empty: the same settings)."""

    def settings(path: Path) -> list[str]:
        lines = (path / "config.yaml").read_text().splitlines()
        lines = [line for line in lines if not line.strip().startswith("keep_checkpoints:")]
        return [*lines, f"world size {world_size(path)}"]

    ours, theirs = settings(run), settings(reference)
    if ours == theirs:
        return []
    return [f"reference: {a.strip()} / storm: {b.strip()}" for a, b in zip(theirs, ours, strict=False) if a != b] + (
        [f"reference: {len(theirs)} lines / storm: {len(ours)}"] if len(theirs) != len(ours) else []
    )


def compare(reference: Path, run: Path) -> dict:
    """Where the storm's run differs from the reference's (empty lists: nowhere)."""
    a, b = final_state(reference), final_state(run)
    return {
        "tensors": len(a),
        "tensors_differ": sorted(k for k in a if k not in b or not torch.equal(a[k], b[k])) + sorted(set(b) - set(a)),
        "records": len(records(reference)),
        "records_differ": [r["step"] for r, s in zip(records(reference), records(run), strict=False) if r != s]
        + (["count"] if len(records(reference)) != len(records(run)) else []),
        "partial_checkpoints": sorted(p.name for p in (run / "checkpoints").glob(".tmp-*")),
        "resumes": (run / "log.txt").read_text().count("resumed from"),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--kimg", type=float, default=30.0)
    parser.add_argument("--snapshot-kimg", type=float, default=0.5)
    parser.add_argument("--max-wait", type=float, default=8.0, help="longest wait before a kill, seconds")
    parser.add_argument("--seed", type=int, default=0, help="the training seed and the storm's")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds the storm's run may take after its kills")
    parser.add_argument("--json", type=Path, help="also write the result to this file")
    parser.add_argument("--out", type=Path, help="keep both runs here (default: deleted)")
    parser.add_argument(
        "--reference", type=Path, metavar="RUN", help="a finished uninterrupted run of these settings to compare with"
    )
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.reference and not (args.reference / "generator.safetensors").is_file():
        raise SystemExit(
            f"--reference {args.reference}: not a finished run (no generator.safetensors in it); {NO_REFERENCE}"
        )
    if args.reference and (missing := storm_settings_missing(args.reference, args)):
        raise SystemExit(
            f"--reference {args.reference} was not trained as the storm will be: {'; '.join(missing)}; {NO_REFERENCE}"
        )
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        reference, reference_s = args.reference or out / "reference", None
        if not args.reference:
            start = time.perf_counter()
            cmd = [*TORCHRUN, f"--nproc-per-node={args.nproc}", *train_args(reference, args)]
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
            if done.returncode:
                raise SystemExit(f"the reference run failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
            reference_s = time.perf_counter() - start
        start = time.perf_counter()
        code, kills = storm(out / "storm", args, out / "storm.txt")
        storm_s = time.perf_counter() - start
        if code:
            raise SystemExit(
                f"the storm's run failed (torchrun exit {code}):\n{(out / 'storm.txt').read_text()[-4000:]}"
            )
        if differ := settings_differ(reference, out / "storm"):
            raise SystemExit(
                f"--reference {reference} was trained with other settings than the storm: {'; '.join(differ)}; "
                + NO_REFERENCE
            )
        diff = compare(reference, out / "storm")
    same = not (diff["tensors_differ"] or diff["records_differ"] or diff["partial_checkpoints"])
    result = {
        "kills": kills,
        "reference_s": None if reference_s is None else round(reference_s, 1),
        "storm_s": round(storm_s, 1),
        **diff,
    }
    result["bitwise_equal"] = same
    took = f"{reference_s:.0f} s" if reference_s is not None else f"{reference}, trained before"
    print(
        f"{len(kills)} SIGKILLs in {storm_s:.0f} s (the uninterrupted run: {took}), "
        f"{diff['resumes']} resumes from a checkpoint; final state: {diff['tensors']} tensors, "
        f"{len(diff['tensors_differ'])} differ; metrics: {diff['records']} records, "
        f"{len(diff['records_differ'])} differ; partial checkpoints left: {len(diff['partial_checkpoints'])}"
    )
    print("bit for bit as the uninterrupted run" if same else "DIFFERS from the uninterrupted run")
    write_json(args.json, result)
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
