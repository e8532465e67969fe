"""D's batch layout: the real and the fake batch judged in two forwards (`accel.batch_layout=separate`,
the default) against one forward over both (`joint`), on the presets whose D allows it, timed in
interleaved rounds in one process.

    python benchmarks/batch_layout.py [--presets mlp_mnist mlp_ring8 mlp_grid25] [--rounds 5] [--seconds 4]
                                      [--device auto] [--set accel.optimizer_impl=fused ...]

Both sides run each preset's own config plus the `--set` overrides (default: fused Adam, which tune
picks with the joint batch on our CPU); the only difference is `accel.batch_layout`. It prints each
side's median img/s and the joint side's ratio to the separate one within each round, then D's
phase alone (its forward with the loss, and its backward: bench's phase breakdown, the median of
as many 20-step runs as rounds, taken in turn) in ms per step on each side.
"""

from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path

import torch

from hetgan.benchmarking.training import interleaved, phase_breakdown, ratio_spread, speed_record, trainer_timer
from hetgan.config import apply_overrides
from hetgan.fileio import write_json
from hetgan.presets import get_preset
from hetgan.training.trainer import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["mlp_mnist", "mlp_ring8", "mlp_grid25"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0, help="timed seconds per side per round")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", action="append", default=None, metavar="FIELD=VALUE")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures to PATH as JSON")
    args = parser.parse_args()
    overrides = args.set if args.set is not None else ["accel.optimizer_impl=fused"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; both sides: {' '.join(overrides) or '-'}")
    ratio = "joint vs separate: median (min-max)"
    header = f"{'preset':<14}{'batch':>6}{'separate img/s':>16}{'joint img/s':>13}{ratio:>38}"
    print(f"{header}{'D phase ms: separate':>23}{'joint':>8}{'ratio':>8}")
    record = {"both_sides": overrides, "presets": {}}
    for preset in args.presets:
        cfg = apply_overrides(get_preset(preset), [f"accel.device={args.device}", *overrides])
        trainers = {
            layout: Trainer(apply_overrides(copy.deepcopy(cfg), [f"accel.batch_layout={layout}"]))
            for layout in ("separate", "joint")
        }
        try:
            speeds = interleaved({k: trainer_timer(t, args.seconds) for k, t in trainers.items()}, args.rounds)
            d_phase = interleaved({k: lambda _, t=t: d_phase_ms(t) for k, t in trainers.items()}, args.rounds)
        finally:
            for trainer in trainers.values():
                trainer.close()
        separate, joint = speeds["separate"], speeds["joint"]
        d_separate, d_joint = (statistics.median(d_phase[k]) for k in ("separate", "joint"))
        print(
            f"{preset:<14}{cfg.train.batch_size:>6}{statistics.median(separate):>16.1f}"
            f"{statistics.median(joint):>13.1f}{ratio_spread(joint, separate):>38}"
            f"{d_separate:>23.2f}{d_joint:>8.2f}{d_separate / d_joint:>7.2f}x"
        )
        record["presets"][preset] = {
            "batch": cfg.train.batch_size,
            "separate": speed_record(separate, separate),
            "joint": speed_record(joint, separate),
            "d_phase_ms": {"separate": d_separate, "joint": d_joint},
        }
    write_json(args.json, record)


def d_phase_ms(trainer: Trainer) -> float:
    phases = phase_breakdown(trainer, steps=20)
    return phases["d_forward"] + phases["d_backward"]


if __name__ == "__main__":
    main()
