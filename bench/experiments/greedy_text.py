"""Greedy continuations of bundles, each judged by the float model (`jang.evaluate.continuations`).

    python bench/experiments/greedy_text.py smollm2 BUNDLE [BUNDLE ...]

Prints, per bundle and prompt, the float model's perplexity of the continuation, its
distinct-token ratio, whether that counts as coherent (`Continuation.coherent`), and the text.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    from mlx_lm import generate

    import jang
    from jang import data, engines
    from jang import evaluate as ev
    from jang import text as tx

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="the float source: smollm2, gemma3 or a path")
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--tokens", type=int, default=24, help="tokens to generate (default 24)")
    args = ap.parse_args()
    ref = engines.mlx_engine(engines.mlx_source_model(data.resolve_model(args.model)))
    for bundle in args.bundles:
        model, tok = jang.load(bundle)
        judged = ev.continuations(
            lambda p, m=model, t=tok: generate(m, t, p, max_tokens=args.tokens),
            tok,
            ref,
            bos=tx.bos_id(tok),
        )
        for c in judged:
            verdict = "coherent" if c.coherent else "NOT coherent"
            print(
                f"{bundle.name}: ppl {c.ref_ppl:.1f} distinct {c.distinct:.2f} {verdict} | {c.text!r}"
            )


if __name__ == "__main__":
    main()
