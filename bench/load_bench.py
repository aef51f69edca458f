"""Load time and resident memory: `jang.load` (mmap, zero-copy) vs `mlx_lm.load` (mx.load copies).

Each loader runs in a fresh interpreter: imports first, then RSS is sampled, the model is
loaded (usable, parameters evaluated, no forward pass; the tokenizer, identical for both and
~0.4 s of JSON parsing, is not included), and RSS and time are sampled again. Prints a
markdown table.

    python bench/load_bench.py BUNDLE [BUNDLE ...] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, os, sys, time
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
import mlx.core as mx
from pathlib import Path
from mlx_lm.utils import load_model
from jang.runtime import load_model as jang_load_model
which, path = sys.argv[1], Path(sys.argv[2])
before = rss()
t = time.perf_counter()
if which == "jang":
    model, _, _ = jang_load_model(path, kernels=False)
else:
    model, _ = load_model(path)
mx.eval(model.parameters())
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "rss_growth": rss() - before}))
"""


def measure(which: str, bundle: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, which, str(bundle)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print("| bundle | shard MB | loader | load s (median) | RSS growth MB |")
    print("|---|---|---|---|---|")
    for bundle in args.bundles:
        size = sum(f.stat().st_size for f in bundle.glob("*.safetensors")) / 1e6
        for which in ("jang", "mlx_lm"):
            runs = [measure(which, bundle) for _ in range(args.repeat)]
            secs = statistics.median(r["seconds"] for r in runs)
            rss = statistics.median(r["rss_growth"] for r in runs) / 1e6
            name = "jang.load" if which == "jang" else "mlx_lm.load"
            print(f"| {bundle.name} | {size:.1f} | {name} | {secs:.3f} | {rss:.1f} |", flush=True)


if __name__ == "__main__":
    main()
