"""`hetgan train`: a thin wrapper over `hetgan.train`."""

from __future__ import annotations

import argparse

import hetgan
from hetgan.cli.common import add_base, add_data_spec, add_devices, add_set, base_config, flag_overrides
from hetgan.config import field_names
from hetgan.errors import HetganError
from hetgan.presets import DEFAULT_PRESET, PRESETS


def add(sub) -> None:
    t = sub.add_parser(
        "train",
        help="train a GAN (default: dcgan_mnist on the bundled digits)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"settable fields for --set:\n  {', '.join(field_names())}",
    )
    add_base(t, f"one of {', '.join(PRESETS.names())} (default {DEFAULT_PRESET})")
    add_data_spec(t)
    t.add_argument("--kimg", type=float, help="training length in thousands of real images")
    t.add_argument("--seed", type=int)
    t.add_argument("--out", help="run directory (default runs/NNNNN-<preset>); never overwritten")
    t.add_argument("--snapshot-kimg", type=float, help="checkpoint interval in kimg")
    add_devices(t)
    t.add_argument(
        "--eval-every",
        type=float,
        metavar="KIMG",
        help="metrics every KIMG; keeps the best by FID (2-D: modes, high quality, reverse KL)",
    )
    t.add_argument("--on-bad-image", choices=["error", "skip"])
    add_set(t)
    t.add_argument(
        "--resume",
        metavar="RUN_DIR|auto",
        help="continue an interrupted run exactly; `--out DIR --resume auto` continues DIR if it has a "
        "checkpoint and starts it otherwise (for restarts: torchrun --max-restarts, Slurm requeues)",
    )
    t.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume even if the checkpoint was written under a different config",
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument(
        "--placement",
        choices=["manual", "auto"],
        default="manual",
        help="auto: run `hetgan tune` first and train with the fastest sound knobs",
    )
    t.add_argument("--tune-seconds", type=float, default=3.0, help="with --placement auto: timed seconds per candidate")
    t.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    flags = {
        "train.kimg": args.kimg,
        "seed": args.seed,
        "train.snapshot_kimg": args.snapshot_kimg,
        "train.eval_kimg": args.eval_every,
        "data.on_bad_image": args.on_bad_image,
    }
    overrides = [f"{k}={v}" for k, v in flags.items() if v is not None] + flag_overrides(args) + args.set
    resuming_a_run = args.resume is not None and args.resume != "auto"
    if resuming_a_run and (args.preset or args.config):
        raise HetganError(
            f"{'--preset' if args.preset else '--config'} cannot be combined with --resume: the run's "
            "config.yaml is used; change a field with --set FIELD=VALUE --allow-config-change"
        )
    result = hetgan.train(
        None if resuming_a_run else base_config(args),
        out=args.out,
        resume=args.resume,
        overrides=overrides,
        allow_config_change=args.allow_config_change,  # --resume RUN and --resume auto alike
        progress=not args.no_progress,
        placement=args.placement,
        tune_seconds=args.tune_seconds,
    )
    if result.main:  # one summary, from rank 0, however many ranks trained
        print(result.summary())
    return 0
