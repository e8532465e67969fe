"""The 2-D mixture presets over several seeds: PacGAN's protocol (2,500 samples) on each trained
G_ema, then the mean and spread (sample standard deviation) over seeds.

    python benchmarks/mixture_seeds.py [--preset mlp_ring8 mlp_grid25] [--seeds 0 1 2] [--set F=V ...]

Seeds of one preset are independent, so `--jobs 2` trains two at once with one torch thread each
(quality only: the wall times printed are then not those of an idle machine).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import hetgan
from hetgan.config import apply_overrides
from hetgan.eval.score import evaluate


def train_and_score(preset: str, seed: int, overrides: list[str], threads: int) -> dict:
    cfg = apply_overrides(hetgan.get_preset(preset), [*overrides, f"seed={seed}", f"accel.threads={threads}"])
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run = hetgan.train(cfg, out=Path(tmp) / "run", progress=False).finished().run_dir
        wall = time.perf_counter() - start
        r = evaluate(hetgan.load_generator(run), n=2500, seed=0)
    return {
        "preset": preset,
        "seed": seed,
        "wall_s": round(wall, 1),
        "modes_captured": r["modes_captured"],
        "modes_total": r["modes_total"],
        "high_quality": round(r["high_quality"], 4),
        "reverse_kl": round(r["reverse_kl"], 4),
    }


def summarise(rows: list[dict]) -> dict:
    out = {"preset": rows[0]["preset"], "seeds": [r["seed"] for r in rows]}
    for key in ("modes_captured", "high_quality", "reverse_kl"):
        values = [r[key] for r in rows]
        out[key] = {
            "mean": round(statistics.mean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
            "min": min(values),
            "max": max(values),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", nargs="+", default=["mlp_ring8", "mlp_grid25"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args()
    threads = 1 if args.jobs > 1 else 0
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {
            preset: [pool.submit(train_and_score, preset, s, args.overrides, threads) for s in args.seeds]
            for preset in args.preset
        }  # every run queued at once, so no worker idles between presets
        for preset_futures in futures.values():
            rows = []
            for future in preset_futures:
                rows.append(future.result())
                print(json.dumps(rows[-1]), flush=True)
            print(json.dumps({"summary": summarise(rows)}), flush=True)


if __name__ == "__main__":
    main()
