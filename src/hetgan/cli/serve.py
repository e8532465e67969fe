"""`hetgan serve`: a thin wrapper over `hetgan.serve`."""

from __future__ import annotations

import argparse
import os

import hetgan
from hetgan.cli.common import add_backend, add_source, source
from hetgan.serving.limits import ServeLimits
from hetgan.serving.server import GENERATOR_NICE

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
    s.add_argument("--token", help="require `Authorization: Bearer TOKEN` (default: $HETGAN_SERVE_TOKEN, if set)")
    for name, value in vars(ServeLimits()).items():
        flag = "--" + name.replace("_", "-")
        s.add_argument(flag, type=type(value), default=value, help=f"{LIMIT_HELP[name]} (default {value:g})")
    s.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    limits = ServeLimits(**{name: getattr(args, name) for name in vars(ServeLimits())})
    token = args.token or os.environ.get("HETGAN_SERVE_TOKEN") or None
    hetgan.serve(
        source(args), args.backend, args.device, args.threads, args.streams, args.host, args.port, token, limits,
        args.nice,
    )  # fmt: skip
    return 0
