"""fp16 matmul baseline through PyTorch (cuBLAS) on the same GPU, kernel-level timing.

    python3 bench/cuda_fp16_torch.py [--k 8192] [--n 8192] [--ms 1 2 4 8 16 32 64 128]

x (M, K) @ W.T with W (N, K) fp16, the mean of `reps` products captured in one CUDA graph
(back to back, as bench/cuda_kernels.cu times jang's kernels), weights rotating over > 256 MB
so that the L2 cache holds none of them; plus the device-to-device copy bandwidth (1 GiB,
bytes read + written). Needs only torch with CUDA.
"""

from __future__ import annotations

import argparse

import torch


def graph_time(fn, reps: int) -> float:
    """Mean seconds per call of fn(i) over `reps` calls in one CUDA graph (best of 3)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for i in range(3):
            fn(i)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(reps):
            fn(i)
    g.replay()
    best = float("inf")
    for _ in range(3):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        torch.cuda.synchronize()
        best = min(best, a.elapsed_time(b) / 1e3 / reps)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=8192)
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--ms", type=int, nargs="*", default=[1, 2, 4, 8, 16, 32, 64, 128])
    args = ap.parse_args()
    dev = torch.device("cuda")
    src = torch.empty(1 << 28, dtype=torch.float32, device=dev).uniform_()
    dst = torch.empty_like(src)
    copy = graph_time(lambda i, s=src, d=dst: d.copy_(s), 20)
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}")  # fmt: skip
    print(
        f"copy bandwidth (torch copy_ 1 GiB, read + write): {2 * src.numel() * 4 / copy / 1e9:.0f} GB/s"
    )
    del src, dst
    n, k = args.n, args.k
    sets = [
        torch.randn(n, k, device=dev, dtype=torch.float16) * 0.02
        for _ in range(max(2, -(-(256 << 20) // (n * k * 2))))
    ]
    print(f"\nfp16 x (M, {k}) @ W.T, W ({n}, {k}); mean of {args.reps} in one CUDA graph\n")
    print("| M | fp16 us | GB/s |")
    print("|---|---|---|")
    for m in args.ms:
        x = torch.randn(m, k, device=dev, dtype=torch.float16)
        out = torch.empty(m, n, device=dev, dtype=torch.float16)
        t = graph_time(
            lambda i, x=x, out=out: torch.mm(x, sets[i % len(sets)].t(), out=out), args.reps
        )
        gbs = (n * k * 2 + m * k * 2 + m * n * 2) / t / 1e9
        print(f"| {m} | {t * 1e6:.1f} | {gbs:.0f} |", flush=True)


if __name__ == "__main__":
    main()
