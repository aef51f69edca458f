"""`jang eval`: perplexity, KL and top-1 against a reference, MC accuracy, size."""

import argparse
import json
import sys
from pathlib import Path

HELP = "evaluate a bundle against its reference (ppl, KL, top-1, MC accuracy, bits per weight)"
DESCRIPTION = """\
Evaluate BUNDLE on fixed non-overlapping windows of text (BOS first where the model has one):
perplexity, mean KL(P_ref || P_bundle) per token and top-1 agreement against --ref (the
unquantized source: HF dir, safetensors or GGUF; or another bundle), optional multiple-choice
accuracy with a 95% interval, and size (bytes, bits per weight codes-only and all-in).

The default engine dequantizes the bundle into the transformers model and runs torch (needs
the `eval` extra); --engine mlx runs jang's MLX runtime (slow on CPU)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "bundles",
        type=Path,
        nargs="+",
        metavar="BUNDLE",
        help="bundle directory (or a source, for ppl alone); several are compared in one table",
    )
    parser.add_argument(
        "--ref",
        type=Path,
        help="reference model: the unquantized source (a path, or a `jang data` model: smollm2)",
    )
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--text", type=Path, help="plain-text file to evaluate on")
    src.add_argument("--dataset", choices=("wiki", "lambada"), help="prepared text (default wiki)")
    parser.add_argument("--windows", type=int, default=40, help="number of windows")
    parser.add_argument("--length", type=int, default=512, help="tokens per window")
    parser.add_argument(
        "--mc",
        choices=("mmlu", "arc", "arc_easy", "arc_challenge", "hellaswag"),
        help="also score a multiple-choice set",
    )
    parser.add_argument("--mc-limit", type=int, help="score a fixed random subset of N questions")
    parser.add_argument("--engine", choices=("torch", "mlx"), default="torch")
    parser.add_argument(
        "--kl-top-k",
        type=int,
        metavar="K",
        help="keep only the reference's top K log-probs per token (a few MB) instead of all "
        "of them (float16 in a temporary file: windows x length x vocabulary x 2 bytes); KL "
        "is then a lower bound, 2-4%% low at K=1024 on SmolLM2 (bench/RESULTS.md). Either "
        "way the reference is scored once and never held in memory with a bundle",
    )
    parser.add_argument(
        "--json", type=Path, help="write the result as JSON here (a list for several bundles)"
    )
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="FILE",
        help="draw KL against bits per weight for the bundles (PNG/SVG/PDF; needs --ref)",
    )
    parser.add_argument(
        "--no-record",
        action="store_true",
        help="do not add the result to BUNDLE/eval.json (which `jang card` puts on the card)",
    )


def run(args: argparse.Namespace) -> int:
    from jang import data
    from jang.errors import install_hint
    from jang.evaluate import evaluate, format_table

    if args.plot and not args.ref:
        print("jang eval: error: --plot draws KL, which needs --ref", file=sys.stderr)
        return 2
    try:
        ref = data.resolve_model(args.ref, quiet=True) if args.ref else None
        results, recorded, memo = [], [], {}
        for bundle in args.bundles:
            result = evaluate(
                bundle,
                ref,
                engine=args.engine,
                text_file=args.text,
                dataset=args.dataset,
                windows=args.windows,
                length=args.length,
                mc=args.mc,
                mc_limit=args.mc_limit,
                top_k=args.kl_top_k or 0,
                memo=memo,
            )
            results.append(result)
            if ref is not None and not args.no_record and (bundle / "jang.json").is_file():
                if _record(bundle, result):
                    recorded.append(bundle)
    except ImportError as exc:
        print(
            f"jang eval: error: {exc} (install the eval extra: {install_hint('eval')})",
            file=sys.stderr,
        )
        return 1
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"jang eval: error: {exc}", file=sys.stderr)
        return 1
    print(format_table([{"name": b.name, **r} for b, r in zip(args.bundles, results, strict=True)]))
    first = results[0]
    print(
        f"[{first['windows']} windows x {first['length']} tokens, {first['text']}, "
        f"engine {first['engine']}, {sum(r['seconds'] for r in results):.1f} s"
        + (f"; reference ppl {first['ppl_ref']:.4g}" if "ppl_ref" in first else "")
        + "]"
    )
    if args.json:
        args.json.write_text(json.dumps(results[0] if len(results) == 1 else results, indent=2))
    if args.plot:
        from jang.plots import Series, kl_vs_bpw

        points = [
            (r["bpw_all_in"], r["kl"], b.name)
            for b, r in zip(args.bundles, results, strict=True)
            if r.get("bpw_all_in") and r.get("kl")
        ]
        title = f"KL against {Path(str(ref)).name} on {first['text']}"
        kl_vs_bpw([Series("bundles", points, style="o", named=True)], title, args.plot)
        print(f"plot written to {args.plot}")
    for bundle in recorded:
        print(f"recorded in {bundle / 'eval.json'}; `jang card {bundle}` puts it on the card")
    return 0


def _record(bundle: Path, result: dict) -> bool:
    """Keep the result with the bundle, for its model card; a read-only bundle only warns."""
    import time

    from jang import __version__
    from jang.card import record_eval

    entry = {**result, "date": time.strftime("%Y-%m-%d"), "jang_version": __version__}
    try:
        record_eval(bundle, entry)
    except OSError as exc:
        print(f"note: could not record the result in {bundle}: {exc}", file=sys.stderr)
        return False
    return True
