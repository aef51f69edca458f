"""`jang validate`."""

import argparse
import sys
from pathlib import Path

HELP = "check a bundle against its manifest and checksums (exit 1 with the problems if any)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path)
    parser.add_argument(
        "--deep", action="store_true", help="also re-hash every shard with sha256 (slower)"
    )


def run(args: argparse.Namespace) -> int:
    from jang.bundle import validate

    problems = validate(args.bundle, deep=args.deep)
    for problem in problems:
        print(f"INVALID: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"{args.bundle}: valid")
    return 0
