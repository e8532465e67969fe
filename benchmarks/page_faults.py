"""Does glibc's allocator slow the CPU training step? The tuned DCGAN-32 step (channels_last) timed
in child processes with glibc's default malloc settings and with settings that keep freed memory
(no page faults to take it back), alternating, in one run. Prints img/s, page faults and system
time per step, and the ratio of the mean step times.

    python benchmarks/page_faults.py [--pairs 4] [--rounds 3] [--seconds 6] [--batch 64] [--width 64]

glibc reads its MALLOC_* settings at process start, which is why each setting gets processes of
its own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

KEEP_MEMORY = {  # freed memory stays with the process instead of going back to the kernel
    "MALLOC_MMAP_THRESHOLD_": "1073741824",
    "MALLOC_TRIM_THRESHOLD_": "4294967296",
    "MALLOC_TOP_PAD_": "268435456",
}


def child(args: argparse.Namespace) -> None:
    """Time the step in `rounds` windows; print one JSON line per window."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from train_throughput import config

    from hetgan.training.trainer import Trainer

    cfg = config(args.batch, args.width, "cpu")
    cfg.accel.channels_last = True
    trainer = Trainer(cfg)
    try:
        for _ in range(3):
            trainer.step()  # warm-up: optimiser state, allocator
        for _ in range(args.rounds):
            before, start, steps = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), 0
            while time.perf_counter() - start < args.seconds:
                trainer.step()
                steps += 1
            trainer.count_skipped()
            elapsed, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
            window = {
                "ms_per_step": 1000 * elapsed / steps,
                "img_per_s": steps * args.batch / elapsed,
                "faults_per_step": (after.ru_minflt - before.ru_minflt) / steps,
                "system_ms_per_step": 1000 * (after.ru_stime - before.ru_stime) / steps,
            }
            print(json.dumps(window), flush=True)
    finally:
        trainer.close()


def run_child(args: argparse.Namespace, extra_env: dict[str, str]) -> list[dict]:
    cmd = [sys.executable, __file__, "--child", "--rounds", str(args.rounds), "--seconds", str(args.seconds)]
    cmd += ["--batch", str(args.batch), "--width", str(args.width)]
    done = subprocess.run(cmd, env={**os.environ, **extra_env}, capture_output=True, text=True, check=True)
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4, help="processes per setting, the settings alternating")
    parser.add_argument("--rounds", type=int, default=3, help="timing windows per process")
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds per window")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures to PATH as JSON")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    from hetgan.fileio import write_json

    settings = {"glibc defaults": {}, "keep freed memory": KEEP_MEMORY}
    windows: dict[str, list[dict]] = {name: [] for name in settings}
    for _ in range(args.pairs):
        for name, env in settings.items():
            windows[name] += run_child(args, env)
    print(f"DCGAN-32 width {args.width}, batch {args.batch}, channels_last; {args.pairs} processes per setting")
    print(f"{'setting':<20}{'ms/step':>10}{'img/s':>10}{'faults/step':>14}{'system ms/step':>16}")
    means, record = {}, {"settings": {}}
    for name, rows in windows.items():
        means[name] = statistics.mean(r["ms_per_step"] for r in rows)
        img_s = statistics.mean(r["img_per_s"] for r in rows)
        faults = statistics.mean(r["faults_per_step"] for r in rows)
        system = statistics.mean(r["system_ms_per_step"] for r in rows)
        print(f"{name:<20}{means[name]:>10.1f}{img_s:>10.1f}{faults:>14.0f}{system:>16.1f}")
        record["settings"][name] = {
            "windows": len(rows),
            "ms_per_step": means[name],
            "img_per_s": img_s,
            "faults_per_step": faults,
            "system_ms_per_step": system,
        }
    ratio = means["glibc defaults"] / means["keep freed memory"]
    n = len(windows["glibc defaults"])
    print(f"step time, defaults over keep-freed-memory: {ratio:.3f}x (mean of {n} windows each)")
    write_json(args.json, {**record, "defaults_over_keep": ratio})


if __name__ == "__main__":
    main()
