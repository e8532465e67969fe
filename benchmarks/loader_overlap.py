"""Does the prefetch loader hide the data path? The same DCGAN, batch and loss trained from data
resident on the device, through the prefetch loader (a worker thread gathers each batch and, on
CUDA, copies it on a stream of its own while the step before runs), and through an inline loader
that gathers and copies each batch inside the step, as a loader without prefetching would.

    python benchmarks/loader_overlap.py [--device cuda] [--rounds 5] [--seconds 4] [--batch 1024]
                                        [--resolution 64] [--channels 3] [--images 20000] [--width 64]

The images are random uint8 (made in memory; only their size matters here). Prefetch at the
resident loader's speed, and above the inline loader's, means the data path is hidden. On a CPU
the worker thread and the step share the cores, so the comparison says less there.
"""

from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path

import numpy as np
import torch

from hetgan.benchmarking.training import interleaved, ratio_spread, speed_record, trainer_timer
from hetgan.data.sampler import ImageSampler, to_device, to_unit_range
from hetgan.data.sources import ImageData
from hetgan.fileio import write_json
from hetgan.placement import resolve_device
from hetgan.presets import get_preset
from hetgan.training.rundir import device_name
from hetgan.training.trainer import Trainer


class InlineSampler(ImageSampler):
    """The inline baseline: each batch gathered on the CPU and copied to the device in the step."""

    def __init__(self, data: ImageData, seed: int, device: torch.device) -> None:
        super().__init__(data, seed, torch.device("cpu"))
        self.target = device

    def next(self, batch_size: int) -> torch.Tensor:
        return to_unit_range(to_device(self.next_uint8(batch_size), self.target))


def trainers(args: argparse.Namespace, dev: str) -> dict[str, Trainer]:
    cfg = get_preset("dcgan_textbook")
    cfg.model.width, cfg.train.batch_size, cfg.accel.device = args.width, args.batch, dev
    cfg.data.resolution, cfg.data.channels = args.resolution, args.channels
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, args.channels, args.resolution, args.resolution), dtype=np.uint8)
    data = ImageData(images, None, None, "random uint8")
    out = {}
    for loader in ("resident", "prefetch", "inline"):
        c = copy.deepcopy(cfg)
        c.data.loader = "prefetch" if loader == "prefetch" else "auto"
        c.data.resident_max_mb = 2**20  # never too big: the loader is the one named
        trainer = Trainer(c.validate(), data=data)
        if loader == "inline":
            trainer.sampler = InlineSampler(data, c.seed, trainer.sampler.device)
        out[loader] = trainer
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0, help="timed seconds per loader per round")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--resolution", type=int, default=64, choices=[32, 64])
    parser.add_argument("--channels", type=int, default=3, choices=[1, 3])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures to PATH as JSON")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    dev = str(resolve_device(args.device))
    name = device_name(torch.device(dev))
    batch_mb = args.batch * args.channels * args.resolution**2 / 2**20
    print(
        f"device {dev} ({name}), torch {torch.__version__}; DCGAN-{args.resolution} width {args.width}, "
        f"batch {args.batch} ({batch_mb:.1f} MiB of uint8 per batch), {args.images} images"
    )
    made = trainers(args, dev)
    try:
        speeds = interleaved({loader: trainer_timer(t, args.seconds) for loader, t in made.items()}, args.rounds)
    finally:
        for trainer in made.values():
            trainer.close()  # the prefetch loader's worker thread
    reference = speeds["resident"]
    print(f"{'loader':<12}{'median img/s':>13}{'vs resident: median (min-max)':>32}")
    for loader, values in speeds.items():
        print(f"{loader:<12}{statistics.median(values):>13.1f}{ratio_spread(values, reference):>32}")
    write_json(args.json, {"device": dev, "loaders": {k: speed_record(v, reference) for k, v in speeds.items()}})


if __name__ == "__main__":
    main()
