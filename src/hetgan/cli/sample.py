"""`hetgan sample`, `eval`, `evalnet train`, `report` and `pretrained`: thin wrappers over
`hetgan.sample` (and `hetgan.interpolate`), `hetgan.evaluate`, `hetgan.train_evalnet`,
`hetgan.build_report` and `hetgan.list_pretrained` / `hetgan.pretrained_card`."""

from __future__ import annotations

import argparse

import hetgan
from hetgan.cli.common import add_backend, add_source, json_path, source
from hetgan.errors import HetganError
from hetgan.fileio import output_path, write_json


def add(sub) -> None:
    for add_command in (add_sample, add_eval, add_evalnet, add_report, add_pretrained):
        add_command(sub)


def add_sample(sub) -> None:
    s = sub.add_parser("sample", help="write samples from a trained generator")
    add_source(s, exported=True)
    add_backend(s)
    s.add_argument("--n", type=int, help="number of samples (default 64)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="FILE.png (grid or 2-D scatter), FILE.npz, or DIR/ (PNGs)")
    s.add_argument("--truncation", type=float, metavar="PSI", help="scale z by PSI in (0, 1]: typical over varied")
    s.add_argument(
        "--interpolate",
        type=int,
        nargs=2,
        metavar=("SEED_A", "SEED_B"),
        help="a latent walk from SEED_A's sample to SEED_B's: --out walk.gif (animation) or walk.png (strip)",
    )
    s.add_argument("--frames", type=int, default=16, help="with --interpolate: frames (default 16)")
    s.add_argument(
        "--class",
        dest="classes",
        action="append",
        metavar="NAME|INDEX",
        help="conditional generators: samples of this class (repeatable; the classes take turns)",
    )
    s.add_argument(
        "--per-class",
        type=int,
        metavar="N",
        help="conditional generators: N samples of every class (or of each --class), a grid row per class; "
        "instead of --n",
    )
    kept = s.add_mutually_exclusive_group()
    kept.add_argument("--append", action="store_true", help="DIR/ that holds samples: add after them, numbering on")
    kept.add_argument("--overwrite", action="store_true", help="replace an existing FILE, or the samples DIR/ holds")
    s.add_argument("--device", default="cpu", help="auto, cpu, cuda[:i], mps or xpu to run G on (default cpu)")
    s.set_defaults(handler=run_sample)


def run_sample(args: argparse.Namespace) -> int:
    runs_on = {"device": args.device, "backend": args.backend, "threads": args.threads}
    if args.interpolate:
        if args.classes and len(args.classes) > 1:
            raise HetganError("--interpolate walks within one class: give one --class")
        label = args.classes[0] if args.classes else None
        a, b = args.interpolate
        walk = (source(args), args.out, a, b, args.frames, args.truncation, label)
        out = hetgan.interpolate(*walk, **runs_on, overwrite=args.overwrite)
        print(f"wrote {args.frames} frames from seed {a} to seed {b} to {out}")
        return 0
    written = hetgan.sample(
        source(args), args.out, args.n, args.seed, args.truncation, args.classes, args.per_class,
        args.append, args.overwrite, **runs_on,
    )  # fmt: skip
    print(written.summary())
    return 0


def add_eval(sub) -> None:
    e = sub.add_parser("eval", help="FID/KID/precision-recall/coverage or 2-D mode metrics")
    add_source(e, exported=True)
    add_backend(e)
    e.add_argument(
        "--n", type=int, default=None, help="samples (default 5000 images, 2500 points, 26,000 of Stacked MNIST)"
    )
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--metrics", nargs="+", help="subset of: fid kid pr dc classes diversity (images)")
    e.add_argument("--evalnet", help="feature network from `hetgan evalnet train` (default: digits)")
    e.add_argument(
        "--inception",
        metavar="WEIGHTS",
        help="standard FID in InceptionV3 pool3 features, weights from this local file "
        "(pytorch-fid's pt_inception-2015-12-05-6726825d.pth); never downloaded",
    )
    e.add_argument(
        "--device",
        default="cpu",
        help="auto, cpu, cuda[:i], mps or xpu to run G and the feature network on (default cpu)",
    )
    e.add_argument("--json", help="also write the results to this JSON file")
    e.set_defaults(handler=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    out = json_path(args.json)
    result = hetgan.evaluate(
        source(args), n=args.n, seed=args.seed, metrics=tuple(args.metrics) if args.metrics else None,
        evalnet=args.evalnet, inception=args.inception, device=args.device, backend=args.backend,
        threads=args.threads,
    )  # fmt: skip
    print(format_table(result))
    write_json(out, result)
    return 0


def format_table(result: dict) -> str:
    """The scores, a line each; the quality warnings first, where the eye lands."""
    lines = [f"WARNING: {w}" for w in result.get("warnings", [])]
    lines.append(f"feature space: {result['feature_space']}")
    for key, value in result.items():
        if key not in ("feature_space", "warnings"):
            lines.append(f"  {key:<18} {value:.4f}" if isinstance(value, float) else f"  {key:<18} {value}")
    return "\n".join(lines)


def add_evalnet(sub) -> None:
    en = sub.add_parser("evalnet", help="feature networks for evaluation")
    et = en.add_subparsers(dest="evalnet_command", required=True).add_parser(
        "train", help="train a feature network on a labelled dataset"
    )
    et.add_argument("--data", required=True, help="labelled data spec: mnist:DIR, cifar10:DIR, folder:DIR, npz:FILE")
    et.add_argument("--out", required=True, help="where to write the .safetensors file")
    et.add_argument("--resolution", type=int, default=32)
    et.add_argument("--channels", type=int, default=1, choices=[1, 3])
    et.add_argument("--epochs", type=int, default=20)
    et.add_argument(
        "--on-bad-image", choices=["error", "skip"], default="error", help="skip: leave unreadable files out, logged"
    )
    et.add_argument("--device", default="cpu", help="auto, cpu, cuda[:i], mps or xpu to train on (default cpu)")
    et.set_defaults(handler=run_evalnet)


def run_evalnet(args: argparse.Namespace) -> int:
    net = hetgan.train_evalnet(
        args.data, args.out, args.resolution, args.channels, args.epochs, args.on_bad_image, args.device
    )
    print(f"held-out accuracy {net.cfg.held_out_accuracy:.4f} on {net.cfg.held_out_count} items; wrote {args.out}")
    return 0


def add_report(sub) -> None:
    r = sub.add_parser("report", help="write a self-contained HTML report of a run")
    r.add_argument("run_dir")
    r.add_argument("--out", help="HTML file (default RUN_DIR/report.html)")
    r.set_defaults(handler=run_report)


def run_report(args: argparse.Namespace) -> int:
    out = output_path(args.out, "--out", "report.html") if args.out else None
    print(f"wrote {hetgan.build_report(args.run_dir, out)}")
    return 0


def add_pretrained(sub) -> None:
    p = sub.add_parser("pretrained", help="list the generators shipped with hetgan, or show one's model card")
    p.add_argument("name", nargs="?", help="show this generator's model card (data, recipe, command, metrics)")
    p.set_defaults(handler=run_pretrained)


def run_pretrained(args: argparse.Namespace) -> int:
    if args.name:
        print(hetgan.pretrained_card(args.name))
        return 0
    for model in hetgan.list_pretrained():
        print(f"{model.name:<20} {model.summary}")
    commands = "sample, eval, export, quantize, serve, bench --deploy"
    print(f"use one with --pretrained NAME ({commands}) or hetgan.load_generator(NAME)")
    return 0
