"""`jang generate`."""

import argparse
import sys
from pathlib import Path

HELP = "generate text from a bundle (streams tokens, prints tok/s)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path)
    parser.add_argument("-p", "--prompt", required=True, help="prompt text")
    parser.add_argument("-n", "--max-tokens", type=int, default=64, help="tokens to generate")
    parser.add_argument("--temp", type=float, default=0.0, help="sampling temperature (0: greedy)")
    parser.add_argument(
        "--top-p", type=float, default=1.0, help="nucleus sampling mass with --temp (1: off)"
    )
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    parser.add_argument("--stock", action="store_true", help="stock MLX kernels, not jang's")


def _bad_arguments(args: argparse.Namespace) -> str | None:
    """The first argument that cannot mean anything, said plainly (None: all fine)."""
    if args.max_tokens < 1:
        return f"-n/--max-tokens must be at least 1, got {args.max_tokens}"
    if not args.prompt.strip():
        return "-p/--prompt is empty; give the text to continue"
    if not args.temp >= 0:
        return f"--temp must be 0 (greedy) or positive, got {args.temp}"
    if not 0 < args.top_p <= 1:
        return f"--top-p must be in (0, 1], got {args.top_p}"
    return None


def run(args: argparse.Namespace) -> int:
    from jang.generate import generate

    problem = _bad_arguments(args)
    if problem:
        print(f"jang generate: error: {problem}", file=sys.stderr)
        return 2
    stats = generate(
        args.bundle,
        args.prompt,
        max_tokens=args.max_tokens,
        temp=args.temp,
        top_p=args.top_p,
        chat=args.chat,
        kernels=not args.stock,
        stream=sys.stdout,
    )
    print(
        f"\n[{stats['prompt_tokens']} prompt tokens, {stats['prompt_tps']:.1f} tok/s; "
        f"{stats['generated_tokens']} generated, {stats['generation_tps']:.1f} tok/s; "
        f"load {stats['load_s']:.2f} s]",
        file=sys.stderr,
    )
    return 0
