"""Stacked MNIST (1000 modes), the PacGAN and VEEGAN mode-collapse benchmark: plain DCGAN, PacGAN
packing and the self-conditioned GAN, each trained from `dcgan_stacked_mnist` on each seed, then
scored on 26,000 samples of G_ema: modes covered of 1000 and the KL of the mode histogram to
uniform (each channel classified by the bundled digit network), and FID in its features.

    python benchmarks/stacked_mnist.py [--variants plain pacgan2 selfcond] [--seeds 0 1 2]
                                       [--kimg K] [--n 26000] [--real-n 10000] [--json FILE] [--runs DIR]

Reference (PacGAN, Lin et al. 2018, Table 2; their DCGAN, 128k images): DCGAN 99 modes, KL 3.40;
PacDCGAN2 1000 modes, KL 0.06. The target here: 1000 modes with KL <= 0.05 on every seed, in at most
15 minutes of training on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import hetgan
from hetgan.config import apply_overrides
from hetgan.eval.score import MAX_REAL, Evaluator
from hetgan.fileio import write_json

VARIANTS = {
    "plain": [],
    "pacgan2": ["loss.pack=2"],  # D judges two samples at once (Lin et al. 2018)
    "selfcond": ["data.clusters=100", "optim.d_lr=3e-3"],  # Liu et al. 2020, as the digits sweep chose
}
N = 26_000


def train_and_score(
    variant: str, seed: int, kimg: float | None, n: int, runs: Path | None, real_n: int = MAX_REAL
) -> dict:
    overrides = [*VARIANTS[variant], f"seed={seed}", *([f"train.kimg={kimg}"] if kimg else [])]
    cfg = apply_overrides(hetgan.get_preset("dcgan_stacked_mnist"), overrides)
    with tempfile.TemporaryDirectory() as tmp:
        out = (runs or Path(tmp)) / f"{variant}-seed{seed}"
        start = time.perf_counter()
        run = hetgan.train(cfg, out=out, progress=False).finished().run_dir
        wall = time.perf_counter() - start
        G = hetgan.load_generator(run)
        r = Evaluator(G.config, seed=0, max_real=real_n)(G, n)
    return {
        "variant": variant,
        "overrides": VARIANTS[variant],
        "seed": seed,
        "kimg": cfg.train.kimg,
        "wall_s": round(wall, 1),
        "modes": r["classes_covered"],
        "kl": round(r["kl_to_uniform"], 4),
        "fid": round(r["fid"], 2),
        "n": n,
        "real_n": real_n,
    }


def table(rows: list[dict]) -> str:
    lines = ["| variant | seed | kimg | wall | modes of 1000 | KL to uniform | FID (stacked digits) |"]
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['seed']} | {r['kimg']:g} | {r['wall_s']:.0f} s | {r['modes']} | {r['kl']:.4f} | "
            f"{r['fid']:.2f} |"
        )
    return "\n".join(lines)


def summary(rows: list[dict]) -> dict:
    """Per variant: the modes and KL of each seed, their worst, and whether every seed met the target."""
    out = {}
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant]
        out[variant] = {
            "modes": [r["modes"] for r in mine],
            "kl": [r["kl"] for r in mine],
            "kl_mean": round(statistics.mean(r["kl"] for r in mine), 4),
            "met": all(r["modes"] == 1000 and r["kl"] <= 0.05 and r["wall_s"] <= 900 for r in mine),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--kimg", type=float, help="training length (default: the preset's)")
    parser.add_argument("--n", type=int, default=N, help=f"samples scored (default {N:,}, the protocol's)")
    parser.add_argument(
        "--real-n", type=int, default=MAX_REAL, help=f"real images FID compares with (default {MAX_REAL:,})"
    )
    parser.add_argument("--json", type=Path, help="also write the rows and the summary to this file")
    parser.add_argument("--runs", type=Path, help="keep the runs here, as VARIANT-seedS (default: deleted)")
    args = parser.parse_args()
    rows = []
    for variant in args.variants:
        for seed in args.seeds:
            rows.append(train_and_score(variant, seed, args.kimg, args.n, args.runs, args.real_n))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(table(rows))
    verdicts = summary(rows)
    for variant, s in verdicts.items():
        print(f"{variant}: modes {s['modes']}, KL {s['kl']}; target (1000 modes, KL <= 0.05, <= 15 min) "
              f"{'met on every seed' if s['met'] else 'not met'}")  # fmt: skip
    write_json(args.json, {"rows": rows, "summary": verdicts})


if __name__ == "__main__":
    main()
