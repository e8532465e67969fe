"""Loading a `folder:DIR` dataset: decoding on one thread vs on one worker thread per core.

    python benchmarks/decode_folder.py [--images 1000] [--size 256] [--resolution 64] [--rounds 5]

Writes `--images` JPEGs of `--size` px (smooth random content) to a temporary folder, then decodes
and resizes them to `--resolution` px as `hetgan train --data folder:DIR` does, with 1 worker and
with one per core, in turn for `--rounds` rounds. Prints images/s and the per-round ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from hetgan.benchmarking.training import interleaved, ratio_spread, speed_record
from hetgan.data.images import decode_files, list_image_files
from hetgan.fileio import write_json


def write_jpegs(root: Path, n: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        coarse = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
        img.save(root / f"{i:06d}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=256, help="side of the JPEGs written")
    parser.add_argument("--resolution", type=int, default=64, help="the model's resolution")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures to PATH as JSON")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        write_jpegs(Path(tmp), args.images, args.size)
        files = list_image_files(Path(tmp))

        def timer(workers: int):
            def run(warm: bool) -> float:
                start = time.perf_counter()
                arrays, _, _ = decode_files(files, args.resolution, 3, "error", workers=workers)
                assert len(arrays) == len(files)
                return len(files) / (time.perf_counter() - start)

            return run

        speeds = interleaved({"1 worker": timer(1), f"{cores} workers": timer(cores)}, args.rounds)
    print(
        f"machine: {platform.machine()}, {cores} cores; {args.images} JPEGs of {args.size} px -> "
        f"{args.resolution} px RGB, {args.rounds} rounds"
    )
    one = speeds["1 worker"]
    for name, values in speeds.items():
        print(f"{name:<12}{statistics.median(values):>10.1f} img/s   {ratio_spread(values, one)}")
    record = {"images": args.images, "cores": cores, "workers": {}}
    for name, values in speeds.items():
        record["workers"][int(name.split()[0])] = speed_record(values, one)
    write_json(args.json, record)


if __name__ == "__main__":
    main()
