"""`jang inspect`."""

import argparse
import sys
from pathlib import Path

HELP = "per-role and per-layer bits of a bundle, size and average bits per weight"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--layers", action="store_true", help="also print the per-layer table")


def run(args: argparse.Namespace) -> int:
    from jang.bundle import read_manifest, validate
    from jang.summary import describe

    manifest = read_manifest(args.bundle)
    print(describe(args.bundle, manifest, by_layer=args.layers))
    # the layout only (no re-hashing: inspect stays instant); `jang validate` checks bytes
    for problem in validate(args.bundle, checksums=False):
        print(f"warning: {problem}", file=sys.stderr)
    return 0
