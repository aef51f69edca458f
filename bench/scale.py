"""Does conversion scale? Peak memory and time per layer against depth, per method.

Synthetic llama-shaped models of one width at several depths (random bf16 weights with
outlier structure: a few input channels 8-20x larger, as trained models' activation
outlier channels leave in the next matrix, and a few single weights ~50x the spread, the
"super weights"), written as safetensors shards with a word-level tokenizer. Each is
converted by `jang convert` in its own process, with each method; the table gives the
process's peak RSS (ru_maxrss), the wall time, and the time per decoder layer (GPTQ: from
its per-layer progress events). What should hold: peak RSS flat in depth (layer-streamed
methods), time linear in depth.

    python bench/scale.py                                # hidden 1024, 4/8/16/32 layers
    python bench/scale.py --hidden 4096 --intermediate 14336 --heads 32 --kv-heads 8 \\
        --vocab 128256 --layers 32 --methods gptq        # the 8B shape (a big machine)

Calibration: --calib-samples x --calib-seq-len tokens of the synthetic vocabulary (the
numbers in RESULTS.md say which). Results: a markdown table on stdout and
bench/results/scale_<name>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARD_BYTES = 2 << 30


def write_tokenizer(dest: Path, vocab: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(vocab - 3)]
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(str(dest))


def _matrix(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """bf16 bits (uint16) of a random matrix with outlier input channels and super weights."""
    w = rng.standard_normal((rows, cols), dtype=np.float32) * 0.02
    channels = rng.choice(cols, size=max(1, cols // 200), replace=False)
    w[:, channels] *= rng.uniform(8, 20, size=channels.size).astype(np.float32)
    for _ in range(max(1, rows * cols // 4_000_000)):
        w[rng.integers(rows), rng.integers(cols)] = rng.choice([-1, 1]) * 1.0  # ~50x
    return (w.view(np.uint32) >> 16).astype(np.uint16)  # truncation to bf16 is fine here


def make_model(dest: Path, *, hidden, intermediate, layers, heads, kv_heads, vocab) -> Path:
    """Write a synthetic llama model directory (config, safetensors shards, tokenizer)."""
    import mlx.core as mx

    if (dest / "config.json").is_file():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    head_dim = hidden // heads
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "rms_norm_eps": 1e-5,
        "vocab_size": vocab,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "rope_theta": 500000.0,
    }
    ones = np.full(hidden, 0x3F80, np.uint16)  # bf16 1.0
    tensors = [
        ("model.embed_tokens.weight", lambda: _matrix(rng, vocab, hidden)),
        ("model.norm.weight", lambda: ones),
        ("lm_head.weight", lambda: _matrix(rng, vocab, hidden)),
    ]
    for i in range(layers):
        p = f"model.layers.{i}"
        shapes = {
            "self_attn.q_proj": (hidden, hidden),
            "self_attn.k_proj": (kv_heads * head_dim, hidden),
            "self_attn.v_proj": (kv_heads * head_dim, hidden),
            "self_attn.o_proj": (hidden, hidden),
            "mlp.gate_proj": (intermediate, hidden),
            "mlp.up_proj": (intermediate, hidden),
            "mlp.down_proj": (hidden, intermediate),
        }
        for name, (r, c) in shapes.items():
            tensors.append((f"{p}.{name}.weight", lambda r=r, c=c: _matrix(rng, r, c)))
        tensors.append((f"{p}.input_layernorm.weight", lambda: ones))
        tensors.append((f"{p}.post_attention_layernorm.weight", lambda: ones))
    shard, size, names, weight_map = {}, 0, [], {}

    def flush():
        nonlocal shard, size
        if not shard:
            return
        name = f"model-{len(names) + 1:05d}.safetensors"
        names.append(name)
        arrays = {k: mx.array(v).view(mx.bfloat16) for k, v in shard.items()}
        mx.save_safetensors(str(dest / name), arrays, metadata={"format": "pt"})
        del arrays
        weight_map.update({k: name for k in shard})
        shard, size = {}, 0

    for name, make in tensors:
        shard[name] = make()
        size += shard[name].nbytes
        if size >= SHARD_BYTES:
            flush()
    flush()
    index = {"metadata": {}, "weight_map": weight_map}
    (dest / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    (dest / "config.json").write_text(json.dumps(config, indent=1))
    write_tokenizer(dest, vocab)
    return dest


def calib_text(dest: Path, vocab: int, words: int = 400_000) -> Path:
    rng = np.random.default_rng(1)
    path = dest / "calib.txt"
    if not path.is_file():
        ids = rng.zipf(1.3, size=words) % (vocab - 3)
        path.write_text(" ".join(f"w{i}" for i in ids))
    return path


def run_convert(model: Path, out: Path, method: str, args) -> dict:
    """One `jang convert` in a child process: peak RSS, wall time, per-layer GPTQ times."""
    cmd = [
        sys.executable, "-m", "jang", "convert", str(model), "-o", str(out), "--bits",
        str(args.bits), "--force", "--json-progress",
    ]  # fmt: skip
    if method == "tune":
        cmd += ["--method", "clip", "--tune", "--tune-epochs", "1", "--tune-samples",
                str(args.tune_samples)]  # fmt: skip
    else:
        cmd += ["--method", method]
    if method in ("gptq", "tune"):
        cmd += ["--calib", str(calib_text(model.parent, args.vocab)), "--calib-samples",
                str(args.calib_samples), "--calib-seq-len", str(args.calib_seq_len)]  # fmt: skip
    # a wrapper process per run, so ru_maxrss of its children is this conversion's peak
    wrapper = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
        "print(f'#maxrss {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}'); "
        "sys.exit(r.returncode)"
    )
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", wrapper, *cmd], stdout=subprocess.PIPE, text=True
    )
    # per-layer times: GPTQ's from its first "samples x" message, tuning's from its
    # "block-wise" one, then between consecutive per-layer events
    layer_times: dict[str, list[float]] = {"gptq": [], "tune": []}
    last: dict[str, float] = {}
    maxrss, error = None, None
    starts = {"gptq": "samples x", "tune": "block-wise"}
    for line in proc.stdout:
        if line.startswith("#maxrss"):
            maxrss = int(line.split()[1]) * 1024
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        now = time.perf_counter()
        kind = event.get("event")
        if kind in layer_times and "layer" in event:
            layer_times[kind].append(now - last.get(kind, now))
            last[kind] = now
        elif kind == "log":
            for k, marker in starts.items():
                if marker in event.get("message", "") and k not in last:
                    last[k] = now
        elif kind == "error":
            error = event.get("message")
    code = proc.wait()
    return {
        "method": method,
        "seconds": time.perf_counter() - t0,
        "peak_rss": maxrss,
        "layer_seconds": layer_times["gptq"],
        "tune_layer_seconds": layer_times["tune"],
        "ok": code == 0,
        "error": error,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--intermediate", type=int, default=2816)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--layers", default="4,8,16,32")
    p.add_argument("--methods", default="rtn,gptq,tune")
    p.add_argument("--bits", type=float, default=3.5)
    p.add_argument("--calib-samples", type=int, default=16)
    p.add_argument("--calib-seq-len", type=int, default=256)
    p.add_argument("--tune-samples", type=int, default=8)
    p.add_argument(
        "--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "jang-scale"
    )
    p.add_argument("--name", default=None, help="results file suffix (default: hidden size + host)")
    args = p.parse_args(argv)

    rows = []
    for n in [int(x) for x in args.layers.split(",")]:
        shape = dict(hidden=args.hidden, intermediate=args.intermediate, layers=n,
                     heads=args.heads, kv_heads=args.kv_heads, vocab=args.vocab)  # fmt: skip
        model = make_model(args.work / f"h{args.hidden}-l{n}" / "model", **shape)
        params = sum(f.stat().st_size for f in model.glob("*.safetensors")) // 2
        for method in args.methods.split(","):
            out = args.work / f"h{args.hidden}-l{n}" / f"out-{method}"
            r = run_convert(model, out, method, args)
            r.update(layers=n, params=params)
            streamed = r["layer_seconds"] or r["tune_layer_seconds"]
            per_layer = float(np.median(streamed)) if streamed else r["seconds"] / n
            r["seconds_per_layer"] = per_layer
            rows.append(r)
            status = "ok" if r["ok"] else f"FAILED: {r['error']}"
            rss = f"{r['peak_rss'] / 2**30:.2f} GiB" if r["peak_rss"] else "?"
            print(f"{n:>3} layers {method:>5}: {rss}, {r['seconds']:.1f} s "
                  f"({per_layer:.2f} s/layer) {status}", flush=True)  # fmt: skip
    print()
    print("| layers | params | method | peak RSS | wall s | s / layer |")
    print("|---:|---:|---|---:|---:|---:|")
    for r in rows:
        rss = f"{r['peak_rss'] / 2**30:.2f} GiB" if r["peak_rss"] else "?"
        print(f"| {r['layers']} | {r['params'] / 1e6:.0f}M | {r['method']} | {rss} | "
              f"{r['seconds']:.1f} | {r['seconds_per_layer']:.2f} |")  # fmt: skip
    name = args.name or f"h{args.hidden}-{platform.node()}"
    dest = HERE / "results" / f"scale_{name}.json"
    dest.write_text(
        json.dumps({"args": vars(args) | {"work": str(args.work)}, "rows": rows}, indent=1)
    )
    print(f"\nwritten {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
