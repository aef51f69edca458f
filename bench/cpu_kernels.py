"""CPU kernel benchmark: jang.qmatmul against the machine's copy bandwidth and stock MLX.

Counts bytes first: a decode matvec (M = 1) at b bits reads N*K*b/8 bytes of codes plus the
fp16 scales and biases (2 * N*K/group_size * 2 bytes). Effective bandwidth = those bytes / time.
"hot" repeats one matrix (it stays in this machine's large L3); "cold" rotates through enough
copies (>= 512 MiB) that every call streams its weights from DRAM.

Usage: python bench/cpu_kernels.py [--k 4096] [--n 4096] [--group-size 64] [--reps 20]
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time

import mlx.core as mx
import numpy as np

import jang
from jang import _ext


def copy_bandwidth(nbytes: int, threads: int, reps: int = 5) -> float:
    """Best memcpy bandwidth in GB/s, counting bytes read plus bytes written (STREAM copy)."""
    n = nbytes // 8
    src = np.ones(n)
    dst = np.empty(n)
    parts = [(i * n // threads, (i + 1) * n // threads) for i in range(threads)]

    def work(a: int, b: int) -> None:
        np.copyto(dst[a:b], src[a:b])

    best = float("inf")
    for _ in range(reps):
        workers = [threading.Thread(target=work, args=p) for p in parts]
        t = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best / 1e9


def _times(fn, reps: int) -> list[float]:
    """Seconds of `reps` evaluations of fn(i), after one warm-up."""
    mx.eval(fn(0))
    times = []
    for i in range(reps):
        t = time.perf_counter()
        mx.eval(fn(i))
        times.append(time.perf_counter() - t)
    return times


def best_time(fn, reps: int) -> float:
    return min(_times(fn, reps))


def median_time(fn, reps: int) -> float:
    return float(np.median(_times(fn, reps)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--bits", type=int, nargs="*", default=[2, 3, 4, 5, 6, 8])
    ap.add_argument("--skip-mlx", action="store_true", help="skip the slow stock MLX baseline")
    ap.add_argument(
        "--m-sweep",
        action="store_true",
        help="instead: M = 1..64 at K = N = 2048, 4 bits, fp32 and fp16 x, vs stock MLX at M = 64",
    )
    args = ap.parse_args()
    k, n, gs = args.k, args.n, args.group_size
    mx.random.seed(0)
    if args.m_sweep:
        m_sweep(args.reps)
        return

    cores = os.cpu_count()
    print(f"# {platform.processor() or platform.machine()}, {cores} cores, "
          f"jang ISA {_ext.cpu_kernel_isa()}, {_ext.cpu_num_threads()} threads, "
          f"mlx {mx.__version__}")  # fmt: skip
    copy_1 = copy_bandwidth(512 << 20, 1)
    copy_all = copy_bandwidth(512 << 20, cores or 1)
    print(f"copy bandwidth (512 MiB, read+write): 1 thread {copy_1:.1f} GB/s, "
          f"{cores} threads {copy_all:.1f} GB/s")  # fmt: skip
    floor = copy_all
    print(f"load average at start: {os.getloadavg()[0]:.2f}")

    w = mx.random.normal((n, k)).astype(mx.float16)
    x1 = mx.random.normal((1, k))
    x8 = mx.random.normal((8, k))
    print(f"\nK = {k}, N = {n}, group size {gs}, x fp32, scales/biases fp16")
    print("| bits | MB moved | M=1 hot ms | GB/s hot | % copy | M=1 cold ms | GB/s cold | % copy "
          "| M=8 ms | M=8 / M=1 | mlx M=1 ms | speedup |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for bits in args.bits:
        row = measure(w, x1, x8, bits, gs, args.reps, args.skip_mlx)
        hot, cold, m8, stock, nbytes = row
        # The machine is shared: re-measure the floor next to each width, keep the best.
        floor = max(floor, copy_bandwidth(256 << 20, cores or 1, reps=3))
        gbh, gbc = nbytes / hot / 1e9, nbytes / cold / 1e9
        print(
            f"| {bits} | {nbytes / 1e6:.2f} | {hot * 1e3:.3f} | {gbh:.1f} | {100 * gbh / floor:.0f}% "
            f"| {cold * 1e3:.3f} | {gbc:.1f} | {100 * gbc / floor:.0f}% | {m8 * 1e3:.3f} "
            f"| {m8 / hot:.2f} | {stock * 1e3:.2f} | {stock / hot:.0f}x |",
            flush=True,
        )
    print(f"% copy = effective GB/s / best 2-thread copy bandwidth seen ({floor:.1f} GB/s); "
          f"load average at end: {os.getloadavg()[0]:.2f}")  # fmt: skip


def measure(w, x1, x8, bits: int, gs: int, reps: int, skip_mlx: bool):
    """(hot M=1, cold M=1, hot M=8, stock MLX M=1 fp32) seconds and bytes moved at M=1."""
    q, s, b = mx.quantize(w, group_size=gs, bits=bits)
    mx.eval(q, s, b)
    nbytes = q.nbytes + s.nbytes + b.nbytes
    copies = max(2, -(-(512 << 20) // nbytes))
    qs = [q + 0 for _ in range(copies)]
    mx.eval(qs)
    hot = best_time(lambda i: jang.qmatmul(x1, q, s, b, bits, gs), reps)
    cold = median_time(
        lambda i: jang.qmatmul(x1, qs[i % copies], s, b, bits, gs), max(reps, copies)
    )
    m8 = best_time(lambda i: jang.qmatmul(x8, q, s, b, bits, gs), reps)
    qs.clear()
    stock = float("nan")
    if not skip_mlx:
        sf, bf = s.astype(mx.float32), b.astype(mx.float32)
        stock = best_time(lambda i: mx.quantized_matmul(x1, q, sf, bf, group_size=gs, bits=bits), 3)
    return hot, cold, m8, stock, nbytes


def m_sweep(reps: int) -> None:
    """Small and large M. CPU seconds of the process (the machine is shared; wall time of long
    calls includes time descheduled) next to wall time; stock MLX once per dtype at M = 64."""
    k = n = 2048
    w = mx.random.normal((n, k)).astype(mx.float16)
    q, s, b = mx.quantize(w, group_size=64, bits=4)
    mx.eval(q, s, b)
    print(f"K = N = {k}, 4 bits, group size 64; jang ISA {_ext.cpu_kernel_isa()}, "
          f"{_ext.cpu_num_threads()} threads; load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    print("| x dtype | M | jang wall ms | jang CPU ms | GFLOP/s (wall) | stock wall ms | speedup |")
    print("|---|---|---|---|---|---|---|")
    for dtype in (mx.float32, mx.float16):
        for m in (1, 4, 8, 16, 32, 64):
            x = mx.random.normal((m, k)).astype(dtype)
            mx.eval(x)
            mx.eval(jang.qmatmul(x, q, s, b, 4, 64))
            wall, cpu = float("inf"), float("inf")
            for _ in range(reps):
                t, c = time.perf_counter(), time.process_time()
                mx.eval(jang.qmatmul(x, q, s, b, 4, 64))
                wall = min(wall, time.perf_counter() - t)
                cpu = min(cpu, time.process_time() - c)
            stock_cells = " | "
            if m == 64:
                t = time.perf_counter()
                mx.eval(mx.quantized_matmul(x, q, s, b, group_size=64, bits=4))
                stock = time.perf_counter() - t
                stock_cells = f" {stock * 1e3:.0f} | {stock / wall:.0f}x "
            name = str(dtype).removeprefix("mlx.core.")
            print(
                f"| {name} | {m} | {wall * 1e3:.2f} | {cpu * 1e3:.2f} | "
                f"{2 * m * k * n / wall / 1e9:.0f} |{stock_cells}|",
                flush=True,
            )


if __name__ == "__main__":
    main()
