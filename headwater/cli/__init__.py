"""The ``headwater`` command line: a parser, shared option groups, one thin module per command.

Each command module has ``register(subparsers)`` (its options, defined once, with help) and
``run(args)`` (reads them and calls the Python API). Nothing else imports this package.
"""
from __future__ import annotations

import argparse
import logging
import sys

from headwater import __version__
from headwater.cli import (
    attribute,
    audit,
    behaviors,
    compare,
    demo,
    discover,
    encode,
    evaluate,
    experiment,
    intervene,
    retrain,
    sae,
    steer,
)

COMMANDS = (demo, encode, attribute, behaviors, discover, intervene, retrain, evaluate, experiment, compare, steer,
            sae, audit)
DESCRIPTION = (
    "Trace the behaviours of a preference-trained (DPO) language model back to the preference pairs that taught "
    "them: datapoint vectors of every pair on the model before preference training, behaviour and probing vectors "
    "from real generations, rankings, discovery, interventions and retraining."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="headwater", description=DESCRIPTION,
        epilog="`headwater <command> --help` lists a command's options. The method: docs/method.md.",
    )
    parser.add_argument("--version", action="version", version=f"headwater {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        return args.func(args)
    except (ValueError, OSError) as err:
        # User-facing errors (bad rows, mismatched stores, missing files, a path that is a file
        # where a directory is needed) end with one clear line.
        print(f"error: {err}", file=sys.stderr)
        return 2


__all__ = ["build_parser", "main"]
