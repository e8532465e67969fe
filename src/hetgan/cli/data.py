"""`hetgan data check`: a thin wrapper over `hetgan.check_data`."""

from __future__ import annotations

import argparse

import hetgan


def add(sub) -> None:
    d = sub.add_parser("data", help="dataset tools")
    c = d.add_subparsers(dest="data_command", required=True).add_parser(
        "check", help="decode every item of a dataset and report each bad file"
    )
    c.add_argument("spec", help="data spec, e.g. folder:DIR")
    c.add_argument("--resolution", type=int, default=32)
    c.add_argument("--channels", type=int, default=1, choices=[1, 3])
    c.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    check = hetgan.check_data(args.spec, args.resolution, args.channels)
    print(check.summary())
    return 1 if check.bad else 0
