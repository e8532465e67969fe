"""The `hetgan` command: one subcommand per job, each a thin wrapper over one public function of
`hetgan` (parse the flags, call it, print its summary). The commands live in this package's
modules: train; sample, eval, evalnet, report; export, quantize; compress; serve; bench, tune,
layers; data."""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import sys
import time

from hetgan.cli import bench, compress, data, deploy, sample, serve, train
from hetgan.data import describe_specs
from hetgan.errors import HetganError
from hetgan.losses import LOSSES
from hetgan.models import MODELS
from hetgan.presets import PRESETS
from hetgan.version import __version__

COMMAND_MODULES = (train, sample, bench, data, deploy, compress, serve)


def build_parser() -> argparse.ArgumentParser:
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
    for module in COMMAND_MODULES:
        module.add(sub)
    return parser


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser of each subcommand, by name."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    return action.choices


def unknown_flags(parser: argparse.ArgumentParser, args: argparse.Namespace, unknown: list[str]) -> str:
    """'unrecognized arguments: --kimgg 3 (did you mean --kimg?)', from the subcommand's own flags."""
    command = subparsers(parser)[args.command]
    if nested_command := getattr(args, "evalnet_command", None) or getattr(args, "data_command", None):
        command = subparsers(command)[nested_command]
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
    try:
        return args.handler(args)
    except HetganError as e:
        return report_error(f"error: {e}")
    except MemoryError as e:  # numpy's names the array it could not allocate
        return report_error(f"error: out of memory ({e}); ask for less: fewer samples, a smaller batch")
    except KeyboardInterrupt:  # Ctrl-C in bench, tune, eval...: `train` saves and stops on its own
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `hetgan layers | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush is quiet
        return 0


def report_error(text: str) -> int:
    """Say a user error once and return the exit status 2. Under torchrun every rank meets the
    same error: rank 0 prints it; the others write it to torchrun's error file only
    (TORCHELASTIC_ERROR_FILE), where torchrun's failure summary shows it in place of "To enable
    traceback see ...", so an error that only another rank meets is still said."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(text, file=sys.stderr)
    elif error_file := os.environ.get("TORCHELASTIC_ERROR_FILE"):
        with open(error_file, "w") as f:
            json.dump({"message": text, "timestamp": str(int(time.time()))}, f)
    else:
        print(text, file=sys.stderr)
    return 2
