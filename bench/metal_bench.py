"""Metal decode bandwidth of jang.qmatmul against mx.quantized_matmul, per width, and
the MoE layer (jang.moe_gate_up + jang.gather_qmm) against mlx-lm's SwitchGLU ops.

Run on a Mac with Apple silicon (jang built with Metal):

    python bench/metal_bench.py            # 4096 x 4096 and 4096 x 14336, M = 1 and 8
    python bench/metal_bench.py --quick    # one small shape (CI smoke run)

For each bit width it prints the bytes a matvec must read (codes + scales + biases +
activations), the time per call, and that as GB/s, for jang and for stock MLX (which
has no 3/5/6-bit layouts in older releases: those rows say n/a if it refuses), plus
the machine's measured copy bandwidth as the ceiling.

The MoE table times one expert layer (gate + up + SwiGLU, then down) for decode (one
token: the gathered kernels) and prefill (many tokens: routed by expert, then the
sorted kernels), against stock MLX's gather_qmm calls as mlx-lm's SwitchGLU makes them
(sorting the tokens by expert for 64 or more routing entries).
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


def stock_switch_glu(x, ids, gate, up, down, bits: int, gs: int) -> mx.array:
    """mlx-lm's SwitchGLU on stock MLX: sort by expert for >= 64 entries, three
    gather_qmm calls, SwiGLU between them."""
    top_k = ids.shape[-1]
    gq = partial(mx.gather_qmm, transpose=True, group_size=gs, bits=bits)
    x = mx.expand_dims(x, (-2, -3))  # (t, 1, 1, k)
    do_sort = ids.size >= 64
    idx = ids
    inv = None
    if do_sort:
        flat = ids.flatten()
        order = mx.argsort(flat)
        inv = mx.argsort(order)
        x = x.flatten(0, -3)[order // top_k]
        idx = flat[order]
    g = gq(x, *gate, rhs_indices=idx, sorted_indices=do_sort)
    u = gq(x, *up, rhs_indices=idx, sorted_indices=do_sort)
    h = nn_silu(g) * u
    y = gq(h, *down, rhs_indices=idx, sorted_indices=do_sort)
    if do_sort:
        y = y[inv].reshape(*ids.shape, 1, -1)
    return y.squeeze(-2)


def nn_silu(x: mx.array) -> mx.array:
    return x * mx.sigmoid(x)


def jang_switch_glu(x, ids, gate, up, down, bits: int, gs: int) -> mx.array:
    """The same layer as jang's runtime runs it (python/jang/kernels.py)."""
    h = jang.moe_gate_up(
        x, *gate, *up, ids, gate_bits=bits, gate_group_size=gs, up_bits=bits, up_group_size=gs
    )
    y = jang.gather_qmm(mx.expand_dims(h, -2), *down, rhs_indices=ids, bits=bits, group_size=gs)
    return y.squeeze(-2)


def moe_bench(quick: bool, gs: int, iters: int) -> None:
    # A Qwen3-30B-A3B-like layer: 128 experts, top 8, model 2048, expert hidden 768.
    experts, top_k, d, hidden = (16, 4, 512, 256) if quick else (128, 8, 2048, 768)
    print(f"\nMoE layer: {experts} experts, top {top_k}, {d} -> {hidden} -> {d}")
    print(f"{'tokens':>7} {'bits':>4} {'jang us':>9} {'tok/s':>9} {'mlx us':>9} {'tok/s':>9} "
          f"{'ratio':>6}")  # fmt: skip
    for bits in [4] if quick else [3, 4, 6]:
        wg = mx.random.normal((experts, hidden, d)).astype(mx.float16) * 0.02
        wd = mx.random.normal((experts, d, hidden)).astype(mx.float16) * 0.02
        gate = mx.quantize(wg, group_size=gs, bits=bits)
        up = mx.quantize(wg * 0.5, group_size=gs, bits=bits)
        down = mx.quantize(wd, group_size=gs, bits=bits)
        mx.eval(gate, up, down)
        for tokens in [1, 128] if quick else [1, 4, 512, 2048]:
            x = mx.random.normal((tokens, d)).astype(mx.float16)
            ids = mx.argpartition(mx.random.normal((tokens, experts)), -top_k, axis=-1)
            ids = ids[:, -top_k:].astype(mx.uint32)
            mx.eval(x, ids)
            args = (x, ids, gate, up, down, bits, gs)
            n = max(3, iters // (1 + tokens // 64))
            t_jang = timed(partial(jang_switch_glu, *args), n)
            try:
                t_mlx = timed(partial(stock_switch_glu, *args), n)
                mlx_cols = f"{t_mlx * 1e6:9.1f} {tokens / t_mlx:9.0f} {t_mlx / t_jang:6.2f}"
            except (ValueError, RuntimeError):
                mlx_cols = f"{'n/a':>9} {'':>9} {'':>6}"
            print(f"{tokens:>7} {bits:>4} {t_jang * 1e6:9.1f} {tokens / t_jang:9.0f} {mlx_cols}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one small shape, few iterations")
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--no-moe", action="store_true", help="skip the MoE layer table")
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
    if not args.no_moe:
        moe_bench(args.quick, gs, iters)


if __name__ == "__main__":
    main()
