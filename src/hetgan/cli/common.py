"""Flags that several commands share, and how they become config overrides."""

from __future__ import annotations

import argparse

from hetgan.config import TrainConfig, load_yaml
from hetgan.deploy.runtimes import BACKENDS
from hetgan.fileio import output_path
from hetgan.presets import DEFAULT_PRESET, get_preset
from hetgan.pretrained import NAMES, pretrained


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
    src.add_argument(
        "--pretrained", choices=NAMES, metavar="NAME", help=f"a generator shipped with hetgan: {', '.join(NAMES)}"
    )


def source(args: argparse.Namespace) -> str:
    """The generator a command reads: --run, --artifact or --pretrained (its packaged file)."""
    return str(pretrained(args.pretrained).path) if args.pretrained else args.run or args.artifact


def add_backend(p: argparse.ArgumentParser, threads_default: str = "all this process may use") -> None:
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        help="what runs G (default: the file's: torch for a run or .safetensors, onnxruntime for .onnx, "
        "openvino for .xml); a run on another backend is exported in memory first",
    )
    p.add_argument("--threads", type=int, help=f"CPU threads of onnxruntime/openvino (default: {threads_default})")


def add_base(p: argparse.ArgumentParser, preset_help: str) -> None:
    """--preset or --config: the config that flags and --set then change."""
    base = p.add_mutually_exclusive_group()
    base.add_argument("--preset", help=preset_help)
    base.add_argument("--config", metavar="FILE", help="start from this YAML config instead, e.g. a run's config.yaml")


def base_config(args: argparse.Namespace) -> TrainConfig:
    return load_yaml(args.config) if args.config else get_preset(args.preset or DEFAULT_PRESET)


def json_path(arg: str | None):
    """--json FILE, checked before the work starts (None without the flag)."""
    return output_path(arg, "--json", "results.json") if arg else None
