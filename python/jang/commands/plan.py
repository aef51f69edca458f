"""`jang plan`."""

import argparse
import sys

from jang.commands import PROFILES_EXPLAINED, add_size

HELP = "per-tensor bit allocation for a model (writes nothing unless -o)"
DESCRIPTION = """\
Plan per-tensor bits and group sizes for SRC (HF directory, safetensors, GGUF or a
`jang data` model) and print a per-role summary. A budget (--bits X, or JANG_nK) is
spent exactly where the measured, prior-weighted error drops most; tier profiles fix
bits per tier. Measured errors are cached, so re-planning is instant. -o FILE saves the
plan for `jang convert --plan FILE` (after editing it, if you like).
"""
EPILOG = PROFILES_EXPLAINED


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="model path, or a `jang data` model (smollm2, gemma3)")
    add_size(parser)
    parser.add_argument("-o", "--output", metavar="FILE", help="write the plan JSON here")
    parser.add_argument(
        "--cache",
        metavar="FILE",
        help="error cache JSON (default: plan-errors.json in the data directory)",
    )
    parser.add_argument("--no-cache", action="store_true", help="measure errors afresh, keep none")
    parser.add_argument(
        "--sample",
        type=int,
        metavar="N",
        help="weights measured per tensor (evenly strided rows; default 131072, 0 = all, exact)",
    )
    parser.add_argument(
        "--prior",
        action="append",
        default=[],
        metavar="ROLE=WEIGHT",
        help="override a role prior (e.g. lm_head=10, attn_q=1, edge=1); repeatable",
    )
    parser.add_argument("--layers", action="store_true", help="also print the per-layer table")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")


def _priors(items: list[str]) -> dict[str, float]:
    from jang.plan.tiers import ROLES

    out = {}
    for item in items:
        role, sep, value = item.partition("=")
        if not sep or role not in (*ROLES, "edge", "default"):
            raise ValueError(f"--prior {item!r}: expected ROLE=WEIGHT with ROLE in {ROLES}")
        out[role] = float(value)
    return out


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from jang import data
    from jang import plan as planner
    from jang.plan.errors import DEFAULT_SAMPLE, default_cache_path
    from jang.plan.report import summarize

    try:
        source = data.resolve_model(args.source, quiet=args.quiet)
        priors = _priors(args.prior)
        cache = None if args.no_cache else (args.cache or default_cache_path())
        sample = DEFAULT_SAMPLE if args.sample is None else (args.sample or None)
        tty = sys.stderr.isatty() and not args.quiet

        def progress(i: int, n: int) -> None:
            if tty:
                print(f"\rmeasuring {i}/{n}", end="" if i < n else "\n", file=sys.stderr)

        result = planner.plan_source(
            source,
            profile=args.profile,
            bits=args.bits,
            priors=priors or None,
            cache=cache,
            sample=sample,
            progress=progress,
        )
    except (ValueError, OSError, data.DataError) as exc:
        print(f"jang plan: error: {exc}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(summarize(result, by_layer=args.layers))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1))
        if not args.quiet:
            print(f"plan written to {args.output}")
    return 0
