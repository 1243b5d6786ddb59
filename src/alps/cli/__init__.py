"""``alps`` command line: a thin layer over the Python API.

Each module in :data:`COMMAND_MODULES` exposes ``register(subparsers)`` which adds its sub-commands
and sets ``func`` (taking the parsed namespace, returning an exit code).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import import_module

from alps import __version__

COMMAND_MODULES = (
    "alps.cli.weights",  # alps weights list|fetch
    "alps.cli.label",  # alps label | demo | evaluate-labels
    "alps.cli.train",  # alps pretrain | finetune | evaluate
    "alps.cli.review",  # alps report | map | export
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alps", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"alps-seg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # command group not written yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
