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
    parser.add_argument("bundle", type=Path, help="bundle directory (or a source, for ppl alone)")
    parser.add_argument(
        "--ref",
        type=Path,
        help="reference model: the unquantized source (a path, or a `jang data` model: smollm2)",
    )
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--text", type=Path, help="plain-text file to evaluate on")
    src.add_argument("--dataset", choices=("wiki", "lambada"), help="prepared text (default wiki)")
    parser.add_argument("--windows", type=int, default=40, help="number of windows (default 40)")
    parser.add_argument("--length", type=int, default=512, help="tokens per window (default 512)")
    parser.add_argument(
        "--mc",
        choices=("mmlu", "arc", "arc_easy", "arc_challenge", "hellaswag"),
        help="also score a multiple-choice set",
    )
    parser.add_argument("--mc-limit", type=int, help="score a fixed random subset of N questions")
    parser.add_argument("--engine", choices=("torch", "mlx"), default="torch")
    parser.add_argument("--json", type=Path, help="write the result as JSON here")


def run(args: argparse.Namespace) -> int:
    from jang import data
    from jang.evaluate import evaluate, format_table

    try:
        ref = data.resolve_model(args.ref, quiet=True) if args.ref else None
        result = evaluate(
            args.bundle,
            ref,
            engine=args.engine,
            text_file=args.text,
            dataset=args.dataset,
            windows=args.windows,
            length=args.length,
            mc=args.mc,
            mc_limit=args.mc_limit,
        )
    except ImportError as exc:
        print(
            f"jang eval: error: {exc} (install the eval extra: pip install 'jang[eval]')",
            file=sys.stderr,
        )
        return 1
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"jang eval: error: {exc}", file=sys.stderr)
        return 1
    row = {"name": args.bundle.name, **result}
    print(format_table([row]))
    print(
        f"[{result['windows']} windows x {result['length']} tokens, {result['text']}, "
        f"engine {result['engine']}, {result['seconds']:.1f} s"
        + (f"; reference ppl {result['ppl_ref']:.4g}" if "ppl_ref" in result else "")
        + "]"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0
