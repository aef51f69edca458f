"""Quick quality check of plans: KL of RTN fake-quantized SmolLM2-135M against bf16.

python bench/experiments/plan_kl.py [--windows 8] [--length 512]

Each variant replaces every planned matrix by its RTN dequantization (bit-exact with
``mx.quantize``) at the planned (bits, group size) and runs the mlx-lm model in float32 on the
Wikipedia sample (jang.evaluate's windows and metrics). Uniform rows quantize every matrix at one
width (as ``mlx_lm.convert -q``); plan rows come from `jang.plan`. Fewer windows than
ANCHORS.md (40): a planner check, not the evaluation of record.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from jang import data, engines, evaluate, plan
from jang import text as tx
from jang.plan import errors
from jang.source import open_source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--length", type=int, default=512)
    args = parser.parse_args()
    gguf = data.cache_dir() / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    src = open_source(gguf)
    model = engines.mlx_source_model(gguf)
    ref_weights = {k: v.astype(mx.bfloat16) for k, v in tree_flatten(model.parameters())}
    from mlx_lm.tokenizer_utils import TokenizerWrapper
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        src.write_tokenizer(Path(tmp))
        tok = TokenizerWrapper(AutoTokenizer.from_pretrained(tmp))
    text = (data.cache_dir() / "wiki" / "wiki.txt").read_text(encoding="utf-8")
    bos = tx.bos_id(tok, src.config)
    windows = tx.tokenize_windows(tok, text, args.windows, args.length, bos)
    engine = engines.mlx_engine(model)
    ref = [evaluate.log_softmax(engine(w)) for w in windows]
    tensors = [(i.name, i.shape) for i in src.tensors()]
    cache = errors.default_cache_path()
    matrices = [n for n, s in tensors if len(s) == 2]

    def variant(assign: dict[str, tuple[int, int]]) -> dict[str, float]:
        new = []
        for name, w in ref_weights.items():
            if name in assign:
                bits, g = assign[name]
                w = errors.rtn_dequantize(w, bits, g)
            new.append((name, w.astype(mx.float32)))
        model.load_weights(new)
        mx.eval(model.parameters())
        return evaluate.compare_windows(windows, engine, ref_cache=lambda i: ref[i])

    print(f"{time.strftime('%Y-%m-%d')}: SmolLM2-135M, {len(windows)} x {args.length} tokens")
    print(f"{'variant':<24} {'bpw':>6} {'KL':>8} {'top1':>6} {'ppl':>10}", flush=True)
    rows = []

    def show(label: str, bpw: float, t: dict[str, float]) -> None:
        rows.append((label, bpw, t))
        print(
            f"{label:<24} {bpw:6.3f} {t['kl']:8.4f} {t['top1']:6.3f} {t['ppl']:10.2f}", flush=True
        )

    for bits in (2, 3, 4):
        for g in (64, 32):
            t = variant(dict.fromkeys(matrices, (bits, g)))
            show(f"uniform {bits}-bit g{g}", bits + 32 / g, t)
    for req in (
        {"bits": 2.5},
        {"bits": 3.0},
        {"bits": 3.5},
        {"bits": 4.0},
        {"bits": 4.5},
        {"profile": "JANG_3M"},
        {"profile": "JANG_2S"},
    ):
        p = plan.make_plan(src.config, tensors, src.read, cache=cache, **req)
        assign = {
            n: (e["bits"], e["group_size"]) for n, e in p["tensors"].items() if e["quantized"]
        }
        t = variant(assign)
        show(f"jang plan {p['request']['profile']}", p["totals"]["bpw_all_in"], t)


if __name__ == "__main__":
    main()
