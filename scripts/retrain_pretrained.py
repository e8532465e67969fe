"""Train a packaged generator (`hetgan pretrained`) again from its card and check its metrics.

    python3 scripts/retrain_pretrained.py mnist [--out runs/retrain-mnist] [--install] [--kimg K] [--n N]

Runs the card's command (preset, seed, overrides), evaluates the new generator as the card's
metrics were (`hetgan eval`, the card's n samples, seed 0) and compares each metric with the card's
value within the card's noise: exit 0 when all are within it, 1 otherwise. `--install` then copies
the new generator into src/hetgan/pretrained/ and writes its metrics, sha256, date and machine into
the card.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import torch

import hetgan
from hetgan.config import apply_overrides
from hetgan.pretrained import NAMES, pretrained
from hetgan.training.rundir import cpu_model, processor

ROOT = Path(__file__).resolve().parents[1]
PACKAGED = ROOT / "src" / "hetgan" / "pretrained"


def within(value: float, card: float, noise: float) -> bool:
    return abs(value - card) <= noise


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=NAMES)
    parser.add_argument("--out", help="the run directory (default runs/retrain-NAME)")
    parser.add_argument("--install", action="store_true", help="copy the new generator and metrics into the package")
    parser.add_argument("--kimg", type=float, help="train this far instead (to check the script: metrics will differ)")
    parser.add_argument("--n", type=int, help="samples scored (default: the card's n, as its metrics were)")
    args = parser.parse_args()
    model = pretrained(args.name)
    if args.install and (args.kimg or args.n not in (None, model.n)):
        parser.error(f"--install writes the card: train the full length, score {model.n} samples (no --kimg, --n)")
    out = Path(args.out or f"runs/retrain-{args.name}")
    shorter = [f"train.kimg={args.kimg}"] if args.kimg else []
    cfg = apply_overrides(hetgan.get_preset(model.preset), [f"seed={model.seed}", *model.overrides, *shorter])
    print(f"{model.name}: {model.command} -> {out}", flush=True)
    start = time.perf_counter()
    run = hetgan.train(cfg, out=out, progress=False).finished().run_dir
    wall = time.perf_counter() - start
    result = hetgan.evaluate(hetgan.load_generator(run), n=args.n or model.n, seed=0)
    ok = True
    for key, card in model.metrics.items():
        good = within(result[key], card, model.noise[key])
        ok &= good
        print(f"  {key:<18} {result[key]:10.4f}  card {card:g} +- {model.noise[key]:g}  {'ok' if good else 'OUTSIDE'}")
    print(f"  trained in {wall:.0f} s; {'all within the noise' if ok else 'some metrics moved past the noise'}")
    if args.install:
        shutil.copyfile(run / "generator.safetensors", PACKAGED / f"{args.name}.safetensors")
        card = json.loads((PACKAGED / f"{args.name}.json").read_text())
        card["metrics"] = {k: round(float(result[k]), 4) for k in model.metrics}
        card["sha256"] = hashlib.sha256((run / "generator.safetensors").read_bytes()).hexdigest()
        cpu = cpu_model() or processor()
        card["trained"] = f"{time.strftime('%Y-%m-%d')}, {cpu}, {torch.get_num_threads()} threads, {wall:.0f} s"
        (PACKAGED / f"{args.name}.json").write_text(json.dumps(card, indent=2) + "\n")
        print(f"  installed into {PACKAGED}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
