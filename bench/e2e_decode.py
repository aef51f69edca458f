"""End-to-end decode speed of SmolLM2-135M on the CPU: stock MLX vs jang's kernels.

The weights come from the SmolLM2 GGUF that `jang data smollm2` prepares (read through
jang.source and dequantized to fp16), quantized in-process with mlx-lm's `nn.quantize` in
three variants, then decoded greedily with a KV cache. Stock and jang run alternately in the
same process on the same model object (`use_jang_kernels(model, enabled=...)`).

Variants (stand-ins written before the converter existed; bench/llama_cpp_decode.py decodes
the real JANG_2S / JANG_4K bundles and llama.cpp on the same GGUF):
  uniform-4   every linear and the tied embedding at 4 bits, group size 64
  mixed-2/6   MLP at 2 bits (gs 64), attention and embedding at 6 bits (gs 64)  ~ JANG_2S shape
  mixed-4/8   MLP at 4 bits (gs 64), attention and embedding at 8 bits (gs 64)  ~ JANG_4K shape

Usage: python bench/e2e_decode.py [--gguf PATH] [--tokens 64] [--rounds 3] [--dtype float32]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models import llama
from mlx_lm.models.cache import make_prompt_cache

from jang.kernels import use_jang_kernels
from jang.source import open_source

DEFAULT_GGUF = Path(os.environ.get("JANG_DATA", Path.home() / ".cache/jang")) / (
    "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
)

VARIANTS = {
    "uniform-4": lambda path: {"bits": 4, "group_size": 64},
    "mixed-2/6": lambda path: {"bits": 2 if ".mlp." in path else 6, "group_size": 64},
    "mixed-4/8": lambda path: {"bits": 4 if ".mlp." in path else 8, "group_size": 64},
}


def build(gguf: Path, variant: str, dtype: mx.Dtype = mx.float16) -> nn.Module:
    src = open_source(gguf)
    cfg = src.config
    args = llama.ModelArgs(
        model_type="llama",
        hidden_size=cfg["hidden_size"],
        num_hidden_layers=cfg["num_hidden_layers"],
        intermediate_size=cfg["intermediate_size"],
        num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg["num_key_value_heads"],
        rms_norm_eps=cfg["rms_norm_eps"],
        vocab_size=cfg["vocab_size"],
        rope_theta=cfg.get("rope_theta", 10000.0),
        tie_word_embeddings=cfg.get("tie_word_embeddings", True),
    )
    model = llama.Model(args)
    weights = [(t.name, src.read(t.name).astype(dtype)) for t in src.tensors()]
    model.load_weights(weights)
    model.set_dtype(dtype)
    rule = VARIANTS[variant]

    def predicate(path: str, module: nn.Module):
        return rule(path) if hasattr(module, "to_quantized") else False

    nn.quantize(model, class_predicate=predicate)
    mx.eval(model.parameters())
    return model


def decode_tps(model: nn.Module, prompt: mx.array, tokens: int) -> tuple[float, list[int]]:
    cache = make_prompt_cache(model)
    logits = model(prompt[None], cache=cache)
    tok = mx.argmax(logits[:, -1], axis=-1)
    mx.eval(tok)
    out = []
    t = time.perf_counter()
    for _ in range(tokens):
        logits = model(tok[:, None], cache=cache)
        tok = mx.argmax(logits[:, -1], axis=-1)
        mx.eval(tok)
        out.append(int(tok.item()))
    return tokens / (time.perf_counter() - t), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", type=Path, default=DEFAULT_GGUF)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    ap.add_argument(
        "--dtype", choices=["float16", "float32"], default="float16", help="activations/scales"
    )
    args = ap.parse_args()
    mx.set_default_device(mx.cpu)
    prompt = mx.array([1, 504, 3458, 282, 4250, 314, 253, 1345, 28, 16, 17, 18, 19, 20, 21, 22])
    print(f"dtype {args.dtype}, {args.tokens} greedy tokens after a 16-token prompt, "
          f"best of {args.rounds} alternating rounds")  # fmt: skip
    print("| variant | stock MLX tok/s | jang tok/s | speedup | same greedy tokens |")
    print("|---|---|---|---|---|")
    for variant in args.variants:
        model = build(args.gguf, variant, getattr(mx, args.dtype))
        stock, ours = [], []
        same = True
        for _ in range(args.rounds):
            use_jang_kernels(model, enabled=False)
            tps, toks_stock = decode_tps(model, prompt, args.tokens)
            stock.append(tps)
            assert use_jang_kernels(model) > 0
            tps, toks_ours = decode_tps(model, prompt, args.tokens)
            ours.append(tps)
            same = same and toks_stock == toks_ours
        s, o = max(stock), max(ours)
        print(f"| {variant} | {s:.1f} | {o:.1f} | {o / s:.1f}x | {same} |", flush=True)


if __name__ == "__main__":
    main()
