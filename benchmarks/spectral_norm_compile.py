"""Spectral norm under torch.compile: the resnet trainer compiled with the power iteration inside
the graph (hetgan's default: u and v become new tensors each forward) against the same trainer
with it outside (`in_place`, as accel.cuda_graphs needs and as hetgan did before: one graph break
per spectrally normalised layer), and the eager trainer as the reference.

    python benchmarks/spectral_norm_compile.py [--device cpu] [--rounds 3] [--seconds 6]
                                               [--batch 32] [--width 64] [--channels-last]

The resnet_cifar10 preset on the bundled digits (3 channels, 32 px). All three trainers start from
the same seed; each compiles in its first, untimed steps. Compile times are not compared: in one
process the first compiled trainer also pays for what the second then finds in torch's caches.
"""

from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path

import torch
from torch._dynamo.utils import counters

from hetgan.benchmarking.training import interleaved, ratio_spread, speed_record, trainer_timer
from hetgan.config import apply_overrides
from hetgan.data import load_data
from hetgan.fileio import write_json
from hetgan.models.layers import SpectralNorm, update_in_place
from hetgan.placement import resolve_device
from hetgan.presets import get_preset
from hetgan.training.rundir import device_name
from hetgan.training.trainer import Trainer

SETUPS = {
    "eager": {"compile": False, "in_place": False},
    "compiled, iteration outside": {"compile": True, "in_place": True},
    "compiled, one graph": {"compile": True, "in_place": False},
}


def trainers(args: argparse.Namespace, dev: str) -> dict[str, Trainer]:
    overrides = ["data.spec=mnist5k", "data.channels=3", f"model.width={args.width}"]
    overrides += [f"train.batch_size={args.batch}", f"accel.device={dev}"]
    cfg = apply_overrides(get_preset("resnet_cifar10"), overrides)
    cfg.accel.channels_last = args.channels_last
    data = load_data(cfg.data)
    out = {}
    for name, setup in SETUPS.items():
        c = copy.deepcopy(cfg)
        c.accel.compile = setup["compile"]
        trainer = Trainer(c.validate(), data=data)
        if setup["in_place"]:
            update_in_place(trainer.D)
        out[name] = trainer
    return out


def graph_breaks_in_first_step(trainer: Trainer) -> int:
    """How many graph breaks torch.compile met while compiling the trainer's step (0 if eager)."""
    before = sum(counters["graph_break"].values())
    trainer.step()
    return sum(counters["graph_break"].values()) - before


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0, help="timed seconds per setup per round")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures to PATH as JSON")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    dev = str(resolve_device(args.device))
    name = device_name(torch.device(dev))
    print(
        f"device {dev} ({name}), torch {torch.__version__}; resnet_cifar10 width {args.width}, batch {args.batch}, "
        f"channels_last {args.channels_last}"
    )
    made = trainers(args, dev)
    layers = sum(isinstance(m, SpectralNorm) for m in made["eager"].D.modules())
    print(f"D has {layers} spectrally normalised layers")
    breaks = {setup: graph_breaks_in_first_step(trainer) for setup, trainer in made.items()}
    speeds = interleaved({setup: trainer_timer(t, args.seconds) for setup, t in made.items()}, args.rounds)
    reference = speeds["eager"]
    print(f"{'setup':<30}{'graph breaks':>13}{'median img/s':>14}{'vs eager: median (min-max)':>30}")
    for setup, values in speeds.items():
        speed, ratio = statistics.median(values), ratio_spread(values, reference)
        print(f"{setup:<30}{breaks[setup]:>13}{speed:>14.1f}{ratio:>30}")
    for trainer in made.values():
        trainer.count_skipped()  # a compiled step that went non-finite is skipped and counted
    setups = {
        setup: {
            "graph_breaks": breaks[setup],
            "compiled": made[setup].D_fwd is not made[setup].D and made[setup].G_fwd is not made[setup].G,
            "nonfinite_steps": made[setup].nonfinite_total,
            **speed_record(speeds[setup], reference),
        }
        for setup in speeds
    }
    write_json(args.json, {"device": dev, "spectral_norm_layers": layers, "setups": setups})


if __name__ == "__main__":
    main()
