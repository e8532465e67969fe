"""The `hetgan` command: one subcommand per job (train, sample, eval, bench, tune, layers, ...)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from hetgan import __version__
from hetgan.config import DataConfig, TrainConfig, apply_overrides, dump_yaml, field_names, load_yaml
from hetgan.errors import HetganError

log = logging.getLogger("hetgan")


def build_parser() -> argparse.ArgumentParser:
    from hetgan.data import describe_specs
    from hetgan.losses import LOSSES
    from hetgan.models import MODELS
    from hetgan.presets import PRESETS

    parser = argparse.ArgumentParser(
        prog="hetgan",
        description="Train, evaluate, benchmark and sample GANs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            f"presets: {', '.join(PRESETS.names())}\nmodels:  {', '.join(MODELS.names())}\n"
            f"losses:  {', '.join(LOSSES.names())}\ndata specs:\n{describe_specs()}"
        ),
    )
    parser.add_argument("--version", action="version", version=f"hetgan {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    adders = (add_train, add_sample, add_eval, add_evalnet, add_bench, add_tune, add_layers, add_report, add_data)
    for add in (*adders, add_export, add_quantize, add_compress, add_serve):
        add(sub)
    return parser


def add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override any config field, e.g. --set train.batch_size=128 (repeatable)",
    )


def add_devices(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="auto, cpu, cuda[:i], mps or xpu (default auto: the best available)")
    p.add_argument("--g-device", metavar="DEVICE", help="put G on this device instead, e.g. --g-device cuda")
    p.add_argument("--d-device", metavar="DEVICE", help="put D on this device instead, e.g. --d-device cpu")


def add_data_spec(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="data spec, e.g. mnist5k, folder:DIR, npz:FILE (see `hetgan --help`)")


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """--data and the device flags a command has, as config overrides (before any --set)."""
    flags = {
        "data.spec": getattr(args, "data", None),
        "accel.device": getattr(args, "device", None),
        "accel.g_device": getattr(args, "g_device", None),
        "accel.d_device": getattr(args, "d_device", None),
    }
    return [f"{field}={value}" for field, value in flags.items() if value is not None]


def add_source(p: argparse.ArgumentParser, exported: bool = False) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="a run directory")
    if exported:
        src.add_argument("--artifact", help="a generator.safetensors, an exported .onnx or an OpenVINO .xml")
    else:
        src.add_argument("--artifact", help="a generator.safetensors file")


def add_backend(p: argparse.ArgumentParser, threads_default: str = "all this process may use") -> None:
    from hetgan.deploy.runtimes import BACKENDS

    p.add_argument(
        "--backend",
        choices=BACKENDS,
        help="what runs G (default: the file's: torch for a run or .safetensors, onnxruntime for .onnx, "
        "openvino for .xml); a run on another backend is exported in memory first",
    )
    p.add_argument("--threads", type=int, help=f"CPU threads of onnxruntime/openvino (default: {threads_default})")


def add_train(sub) -> None:
    from hetgan.presets import DEFAULT_PRESET, PRESETS

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


def add_sample(sub) -> None:
    s = sub.add_parser("sample", help="write samples from a trained generator")
    add_source(s, exported=True)
    add_backend(s)
    s.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
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
    kept.add_argument("--overwrite", action="store_true", help="DIR/ that holds samples: replace them")
    s.add_argument("--device", default="cpu", help="auto, cpu, cuda[:i], mps or xpu to run G on (default cpu)")


def add_eval(sub) -> None:
    e = sub.add_parser("eval", help="FID/KID/precision-recall/coverage or 2-D mode metrics")
    add_source(e, exported=True)
    add_backend(e)
    e.add_argument("--n", type=int, default=None, help="samples (default 5000 images, 2500 points)")
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


def add_export(sub) -> None:
    x = sub.add_parser("export", help="export a trained generator to ONNX or OpenVINO IR, verified against PyTorch")
    add_source(x)
    x.add_argument("--format", required=True, help="onnx (one .onnx file) or openvino (.xml + .bin)")
    x.add_argument("--out", required=True, help="FILE.onnx or FILE.xml")
    x.add_argument("--fp16-weights", action="store_true", help="openvino: store weights in fp16 (half the size)")


def add_quantize(sub) -> None:
    q = sub.add_parser("quantize", help="int8 of a trained generator, calibrated on its own z, quality measured")
    add_source(q)
    q.add_argument(
        "--out", required=True, help="FILE.xml (OpenVINO + NNCF, int8 convolutions) or FILE.onnx (ONNX Runtime)"
    )
    q.add_argument("--calibration-n", type=int, default=512, help="z draws to calibrate on (default 512)")
    q.add_argument("--quality-n", type=int, default=2000, help="samples to score int8 against fp32 (0: skip)")
    q.add_argument("--seed", type=int, default=0, help="seed of the scored samples")
    q.add_argument("--evalnet", help="feature network for FID (default: the run's, or the digit classifier)")


def add_compress(sub) -> None:
    from hetgan.compress.prune import IMPORTANCE
    from hetgan.config import DistillConfig

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
    c.add_argument("--max-increase", type=float, default=0.10, help="search: allowed FID increase (0.10 = 10%%)")
    c.add_argument("--n", type=int, default=5000, help="search: samples per FID")
    c.add_argument("--no-progress", action="store_true")


def add_serve(sub) -> None:
    from hetgan.serve.limits import ServeLimits
    from hetgan.serve.server import GENERATOR_NICE

    s = sub.add_parser("serve", help="serve samples over HTTP, with a web page (bounded, batched, observable)")
    add_source(s, exported=True)
    add_backend(s, threads_default="every core, shared by the --streams; torch's too")
    s.add_argument("--device", default="cpu", help="auto, cpu, cuda[:i], mps or xpu to run G on (default cpu)")
    s.add_argument("--streams", type=int, help="generator calls at once, sharing --threads (default 2, 1 on one core)")
    s.add_argument(
        "--nice", type=int, default=GENERATOR_NICE, choices=range(20), metavar="0-19",
        help=f"how much lower the generator threads' priority is than the HTTP side's (Linux; {GENERATOR_NICE})",
    )  # fmt: skip
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--token", help="require `Authorization: Bearer TOKEN` (default: $HETGAN_SERVE_TOKEN, if set)")
    defaults = ServeLimits()
    for name, value in vars(defaults).items():
        flag = "--" + name.replace("_", "-")
        s.add_argument(flag, type=type(value), default=value, help=f"{LIMIT_HELP[name]} (default {value:g})")


LIMIT_HELP = {
    "max_n": "samples per request",
    "max_frames": "interpolation frames per request",
    "max_body_bytes": "request body size",
    "max_batch": "samples per generator call (dynamic batching)",
    "max_wait_ms": "how long a queued request waits for others to batch with",
    "max_queue": "queued pieces of at most --max-batch samples; beyond it: 503",
    "timeout_s": "seconds per request, queue wait included; beyond it: 504",
    "warmup": "generator calls at --max-batch before /readyz says ready",
}


def add_base(p: argparse.ArgumentParser, preset_help: str) -> None:
    """--preset or --config: the config that flags and --set then change."""
    base = p.add_mutually_exclusive_group()
    base.add_argument("--preset", help=preset_help)
    base.add_argument("--config", metavar="FILE", help="start from this YAML config instead, e.g. a run's config.yaml")


def base_config(args: argparse.Namespace) -> TrainConfig:
    from hetgan.presets import DEFAULT_PRESET, get_preset

    return load_yaml(args.config) if args.config else get_preset(args.preset or DEFAULT_PRESET)


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
    d.add_argument("--n", type=int, default=2000, help="with --deploy: samples scored per row (default 2000)")
    d.add_argument("--evalnet", help="with --deploy: feature network for FID (default: the run's, or digits)")
    d.add_argument("--threads", type=int, help="with --deploy: CPU threads for every backend (default: all)")
    d.add_argument("--no-int8", action="store_true", help="with --deploy: leave out the int8 rows")


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


def add_layers(sub) -> None:
    ly = sub.add_parser("layers", help="list G's and D's layers with the indices stage specs use")
    add_base(ly, "preset whose networks to list (default dcgan_mnist)")
    add_data_spec(ly)
    add_set(ly)


def add_report(sub) -> None:
    r = sub.add_parser("report", help="write a self-contained HTML report of a run")
    r.add_argument("run_dir")
    r.add_argument("--out", help="HTML file (default RUN_DIR/report.html)")


def add_data(sub) -> None:
    d = sub.add_parser("data", help="dataset tools")
    c = d.add_subparsers(dest="data_command", required=True).add_parser(
        "check", help="decode every item of a dataset and report each bad file"
    )
    c.add_argument("spec", help="data spec, e.g. folder:DIR")
    c.add_argument("--resolution", type=int, default=32)
    c.add_argument("--channels", type=int, default=1, choices=[1, 3])


def cmd_train(args: argparse.Namespace) -> int:
    from hetgan.training import run_training
    from hetgan.training.distributed import launched

    flags = {
        "train.kimg": args.kimg,
        "seed": args.seed,
        "train.snapshot_kimg": args.snapshot_kimg,
        "train.eval_kimg": args.eval_every,
        "data.on_bad_image": args.on_bad_image,
    }
    overrides = [f"{k}={v}" for k, v in flags.items() if v is not None] + flag_overrides(args) + args.set
    auto = args.resume == "auto"
    if auto and not args.out:
        raise HetganError("--resume auto continues or starts the run directory given by --out: pass --out DIR")
    if args.placement == "auto" and launched():
        raise HetganError(
            "--placement auto would tune on every rank, and the ranks could choose differently; run "
            "`hetgan tune` once, outside torchrun, and pass the knobs it prints with --set"
        )
    if args.resume and not auto:
        if args.preset or args.config:
            raise HetganError(
                f"{'--preset' if args.preset else '--config'} cannot be combined with --resume: the run's "
                "config.yaml is used; change a field with --set FIELD=VALUE --allow-config-change"
            )
        if args.placement == "auto":
            raise HetganError(
                "--placement auto cannot be combined with --resume: the run continues with the knobs in its "
                "config.yaml; to change them, pass --set accel.FIELD=VALUE --allow-config-change"
            )
        result = run_training(
            resume=args.resume,
            overrides=overrides,
            allow_config_change=args.allow_config_change,
            progress=not args.no_progress,
        )
        if result.main:
            print(result.summary())
        return 0
    cfg = apply_overrides(base_config(args), overrides)
    if args.placement == "auto":
        cfg = run_tune(cfg, seconds=args.tune_seconds).config  # the choice goes into the run's config.yaml
    result = run_training(cfg, out=args.out, resume="auto" if auto else None, progress=not args.no_progress)
    if result.main:  # one summary, from rank 0, however many ranks trained
        print(result.summary())
    return 0


def run_tune(cfg, seconds: float, rounds: int = 3):
    from hetgan.bench.tune import autotune

    result = autotune(cfg, seconds, rounds)
    print(result.summary())
    return result


def output_path(arg: str, flag: str, example: str) -> Path:
    """A file (or, for an `arg` ending in "/", a folder) that the command will write, checked
    before the work starts so that a bad path cannot lose finished work: a folder where a file is
    wanted is refused (and the reverse), and so is a parent that is a file or cannot be written."""
    path = Path(arg)
    if arg.endswith(("/", "\\")):
        if path.exists() and not path.is_dir():
            raise HetganError(f"{flag} {arg}: {path} is a file, not a folder; pick another path")
    elif path.is_dir():
        raise HetganError(f"{flag} {arg}: that is a folder; name a file in it, e.g. {flag} {path / example}")
    ancestor = next(p for p in path.absolute().parents if p.exists())
    if not ancestor.is_dir():
        raise HetganError(f"{flag} {arg}: {ancestor} is a file, so no folder can be made there; pick another path")
    if not os.access(ancestor, os.W_OK):
        raise HetganError(f"{flag} {arg}: {ancestor} is not writable; pick another path")
    return path


def json_path(arg: str | None) -> Path | None:
    return output_path(arg, "--json", "results.json") if arg else None


def write_output(path: Path, text: str) -> None:
    """Write `text` to `path`, making its folder; a crash leaves no partial file."""
    from hetgan.fileio import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode())


def write_json(path: Path | None, obj) -> None:
    """Write `obj` as JSON to `path`, if given (`write_output`)."""
    from hetgan.fileio import strict_json

    if path is not None:
        write_output(path, strict_json(obj, indent=1) + "\n")


def cmd_bench(args: argparse.Namespace) -> int:
    import copy

    from hetgan.bench.bench import format_bench, run_bench

    out = json_path(args.json)
    if args.deploy or args.run or args.artifact:
        return cmd_bench_deploy(args, out)
    base = apply_overrides(base_config(args), flag_overrides(args) + args.set)
    results = []
    for batch in args.batch or [base.train.batch_size]:
        cfg = apply_overrides(copy.deepcopy(base), [f"train.batch_size={batch}"])
        results.append(run_bench(cfg, args.seconds, textbook=not args.no_textbook, rounds=args.rounds))
        print(format_bench(results[-1]))
    write_json(out, results)
    return 0


def cmd_bench_deploy(args: argparse.Namespace, out: Path | None) -> int:
    from hetgan.deploy.bench import format_deploy, run_deploy_bench

    if not args.deploy or not (args.run or args.artifact) or (args.run and args.artifact):
        raise HetganError(
            "bench --deploy takes a trained generator: --deploy with --run RUN or --artifact PATH [PATH ...]"
        )
    training = {
        "--preset": args.preset,
        "--config": args.config,
        "--batch": args.batch,
        "--data": args.data,
        "--set": args.set,
    }
    if given := [flag for flag, value in training.items() if value]:
        raise HetganError(
            f"{', '.join(given)}: training settings; bench --deploy measures a trained generator as it is"
        )
    source, *extra = [args.run] if args.run else args.artifact
    record = run_deploy_bench(
        source,
        extra,
        args.seconds,
        args.rounds,
        args.n,
        evalnet=args.evalnet,
        int8=not args.no_int8,
        threads=args.threads,
    )
    print(format_deploy(record))
    write_json(out, record)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    out = json_path(args.json)
    config_out = output_path(args.save_config, "--save-config", "tuned.yaml") if args.save_config else None
    cfg = apply_overrides(base_config(args), flag_overrides(args) + args.set)
    result = run_tune(cfg, args.seconds, args.rounds)
    if config_out:
        from hetgan.training.loop import with_absolute_paths

        # Absolute paths, as in a run's config.yaml: they name the same files from any folder.
        write_output(config_out, dump_yaml(with_absolute_paths(result.config)))
        print(f"tuned config: {config_out} (train with: hetgan train --config {config_out})")
    if out:
        from hetgan.placement import resolve_device
        from hetgan.training.rundir import provenance

        record = provenance(cfg, resolve_device(cfg.accel.device))
        write_json(out, {**record, "chosen": result.chosen.overrides, "table": [vars(c) for c in result.table]})
    return 0


def cmd_layers(args: argparse.Namespace) -> int:
    from hetgan.bench.layers import format_layers, network_tables

    cfg = apply_overrides(base_config(args), flag_overrides(args) + args.set)
    tables = network_tables(cfg)  # refuses a stage spec for a network that cannot be split
    batch = cfg.train.batch_size
    print("\n\n".join(format_layers(name, *table, batch=batch) for name, table in tables.items()))
    splittable = [name for name, (_, rows, spec) in tables.items() if rows is not None and not spec]
    if splittable:
        example = f"--set accel.{splittable[-1].lower()}_stages=FIRST-LAST@DEVICE,NEXT-@DEVICE"
        print(f"\nsplit with e.g. {example} (README: Placement)")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from hetgan.artifact import load_generator
    from hetgan.data import Mixture, load_data
    from hetgan.sampling import check_memory, output_form, sample_uint8, write_samples

    if args.n < 1:
        raise HetganError(f"--n must be at least 1, got {args.n}")
    if args.per_class is not None and args.per_class < 1:
        raise HetganError(f"--per-class must be at least 1, got {args.per_class}")
    if args.interpolate:
        return sample_walk(args)
    form = output_form(output_path(args.out, "--out", "samples.png"), args.out)  # before the sampling
    G = load_generator(args.run or args.artifact, device=args.device, backend=args.backend, threads=args.threads)
    n, labels = requested_labels(G, args)
    names = G.class_names if labels is not None else None
    start = folder_start(Path(args.out), args.append, args.overwrite, names) if form == "folder" else 0
    check_memory(G, n, form)
    modes = None
    if len(G.shape) == 1:
        samples = G.sample(n, seed=args.seed, truncation=args.truncation, labels=labels)
        data = load_data(G.config.data)
        modes = data.modes if isinstance(data, Mixture) else None
    else:  # the same samples as G.sample, a quarter of the memory
        samples = sample_uint8(G, n, args.seed, args.truncation, labels)
    y = None if labels is None else labels.numpy()
    out = write_samples(samples, args.out, modes, start=start, ncol=args.per_class, labels=y, class_names=names)
    layout = " by class" if labels is not None and form == "folder" else ""
    print(f"wrote {n} samples to {out}{layout}" + (f" (numbered from {start})" if start else ""))
    return 0


def requested_labels(G, args: argparse.Namespace):
    """(n, y [n] or None) for `hetgan sample`: --per-class N of every class (or of each --class),
    class by class; --class alone: --n samples, the given classes in turn; neither: the classes in
    turn (conditional) or no labels (unconditional, which refuses --class and --per-class)."""
    import torch

    if not G.n_classes:
        if args.classes or args.per_class:
            raise HetganError(
                "--class and --per-class need a conditional generator (trained with model.conditional=true)"
            )
        return args.n, None
    classes = [G.class_index(c) for c in args.classes] if args.classes else list(range(G.n_classes))
    if args.per_class:
        return len(classes) * args.per_class, torch.tensor(classes).repeat_interleave(args.per_class)
    return args.n, torch.tensor(classes)[torch.arange(args.n) % len(classes)]


def sample_walk(args: argparse.Namespace) -> int:
    """`hetgan sample --interpolate A B`: the frames from seed A's sample to seed B's."""
    from hetgan.artifact import load_generator
    from hetgan.sampling import write_walk

    out = output_path(args.out, "--out", "walk.gif")
    if out.suffix not in (".gif", ".png"):
        raise HetganError(f"--out {out}: a latent walk is FILE.gif (an animation) or FILE.png (a strip)")
    G = load_generator(args.run or args.artifact, device=args.device, backend=args.backend, threads=args.threads)
    if len(G.shape) != 3:
        raise HetganError("--interpolate draws images; this generator makes 2-D points")
    if args.classes and len(args.classes) > 1:
        raise HetganError("--interpolate walks within one class: give one --class")
    label = args.classes[0] if args.classes else None
    frames = G.interpolate(*args.interpolate, frames=args.frames, truncation=args.truncation, label=label)
    write_walk(frames, out)
    print(f"wrote {args.frames} frames from seed {args.interpolate[0]} to seed {args.interpolate[1]} to {out}")
    return 0


def folder_start(folder: Path, append: bool, overwrite: bool, classes: list[str] | None = None) -> int:
    """The first number for samples written into `folder` (or, by class, into its `classes`
    subfolders): 0 for a new or empty one; after the last sample already there with --append; 0
    after removing them with --overwrite. A folder that holds anything else, or samples without
    either flag, is refused: nothing is overwritten silently."""
    from hetgan.sampling import numbered_pngs

    if not folder.is_dir():
        return 0
    places = [folder / name for name in classes] if classes else [folder]
    samples = [p for place in places if place.is_dir() for p in numbered_pngs(place)]
    others = [p for p in folder.iterdir() if p not in samples and p not in places]
    if classes:  # and inside the class folders
        others += [p for place in places if place.is_dir() for p in place.iterdir() if p not in samples]
    if others and not append:
        raise HetganError(
            f"--out {folder}/: it holds {len(others)} other files (e.g. {others[0].name}); pick a new folder"
        )
    if not samples:
        return 0
    if append:
        return max(int(p.stem) for p in samples) + 1
    if overwrite:
        for p in samples:
            p.unlink()
        return 0
    raise HetganError(
        f"--out {folder}/: it already holds {len(samples)} samples; pass --append to add after them "
        "(numbering goes on) or --overwrite to replace them"
    )


def cmd_eval(args: argparse.Namespace) -> int:
    from hetgan.artifact import load_generator
    from hetgan.eval.score import default_eval_n, evaluate

    out = json_path(args.json)
    G = load_generator(args.run or args.artifact, args.device, backend=args.backend, threads=args.threads)
    n = args.n if args.n is not None else default_eval_n(G)
    metrics = tuple(args.metrics) if args.metrics else None
    result = evaluate(
        G, n=n, seed=args.seed, metrics=metrics, evalnet=args.evalnet, inception=args.inception, device=G.device
    )
    print(format_table(result))
    write_json(out, result)
    return 0


def format_table(result: dict) -> str:
    lines = [f"feature space: {result['feature_space']}"]
    for key, value in result.items():
        if key != "feature_space":
            lines.append(f"  {key:<18} {value:.4f}" if isinstance(value, float) else f"  {key:<18} {value}")
    return "\n".join(lines)


def cmd_export(args: argparse.Namespace) -> int:
    from hetgan.artifact import load_torch_generator
    from hetgan.deploy.export import FORMATS, export

    if args.format not in FORMATS:
        raise HetganError(f"--format {args.format}: unknown export format; valid: {', '.join(FORMATS)}")
    out = output_path(args.out, "--out", "generator.onnx")
    result = export(load_torch_generator(Path(args.run or args.artifact)), args.format, out, args.fp16_weights)
    print(result.summary())
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from hetgan.artifact import load_torch_generator
    from hetgan.deploy.quantize import quantize

    out = output_path(args.out, "--out", "generator-int8.xml")
    G = load_torch_generator(Path(args.run or args.artifact))
    print(quantize(G, out, args.calibration_n, args.quality_n, args.seed, args.evalnet).summary())
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    from hetgan.compress import compress
    from hetgan.config import DistillConfig

    weights = DistillConfig(
        pixel_weight=args.pixel_weight, feature_weight=args.feature_weight, adversarial_weight=args.adversarial_weight
    )
    if args.target_ms is not None:
        from hetgan.compress.search import search

        if args.prune is not None or args.width is not None or args.scratch:
            raise HetganError("--target-ms searches over --ratios; it takes no --prune, --width or --scratch")
        try:
            ratios = tuple(float(r) for r in args.ratios.split(",") if r.strip())
        except ValueError:
            raise HetganError(f"--ratios {args.ratios!r}: expected comma-separated numbers, e.g. 0.5,0.75") from None
        chosen = search(
            args.run, args.out, args.target_ms, args.backend, args.batch, ratios, args.kimg,
            args.max_increase, args.n, weights, not args.no_progress,
        )  # fmt: skip
        print(f"chose {chosen.name}: {chosen.ms:.3g} ms per call, score {chosen.score:.4g}")
        print(f"  generator: {Path(args.out) / 'generator.safetensors'}\n  table: {Path(args.out) / 'search.md'}")
        return 0
    student = compress(
        args.run, args.out, args.prune, args.width, args.importance, args.kimg, args.scratch, weights,
        progress=not args.no_progress,
    )  # fmt: skip
    print(student.summary())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from hetgan.serve.limits import ServeLimits
    from hetgan.serve.server import serve

    limits = ServeLimits(**{name: getattr(args, name) for name in vars(ServeLimits())})
    token = args.token or os.environ.get("HETGAN_SERVE_TOKEN") or None
    source, threads, streams = args.run or args.artifact, args.threads, args.streams
    serve(source, args.backend, args.device, threads, streams, args.host, args.port, token, limits, args.nice)
    return 0


def cmd_evalnet(args: argparse.Namespace) -> int:
    from hetgan.data import ImageData, load_data
    from hetgan.eval.evalnet import save_evalnet, train_evalnet
    from hetgan.placement import resolve_device

    out = output_path(args.out, "--out", "evalnet.safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)  # now, not after minutes of training
    device = resolve_device(args.device)  # before the data is decoded
    data = load_data(
        DataConfig(spec=args.data, resolution=args.resolution, channels=args.channels, on_bad_image=args.on_bad_image)
    )
    if not isinstance(data, ImageData):
        raise HetganError(f"{args.data}: feature networks are for images, not 2-D points")
    net = train_evalnet(data, epochs=args.epochs, device=device)
    out = save_evalnet(net, out)
    print(f"held-out accuracy {net.cfg.held_out_accuracy:.4f} on {net.cfg.held_out_count} items; wrote {out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from hetgan.report.html import build_report

    out = output_path(args.out, "--out", "report.html") if args.out else None
    out = build_report(Path(args.run_dir), out)
    print(f"wrote {out}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from hetgan.data.sources import inspect_spec

    cfg = DataConfig(spec=args.spec, resolution=args.resolution, channels=args.channels)
    bad, described = inspect_spec(cfg)
    for where, reason in bad:
        print(f"BAD {where}: {reason.removeprefix(f'{where}: ')}")  # the reason may start with the file
    if described:
        print(described + (" (the good items)" if bad else ""))
    print(f"{args.spec}: {'no problems found' if not bad else f'{len(bad)} bad item(s)'}")
    return 1 if bad else 0


def unknown_flags(parser: argparse.ArgumentParser, args: argparse.Namespace, unknown: list[str]) -> str:
    """'unrecognized arguments: --kimgg 3 (did you mean --kimg?)', from the subcommand's own flags."""
    import difflib

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    command = sub.choices[args.command]
    if nested_command := getattr(args, "evalnet_command", None) or getattr(args, "data_command", None):
        nested = next(a for a in command._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
        command = nested.choices[nested_command]
    flags = [s for action in command._actions for s in action.option_strings if s.startswith("--")]  # noqa: SLF001
    hints = []
    for token in unknown:
        close = difflib.get_close_matches(token.split("=")[0], flags, n=1) if token.startswith("--") else []
        if close:
            hints.append(f"{token}: did you mean {close[0]}?")
    text = f"unrecognized arguments: {' '.join(unknown)}"
    return text + (f" ({'; '.join(hints)})" if hints else f" (see hetgan {args.command} --help)")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(unknown_flags(parser, args, unknown))
    handlers = {
        "train": cmd_train,
        "sample": cmd_sample,
        "eval": cmd_eval,
        "evalnet": cmd_evalnet,
        "report": cmd_report,
        "bench": cmd_bench,
        "tune": cmd_tune,
        "layers": cmd_layers,
        "data": cmd_data,
        "export": cmd_export,
        "quantize": cmd_quantize,
        "compress": cmd_compress,
        "serve": cmd_serve,
    }
    try:
        return handlers[args.command](args)
    except HetganError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except MemoryError as e:  # numpy's names the array it could not allocate
        print(f"error: out of memory ({e}); ask for less: fewer samples, a smaller batch", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C in bench, tune, eval...: `train` saves and stops on its own
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `hetgan layers | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush is quiet
        return 0
