"""jang.qmatmul on MLX's CUDA backend vs mx.quantized_matmul and the fp16 matmul, same run.

    source /tmp/jang_env.sh   # after scripts/cuda_setup.sh
    python3 bench/cuda_bench.py [--k 8192 --n 8192 --group-size 64 --reps 100]

Per width and M in {1, 2, 4, 8, 16, 64}: the mean time per product (microseconds) of jang,
mx.quantized_matmul (transpose=True, same weights) and x @ W.T with fp16 W; jang's speedup over
fp16 and over MLX; and the bytes jang must move (packed weights, scales, biases, x, out) over its
time as a fraction of the measured copy bandwidth (mx.abs over 1 GiB, bytes read + written).

Timing: `reps` products over rotating weight sets (together > 256 MB, so that the 50 MB L2 holds
none of them between uses) are queued and evaluated at once, after a warm-up, timed with
mx.synchronize() around them: mean per product, launch gaps included alike for every method.
The products are independent, so MLX's CUDA graphs may overlap them on the GPU (a throughput
figure); --chain makes each product's input the previous one's output (k == n), as consecutive
layers in decode. --profile runs each product twice for Nsight Compute (kernel times).
The `dispatch floor` line is the same loop over a tiny product: the host-side cost per op,
below which no row can go.
"""

from __future__ import annotations

import argparse
import time

import mlx.core as mx
import numpy as np

from jang import load_extension


def timed(fns, reps: int, warmup: int = 5) -> float:
    """Mean seconds per call of fns[i % len(fns)] over `reps` calls evaluated together.

    The warm-up calls every function (every weight set) at least once: arrays made from numpy
    live in managed memory and move to the GPU on first touch."""
    for i in range(max(warmup, len(fns) + 2)):
        mx.eval(fns[i % len(fns)]())
    mx.synchronize()
    t0 = time.perf_counter()
    outs = [fns[i % len(fns)]() for i in range(reps)]
    mx.eval(outs)
    mx.synchronize()
    return (time.perf_counter() - t0) / reps


def timed_chain(fns, x0, reps: int) -> float:
    """Mean seconds per call of y = fns[i % len(fns)](y) over `reps` dependent calls (each
    product's output is the next one's input, as consecutive layers in decode: no two run at
    the same time). Needs k == n."""
    y = x0
    for f in fns:
        y = f(y)
    mx.eval(y)
    mx.synchronize()
    t0 = time.perf_counter()
    y = x0
    for i in range(reps):
        y = fns[i % len(fns)](y)
    mx.eval(y)
    mx.synchronize()
    return (time.perf_counter() - t0) / reps


def copy_bandwidth() -> tuple[float, float | None]:
    """Device copy bandwidth (bytes read + written per second): MLX's mx.abs over 1 GiB of fp16,
    and a 1 GiB device-to-device copy through PyTorch timed with CUDA events where torch is
    installed (the same GPU, another framework)."""
    a = mx.array(np.random.standard_normal(1 << 29).astype(np.float16))  # 1 GiB
    mx.eval(a)
    t = timed([lambda a=a: mx.abs(a)], 20, warmup=3)
    mlx_bw = 2 * (1 << 30) / t
    try:
        import torch

        src = torch.empty(1 << 28, dtype=torch.float32, device="cuda").uniform_()
        dst = torch.empty_like(src)
        for _ in range(3):
            dst.copy_(src)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(50):
            dst.copy_(src)
        end.record()
        torch.cuda.synchronize()
        torch_bw = 2 * src.numel() * 4 * 50 / (start.elapsed_time(end) / 1e3)
        del src, dst
        torch.cuda.empty_cache()
    except Exception:  # no torch / no CUDA torch
        torch_bw = None
    return mlx_bw, torch_bw


