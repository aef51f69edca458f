"""fp32 matmul throughput of MLX's CPU backend and of numpy, on the same shapes.

    python bench/experiments/blas_check.py

Why the GPTQ driver sends a calibration pass's matmuls to numpy on the CPU: MLX's Linux CPU
wheel links the reference BLAS. Best of 3 per library, GFLOP/s.
"""

from __future__ import annotations

import time

import mlx.core as mx
import numpy as np


def best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    print("| shape (M x K) @ (K x N) | MLX GFLOP/s | numpy GFLOP/s |")
    print("|---|---|---|")
    for m, k, n in ((8192, 576, 1536), (4096, 1536, 576)):
        a = np.random.rand(m, k).astype(np.float32)
        b = np.random.rand(k, n).astype(np.float32)
        ma, mb = mx.array(a), mx.array(b)
        mx.eval(ma, mb)
        gflop = 2 * m * k * n / 1e9
        t_mlx = best(lambda ma=ma, mb=mb: mx.eval(ma @ mb))
        t_np = best(lambda a=a, b=b: a @ b)
        print(f"| ({m} x {k}) @ ({k} x {n}) | {gflop / t_mlx:.1f} | {gflop / t_np:.1f} |")


if __name__ == "__main__":
    main()
