"""Training throughput: hetgan's trainer vs the plain textbook loop, same DCGAN-32, same batch,
same loss, same CPU, in one process. Prints img/s for each and the ratio.

    python benchmarks/train_throughput.py [--seconds 20] [--batch 64] [--width 64]

hetgan rows: `plain` (fp32, contiguous layout, the trainer's reused G forward and device-resident
data) and `channels_last` (the layout knob the default preset turns on).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from textbook import TextbookDCGAN, mnist32  # noqa: E402

from hetgan.config import TrainConfig  # noqa: E402
from hetgan.training import Trainer  # noqa: E402

MNIST = Path(__file__).resolve().parents[1] / "hetgan" / "data" / "mnist_5k.npz"


def time_textbook(data: torch.Tensor, batch: int, width: int, seconds: float) -> float:
    loop = TextbookDCGAN(data, batch_size=batch, width=width)
    loop.run_for(min(3.0, seconds / 4))  # warm-up
    loop.nimg = 0
    return loop.run_for(seconds)


def time_hetgan(batch: int, width: int, seconds: float, channels_last: bool) -> float:
    cfg = TrainConfig(preset="bench")
    cfg.model.width = width
    cfg.train.batch_size = batch
    cfg.accel.device = "cpu"
    cfg.accel.channels_last = channels_last
    trainer = Trainer(cfg.validate())
    warm_end = time.perf_counter() + min(3.0, seconds / 4)
    while time.perf_counter() < warm_end:
        trainer.step()
    start, nimg0 = time.perf_counter(), trainer.nimg
    while time.perf_counter() - start < seconds:
        trainer.step()
    return (trainer.nimg - nimg0) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per setup")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=int, default=64, help="DCGAN width (textbook ngf = ndf = 64)")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}; "
        f"DCGAN-32 width {args.width}, batch {args.batch}, {args.seconds:.0f} s each"
    )
    textbook = time_textbook(mnist32(str(MNIST)), args.batch, args.width, args.seconds)
    rows = [("textbook loop", textbook)]
    for channels_last in (False, True):
        name = "hetgan channels_last" if channels_last else "hetgan plain"
        rows.append((name, time_hetgan(args.batch, args.width, args.seconds, channels_last)))
    print(f"{'setup':<22}{'img/s':>10}{'vs textbook':>14}")
    for name, img_s in rows:
        print(f"{name:<22}{img_s:>10.1f}{img_s / textbook:>13.2f}x")


if __name__ == "__main__":
    main()
