"""Compare tuning recipes on one rounded model: held-out KL and greedy coherence per recipe.

    python bench/experiments/tune_recipes.py SRC (--bits X | -p PROFILE) --calib TEXT --eval-text TEXT \\
        --recipe none --recipe "long:epochs=4,samples=128,codes=1" ...

The plan and the rounding (``--method``, GPTQ by default, on ``--gptq-samples`` windows of
the calibration text) are done once; every recipe then tunes a fresh copy of the float
model (`jang.quant.tune.tune_scales`, torch on the GPU when there is one). Each result is
judged as a bundle would be: scales and biases cast to the bundle's dtype and dequantized
(`mx.dequantize`), KL on ``--windows`` windows of ``--eval-text`` as `jang eval` measures it,
and the three greedy continuations of `jang.evaluate.continuations` (24 tokens, judged by
the float model). A recipe is ``name:key=value,...`` with keys epochs, samples, lr,
codes (0/1), code_lr, norms (0/1); ``none`` is the untuned rounding. One JSON line per
recipe goes to ``--json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np

RECIPE_KEYS = {
    "epochs": int,
    "samples": int,
    "lr": float,
    "codes": lambda v: bool(int(v)),
    "code_lr": float,
    "norms": lambda v: bool(int(v)),
}


def parse_recipe(text: str) -> tuple[str, dict]:
    name, _, body = text.partition(":")
    opts = {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        if key not in RECIPE_KEYS:
            raise SystemExit(
                f"recipe {name}: unknown key {key!r} (choose {', '.join(RECIPE_KEYS)})"
            )
        opts[key] = RECIPE_KEYS[key](value)
    return name, opts


def greedy(model, tokenizer, prompt: str, n: int) -> str:
    """`n` greedy tokens after `prompt` from a torch causal LM (stops at end of sequence)."""
    import torch

    ids = list(tokenizer.encode(prompt))
    eos = set(getattr(tokenizer, "eos_token_ids", None) or [tokenizer.eos_token_id])
    dev = next(model.parameters()).device
    new: list[int] = []
    with torch.inference_mode():
        for _ in range(n):
            x = torch.tensor([ids + new], device=dev)
            nxt = int(model(input_ids=x, use_cache=False).logits[0, -1].argmax())
            if nxt in eos:
                break
            new.append(nxt)
    return tokenizer.decode(new)


def as_bundle(teacher, quantized, floats, bits_groups, dtype):
    """A torch copy of `teacher` holding exactly what a bundle of `quantized` would give."""
    import mlx.core as mx
    import torch

    model = copy.deepcopy(teacher)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, (wq, s, b) in quantized.items():
            bits, group = bits_groups[name]
            w = mx.dequantize(wq, s.astype(dtype), b.astype(dtype), group_size=group, bits=bits)
            params[name + ".weight"].copy_(torch.from_numpy(np.array(w.astype(mx.float32))))
        for name, arr in floats.items():
            v = mx.array(arr).astype(dtype).astype(mx.float32)
            params[name].copy_(torch.from_numpy(np.array(v)))
    return model


def main() -> None:
    import mlx.core as mx

    from jang import convert as conv
    from jang import engines, torch_models
    from jang import evaluate as ev
    from jang import plan as planner
    from jang import text as tx
    from jang.convert import calibrated, layout
    from jang.plan.errors import default_cache_path
    from jang.quant import tune
    from jang.quant.methods import Calibration, TuneOptions
    from jang.source import open_source

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src")
    ap.add_argument("--bits", type=float)
    ap.add_argument("-p", "--profile")
    ap.add_argument("--method", default="gptq", choices=["rtn", "clip", "gptq"])
    ap.add_argument("--calib", required=True, help="calibration text (file or dataset name)")
    ap.add_argument("--gptq-samples", type=int, default=16)
    ap.add_argument("--eval-text", required=True, help="held-out text file for the KL")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--recipe", action="append", required=True)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--rounded", type=Path, help="cache of the rounding (safetensors)")
    args = ap.parse_args()
    recipes = [parse_recipe(r) for r in args.recipe]

    t0 = time.perf_counter()
    source = open_source(args.src)
    infos = source.tensors()
    plan = planner.make_plan(
        source.config,
        [(i.name, i.shape) for i in infos],
        source.read_fresh,
        profile=args.profile,
        bits=args.bits,
        cache=default_cache_path(),
        source=str(args.src),
    )
    dtype = conv._output_dtype(source)
    bits_groups = {
        n.removesuffix(".weight"): (e["bits"], e["group_size"])
        for n, e in plan["tensors"].items()
        if e["quantized"]
    }
    if args.rounded and args.rounded.exists():
        flat = mx.load(str(args.rounded))
        rounded = {m: (flat[m + ".q"], flat[m + ".s"], flat[m + ".b"]) for m in bits_groups}
    elif args.method == "gptq":
        _, renamed = layout.sanitized_names(source)
        rounded = calibrated.gptq_whole_model(
            source, plan, renamed, Calibration(args.calib, args.gptq_samples, 512), print
        )
    else:
        rounded = calibrated.rounded_all(
            source, plan, dtype, args.method, args.method == "clip", print
        )
    if args.rounded and not args.rounded.exists():
        flat = {f"{m}.{k}": a for m, t in rounded.items() for k, a in zip("qsb", t, strict=True)}
        mx.save_safetensors(str(args.rounded), flat)
    print(f"rounded in {time.perf_counter() - t0:.0f} s; {plan['totals']['bpw_all_in']:.3f} bpw")

    tokenizer = calibrated.source_tokenizer(source)
    bos = tx.bos_id(tokenizer, source.config)
    float_tensors, _ = torch_models.source_tensors_of(source)
    teacher = torch_models.load_tensors(
        torch_models.build_model(source.config), float_tensors, source.config
    )
    del float_tensors
    ref = engines.torch_engine(teacher)
    print(f"torch device: {next(teacher.parameters()).device}", flush=True)
    text = Path(args.eval_text).read_text(encoding="utf-8")
    wins = tx.tokenize_windows(tokenizer, text, args.windows, 512, bos)
    most = max([o.get("samples", TuneOptions.samples) for _, o in recipes])
    calib = tx.tuning_windows(tokenizer, source.config, args.calib, most, 512)

    for name, opts in recipes:
        t1 = time.perf_counter()
        quantized, floats, report = rounded, {}, None
        if name != "none":
            student = copy.deepcopy(teacher)
            quantized, floats, report = tune.tune_scales(
                teacher,
                student,
                rounded,
                bits_groups,
                calib[: opts.get("samples", TuneOptions.samples)],
                epochs=opts.get("epochs", TuneOptions.epochs),
                lr=opts.get("lr", TuneOptions.lr),
                train_codes=opts.get("codes", False),
                code_lr=opts.get("code_lr", tune.DEFAULT_CODE_LR),
                train_norms=opts.get("norms", False),
                progress=lambda step, steps, kl, t1=t1: (
                    step % 16 == 0
                    and print(
                        f"  step {step}/{steps} KL {kl:.3f} {time.perf_counter() - t1:.0f} s",
                        flush=True,
                    )
                ),
            )
            del student
        tuned_s = time.perf_counter() - t1
        model = as_bundle(teacher, quantized, floats, bits_groups, dtype)
        stats = ev.compare_windows(wins, engines.torch_engine(model), ref)
        judged = ev.continuations(
            lambda p, m=model: greedy(m, tokenizer, p, args.tokens), tokenizer, ref, bos=bos
        )
        row = {
            "recipe": name,
            **opts,
            "bpw": plan["totals"]["bpw_all_in"],
            "kl": stats["kl"],
            "coherent": sum(c.coherent for c in judged),
            "tune_seconds": round(tuned_s, 1),
            "report": report.to_json() if report else None,
            "texts": [
                {"ppl": round(c.ref_ppl, 1), "distinct": round(c.distinct, 2), "text": c.text}
                for c in judged
            ],
        }
        print(
            f"{name}: KL {stats['kl']:.3f} coherent {row['coherent']}/3 tune {tuned_s:.0f} s "
            f"{json.dumps(row['texts'])}",
            flush=True,
        )
        if args.json:
            with args.json.open("a") as f:
                f.write(json.dumps(row) + "\n")
        del model
    mx.clear_cache()


if __name__ == "__main__":
    main()
