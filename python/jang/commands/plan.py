"""`jang plan`."""

import argparse
import sys

HELP = "per-tensor bit allocation for a model"
DESCRIPTION = (
    "Plan per-tensor bits and group sizes for a model (HF dir, safetensors or GGUF). "
    "Tier profiles (JANG_2S ... JANG_6M) assign fixed bits per tier; budget profiles "
    "(JANG_2K ... JANG_6K = the size of MLX uniform n-bit g64) and --bits X (all-in bits per "
    "weight) minimise the prior-weighted measured quantization error under that size, "
    "exactly. Prints a per-role and per-layer summary and writes the plan JSON that "
    "`jang convert` consumes. Measured errors are cached, so re-planning is instant."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        help="model: HF directory, .safetensors or .gguf, or a model of `jang data` (smollm2, gemma3)",
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("-p", "--profile", help="JANG profile name (e.g. JANG_3M, JANG_4K)")
    which.add_argument("--bits", type=float, help="budget in all-in bits per weight (e.g. 2.5)")
    parser.add_argument(
        "-o", "--output", help="plan JSON path (default: <model>.<profile>.plan.json)"
    )
    parser.add_argument(
        "--cache", help="error cache JSON (default: ~/.cache/jang/plan-errors.json)"
    )
    parser.add_argument("--no-cache", action="store_true", help="measure errors afresh, keep none")
    parser.add_argument(
        "--sample",
        type=int,
        default=None,
        help="weights measured per tensor (evenly strided rows; default 131072, 0 = all, exact)",
    )
    parser.add_argument(
        "--prior",
        action="append",
        default=[],
        metavar="ROLE=WEIGHT",
        help="override a role prior (e.g. lm_head=10, attn_q=1, edge=1); repeatable",
    )
    parser.add_argument("--no-layers", action="store_true", help="omit the per-layer table")
    parser.add_argument("--quiet", action="store_true", help="print only the output path")


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
    name = result["request"]["profile"]
    out = Path(args.output or f"{Path(args.source).name.split('.')[0]}.{name}.plan.json")
    out.write_text(json.dumps(result, indent=1))
    if not args.quiet:
        print(summarize(result, by_layer=not args.no_layers))
    print(f"plan written to {out}")
    return 0
