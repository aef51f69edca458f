"""End-to-end decode speed on MLX's CUDA backend: stock MLX vs jang's kernels, same model.

    source /tmp/jang_env.sh   # after scripts/cuda_setup.sh
    python3 bench/cuda_e2e_decode.py [--layers 32] [--tokens 64] [--rounds 3]

The GPU machine has no network and no model files, and decode speed does not depend on the
weight values, so the model is a Llama-3-8B-shaped network (hidden 4096, 32 query / 8 key-value
heads of 128, MLP 14336, vocabulary 128256, untied output head; --layers of them) with random
weights, built on the device in fp16 and quantized there with MLX's own `nn.quantize` per
variant (MLX's affine layout, the layout of jang bundles). The decode loop is written with
mlx.nn directly (attention with a growing KV cache, RoPE, SDPA, SwiGLU MLP), so that no
mlx-lm / transformers import is needed; the quantized linears are `nn.QuantizedLinear`, which
`jang.kernels.use_jang_kernels` switches to `jang.qmatmul` (as jang.load does for a bundle) and
back. Stock and jang run alternately on the same model object, greedy, after a 16-token prompt
(prefill: M = 16); best of --rounds.

Variants: uniform-4 (every linear 4-bit, gs 64), uniform-2 (2-bit, gs 64), mixed-2/6 (MLP
2-bit, attention and output head 6-bit, gs 64: the JANG_2S shape).
"""

from __future__ import annotations

import argparse
import math
import time

import mlx.core as mx
import mlx.nn as nn

from jang.kernels import use_jang_kernels

VARIANTS = {
    "uniform-4": lambda path: 4,
    "uniform-2": lambda path: 2,
    "mixed-2/6": lambda path: 2 if ".mlp." in path else 6,
}


