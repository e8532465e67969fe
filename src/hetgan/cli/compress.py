"""`hetgan compress`: a thin wrapper over `hetgan.compress`."""

from __future__ import annotations

import argparse
from pathlib import Path

import hetgan
from hetgan.compression.prune import IMPORTANCE
from hetgan.compression.student import Student
from hetgan.config import DistillConfig
from hetgan.errors import HetganError


def add(sub) -> None:
    c = sub.add_parser(
        "compress",
        help="prune a trained generator and distil it into a smaller one; --target-ms searches for the smallest",
    )
    c.add_argument("--run", required=True, help="the teacher's run directory")
    c.add_argument("--out", required=True, help="directory for the student (its run in OUT/student)")
    size = c.add_mutually_exclusive_group()
    size.add_argument("--prune", type=float, metavar="RATIO", help="share of channels to remove, in (0, 1)")
    size.add_argument("--width", type=int, help="the student's model.width (narrower than the teacher's)")
    c.add_argument("--importance", choices=IMPORTANCE, default="magnitude", help="how channels are ranked")
    c.add_argument("--kimg", type=float, default=20.0, help="distillation length in thousands of images")
    c.add_argument("--scratch", action="store_true", help="train the student's architecture from scratch instead")
    defaults = DistillConfig()
    for name in ("pixel_weight", "feature_weight", "adversarial_weight"):
        c.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name))
    c.add_argument("--target-ms", type=float, help="search: ms per call the student must reach on --backend")
    c.add_argument("--backend", choices=["torch", "onnxruntime", "openvino"], default="onnxruntime")
    c.add_argument("--batch", type=int, default=1, help="search: samples per timed call (1: latency)")
    c.add_argument("--ratios", default="0.5,0.625,0.75,0.875", help="search: prune ratios to try")
    c.add_argument(
        "--max-increase", type=float, default=0.10,
        help="the student's FID at most this much above the teacher's (0.10 = 10%%): distillation goes on "
        "--kimg at a time until it is, within --budget-minutes; for --target-ms, the bound candidates must meet",
    )  # fmt: skip
    c.add_argument("--budget-minutes", type=float, default=15.0, help="the most distillation to that bound may take")
    c.add_argument("--n", type=int, default=5000, help="samples per FID")
    c.add_argument(
        "--search-anyway", action="store_true", help="search even where the teacher already meets --target-ms"
    )
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(handler=run)


def ratios(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(r) for r in text.split(",") if r.strip())
    except ValueError:
        raise HetganError(f"--ratios {text!r}: expected comma-separated numbers, e.g. 0.5,0.75") from None


def run(args: argparse.Namespace) -> int:
    weights = DistillConfig(
        pixel_weight=args.pixel_weight, feature_weight=args.feature_weight, adversarial_weight=args.adversarial_weight
    )
    result = hetgan.compress(
        args.run, args.out, args.prune, args.width, args.target_ms, args.importance, args.kimg, args.scratch,
        weights, args.backend, args.batch, ratios(args.ratios), args.max_increase, args.n, not args.no_progress,
        search_anyway=args.search_anyway, budget_minutes=args.budget_minutes,
    )  # fmt: skip
    if isinstance(result, Student):
        print(result.summary())
        return 0
    print(f"chose {result.name}: {result.ms:.3g} ms per call, score {result.score:.4g}")
    print(f"  generator: {Path(args.out) / 'generator.safetensors'}\n  table: {Path(args.out) / 'search.md'}")
    return 0
