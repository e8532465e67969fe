"""img/s of hetgan's trainer under one knob set after another, in one process: what each of
precision, channels_last, compile and the captured step (`accel.cuda_graphs`) is worth on this
device, and that each runs and stays finite. One window per knob set, so a quick survey; tune and
train_throughput.py interleave rounds for the numbers that decide.

    python benchmarks/step_knobs.py [--device cuda] [--batch 64] [--width 64] [--seconds 3]

On a CPU the knob sets that need CUDA (cuda_graphs) are left out.
"""

from __future__ import annotations

import argparse
import time

import torch

from hetgan.benchmarking.training import steady_img_per_s
from hetgan.placement import resolve_device
from hetgan.presets import get_preset
from hetgan.training.trainer import Trainer

FUSED = {"optimizer_impl": "fused"}
KNOB_SETS = [
    {},
    {"precision": "bf16", **FUSED},
    {"precision": "bf16", "channels_last": True, **FUSED},
    {"precision": "bf16", "compile": True, **FUSED},
    {"cuda_graphs": True, **FUSED},
    {"precision": "bf16", "cuda_graphs": True, **FUSED},
    {"precision": "bf16", "channels_last": True, "cuda_graphs": True, **FUSED},
    {"precision": "bf16", "compile": True, "cuda_graphs": True, **FUSED},
    # Where the bf16 share of peak is decided (large batches): cuDNN's autotuning, and compile with
    # channels_last (its convolution backward failed on torch 2.11 on an H100; the survey says so).
    {"precision": "bf16", "channels_last": True, "cudnn_benchmark": True, "cuda_graphs": True, **FUSED},
    {"precision": "bf16", "channels_last": True, "compile": True, "cuda_graphs": True, **FUSED},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"device {device}, torch {torch.__version__}; DCGAN-32 width {args.width}, batch {args.batch}")
    print(f"{'knobs':<70}{'img/s':>10}  set-up and warm-up")
    for knobs in KNOB_SETS:
        if knobs.get("cuda_graphs") and device.type != "cuda":
            continue
        cfg = get_preset("dcgan_textbook")
        cfg.model.width, cfg.train.batch_size, cfg.accel.device = args.width, args.batch, str(device)
        for name, value in knobs.items():
            setattr(cfg.accel, name, value)
        name = ", ".join(f"{k}={v}" for k, v in knobs.items()) or "plain (fp32, eager)"
        start = time.perf_counter()
        trainer = Trainer(cfg)
        try:
            speed = steady_img_per_s(trainer, args.seconds, warmup_steps=8)
            trainer.count_skipped()
            if not all(torch.isfinite(p).all() for p in trainer.G_ema.parameters()):
                raise RuntimeError("G_ema has non-finite weights")
            print(f"{name:<70}{speed:>10.0f}  {time.perf_counter() - start - args.seconds:.0f} s")
        except Exception as e:  # one knob set that fails (a compiler bug) does not end the survey
            print(f"{name:<70}{'failed':>10}  {type(e).__name__}: {str(e).splitlines()[0][:100]}")
        finally:
            trainer.close()


if __name__ == "__main__":
    main()
