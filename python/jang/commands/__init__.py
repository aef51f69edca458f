"""Subcommands of `jang`, one module each.

A command module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int`` (the exit code); ``DESCRIPTION`` and ``EPILOG`` (text after the options) are optional. `jang.cli`
imports every command module to build its parser, so keep heavy imports
(mlx, numpy, model code) inside ``run``. Options that several commands share are
defined here, so a flag means one thing everywhere.
"""

from __future__ import annotations

import argparse

# What the profile names mean, at the point of use (`jang.plan.profiles` holds the tables).
PROFILES_EXPLAINED = """\
profiles: JANG_2S ... JANG_6M (the public JANG tool's names) fix the width per tier:
  the digit is about the MLP/expert width, S/M/L how far attention, embeddings and edge
  layers are raised, so a name is not a size (JANG_2S is ~3.7 bpw). JANG_2K ... JANG_6K
  are the size of MLX uniform n-bit (n + 0.5 bpw), spent where it helps most.
  `jang estimate SRC` lists every profile's size for a model.
"""
PROFILE_HELP = "a profile name, e.g. JANG_4K or JANG_2S (see profiles below)"
BITS_HELP = "size target in bits per weight, all-in: codes + scales + biases (e.g. 3.5)"


class _Moved(argparse.Action):
    """A short flag that means something else here: fail with the spelling to use."""

    def __init__(self, option_strings, dest, use: str = "", **kwargs):
        self.use = use
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is --prompt (jang generate); here write {self.use}")


def add_profile(parser, help: str = PROFILE_HELP, **kwargs) -> None:
    """`--profile NAME` (no short flag: -p is generate's --prompt everywhere)."""
    parser.add_argument("--profile", metavar="NAME", help=help, **kwargs)
    parser.add_argument("-p", action=_Moved, use="--profile NAME", dest="_moved_p")


def add_size(parser: argparse.ArgumentParser):
    """The required size choice of convert and plan: --profile, --bits (or --plan FILE)."""
    size = parser.add_mutually_exclusive_group(required=True)
    add_profile(size)
    size.add_argument("--bits", type=float, metavar="X", help=BITS_HELP)
    return size


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written; every option's default shown unless it is empty or off."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or default in (None, False, argparse.SUPPRESS)
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)"
