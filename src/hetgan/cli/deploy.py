"""`hetgan export` and `quantize`: thin wrappers over `hetgan.export` and `hetgan.quantize`."""

from __future__ import annotations

import argparse

import hetgan
from hetgan.cli.common import add_source, source
from hetgan.deploy.export import FORMATS
from hetgan.deploy.quantize import MAX_QUALITY_LOSS
from hetgan.errors import HetganError
from hetgan.fileio import output_path


def add(sub) -> None:
    x = sub.add_parser("export", help="export a trained generator to ONNX or OpenVINO IR, verified against PyTorch")
    add_source(x)
    x.add_argument("--format", required=True, help="onnx (one .onnx file) or openvino (.xml + .bin)")
    x.add_argument("--out", required=True, help="FILE.onnx or FILE.xml")
    x.add_argument("--fp16-weights", action="store_true", help="openvino: store weights in fp16 (half the size)")
    x.add_argument("--overwrite", action="store_true", help="replace --out if it exists (refused otherwise)")
    x.set_defaults(handler=run_export)

    q = sub.add_parser("quantize", help="int8 of a trained generator, calibrated on its own z, quality measured")
    add_source(q)
    q.add_argument(
        "--out", required=True, help="FILE.xml (OpenVINO + NNCF, int8 convolutions) or FILE.onnx (ONNX Runtime)"
    )
    q.add_argument("--calibration-n", type=int, default=512, help="z draws to calibrate on (default 512)")
    q.add_argument("--quality-n", type=int, default=2000, help="samples to score int8 against fp32 (0: skip)")
    q.add_argument("--seed", type=int, default=0, help="seed of the scored samples")
    q.add_argument("--evalnet", help="feature network for FID (default: the run's, or the digit classifier)")
    q.add_argument("--overwrite", action="store_true", help="replace --out (and its .bin) if it exists")
    q.add_argument(
        "--max-quality-loss",
        type=float,
        default=MAX_QUALITY_LOSS,
        metavar="PCT",
        help=f"refuse (exit 2, nothing written) an int8 model whose FID is over PCT %% above fp32's (2-D data: "
        f"high quality PCT points lower, or a mode lost); default {MAX_QUALITY_LOSS:g}",
    )
    q.add_argument("--force", action="store_true", help="write the int8 model even past --max-quality-loss")
    q.set_defaults(handler=run_quantize)


def run_export(args: argparse.Namespace) -> int:
    if args.format not in FORMATS:
        raise HetganError(f"--format {args.format}: unknown export format; valid: {', '.join(FORMATS)}")
    out = output_path(args.out, "--out", "generator.onnx", args.overwrite)
    print(hetgan.export(source(args), args.format, out, args.fp16_weights, args.overwrite).summary())
    return 0


def run_quantize(args: argparse.Namespace) -> int:
    out = output_path(args.out, "--out", "generator-int8.xml", args.overwrite)
    result = hetgan.quantize(
        source(args), out, args.calibration_n, args.quality_n, args.seed, args.evalnet, args.overwrite,
        args.max_quality_loss, args.force,
    )  # fmt: skip
    print(result.summary())
    return 0