class KVCache:
    step = 256

    def __init__(self):
        self.keys = self.values = None
        self.offset = 0

    def update(self, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        prev = self.offset
        if self.keys is None or prev + k.shape[2] > self.keys.shape[2]:
            n = ((prev + k.shape[2] + self.step - 1) // self.step) * self.step
            shape = (k.shape[0], k.shape[1], n, k.shape[3])
            nk, nv = mx.zeros(shape, k.dtype), mx.zeros(shape, v.dtype)
            if self.keys is not None:
                nk[..., :prev, :] = self.keys[..., :prev, :]
                nv[..., :prev, :] = self.values[..., :prev, :]
            self.keys, self.values = nk, nv
        self.offset += k.shape[2]
        self.keys[..., prev : self.offset, :] = k
        self.values[..., prev : self.offset, :] = v
        return self.keys[..., : self.offset, :], self.values[..., : self.offset, :]


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, head_dim: int):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_proj = nn.Linear(dim, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, dim, bias=False)
        self.rope = nn.RoPE(head_dim, traditional=False, base=500000.0)

    def __call__(self, x: mx.array, cache: KVCache) -> mx.array:
        b, n, _ = x.shape
        q = self.q_proj(x).reshape(b, n, self.heads, -1).transpose(0, 2, 1, 3)
        k = self.k_proj(x).reshape(b, n, self.kv_heads, -1).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(b, n, self.kv_heads, -1).transpose(0, 2, 1, 3)
        q = self.rope(q, offset=cache.offset)
        k = self.rope(k, offset=cache.offset)
        k, v = cache.update(k, v)
        o = mx.fast.scaled_dot_product_attention(
            q, k, v, scale=1.0 / math.sqrt(self.head_dim), mask="causal" if n > 1 else None
        )
        return self.o_proj(o.transpose(0, 2, 1, 3).reshape(b, n, -1))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(nn.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, head_dim: int, hidden: int):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(dim, eps=1e-5)
        self.self_attn = Attention(dim, heads, kv_heads, head_dim)
        self.post_attention_layernorm = nn.RMSNorm(dim, eps=1e-5)
        self.mlp = MLP(dim, hidden)

    def __call__(self, x: mx.array, cache: KVCache) -> mx.array:
        h = x + self.self_attn(self.input_layernorm(x), cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class Model(nn.Module):
    def __init__(self, layers: int, dim=4096, heads=32, kv_heads=8, head_dim=128, hidden=14336,
                 vocab=128256):  # fmt: skip
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.layers = [Block(dim, heads, kv_heads, head_dim, hidden) for _ in range(layers)]
        self.norm = nn.RMSNorm(dim, eps=1e-5)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def __call__(self, tokens: mx.array, caches: list[KVCache]) -> mx.array:
        h = self.embed_tokens(tokens)
        for layer, cache in zip(self.layers, caches, strict=True):
            h = layer(h, cache)
        return self.lm_head(self.norm(h))


SHAPE = dict(dim=4096, heads=32, kv_heads=8, head_dim=128, hidden=14336, vocab=128256)
TINY = dict(dim=256, heads=4, kv_heads=2, head_dim=64, hidden=512, vocab=1024)  # smoke test


def build(layers: int, variant: str, shape: dict) -> Model:
    """The model in fp16, every linear quantized per the variant, module by module (the fp32
    initial weights of one layer at a time)."""
    mx.random.seed(0)
    rule = VARIANTS[variant]
    model = Model(0, **shape)
    model.set_dtype(mx.float16)

    def quantize(module: nn.Module, prefix: str) -> None:
        module.set_dtype(mx.float16)
        nn.quantize(
            module,
            class_predicate=lambda path, m: (
                isinstance(m, nn.Linear) and {"bits": rule(f"{prefix}.{path}"), "group_size": 64}
            ),
        )
        mx.eval(module.parameters())

    quantize(model, "model")  # the output head
    for i in range(layers):
        block = Block(*(shape[k] for k in ("dim", "heads", "kv_heads", "head_dim", "hidden")))
        quantize(block, f"model.layers.{i}")
        model.layers.append(block)
    return model


def decode(model: Model, prompt: mx.array, tokens: int) -> tuple[float, list[int]]:
    caches = [KVCache() for _ in model.layers]
    logits = model(prompt[None], caches)
    tok = mx.argmax(logits[:, -1], axis=-1)
    mx.eval(tok)
    out = []
    t = time.perf_counter()
    for _ in range(tokens):
        logits = model(tok[:, None], caches)
        tok = mx.argmax(logits[:, -1], axis=-1)
        mx.eval(tok)
        out.append(int(tok.item()))
    return tokens / (time.perf_counter() - t), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--tiny", action="store_true", help="a tiny model on the default device")
    args = ap.parse_args()
    shape = TINY if args.tiny else SHAPE
    if not args.tiny:
        mx.set_default_device(mx.gpu)
    prompt = mx.array([1, 504, 3458, 282, 4250, 314, 253, 1345, 28, 16, 17, 18, 19, 20, 21, 22])
    print(f"{'tiny' if args.tiny else 'Llama-3-8B'}-shaped, {args.layers} layers, random weights, fp16 activations; "
          f"{args.tokens} greedy tokens after a 16-token prompt, best of {args.rounds} "
          "alternating rounds")  # fmt: skip
    print("| variant | weights GB | stock MLX tok/s | jang tok/s | speedup | same greedy tokens |")
    print("|---|---|---|---|---|---|")
    for variant in args.variants:
        t0 = time.perf_counter()
        model = build(args.layers, variant, shape)
        gb = sum(v.nbytes for _, v in nn.utils.tree_flatten(model.parameters())) / 1e9
        built = time.perf_counter() - t0
        stock, ours, same = [], [], True
        for _ in range(args.rounds):
            use_jang_kernels(model, enabled=False)
            tps, toks_stock = decode(model, prompt, args.tokens)
            stock.append(tps)
            assert use_jang_kernels(model) > 0
            tps, toks_ours = decode(model, prompt, args.tokens)
            ours.append(tps)
            same = same and toks_stock == toks_ours
        s, o = max(stock), max(ours)
        print(f"| {variant} | {gb:.2f} | {s:.1f} | {o:.1f} | {o / s:.2f}x | {same} |  "
              f"(built in {built:.0f} s)", flush=True)  # fmt: skip
        del model
        mx.clear_cache()


if __name__ == "__main__":
    main()
