"""How close to the exact KL are the reference scores `jang eval` keeps?

`jang eval` never holds two models at once: it scores the reference first and keeps
either all its log-probs as float16 in a temporary file (the default,
`jang.evaluate.FullReference`) or only the top k per position plus the mass of the rest
(`--kl-top-k`, `jang.evaluate.RefWindow`: KL over those k + 1 outcomes is a lower bound).
This script keeps the float32 log-probs in memory for the exact KL and prints both
approximations' gaps.

    python bench/experiments/kl_top_k.py --ref smollm2 BUNDLE [BUNDLE ...] --windows 8
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jang import data
from jang.engines import load_engine, load_tokenizer, model_config
from jang.evaluate import FullReference, RefWindow, TokenStats, _source_config, log_softmax
from jang.text import bos_id, dataset_text, tokenize_windows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("bundles", nargs="+", type=Path)
    p.add_argument("--ref", required=True)
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--k", default="16,64,256,1024")
    args = p.parse_args()
    ref = data.resolve_model(args.ref, quiet=True)
    tokenizer = load_tokenizer(args.bundles[0], ref)
    bos = bos_id(tokenizer, model_config(args.bundles[0]))
    wins = tokenize_windows(tokenizer, dataset_text("wiki"), args.windows, args.length, bos)
    ref_run = load_engine(ref, "torch", config=_source_config(ref))[0]
    ref_lp = [log_softmax(ref_run(ids)) for ids in wins]
    del ref_run
    ks = [int(k) for k in args.k.split(",")]
    print(f"reference {ref.name}, {len(wins)} windows x {wins.shape[1]} tokens")
    stored = FullReference((len(wins), *ref_lp[0].shape))
    for i, lp in enumerate(ref_lp):
        stored[i] = lp
    print(
        "| bundle | exact KL | float16 KL (gap) | "
        + " | ".join(f"top-{k} KL (gap)" for k in ks)
        + " |"
    )
    print("|---|---:|---:|" + "---:|" * len(ks))
    for bundle in args.bundles:
        run = load_engine(bundle, "torch")[0]
        exact, half, coarse = TokenStats(), TokenStats(), {k: TokenStats() for k in ks}
        for i, (ids, full) in enumerate(zip(wins, ref_lp, strict=True)):
            lp = log_softmax(run(ids))
            exact.add(full, lp, ids)
            half.add(stored[i], lp, ids)
            for k in ks:
                coarse[k].add(RefWindow.of(full, ids, k), lp, ids)
        e = exact.summary()["kl"]
        h = half.summary()["kl"]
        cells = [f"{h:.5f} ({(e - h) / e:.3%})"]
        for k in ks:
            c = coarse[k].summary()["kl"]
            cells.append(f"{c:.5f} ({(e - c) / e:.2%})")
        print(f"| {bundle.name} | {e:.5f} | " + " | ".join(cells) + " |")
        del run


if __name__ == "__main__":
    main()
