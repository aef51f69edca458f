"""Planning time per billion parameters.

python bench/plan_speed.py            # SmolLM2-135M (real weights) + 8B/70B shapes
python bench/plan_speed.py --quick    # skip the 70B shape

Parts, each timed on its own:
* SmolLM2-135M from its GGUF (``jang data smollm2``): open, a --bits 3.5 plan with an empty
  error cache (reads + measures every candidate), the same plan again (cache hit: reads only),
  and a fixed profile (JANG_3M: one candidate per tensor) with an empty cache;
* llama-like 8B and 70B shapes (jang.estimate) without weights: measurement compute of one
  layer on random rows (the planner measures about ``DEFAULT_SAMPLE`` weights per tensor, so
  this is exactly the work per layer, minus reading the tensor), times the layer count; and the solver
  on the full shape with synthetic errors. Reading the weights is not included there (it is
  disk/format bound: about one pass over the file).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

from jang import data, estimate, plan
from jang.plan import errors, solver
from jang.plan.decision import decisions
from jang.plan.tiers import classify


def smollm(path: Path) -> None:
    from jang.source import open_source

    t0 = time.perf_counter()
    src = open_source(path)
    t_open = time.perf_counter() - t0
    tensors = [(i.name, i.shape) for i in src.tensors()]
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "errors.json"
        runs = {}
        for label, kw in (
            ("bits 3.5, empty cache", {"bits": 3.5}),
            ("bits 3.5, cached", {"bits": 3.5}),
            ("bits 2.5, cached", {"bits": 2.5}),
        ):
            t0 = time.perf_counter()
            p = plan.make_plan(src.config, tensors, src.read, cache=cache, **kw)
            runs[label] = (time.perf_counter() - t0, p)
        cache2 = Path(tmp) / "errors2.json"
        t0 = time.perf_counter()
        p = plan.make_plan(src.config, tensors, src.read, cache=cache2, profile="JANG_3M")
        runs["JANG_3M, empty cache"] = (time.perf_counter() - t0, p)
    params = runs["bits 3.5, cached"][1]["totals"]["params"] / 1e9
    print(f"SmolLM2-135M ({params * 1e3:.1f}M planned weights), open_source {t_open:.2f} s")
    for label, (secs, p) in runs.items():
        t = p["timing"]
        solve = p["solver"]["seconds"] if p["solver"] else 0.0
        print(
            f"  {label:<22} {secs:6.2f} s  ({secs / params:6.1f} s per B params; "
            f"read+measure {t['measure_s']:.2f} s, solve {solve:.3f} s)"
        )


def shape(label: str, n: float) -> None:
    config, tensors, desc = estimate.llama_like(n)
    c = classify(config, tensors)
    ds = decisions(c)
    layer0 = [d for d in ds if d.first.layer == 0]
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for d in layer0:
        rows = min(d.first.rows, max(errors.MIN_ROWS, -(-errors.DEFAULT_SAMPLE // d.first.cols)))
        w = mx.array(rng.standard_normal((rows, d.first.cols), dtype=np.float32) * 0.02)
        errors._error_terms(w.astype(mx.bfloat16), [o for o in d.options if o[0] != 16])
    per_layer = time.perf_counter() - t0
    layers = config["num_hidden_layers"]
    sizes, costs = [], []
    for d in ds:
        f = rng.uniform(0.8, 1.3)
        sizes.append([d.bytes(b, g) for b, g in d.options])
        costs.append([d.alpha * (f * 0.4 * 2.0 ** -(b - 2)) ** 2 for b, g in d.options])
    params = sum(d.numel for d in ds)
    t0 = time.perf_counter()
    sol = solver.solve(sizes, costs, int(3.5 * params / 8))
    t_solve = time.perf_counter() - t0
    measure = per_layer * layers
    print(f"{label}: {desc}")
    print(
        f"  measure (compute, {layers} x {per_layer:.2f} s per layer) {measure:.1f} s = "
        f"{measure / (params / 1e9):.2f} s per B params; "
        f"solve {len(ds)} decisions {t_solve:.2f} s ({sol.method})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the 70B shape")
    args = parser.parse_args()
    print(f"{time.strftime('%Y-%m-%d')}, mlx {mx.__version__}, {mx.default_device()}")
    gguf = data.cache_dir() / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if gguf.is_file():
        smollm(gguf)
    else:
        print(f"(no {gguf}: run `jang data smollm2` for the real-weights part)")
    shape("8B shape", 8e9)
    if not args.quick:
        shape("70B shape", 70e9)


if __name__ == "__main__":
    main()
