"""Training throughput: the textbook loop vs hetgan's trainer, plain and tuned, on the same
DCGAN-32 (width 64), batch 64, BCE loss, same device, in one process. Prints img/s and ratios.

    python benchmarks/train_throughput.py [--rounds 5] [--seconds 6] [--batch 64] [--width 64] [--device cpu]
                                          [--tune-seconds 5]

Rows: `textbook loop` (hetgan.benchmarking.textbook: DataLoader, sigmoid + BCELoss, one G forward reused for the
G step),
`hetgan plain` (fp32, contiguous, eager: the reused G forward and device-resident data alone) and
`hetgan tuned` (the knobs `hetgan tune` picks on this machine, measured again here).

The three setups are timed in turn, `--seconds` each, for `--rounds` rounds, so a slow spell of
the machine hits all of them; each ratio is taken within a round and the median, min and max over
the rounds are printed.

It then prints what bounds the ratio: each loop's FLOPs per image (torch.utils.flop_counter),
the FLOP/s each achieves, the matrix-product peak measured on the spot (the faster of fp32 and the
tuned precision), and the FLOP/s hetgan would need for issue 4's ratio (1.5x on a CPU, 5x on a
GPU). On a CPU it also profiles the tuned step and prints the ratio it would reach if everything
but its convolutions took no time, two ways: from their profiled time, and from their share of the
profiled step (profiling slows a step, so the first is the lower bound of the two).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from hetgan.benchmarking.training import (
    device_peak,
    flops_per_image,
    interleaved,
    ratio_spread,
    speed_record,
    textbook_flops_per_image,
    textbook_loop,
    trainer_timer,
)
from hetgan.benchmarking.tune import tune
from hetgan.config import TrainConfig
from hetgan.fileio import write_json
from hetgan.placement import resolve_device
from hetgan.presets import get_preset
from hetgan.training.trainer import Trainer


def config(batch: int, width: int, device: str) -> TrainConfig:
    cfg = get_preset("dcgan_textbook")
    cfg.model.width = width
    cfg.train.batch_size = batch
    cfg.accel.device = device
    return cfg.validate()


def convolution_ms_per_step(trainer: Trainer, steps: int = 10) -> tuple[float, float]:
    """(ms per step in convolution ops, ms per step in all) from torch.profiler's self CPU time
    of the aten ops whose name contains "convolution" (forward, transposed and backward)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            trainer.step()
        total = time.perf_counter() - start
    conv_us = sum(e.self_cpu_time_total for e in prof.key_averages() if "convolution" in e.key)
    return conv_us / 1000 / steps, 1000 * total / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds over the three setups")
    parser.add_argument("--seconds", type=float, default=6.0, help="timed seconds per setup per round")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=int, default=64, help="DCGAN width (textbook ngf = ndf = 64)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tune-seconds", type=float, default=5.0, help="timed seconds per tune candidate")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures to PATH as JSON")
    args = parser.parse_args()
    cfg = config(args.batch, args.width, args.device)
    device = resolve_device(args.device)
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"device {device}; DCGAN-32 width {args.width}, batch {args.batch}, "
        f"{args.rounds} rounds of {args.seconds:.0f} s per setup"
    )
    tuning = tune(cfg, seconds=args.tune_seconds)
    print(tuning.summary())
    best = tuning.chosen
    plain = Trainer(cfg)
    tuned = Trainer(tuning.config)
    textbook = textbook_loop(cfg, plain)
    textbook.run_for(2.0)  # warm-up; the trainers warm up in their first round
    names = ["textbook loop", "hetgan plain", f"hetgan tuned ({best.name})"]
    timers = {
        names[0]: lambda warm: textbook.run_for(args.seconds),
        names[1]: trainer_timer(plain, args.seconds),
        names[2]: trainer_timer(tuned, args.seconds),
    }

    def show_round(r, speeds):
        print(f"round {r + 1}: " + ", ".join(f"{name.split(' (')[0]} {v[-1]:.1f}" for name, v in speeds.items()))

    img_s = list(interleaved(timers, args.rounds, show_round).values())
    print(f"{'setup':<52}{'median img/s':>13}{'vs textbook: median (min-max)':>32}")
    for name, values in zip(names, img_s, strict=True):
        print(f"{name:<52}{statistics.median(values):>13.1f}{ratio_spread(values, img_s[0]):>32}")

    tb_flops, hg_flops = textbook_flops_per_image(cfg, plain), flops_per_image(cfg, plain.data)
    # The faster of fp32 and tuned's precision, each timed for one window (a second at most).
    peak, peak_dtype = device_peak(device, tuning.config.accel.precision, min(1.0, args.seconds))
    medians = [statistics.median(v) for v in img_s]
    print(
        f"FLOPs per image: textbook {tb_flops / 1e6:.1f} M, hetgan {hg_flops / 1e6:.1f} M "
        f"(the same work at the same speed gives {tb_flops / hg_flops:.2f}x)"
    )
    print(f"matrix-product peak (measured): {peak / 1e9:.1f} GFLOP/s ({peak_dtype})")
    for name, speed, flops in zip(names, medians, (tb_flops, hg_flops, hg_flops), strict=True):
        print(f"{name:<52}{speed * flops / 1e9:>8.1f} GFLOP/s{speed * flops / peak:>8.0%} of peak")
    target = 1.5 if device.type == "cpu" else 5.0  # issue 4's targets
    need = target * medians[0] * hg_flops
    print(f"a {target}x ratio needs hetgan at {need / 1e9:.1f} GFLOP/s, {need / peak:.0%} of the measured peak")
    if device.type == "cpu":
        print_convolution_bound(tuned, args.batch, textbook_img_s=medians[0], tuned_img_s=medians[2])
    setups = {name: speed_record(values, img_s[0]) for name, values in zip(names, img_s, strict=True)}
    record = {"device": str(device), "tuned": best.name, "setups": setups, "peak_flop_s": peak}
    write_json(args.json, record | {"flops_per_image": {"textbook": tb_flops, "hetgan": hg_flops}})


def print_convolution_bound(tuned: Trainer, batch: int, textbook_img_s: float, tuned_img_s: float) -> None:
    """The ratio the tuned trainer would reach if everything but its convolutions took no time.
    Profiled steps may run slower than timed ones: the bound from the convolutions' time alone is
    then low, the one from their share (over the timed ratio) less so; both are printed."""
    conv_ms, step_ms = convolution_ms_per_step(tuned)
    by_time = batch / (conv_ms / 1000) / textbook_img_s
    by_share = tuned_img_s / textbook_img_s / (conv_ms / step_ms)
    print(
        f"hetgan tuned, profiled: {conv_ms:.1f} of {step_ms:.1f} ms per step in convolutions "
        f"({conv_ms / step_ms:.0%}; timed steps {1000 * batch / tuned_img_s:.1f} ms); with everything "
        f"else free it would reach {by_time:.2f}x (from the convolutions' time) or {by_share:.2f}x (from "
        "their share of the step)"
    )


if __name__ == "__main__":
    main()
