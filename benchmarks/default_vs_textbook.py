"""Quality per wall-clock second: `hetgan train` (default preset) vs the textbook DCGAN loop.

Runs, in one process and one after the other on an otherwise idle machine:
  1. the default `hetgan train` (dcgan_mnist on the bundled digits), timed end to end;
  2. the textbook loop (hetgan/benchmarking/textbook.py: DCGAN-32 width 64, BCE with sigmoid, Adam 2e-4,
     batch 64) for --textbook-seconds, snapshotting its G when it has trained as long as hetgan did.
Each is scored on --n samples with FID (digits) (features of the bundled digit classifier), the
digit classes covered and the classifier's mean confidence. Grids go to --out for a look.

    python benchmarks/default_vs_textbook.py [--textbook-seconds 720] [--n 5000] [--out bench_out]
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import hetgan
from hetgan.benchmarking.textbook import TextbookLoop
from hetgan.config import DataConfig, TrainConfig
from hetgan.data import load_data
from hetgan.eval.evalnet import load_evalnet
from hetgan.eval.metrics import class_histogram, fid
from hetgan.eval.score import real_features
from hetgan.models import build_models
from hetgan.sample_files import write_samples


def score(samples: torch.Tensor, net, real_feats: np.ndarray) -> dict:
    feats, probs = net.embed(samples)
    hist = class_histogram(probs, 10)
    return {
        "fid_digits": round(fid(feats, real_feats), 2),
        "classes_covered": hist["classes_covered"],
        "mean_confidence": round(hist["mean_confidence"], 4),
        "class_counts": hist["class_counts"],
    }


def textbook_loop(real_uint8: np.ndarray) -> TextbookLoop:
    """The textbook DCGAN-32: width 64, z 100, batch 64, BCE, Adam 2e-4, DCGAN init."""
    cfg = TrainConfig()  # dcgan, width 64, z_dim 100, 32 px: the textbook layout
    torch.manual_seed(0)
    G, D = build_models(cfg)
    images = torch.from_numpy(real_uint8).float().div(127.5).sub(1)
    return TextbookLoop(G, D, images, cfg.model.z_dim, batch_size=64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--textbook-seconds", type=float, default=720.0)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--out", default="bench_out")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    net = load_evalnet()
    real = load_data(DataConfig(spec="mnist5k")).images
    real_feats = real_features(net, real)
    floor = fid(real_feats[::2], real_feats[1::2])  # two halves of the real digits

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        run = hetgan.train(hetgan.get_preset("dcgan_mnist"), out=Path(tmp) / "run", progress=False).finished().run_dir
        hetgan_wall = time.perf_counter() - start
        G = hetgan.load_generator(run)
    rows = {
        "hetgan default": {
            "wall_s": round(hetgan_wall, 1),
            "kimg": G.config.train.kimg,
            **score(G.sample(args.n, seed=0), net, real_feats),
        }
    }
    write_samples(G.sample(64, seed=0), out / "hetgan_default.png")

    loop = textbook_loop(real)
    snap: dict = {}

    def at_tick(elapsed: float) -> None:
        if not snap and elapsed >= hetgan_wall:
            snap.update(G=copy.deepcopy(loop.G), wall_s=elapsed, kimg=loop.nimg / 1000)

    loop.run_for(args.textbook_seconds, at_tick)
    for name, G_tb, wall, kimg in [
        ("textbook, same wall time", snap["G"], snap["wall_s"], snap["kimg"]),
        (f"textbook, {args.textbook_seconds / 60:.0f} min", loop.G, args.textbook_seconds, loop.nimg / 1000),
    ]:
        loop.G = G_tb
        samples = loop.sample(args.n)
        rows[name] = {"wall_s": round(wall, 1), "kimg": round(kimg, 1), **score(samples, net, real_feats)}
        write_samples(samples[:64], out / (name.replace(" ", "_").replace(",", "") + ".png"))

    print(
        f"FID (digits) feature space: bundled digit classifier penultimate layer; n={args.n}; "
        f"real-vs-real floor (2500 vs 2500) = {floor:.2f}"
    )
    print(f"{'setup':<26}{'wall s':>8}{'kimg':>8}{'FID':>10}{'classes':>9}{'conf':>8}")
    for name, r in rows.items():
        print(
            f"{name:<26}{r['wall_s']:>8.1f}{r['kimg']:>8.1f}{r['fid_digits']:>10.2f}"
            f"{r['classes_covered']:>9}{r['mean_confidence']:>8.3f}"
        )
    same = rows["textbook, same wall time"]["fid_digits"] / rows["hetgan default"]["fid_digits"]
    print(f"textbook FID at equal wall time / hetgan FID = {same:.2f}x")
    (out / "default_vs_textbook.json").write_text(json.dumps({"floor": floor, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
