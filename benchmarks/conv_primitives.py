"""Where a CPU training step's convolution time goes, by oneDNN primitive: forward, backward
data (input gradients) and backward weights (weight gradients), with the kernel oneDNN picked.

    python benchmarks/conv_primitives.py [--preset dcgan_textbook] [--batch 64] [--width 64]
                                         [--steps 5] [--set accel.channels_last=true ...]

It trains `--steps` steps after 5 of warm-up in a child process with oneDNN's verbose mode on
(`torch.backends.mkldnn.verbose`, which prints every primitive's execution time to stdout), and
sums those times per step: the total per propagation kind, then the slowest primitives. The
times are oneDNN's own, so they leave out everything around the convolutions (BatchNorm,
activations, optimiser), and they carry the verbose mode's small overhead.

This is what showed that on this CPU's AVX2 the weight gradients run on an older kernel
(`jit:avx2`) at about half the speed of the forward convolutions (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys

MARK = "hetgan-conv-primitives: timed steps start"


def child(args: argparse.Namespace) -> None:
    import torch

    from hetgan.config import apply_overrides
    from hetgan.presets import get_preset
    from hetgan.training.trainer import Trainer

    cfg = get_preset(args.preset)
    cfg.model.width, cfg.train.batch_size = args.width, args.batch
    cfg = apply_overrides(cfg, args.set).validate()
    trainer = Trainer(cfg)
    for _ in range(5):
        trainer.step()
    print(MARK, flush=True)
    with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
        for _ in range(args.steps):
            trainer.step()


def primitive_times(lines: list[str], steps: int) -> dict[tuple[str, str, str, str], list[float]]:
    """{(kind, implementation, propagation, shape): [calls per step, ms per step]} from the
    `onednn_verbose,v1,primitive,exec,cpu,...` lines."""
    out: dict[tuple[str, str, str, str], list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    for line in lines:
        if not line.startswith("onednn_verbose,v1,primitive,exec,cpu,"):
            continue
        f = line.strip().split(",")
        key = (f[5], f[6], f[7], f[-2])  # kind, implementation, propagation, problem shape
        out[key][0] += 1 / steps
        out[key][1] += float(f[-1]) / steps
    return out


def gflop(kind: str, shape: str) -> float | None:
    """GFLOP of one call of a (de)convolution, the same for its three propagations, from oneDNN's
    problem string (`mb64_ic64oc128_ih16oh8kh4sh2dh0ph1_iw16ow8kw4sw2dw0pw1`); None for others."""
    if kind not in ("convolution", "deconvolution"):
        return None
    d = {k: int(v) for k, v in re.findall(r"([a-z]+?)(\d+)", shape)}
    # A convolution's multiply-adds are counted over its output pixels, a deconvolution's over its input's.
    pixels = d["oh"] * d["ow"] if kind == "convolution" else d["ih"] * d["iw"]
    return 2 * d["mb"] * d.get("g", 1) * pixels * d["ic"] * d["oc"] * d["kh"] * d["kw"] / d.get("g", 1) ** 2 / 1e9


def measure(argv: list[str], steps: int) -> dict[tuple[str, str, str, str], list[float]]:
    """primitive_times of `steps` steps, trained in a child process given this script's `argv`."""
    cmd = [sys.executable, __file__, "--child", *argv]
    run = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if run.returncode != 0 or MARK not in run.stdout:
        sys.exit(f"the training child failed (exit {run.returncode}):\n{run.stderr[-2000:]}")
    times = primitive_times(run.stdout.split(MARK, 1)[1].splitlines(), steps)
    if not times:
        sys.exit("oneDNN printed no primitive times: this torch build does not use oneDNN on this CPU")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="dcgan_textbook")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    times = measure(sys.argv[1:], args.steps)
    print(f"{args.preset}, width {args.width}, batch {args.batch}, {' '.join(args.set) or 'as the preset sets'}")
    by_prop: dict[tuple[str, str], float] = collections.defaultdict(float)
    for (kind, _, prop, _), (_, ms) in times.items():
        by_prop[kind, prop] += ms
    total = sum(by_prop.values())
    print(f"{'primitive':<16}{'propagation':<20}{'ms per step':>12}{'share':>8}")
    for (kind, prop), ms in sorted(by_prop.items(), key=lambda kv: -kv[1]):
        print(f"{kind:<16}{prop:<20}{ms:>12.2f}{ms / total:>8.0%}")
    print(f"{'all':<36}{total:>12.2f}\n\nslowest primitives (ms per step, calls per step, GFLOP/s, kernel, shape):")
    for (kind, impl, prop, shape), (calls, ms) in sorted(times.items(), key=lambda kv: -kv[1][1])[:12]:
        work = gflop(kind, shape)
        rate = f"{work * calls / (ms / 1000):6.1f}" if work else f"{'':6}"
        print(f"{ms:8.2f} {calls:4.0f} {rate}  {kind} {prop} [{impl}] {shape}")


if __name__ == "__main__":
    main()
