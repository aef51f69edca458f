"""Time of the conversion's NaN/Inf/outlier check (`jang.convert._check_finite`) against
the MLX float reductions it replaced, on one matrix, alternating, several rounds.

    python bench/experiments/check_finite_speed.py --rows 14336 --cols 4096 --rounds 3
"""

from __future__ import annotations

import argparse
import time

import mlx.core as mx
import numpy as np

from jang.convert import _check_finite


def mlx_reductions(w: mx.array) -> tuple[np.ndarray, np.ndarray]:
    """The replaced check: per-row all-finite and peak |w|, by MLX float reductions."""
    finite = mx.all(mx.isfinite(w), axis=-1)
    peak = mx.max(mx.abs(w.astype(mx.float32)), axis=-1)
    mx.eval(finite, peak)
    return np.array(finite), np.array(peak)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=14336)
    p.add_argument("--cols", type=int, default=4096)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    w = (mx.random.normal((args.rows, args.cols)) * 0.02).astype(mx.bfloat16)
    mx.eval(w)
    for r in range(args.rounds):
        t0 = time.perf_counter()
        mlx_reductions(w)
        t1 = time.perf_counter()
        _check_finite("w", w, quantized=True)
        t2 = time.perf_counter()
        print(f"round {r}: MLX reductions {t1 - t0:.3f} s, raw-bit check {t2 - t1:.3f} s")


if __name__ == "__main__":
    main()
