"""``alps weights list`` and ``alps weights fetch NAME [--force]``: the checkpoint registry."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``weights`` command group to the ``alps`` parser."""
    parser = subparsers.add_parser("weights", help="list or fetch published SAM-family checkpoints")
    sub = parser.add_subparsers(dest="weights_command", metavar="ACTION", required=True)

    list_parser = sub.add_parser("list", help="show registered checkpoints and whether they are cached")
    list_parser.set_defaults(func=list_command)

    fetch_parser = sub.add_parser("fetch", help="download and verify one checkpoint into the cache")
    fetch_parser.add_argument("name", help="registered name, see `alps weights list`")
    fetch_parser.add_argument("--force", action="store_true", help="delete any cached copy and fetch again")
    fetch_parser.set_defaults(func=fetch_command)


def list_command(args: argparse.Namespace) -> int:
    from alps.sam.weights import list_weights, weights_dir, weights_path

    rows = [("NAME", "MODEL TYPE", "SIZE", "CACHED", "SOURCE")]
    for entry in list_weights():
        cached = "yes" if weights_path(entry.name) is not None else "no"
        rows.append((entry.name, entry.model_type, _human_size(entry.size), cached, entry.source))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    print(f"\ncache: {weights_dir()}")
    return 0


def fetch_command(args: argparse.Namespace) -> int:
    from alps.core.fetch import FetchError
    from alps.sam.weights import fetch_weights

    try:
        path = fetch_weights(args.name, force=args.force)
    except KeyError as err:
        print(f"alps weights fetch: {err.args[0]}", file=sys.stderr)
        return 2
    except FetchError as err:
        print(f"alps weights fetch: {err}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB"):
        if value < 1000:
            return f"{value:.0f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"
