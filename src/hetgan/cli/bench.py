"""`hetgan bench`, `tune` and `layers`: thin wrappers over `hetgan.bench` (`hetgan.bench_deploy` with
--deploy), `hetgan.tune` and `hetgan.layers`."""

from __future__ import annotations

import argparse
import copy

import hetgan
from hetgan.benchmarking.inference import format_deploy
from hetgan.benchmarking.training import format_bench
from hetgan.cli.common import (
    add_base,
    add_data_spec,
    add_devices,
    add_set,
    base_config,
    flag_overrides,
    json_path,
    source,
)
from hetgan.config import apply_overrides
from hetgan.errors import HetganError
from hetgan.fileio import output_path, write_json
from hetgan.pretrained import NAMES

QUICK = {"seconds": 0.6, "rounds": 2, "n": 500}  # bench --deploy --quick: under a minute on 2 cores


def add(sub) -> None:
    for add_command in (add_bench, add_tune, add_layers):
        add_command(sub)


def add_bench(sub) -> None:
    b = sub.add_parser("bench", help="steady-state img/s, phase breakdown, FLOPs, memory, vs the textbook loop")
    add_base(b, "preset to measure (default dcgan_mnist)")
    b.add_argument("--batch", type=int, nargs="+", help="one or more batch sizes")
    b.add_argument("--seconds", type=float, default=10.0, help="timed seconds per setup, over all rounds")
    b.add_argument("--rounds", type=int, default=3, help="timing windows, hetgan's and the textbook's in turn")
    add_data_spec(b)
    add_devices(b)
    add_set(b)
    b.add_argument("--no-textbook", action="store_true", help="skip the textbook-loop comparison")
    b.add_argument("--json", help="write all results to this JSON file")
    d = b.add_argument_group("deployment (--deploy): a trained generator on every backend and precision")
    d.add_argument("--deploy", action="store_true", help="bench inference of a trained generator instead of training")
    d.add_argument("--run", help="with --deploy: the run whose generator to measure")
    d.add_argument(
        "--artifact",
        nargs="+",
        metavar="PATH",
        help="with --deploy: a generator.safetensors, then any exported .onnx/.xml files to add as rows",
    )
    d.add_argument(
        "--pretrained", choices=NAMES, metavar="NAME",
        help=f"with --deploy: a generator shipped with hetgan: {', '.join(NAMES)}",
    )  # fmt: skip
    d.add_argument("--n", type=int, default=2000, help="with --deploy: samples scored per row (default 2000)")
    d.add_argument("--evalnet", help="with --deploy: feature network for FID (default: the run's, or digits)")
    d.add_argument("--threads", type=int, help="with --deploy: CPU threads for every backend (default: all)")
    d.add_argument("--no-int8", action="store_true", help="with --deploy: leave out the int8 rows")
    d.add_argument(
        "--quick", action="store_true",
        help=f"with --deploy: a first look: {QUICK['rounds']} rounds, {QUICK['seconds']:g} s per row, FID on "
        f"{QUICK['n']} samples (rough: FID is biased upward on few samples); overrides --seconds, --rounds, --n",
    )  # fmt: skip
    b.set_defaults(handler=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    out = json_path(args.json)
    if args.deploy or args.run or args.artifact or args.pretrained:
        return run_bench_deploy(args, out)
    base = apply_overrides(base_config(args), flag_overrides(args) + args.set)
    results = []
    for batch in args.batch or [base.train.batch_size]:
        cfg = apply_overrides(copy.deepcopy(base), [f"train.batch_size={batch}"])
        results.append(hetgan.bench(cfg, args.seconds, textbook=not args.no_textbook, rounds=args.rounds))
        print(format_bench(results[-1]))
    write_json(out, results)
    return 0


def run_bench_deploy(args: argparse.Namespace, out) -> int:
    if not args.deploy or sum(bool(x) for x in (args.run, args.artifact, args.pretrained)) != 1:
        raise HetganError(
            "bench --deploy takes one trained generator: --deploy with --run RUN, --artifact PATH [PATH ...] "
            "or --pretrained NAME"
        )
    training = {"--preset": args.preset, "--config": args.config, "--batch": args.batch, "--data": args.data}
    if given := [flag for flag, value in {**training, "--set": args.set}.items() if value]:
        raise HetganError(
            f"{', '.join(given)}: training settings; bench --deploy measures a trained generator as it is"
        )
    first, *extra = args.artifact or [source(args)]
    if args.quick:
        args.seconds, args.rounds, args.n = QUICK["seconds"], QUICK["rounds"], QUICK["n"]
    record = hetgan.bench_deploy(
        first, extra, args.seconds, args.rounds, args.n, evalnet=args.evalnet, int8=not args.no_int8,
        threads=args.threads,
    )  # fmt: skip
    print(format_deploy(record))
    write_json(out, record)
    return 0


def add_tune(sub) -> None:
    tn = sub.add_parser("tune", help="time candidate placements and knobs; pick the fastest sound one")
    add_base(tn, "preset to tune (default dcgan_mnist)")
    add_data_spec(tn)
    add_devices(tn)
    add_set(tn)
    tn.add_argument("--seconds", type=float, default=3.0, help="timed seconds per candidate, over all rounds")
    tn.add_argument("--rounds", type=int, default=3, help="timing windows per candidate, taken in turn")
    tn.add_argument("--json", help="write the table and the choice to this JSON file")
    tn.add_argument(
        "--save-config",
        metavar="FILE",
        help="write the tuned config (the input with the chosen knobs) as YAML, to train with "
        "`hetgan train --config FILE` without tuning again",
    )
    tn.set_defaults(handler=run_tune)


def run_tune(args: argparse.Namespace) -> int:
    out = json_path(args.json)
    config_out = output_path(args.save_config, "--save-config", "tuned.yaml") if args.save_config else None
    cfg = apply_overrides(base_config(args), flag_overrides(args) + args.set)
    result = hetgan.tune(cfg, args.seconds, args.rounds)
    print(result.summary())
    if config_out:
        result.save_config(config_out)
        print(f"tuned config: {config_out} (train with: hetgan train --config {config_out})")
    if out:
        write_json(out, result.record(cfg))
    return 0


def add_layers(sub) -> None:
    ly = sub.add_parser("layers", help="list G's and D's layers with the indices stage specs use")
    add_base(ly, "preset whose networks to list (default dcgan_mnist)")
    add_data_spec(ly)
    add_set(ly)
    ly.set_defaults(handler=run_layers)


def run_layers(args: argparse.Namespace) -> int:
    print(hetgan.layers(apply_overrides(base_config(args), flag_overrides(args) + args.set)))
    return 0
