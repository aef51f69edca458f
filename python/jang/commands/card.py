"""`jang card`."""

import argparse
from pathlib import Path

HELP = "(re)write a bundle's model card, README.md, with the numbers `jang eval` recorded"
DESCRIPTION = """\
Write BUNDLE/README.md, the model card the Hugging Face hub and LM Studio show: source
(name, repo and revision or file checksums, license), recipe, size and widths per role,
how to load it, and every evaluation `jang eval` recorded in BUNDLE/eval.json.
`jang convert` writes the card already; run this after an eval (it replaces README.md).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="bundle directory")


def run(args: argparse.Namespace) -> int:
    from jang.card import read_evals, write_card

    path = write_card(args.bundle)
    runs = len(read_evals(args.bundle))
    print(f"wrote {path} ({runs} recorded evaluation{'s' if runs != 1 else ''})")
    return 0
