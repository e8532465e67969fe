"""The recipe sweep behind the default preset: variants of dcgan_mnist trained one after the
other and scored with FID (digits) on 5000 samples. Run it on an otherwise idle machine: wall
times are part of the result.

    python benchmarks/recipe_sweep.py [--only NAME ...] [--seeds 0 1 2] [--preset dcgan_mnist]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import hetgan
from hetgan.config import apply_overrides
from hetgan.eval.score import evaluate

# The previous default (BCE, Adam 4e-4, betas (0.5, 0.999)); the first variants are relative to it.
PREVIOUS = ["loss.name=bce", "optim.g_lr=4e-4", "optim.d_lr=4e-4", "optim.beta2=0.999"]
B64 = ["train.batch_size=64", "optim.g_lr=2e-4", "optim.d_lr=2e-4", "train.kimg=150"]

# Overrides on top of the shipped dcgan_mnist preset (hinge, Adam 1.5e-3, betas (0.5, 0.99)).
VARIANTS = {
    "previous_default": PREVIOUS,
    "batch64_lr2e-4_150kimg": [*PREVIOUS, *B64],
    "diffaugment_translation": [*PREVIOUS, *B64, "loss.augment=translation"],
    "d_lr_halved": [*PREVIOUS, "optim.d_lr=2e-4"],
    "ema_10kimg": [*PREVIOUS, "train.ema_kimg=10"],
    "r1_0.01": [*PREVIOUS, "loss.r1_gamma=0.01"],
    "batch256_lr6e-4": [*PREVIOUS, "train.batch_size=256", "optim.g_lr=6e-4", "optim.d_lr=6e-4"],
    "hinge": [*PREVIOUS, "loss.name=hinge"],
    "hinge_ema_10kimg": [*PREVIOUS, "loss.name=hinge", "train.ema_kimg=10"],
    "hinge_adam_beta2_0.9": [*PREVIOUS, "loss.name=hinge", "optim.beta2=0.9"],
    "hinge_adam_beta2_0.99": [*PREVIOUS, "loss.name=hinge", "optim.beta2=0.99"],
    "hinge_adam_beta2_0.99_lr5e-4": ["optim.g_lr=5e-4", "optim.d_lr=5e-4"],
    "lr7e-4": ["optim.g_lr=7e-4", "optim.d_lr=7e-4"],
    "d_lr_1e-3": ["optim.g_lr=5e-4", "optim.d_lr=1e-3"],
    "lr1e-3": ["optim.g_lr=1e-3", "optim.d_lr=1e-3"],
    "lr1e-3_seed1": ["optim.g_lr=1e-3", "optim.d_lr=1e-3", "seed=1"],
    "g_lr7e-4_d_lr1.4e-3": ["optim.g_lr=7e-4", "optim.d_lr=1.4e-3"],
    "default": [],  # hinge, Adam 1.5e-3, betas (0.5, 0.99)
    "default_seed1": ["seed=1"],
    # Self-conditioned (data.clusters): G and D conditioned on k-means clusters of the pixels.
    **{f"clusters_{k}": [f"data.clusters={k}"] for k in (20, 50, 100, 200, 400)},
    **{f"clusters_{k}_d_lr3e-3": [f"data.clusters={k}", "optim.d_lr=3e-3"] for k in (50, 100, 200, 400)},
    "clusters_100_d_lr3e-3_300kimg": ["data.clusters=100", "optim.d_lr=3e-3", "train.kimg=300"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(VARIANTS), help="run only these variants")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="train each variant with each of these seeds")
    parser.add_argument("--preset", default="dcgan_mnist", help="the preset the variants change")
    args = parser.parse_args()
    for name, seed in ((name, seed) for name in args.only or VARIANTS for seed in args.seeds):
        overrides = [f"seed={seed}", *VARIANTS[name], f"accel.threads={args.threads}"]  # a variant may fix its seed
        cfg = apply_overrides(hetgan.get_preset(args.preset), overrides)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            run = hetgan.train(cfg, out=Path(tmp) / "run", progress=False).finished().run_dir
            wall = time.perf_counter() - start
            r = evaluate(hetgan.load_generator(run), n=5000, metrics=("fid", "classes", "pr"))
        print(
            json.dumps(
                {
                    "variant": name,
                    "preset": args.preset,
                    "seed": cfg.seed,
                    "overrides": VARIANTS[name],
                    "wall_s": round(wall, 1),
                    "fid_digits": round(r["fid"], 1),
                    "classes_covered": r["classes_covered"],
                    "precision": round(r["precision"], 3),
                    "recall": round(r["recall"], 3),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
