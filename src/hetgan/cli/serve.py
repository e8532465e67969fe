"""`hetgan serve`: a thin wrapper over `hetgan.serve`."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import hetgan
from hetgan.cli.common import add_backend, add_source, source
from hetgan.errors import HetganError
from hetgan.serving.limits import ServeLimits
from hetgan.serving.server import GENERATOR_NICE

log = logging.getLogger("hetgan")

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


def add(sub) -> None:
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
    s.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="answer requests for this Host name too (repeatable); by default only the loopback names and "
        "--host are answered (421 otherwise), against DNS rebinding",
    )
    token = s.add_mutually_exclusive_group()
    token.add_argument(
        "--token-file",
        metavar="FILE",
        help="require `Authorization: Bearer TOKEN`, the token read from FILE (its first line)",
    )
    token.add_argument(
        "--token",
        help="the token itself (visible to every user of the machine in the process list: prefer "
        "--token-file or $HETGAN_SERVE_TOKEN, which is the default if set)",
    )
    for name, value in vars(ServeLimits()).items():
        flag = "--" + name.replace("_", "-")
        s.add_argument(flag, type=type(value), default=value, help=f"{LIMIT_HELP[name]} (default {value:g})")
    s.set_defaults(handler=run)


def read_token(args: argparse.Namespace) -> str | None:
    """--token-file, --token (with a warning: the process list shows it) or $HETGAN_SERVE_TOKEN."""
    if args.token_file:
        try:
            lines = Path(args.token_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise HetganError(f"--token-file {args.token_file}: cannot read it ({e}); pass a text file") from None
        if not lines or not lines[0].strip():
            raise HetganError(f"--token-file {args.token_file}: its first line is empty; write the token there")
        return lines[0].strip()
    if args.token:
        log.warning(
            "--token shows in the process list to every user of this machine; pass --token-file FILE or "
            "set HETGAN_SERVE_TOKEN instead"
        )
        return args.token
    return os.environ.get("HETGAN_SERVE_TOKEN") or None


def run(args: argparse.Namespace) -> int:
    limits = ServeLimits(**{name: getattr(args, name) for name in vars(ServeLimits())})
    token = read_token(args)
    hetgan.serve(
        source(args), args.backend, args.device, args.threads, args.streams, args.host, args.port, token, limits,
        args.nice, tuple(args.allowed_host),
    )  # fmt: skip
    return 0