def dispatch_floor(ext, reps: int) -> str:
    """The same timing loop over a tiny product (1x64x16): the host-side cost per op."""
    tiny = mx.array(np.random.randint(0, 2**32, (16, 64 * 4 // 32), dtype=np.uint32))
    ts = mx.ones((16, 1), mx.float16)
    tx = mx.ones((1, 64), mx.float16)
    floor = timed([lambda: ext.qmatmul(tx, tiny, ts, ts, 4, 64)], reps)
    mfloor = timed(
        [lambda: mx.quantized_matmul(tx, tiny, ts, ts, transpose=True, group_size=64, bits=4)],
        reps,
    )
    return (
        f"dispatch floor (1x64x16 product, host-bound): jang {floor * 1e6:.1f} us/op, "
        f"mx.quantized_matmul {mfloor * 1e6:.1f} us/op"
    )


def weight_sets(n: int, k: int, bits: int, gs: int, budget: int):
    rng = np.random.default_rng(bits)
    one = n * k * bits // 8 + 2 * n * (k // gs) * 2
    sets = []
    for _ in range(max(2, -(-budget // one))):
        w = rng.integers(0, 2**32, size=(n, k * bits // 32), dtype=np.uint32)
        s = (rng.random((n, k // gs), dtype=np.float32) * 0.02 + 0.001).astype(np.float16)
        b = (rng.standard_normal((n, k // gs), dtype=np.float32) * 0.02).astype(np.float16)
        sets.append((mx.array(w), mx.array(s), mx.array(b)))
    mx.eval(sets)
    return sets, one


def main() -> None:
    t_start = time.perf_counter()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--k", type=int, default=8192)
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--bits", type=int, nargs="*", default=[2, 3, 4, 5, 6, 8])
    ap.add_argument("--ms", type=int, nargs="*", default=[1, 2, 4, 8, 16, 64])
    ap.add_argument("--budget-mb", type=int, default=256)
    ap.add_argument(
        "--chain",
        action="store_true",
        help="time dependent chains (y = f(y), k == n) instead of independent products, which "
        "MLX's CUDA graphs may run concurrently",
    )
    ap.add_argument(
        "--floor-only",
        action="store_true",
        help="only the dispatch floor line (host cost per op of jang and of MLX)",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="run each product (jang, MLX, fp16) twice per width and M, for ncu",
    )
    args = ap.parse_args()
    ext = load_extension()
    assert ext.cuda_enabled(), "this build of jang has no CUDA kernels"
    mx.set_default_device(mx.gpu)
    n, k, gs = args.n, args.k, args.group_size
    budget = args.budget_mb << 20

    if args.profile:
        # For Nsight Compute: each product twice, in this order (stderr lists it), e.g.
        #   MLX_USE_CUDA_GRAPHS=0 ncu --csv --metrics gpu__time_duration.sum,dram__bytes_read.sum \
        #       python3 bench/cuda_bench.py --profile > ncu.csv
        import sys

        rng = np.random.default_rng(0)
        xs = {
            m: mx.array(rng.standard_normal((m, k), dtype=np.float32).astype(np.float16))
            for m in args.ms
        }
        w16 = mx.array((rng.standard_normal((n, k), dtype=np.float32) * 0.02).astype(np.float16))
        mx.eval(w16, list(xs.values()))
        for m in args.ms:
            print(f"fp16 m={m}", file=sys.stderr)
            for _ in range(2):
                mx.eval(xs[m] @ w16.T)
        del w16
        for bits in args.bits:
            w, s, b = weight_sets(n, k, bits, gs, 0)[0][0]
            for m in args.ms:
                print(f"jang bits={bits} m={m}", file=sys.stderr)
                for _ in range(2):
                    mx.eval(ext.qmatmul(xs[m], w, s, b, bits, gs))
                print(f"mlx bits={bits} m={m}", file=sys.stderr)
                for _ in range(2):
                    mx.eval(
                        mx.quantized_matmul(
                            xs[m], w, s, b, transpose=True, group_size=gs, bits=bits
                        )
                    )
        mx.synchronize()
        return

    if args.floor_only:
        print(dispatch_floor(ext, args.reps))
        return

    mlx_bw, torch_bw = copy_bandwidth()
    bw = max(mlx_bw, torch_bw or 0.0)
    print(f"device: {mx.device_info() if hasattr(mx, 'device_info') else mx.default_device()}")
    print(
        f"copy bandwidth, read + write: mx.abs 1 GiB {mlx_bw / 1e9:.0f} GB/s; torch copy_ 1 GiB "
        + (f"{torch_bw / 1e9:.0f} GB/s" if torch_bw else "n/a")
        + f"; using {bw / 1e9:.0f} GB/s"
    )

    rng = np.random.default_rng(0)
    fp16_sets = []
    for _ in range(max(2, -(-budget // (n * k * 2)))):
        fp16_sets.append(
            mx.array((rng.standard_normal((n, k), dtype=np.float32) * 0.02).astype(np.float16))
        )
    mx.eval(fp16_sets)
    xs = {
        m: mx.array(rng.standard_normal((m, k), dtype=np.float32).astype(np.float16))
        for m in args.ms
    }
    mx.eval(list(xs.values()))
    if args.chain:
        assert n == k, "--chain needs k == n"

    def run(fns, m):
        """fns: callables of the activations."""
        if args.chain:
            return timed_chain(fns, xs[m], args.reps)
        return timed([lambda f=f: f(xs[m]) for f in fns], args.reps)

    fp16 = {m: run([lambda x, w=w: x @ w.T for w in fp16_sets], m) for m in args.ms}
    del fp16_sets

    header = (
        "| bits | M | jang us | mx.quantized_matmul us | fp16 matmul us | jang vs fp16 | "
        "jang vs MLX | jang GB/s | % of copy BW |"
    )
    lines = [header, "|" + "---|" * 9]
    for bits in args.bits:
        sets, one = weight_sets(n, k, bits, gs, budget)
        for m in args.ms:
            ours = run(
                [
                    lambda x, w=w, s=s, b=b, bits=bits: ext.qmatmul(x, w, s, b, bits, gs)
                    for w, s, b in sets
                ],
                m,
            )
            theirs = run(
                [
                    lambda x, w=w, s=s, b=b, bits=bits: mx.quantized_matmul(
                        x, w, s, b, transpose=True, group_size=gs, bits=bits
                    )
                    for w, s, b in sets
                ],
                m,
            )
            nbytes = one + 2 * m * k + 2 * m * n
            gbs = nbytes / ours / 1e9
            lines.append(
                f"| {bits} | {m} | {ours * 1e6:.1f} | {theirs * 1e6:.1f} | {fp16[m] * 1e6:.1f} | "
                f"{fp16[m] / ours:.2f}x | {theirs / ours:.2f}x | {gbs:.0f} | "
                f"{100 * gbs * 1e9 / bw:.0f}% |"
            )
            print(lines[-1], flush=True)
        del sets
    print()
    print(dispatch_floor(ext, args.reps))
    print(
        f"K = {k}, N = {n}, group {gs}, fp16 activations, mean of {args.reps} reps "
        f"({time.perf_counter() - t_start:.0f} s in all)"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
