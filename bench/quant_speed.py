"""Throughput of jang's RTN and clip quantizers against mx.quantize, on the same tensors.

    python bench/quant_speed.py [--model GGUF_OR_HF_DIR] [--bits 2 3 4 8] [--group-size 64]

Every quantizable 2-D weight of the model (default: the SmolLM2-135M GGUF prepared by
``jang data smollm2``), cast to float16 as the converter passes it, is quantized by each
method in turn; each method's time is the best of `--repeat` passes over all tensors.
Throughput is MB of float16 source weights per second. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

from jang.quant import quantize_tensor, relative_error
from jang.source import open_source

DEFAULT = Path("~/.cache/jang/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def load(path: str, group_size: int) -> list[mx.array]:
    src = open_source(path)
    out = []
    for info in src.tensors():
        if len(info.shape) == 2 and info.shape[1] % group_size == 0 and min(info.shape) > 1:
            out.append(src.read(info.name).astype(mx.float16))
    mx.eval(out)
    return out


def best_time(fn, tensors, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for w in tensors:
            mx.eval(fn(w))
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(DEFAULT))
    ap.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4, 8])
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    gs = args.group_size
    tensors = load(args.model, gs)
    mb = sum(w.nbytes for w in tensors) / 1e6
    sizes = np.array([w.size for w in tensors], np.float64)

    def mean(errors: np.ndarray) -> float:  # weighted by tensor size
        return float((errors * sizes).sum() / sizes.sum())

    print(f"{len(tensors)} tensors, {mb:.1f} MB float16, group size {gs}\n")
    print(
        "| bits | mx.quantize MB/s | jang rtn MB/s | jang clip MB/s | clip / rtn time "
        "| rtn rel. error | clip rel. error |"
    )
    print("|---|---|---|---|---|---|---|")
    for bits in args.bits:
        t_mx = best_time(lambda w, b=bits: mx.quantize(w, gs, b), tensors, args.repeat)
        t_rtn = best_time(lambda w, b=bits: quantize_tensor(w, b, gs), tensors, args.repeat)
        t_clip = best_time(
            lambda w, b=bits: quantize_tensor(w, b, gs, "clip"), tensors, args.repeat
        )
        e_rtn = np.array([relative_error(w, bits, gs) for w in tensors])
        e_clip = np.array([relative_error(w, bits, gs, "clip") for w in tensors])
        print(
            f"| {bits} | {mb / t_mx:.0f} | {mb / t_rtn:.0f} | {mb / t_clip:.0f} "
            f"| {t_clip / t_rtn:.2f} | {mean(e_rtn):.4f} | {mean(e_clip):.4f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
