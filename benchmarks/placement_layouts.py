"""Placement layouts against all-on-one-device: the same model, batch and loss trained with G and
D on different devices and with each network split into stages, timed in interleaved rounds.

    python benchmarks/placement_layouts.py [--device cuda] [--rounds 5] [--seconds 4] [--batch 64] [--width 64]
                                           [--preset dcgan_textbook | resnet_cifar10] [--data mnist5k]

Layouts (DEV is --device, default auto):
  all on DEV                   the reference
  G on DEV, D on cpu           the seed's layout: fakes go to the CPU, D's gradient comes back
  D on DEV, G on cpu           the reverse
  D split: convs on DEV, head on cpu     d_stages: every layer but the last (the dcgan's 4x4 conv,
                                         the resnet's linear head) on DEV
  G split: stem on cpu, rest on DEV      g_stages: the stem (dcgan: ConvTranspose, BatchNorm, ReLU;
                                         resnet: linear and reshape) on the CPU
It prints each layout's median img/s and its ratio to all-on-DEV within each round. With
--device cpu every layout is on the CPU; that checks the script, not the placement. The default is
DCGAN-32 (dcgan_textbook); --preset resnet_cifar10 times the SNGAN ResNet (on --data, the bundled
digits by default, as CIFAR-10 is not shipped).
"""

from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path

import torch

from hetgan.benchmarking.training import interleaved, ratio_spread, speed_record, trainer_timer
from hetgan.config import TrainConfig, apply_overrides
from hetgan.fileio import write_json
from hetgan.models import build_models
from hetgan.placement import resolve_device
from hetgan.presets import get_preset
from hetgan.training.rundir import device_name
from hetgan.training.trainer import Trainer

STEM = {"dcgan": 3, "resnet": 2}  # G's first layers: ConvTranspose + BatchNorm + ReLU; Linear + Unflatten


def layouts(cfg: TrainConfig, dev: str) -> dict[str, list[str]]:
    G, D = build_models(cfg)
    d_last, g_stem = len(D.net) - 1, STEM[cfg.model.arch]
    return {
        f"all on {dev}": [],
        f"G on {dev}, D on cpu": ["accel.d_device=cpu"],
        f"D on {dev}, G on cpu": ["accel.g_device=cpu"],
        f"D split: convs on {dev}, head on cpu": [f"accel.d_stages=0-{d_last - 1}@{dev},{d_last}-@cpu"],
        f"G split: stem on cpu, rest on {dev}": [f"accel.g_stages=0-{g_stem - 1}@cpu,{g_stem}-@{dev}"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0, help="timed seconds per layout per round")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--preset", default="dcgan_textbook", choices=["dcgan_textbook", "resnet_cifar10"])
    parser.add_argument("--data", default="mnist5k")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures to PATH as JSON")
    args = parser.parse_args()
    dev = str(resolve_device(args.device))
    cfg = get_preset(args.preset)
    cfg.model.width, cfg.train.batch_size, cfg.accel.device = args.width, args.batch, dev
    cfg.data.spec = args.data
    cfg = cfg.validate()
    name = device_name(torch.device(dev))
    print(f"device {dev} ({name}), torch {torch.__version__}; {args.preset} width {args.width}, batch {args.batch}")
    trainers = {
        label: Trainer(apply_overrides(copy.deepcopy(cfg), overrides)) for label, overrides in layouts(cfg, dev).items()
    }
    devices = {}
    for label, trainer in trainers.items():
        g, d = ({str(p.device) for p in net.parameters()} for net in (trainer.G, trainer.D))
        devices[label] = {"G": sorted(g), "D": sorted(d)}
        print(f"  {label:<44} G on {', '.join(sorted(g))}; D on {', '.join(sorted(d))}")
    timers = {label: trainer_timer(trainer, args.seconds) for label, trainer in trainers.items()}
    speeds = interleaved(timers, args.rounds)
    reference = next(iter(speeds.values()))
    print(f"{'layout':<46}{'median img/s':>13}{'vs all on ' + dev + ': median (min-max)':>34}")
    for label, values in speeds.items():
        print(f"{label:<46}{statistics.median(values):>13.1f}{ratio_spread(values, reference):>34}")
    layouts_record = {label: {**devices[label], **speed_record(v, reference)} for label, v in speeds.items()}
    write_json(args.json, {"device": dev, "preset": args.preset, "layouts": layouts_record})


if __name__ == "__main__":
    main()
