"""Metal decode bandwidth of jang.qmatmul against mx.quantized_matmul, per width.

Run on a Mac with Apple silicon (jang built with Metal):

    python bench/metal_bench.py            # 4096 x 4096 and 4096 x 14336, M = 1 and 8
    python bench/metal_bench.py --quick    # one small shape (CI smoke run)

For each bit width it prints the bytes a matvec must read (codes + scales + biases +
activations), the time per call, and that as GB/s, for jang and for stock MLX (which
has no 3/5/6-bit layouts in older releases: those rows say n/a if it refuses), plus
the machine's measured copy bandwidth as the ceiling.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import mlx.core as mx

import jang
from jang import _ext

BITS = [2, 3, 4, 5, 6, 8]


def timed(fn: Callable[[], mx.array], iters: int) -> float:
    """Seconds per call, after warm-up, with the GPU synchronised."""
    for _ in range(3):
        mx.eval(fn())
    mx.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        mx.eval(fn())
    mx.synchronize()
    return (time.perf_counter() - t0) / iters


def copy_bandwidth(nbytes: int, iters: int) -> float:
    a = mx.random.uniform(shape=(nbytes // 4,))
    sec = timed(lambda: a + 0, iters)
    return 2 * nbytes / sec / 1e9  # read + write


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one small shape, few iterations")
    ap.add_argument("--group-size", type=int, default=64)
    args = ap.parse_args()
    if not _ext.metal_enabled() or not mx.metal.is_available():
        raise SystemExit("needs jang built with Metal on Apple silicon")
    mx.set_default_device(mx.gpu)
    shapes = [(1024, 1024)] if args.quick else [(4096, 4096), (14336, 4096)]
    ms = [1] if args.quick else [1, 8]
    iters = 20 if args.quick else 200
    gs = args.group_size
    print(f"copy bandwidth: {copy_bandwidth(256 << 20, iters // 4 + 1):.1f} GB/s")
    print(f"{'n x k':>12} {'m':>3} {'bits':>4} {'MB':>8} {'jang us':>9} {'GB/s':>7} "
          f"{'mlx us':>9} {'GB/s':>7} {'ratio':>6}")  # fmt: skip
    for n, k in shapes:
        w = mx.random.normal((n, k)).astype(mx.float16)
        for m in ms:
            x = mx.random.normal((m, k)).astype(mx.float16)
            for bits in BITS:
                q, s, b = mx.quantize(w, group_size=gs, bits=bits)
                mx.eval(q, s, b, x)
                nbytes = q.nbytes + s.nbytes + b.nbytes + x.nbytes + m * n * 2
                t_jang = timed(partial(jang.qmatmul, x, q, s, b, bits, gs), iters)
                try:
                    stock = partial(
                        mx.quantized_matmul, x, q, s, b, transpose=True, group_size=gs, bits=bits
                    )
                    t_mlx = timed(stock, iters)
                    mlx_cols = f"{t_mlx * 1e6:9.1f} {nbytes / t_mlx / 1e9:7.1f} "
                    mlx_cols += f"{t_mlx / t_jang:6.2f}"
                except (ValueError, RuntimeError):
                    mlx_cols = f"{'n/a':>9} {'':>7} {'':>6}"
                print(
                    f"{f'{n}x{k}':>12} {m:>3} {bits:>4} {nbytes / 1e6:8.2f} "
                    f"{t_jang * 1e6:9.1f} {nbytes / t_jang / 1e9:7.1f} {mlx_cols}"
                )


if __name__ == "__main__":
    main()
