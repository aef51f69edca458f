"""End-to-end GPTQ of SmolLM2-135M on CPU: time, and perplexity against RTN and clip.

    python bench/experiments/gptq_smollm2.py [--samples 128] [--seq-len 512] [--bits 4 3]
                                 [--eval-windows 16] [--methods rtn clip clip+importance gptq]
                                 [--mlx-lm N]

The model is the SmolLM2-135M-Instruct GGUF prepared by ``jang data smollm2`` (read with
``jang.source``, weights cast to float16), the text ``~/.cache/jang/wiki/wiki.txt``: its
first 80% gives the calibration windows, its last 20% the evaluation windows. Every
Linear of the decoder layers is quantized to `--bits` with group size 64 by RTN
(bit-identical to ``mx.quantize``), clip (without and with the activation importance
diag(X^T X) of the calibration windows) and GPTQ (``jang.quant.gptq_model``), and the
perplexity of each model on the evaluation windows is printed next to the float
model's. Quantize times for clip + importance add the one forward pass that collects
the importance. ``--mlx-lm N`` also times mlx-lm's own GPTQ (``mlx_lm.quant.gptq``, 4
bits) and ours on N calibration samples, in the same run (mlx-lm computes its Hessians
with MLX matmuls).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_map
from mlx_lm.models import llama

from jang.quant import (
    activation_importance,
    dequantize_tensor,
    gptq_model,
    quantize_tensor,
)
from jang.quant.cpu_forward import numpy_model
from jang.source import open_source
from jang.text import calibration_tokens

MODEL = Path("~/.cache/jang/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf").expanduser()
TEXT = Path("~/.cache/jang/wiki/wiki.txt").expanduser()


def load_model(src) -> nn.Module:
    model = llama.Model(llama.ModelArgs.from_dict(src.config))
    weights = [(t.name, src.read(t.name).astype(mx.float16)) for t in src.tensors()]
    model.load_weights(weights)
    mx.eval(model.parameters())
    return model


def tokenizer_of(src):
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as d:
        src.write_tokenizer(Path(d))
        return AutoTokenizer.from_pretrained(d)


def linears(model) -> list[str]:
    return [n for n, m in model.named_modules() if type(m) is nn.Linear]


def perplexity(model, windows: mx.array) -> float:
    """exp(mean next-token NLL), in float32 through numpy (see jang.quant.cpu_forward)."""
    model.update(tree_map(lambda a: a.astype(mx.float32), model.parameters()))
    emb = np.array(model.model.embed_tokens.weight)
    nll, count = 0.0, 0
    with numpy_model(model):
        for i in range(windows.shape[0]):
            tokens = windows[i : i + 1]
            h = np.array(model.model(tokens).astype(mx.float32))[0]
            logits = h[:-1] @ emb.T
            logits -= logits.max(-1, keepdims=True)
            logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
            target = np.array(tokens[0, 1:])
            nll -= float(logp[np.arange(len(target)), target].sum())
            count += len(target)
    return float(np.exp(nll / count))


def fake_quantize(model, method: str, bits: int, gs: int, importance=None) -> None:
    modules = dict(model.named_modules())
    for n in linears(model):
        m = modules[n]
        q = quantize_tensor(m.weight, bits, gs, method, importance and importance[n])
        m.weight = dequantize_tensor(*q, bits, gs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--bits", type=int, nargs="+", default=[4, 3])
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--mlx-lm", type=int, default=0, metavar="N")
    ap.add_argument("--methods", nargs="+", default=["rtn", "clip", "clip+importance", "gptq"])
    args = ap.parse_args()
    gs = args.group_size

    src = open_source(MODEL)
    tok = tokenizer_of(src)
    text = TEXT.read_text()
    cut = text.index("\n", int(len(text) * 0.8))
    t = time.perf_counter()
    calib = calibration_tokens(tok, text=text[:cut], n_samples=args.samples, seq_len=args.seq_len)
    t_tok = time.perf_counter() - t
    ids = np.array(tok.encode(text[cut:]), np.int32)
    n_eval = min(args.eval_windows, len(ids) // args.seq_len)
    windows = mx.array(ids[: n_eval * args.seq_len].reshape(n_eval, args.seq_len))
    print(
        f"calibration {calib.shape[0]} x {calib.shape[1]} tokens (tokenized in {t_tok:.1f} s), "
        f"evaluation {n_eval} x {args.seq_len} tokens\n",
        flush=True,
    )

    print(f"float16 perplexity {perplexity(load_model(src), windows):.3f}\n", flush=True)
    importance, t_imp = None, 0.0
    if "clip+importance" in args.methods:
        t = time.perf_counter()
        importance = activation_importance(load_model(src), calib)
        t_imp = time.perf_counter() - t
    print("| bits | method | perplexity | quantize time (s) |")
    print("|---|---|---|---|")
    for bits in args.bits:
        for label, imp in (("rtn", None), ("clip", None), ("clip+importance", importance)):
            if label not in args.methods:
                continue
            model = load_model(src)
            t = time.perf_counter()
            fake_quantize(model, label.split("+")[0], bits, gs, imp)
            dt = time.perf_counter() - t
            extra = f" + {t_imp:.1f}" if imp else ""
            print(
                f"| {bits} | {label} | {perplexity(model, windows):.3f} | {dt:.1f}{extra} |",
                flush=True,
            )
        if "gptq" not in args.methods:
            continue
        model = load_model(src)
        plan = {n: (bits, gs) for n in linears(model)}
        t = time.perf_counter()
        results = gptq_model(model, plan, calib, replace=False)
        dt = time.perf_counter() - t
        modules = dict(model.named_modules())
        for n, q in results.items():
            modules[n].weight = dequantize_tensor(*q, bits, gs)
        print(f"| {bits} | gptq | {perplexity(model, windows):.3f} | {dt:.1f} |", flush=True)

    if args.mlx_lm:
        from mlx_lm.quant.gptq import gptq_quantize as mlx_lm_gptq

        small = calib[: args.mlx_lm]
        model = load_model(src)
        t = time.perf_counter()
        gptq_model(model, {n: (4, gs) for n in linears(model)}, small, replace=False)
        ours = time.perf_counter() - t
        model = load_model(src)
        t = time.perf_counter()
        mlx_lm_gptq(model, small, 4, gs, 6, gs)
        theirs = time.perf_counter() - t
        print(
            f"\nGPTQ 4-bit on {args.mlx_lm} x {args.seq_len} tokens: jang {ours:.1f} s, "
            f"mlx_lm.quant.gptq {theirs:.1f} s"
        )


if __name__ == "__main__":
    main()
