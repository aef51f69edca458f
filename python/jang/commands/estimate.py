"""`jang estimate`."""

import argparse
import sys

from jang.commands import BITS_HELP, PROFILE_HELP, PROFILES_EXPLAINED, add_profile

HELP = "size estimates without weights"
DESCRIPTION = (
    "Estimate the size of a model under JANG profiles without reading weights. MODEL is a "
    "parameter count (70B, 1.5B, 135M: a llama-like dense shape is assumed, see "
    "jang.estimate), a model path (HF dir, safetensors, GGUF: exact shapes from headers) or "
    "a `jang data` model (smollm2, gemma3). "
    "Tier profiles are exact; budget profiles (JANG_nK, --bits) report their budget."
)

EPILOG = PROFILES_EXPLAINED


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="parameter count (e.g. 70B), model path or `jang data` name")
    add_profile(parser, PROFILE_HELP + "; repeatable, default: all", action="append")
    parser.add_argument(
        "--bits", type=float, action="append", metavar="X", help=BITS_HELP + "; repeatable"
    )


def run(args: argparse.Namespace) -> int:

    from jang import data, estimate
    from jang.plan import profiles

    try:
        model = data.resolve_model(args.model, quiet=True)
        if model.exists():
            from jang.source import open_source

            src = open_source(model)
            config, tensors = src.config, [(i.name, i.shape) for i in src.tensors()]
            desc = f"{args.model}"
        else:
            config, tensors, desc = estimate.llama_like(estimate.parse_params(args.model))
        wanted = list(args.profile or []) + [str(b) for b in args.bits or []]
        if not wanted:
            wanted = list(profiles.PROFILES)
        rows = [estimate.estimate(config, tensors, p) for p in wanted]
    except (ValueError, OSError) as exc:
        print(f"jang estimate: error: {exc}", file=sys.stderr)
        return 1
    print(desc)
    print(f"{'profile':<10} {'kind':<6} {'GB':>9} {'GiB':>9} {'bpw all-in':>10} {'codes':>6}")
    for r in rows:
        codes = "-" if r["bpw_codes"] is None else f"{r['bpw_codes']:.2f}"
        print(
            f"{r['profile']:<10} {r['kind']:<6} {r['bytes'] / 1e9:>9.2f} "
            f"{r['bytes'] / 2**30:>9.2f} {r['bpw_all_in']:>10.3f} {codes:>6}"
        )
    return 0
