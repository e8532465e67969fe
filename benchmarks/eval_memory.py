"""Memory of the k-NN metrics (precision/recall, density/coverage, diversity) at large sample
counts: hetgan's blocked distances against the whole distance matrices they replaced, each in a
child process of its own, on random 128-d features (the digit network's width) for 10,000 real
images (`hetgan eval`'s most) and N generated ones. Prints each side's peak RSS and seconds.

    python benchmarks/eval_memory.py [--real 10000] [--fake 5000 20000] [--dim 128]

The whole matrices need 8 bytes for each pair of generated samples (20 GB at the standard
50,000), so keep --fake within what this machine's memory allows for the baseline.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

WHOLE = 1 << 62  # BLOCK_ENTRIES so large that every matrix is one block: the code before blocking


def child(real: int, fake: int, dim: int, block_entries: int) -> None:
    import numpy as np

    from hetgan.eval import metrics as M

    M.BLOCK_ENTRIES = block_entries
    rng = np.random.default_rng(0)
    r, f = rng.normal(size=(real, dim)), rng.normal(0.1, 1.1, size=(fake, dim))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    scores = [*M.precision_recall(r, f), *M.density_coverage(r, f), M.diversity(f, r)]
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"seconds": seconds, "peak_mib": peak / 1024, "before_mib": base / 1024, "scores": scores}))


def measure(real: int, fake: int, dim: int, block_entries: int) -> dict:
    argv = [sys.executable, __file__, "--child", str(real), str(fake), str(dim), str(block_entries)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--real", type=int, default=10_000)
    p.add_argument("--fake", type=int, nargs="+", default=[5000, 20_000])
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the figures to PATH as JSON")
    p.add_argument("--child", type=int, nargs=4, help=argparse.SUPPRESS)  # real, fake, dim, block entries
    args = p.parse_args()
    if args.child:
        return child(*args.child)
    from hetgan.eval.metrics import BLOCK_ENTRIES
    from hetgan.fileio import write_json

    print(f"real {args.real}, features {args.dim}-d; blocks of at most {BLOCK_ENTRIES:,} distances")
    print(f"{'generated':>9}  {'whole: peak MiB':>15}  {'s':>6}  {'blocked: peak MiB':>17}  {'s':>6}  same scores")
    rows = []
    for fake in args.fake:
        whole = measure(args.real, fake, args.dim, WHOLE)
        blocked = measure(args.real, fake, args.dim, BLOCK_ENTRIES)
        same = all(
            abs(a - b) <= 1e-9 * max(1.0, abs(a)) for a, b in zip(whole["scores"], blocked["scores"], strict=True)
        )
        print(
            f"{fake:>9}  {whole['peak_mib']:>15.0f}  {whole['seconds']:>6.1f}  "
            f"{blocked['peak_mib']:>17.0f}  {blocked['seconds']:>6.1f}  {same}"
        )
        rows.append({"generated": fake, "whole": whole, "blocked": blocked, "same_scores": same})
    write_json(args.json, {"real": args.real, "dim": args.dim, "block_entries": BLOCK_ENTRIES, "rows": rows})


if __name__ == "__main__":
    main()
