"""Training throughput: the textbook loop vs hetgan's trainer, plain and tuned, on the same
DCGAN-32 (width 64), batch 64, BCE loss, same device, in one process. Prints img/s and ratios.

    python benchmarks/train_throughput.py [--seconds 20] [--batch 64] [--width 64] [--device cpu]

Rows: `textbook loop` (hetgan.bench.textbook: DataLoader, sigmoid + BCELoss, one G forward reused for the G step),
`hetgan plain` (fp32, contiguous, eager: the reused G forward and device-resident data alone) and
`hetgan tuned` (the knobs `hetgan tune` picks on this machine, measured again here).

It then prints what bounds the ratio: each loop's FLOPs per image (torch.utils.flop_counter),
the FLOP/s each achieves, the matrix-product peak measured on the spot, and the FLOP/s hetgan
would need for a 1.5x ratio.
"""

from __future__ import annotations

import argparse
import platform

import torch

from hetgan.bench.bench import (
    flops_per_image,
    matmul_peak,
    steady_img_per_s,
    textbook_flops_per_image,
    textbook_img_per_s,
)
from hetgan.bench.tune import candidates_for, format_tune, tune
from hetgan.config import TrainConfig, apply_overrides
from hetgan.placement import resolve_device
from hetgan.training import Trainer


def config(batch: int, width: int, device: str) -> TrainConfig:
    cfg = TrainConfig(preset="bench_dcgan32")
    cfg.model.width = width
    cfg.train.batch_size = batch
    cfg.accel.device = device
    return cfg.validate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per setup")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=int, default=64, help="DCGAN width (textbook ngf = ndf = 64)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    cfg = config(args.batch, args.width, args.device)
    device = resolve_device(args.device)
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"device {device}; DCGAN-32 width {args.width}, batch {args.batch}, {args.seconds:.0f} s each"
    )
    best, table = tune(cfg, candidates_for(cfg, device), seconds=min(5.0, args.seconds / 2))
    print(format_tune(best, table))
    plain = Trainer(cfg)
    rows = [("textbook loop", textbook_img_per_s(cfg, plain, args.seconds))]
    rows.append(("hetgan plain", steady_img_per_s(plain, args.seconds)))
    tuned_cfg = apply_overrides(config(args.batch, args.width, args.device), best.overrides)
    rows.append((f"hetgan tuned ({best.name})", steady_img_per_s(Trainer(tuned_cfg), args.seconds)))
    textbook = rows[0][1]
    print(f"{'setup':<52}{'img/s':>10}{'vs textbook':>14}")
    for name, img_s in rows:
        print(f"{name:<52}{img_s:>10.1f}{img_s / textbook:>13.2f}x")
    tb_flops, hg_flops = textbook_flops_per_image(cfg, plain), flops_per_image(cfg)
    peak = matmul_peak(device, torch.float32)
    print(
        f"FLOPs per image: textbook {tb_flops / 1e6:.1f} M, hetgan {hg_flops / 1e6:.1f} M "
        f"(the same work at the same speed gives {tb_flops / hg_flops:.2f}x)"
    )
    print(f"matrix-product peak (measured): {peak / 1e9:.1f} GFLOP/s")
    for (name, img_s), flops in zip(rows, (tb_flops, hg_flops, hg_flops), strict=True):
        print(f"{name:<52}{img_s * flops / 1e9:>8.1f} GFLOP/s{img_s * flops / peak:>8.0%} of peak")
    need = 1.5 * textbook * hg_flops
    print(f"a 1.5x ratio needs hetgan at {need / 1e9:.1f} GFLOP/s, {need / peak:.0%} of the measured peak")


if __name__ == "__main__":
    main()
