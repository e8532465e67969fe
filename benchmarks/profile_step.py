"""Where a training step's time goes: torch.profiler over steady steps of hetgan's trainer on the
DCGAN-32 of the speed targets, with the kernels sorted by their own time and summed by kind.

    python benchmarks/profile_step.py [--device cuda] [--batch 8192] [--width 64] [--steps 20]
                                      [--set accel.precision=bf16 ...] [--top 25]

The kinds: matrix products (convolutions and GEMMs, the work the matrix peak describes) against
everything else (BatchNorm, activations, copies, the optimiser). On a GPU the share of device time
in matrix kernels bounds what any faster kernel choice can give: a step that spends half its
device time outside them cannot reach more than twice its share of peak by tuning the products. It
also prints device time against wall time per step: far less device than wall time means the host
is the bottleneck (kernel launches), as at batch 64.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from hetgan.config import apply_overrides
from hetgan.fileio import write_json
from hetgan.placement import resolve_device
from hetgan.presets import get_preset
from hetgan.training.trainer import Trainer

# Kernel and op names of matrix products: cuDNN/cuBLAS/CUTLASS kernels on a GPU, ATen and oneDNN
# ops on a CPU. Names decide, so a fused pointwise kernel named after a convolution (torch.compile
# names its kernels after the ops they fuse) counts as one: a rough split, not an exact one.
MATRIX_WORDS = ("conv", "gemm", "cutlass", "xmma", "wgrad", "dgrad", "fprop", "mm", "matmul", "linear")


def is_matrix(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in MATRIX_WORDS) and "batch_norm" not in lowered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="profiled steps, after as many warm-up steps")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--top", type=int, default=25, help="kernels (or ops, on a CPU) listed")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures to PATH as JSON")
    args = parser.parse_args()
    device = resolve_device(args.device)
    overrides = [f"model.width={args.width}", f"train.batch_size={args.batch}", f"accel.device={device}", *args.set]
    cfg = apply_overrides(get_preset("dcgan_textbook"), overrides)
    print(f"device {device}, torch {torch.__version__}; DCGAN-32 width {args.width}, batch {args.batch}")
    print(f"knobs: {' '.join(args.set) or '(plain: fp32, eager)'}")
    trainer = Trainer(cfg)
    cuda = device.type == "cuda"
    try:
        for _ in range(args.steps):  # warm-up: compilation, capture, cuDNN autotuning
            trainer.step()
        trainer.count_skipped()
        if cuda:
            torch.cuda.synchronize(device)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        start = time.perf_counter()
        with profile(activities=activities) as prof:
            for _ in range(args.steps):
                trainer.step()
            trainer.count_skipped()
            if cuda:
                torch.cuda.synchronize(device)
        wall_ms = 1000 * (time.perf_counter() - start) / args.steps
    finally:
        trainer.close()
    # On a GPU the kernels (device time); on a CPU the ATen ops with their own CPU time, which
    # nest (an op's own time leaves out the ops it calls), so the sum is the step's work.
    field = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, field, 0) > 0]
    if cuda:
        events = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    else:
        events = [e for e in events if e.key.startswith(("aten::", "mkldnn", "onednn"))]
    events.sort(key=lambda e: getattr(e, field), reverse=True)
    total_ms = sum(getattr(e, field) for e in events) / 1000 / args.steps
    matrix_ms = sum(getattr(e, field) for e in events if is_matrix(e.key)) / 1000 / args.steps
    where = "device" if cuda else "CPU op"
    print(f"wall time per step      {wall_ms:9.3f} ms  ({args.batch / wall_ms * 1000:.0f} img/s)")
    print(f"{where} time per step {total_ms:9.3f} ms  ({total_ms / wall_ms:.0%} of wall)")
    print(f"  in matrix products    {matrix_ms:9.3f} ms  ({matrix_ms / max(total_ms, 1e-9):.0%})")
    print(f"  in everything else    {total_ms - matrix_ms:9.3f} ms  ({1 - matrix_ms / max(total_ms, 1e-9):.0%})")
    print(f"\n{'ms/step':>9} {'share':>6} {'calls/step':>10}  {'kind':<7} name")
    top = []
    for e in events[: args.top]:
        ms = getattr(e, field) / 1000 / args.steps
        kind = "matrix" if is_matrix(e.key) else "other"
        print(f"{ms:9.3f} {ms / total_ms:6.1%} {e.count / args.steps:10.1f}  {kind:<7} {e.key[:110]}")
        top.append({"name": e.key, "kind": kind, "ms_per_step": ms, "calls_per_step": e.count / args.steps})
    record = {"device": str(device), "knobs": args.set, "wall_ms_per_step": wall_ms, "op_ms_per_step": total_ms}
    write_json(args.json, {**record, "matrix_ms_per_step": matrix_ms, "top": top})


if __name__ == "__main__":
    main()
