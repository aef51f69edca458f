"""jang's CUDA kernels (MLX's CUDA backend) against float64 references and the CPU kernels.

Every width x group size x path (M = 1, small M through the register-streaming kernel, M > 16
through the shared-memory tiled kernel, more rows than one tile, batched) in fp16 and bf16, odd sizes (n not a multiple of 16, k with a tail after the 16-byte main loop),
fp32 / mixed dtypes (CUDA-core fallback), non-contiguous inputs, dequantize bit-exact with
mx.dequantize, gather_qmm and moe_gate_up, and outputs checked fully written over poisoned
memory. Skipped, with the reason, where jang has no CUDA kernels or no CUDA device is present.
"""

import itertools

import mlx.core as mx
import numpy as np
import pytest


def _skip_reason():
    try:
        from jang import load_extension

        ext = load_extension()
    except Exception as e:  # pragma: no cover - depends on the build
        return f"jang's extension does not load: {e}"
    if not getattr(ext, "cuda_enabled", lambda: False)():
        return "this build of jang has no CUDA kernels (MLX is not its CUDA backend)"
    cuda = getattr(mx, "cuda", None)
    if cuda is None or not cuda.is_available():
        return "no CUDA device available to MLX"
    return None


REASON = _skip_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

if REASON is None:
    import jang

BITS = [2, 3, 4, 5, 6, 8]
GROUPS = [32, 64, 128]
HALF = [mx.float16, mx.bfloat16]
# Weights are dequantized to the activation type before the tensor cores (one rounding of
# s*q+b per weight: at most half an ulp, relative), the output rounded once.
W_EPS = {mx.float16: 2.0**-11, mx.bfloat16: 2.0**-8, mx.float32: 1e-6}
OUT_EPS = {mx.float16: 2.0**-10, mx.bfloat16: 2.0**-7, mx.float32: 1e-6}
GPU = mx.gpu
CPU = mx.cpu


@pytest.fixture(autouse=True)
def _cpu_default():
    """Inputs and references on the CPU; only jang's ops under test run on the GPU stream."""
    before = mx.default_device()
    mx.set_default_device(CPU)
    yield
    mx.set_default_device(before)


def quantized(shape, bits, group_size, dtype):
    w = mx.random.normal(shape, stream=CPU).astype(dtype, stream=CPU)
    q, s, b = mx.quantize(w, group_size=group_size, bits=bits, stream=CPU)
    mx.eval(q, s, b)
    return q, s, b


def f64(a):
    return np.array(a.astype(mx.float32, stream=CPU)).astype(np.float64)


def dequant64(q, s, b, bits, group_size):
    codes = mx.dequantize(
        q,
        mx.ones(s.shape, mx.float32),
        mx.zeros(b.shape, mx.float32),
        group_size=group_size,
        bits=bits,
        stream=CPU,
    )
    c = f64(codes).reshape(*s.shape, group_size)
    w = c * f64(s)[..., None] + f64(b)[..., None]
    return w.reshape(*s.shape[:-1], -1)


def check(out, ref, scale, dtype, what):
    got = f64(out)
    assert got.shape == ref.shape, what
    assert np.all(np.isfinite(got)), f"{what}: non-finite output (unwritten?)"
    err = np.abs(got - ref)
    bound = OUT_EPS[dtype] * np.abs(ref) + 2 * W_EPS[dtype] * scale + 1e-6 * scale + 1e-30
    worst = np.max(err / bound)
    assert worst <= 1.0, f"{what}: error {err.max():.3g} is {worst:.2f}x the bound"


def poison(nbytes):
    """Leave NaNs in MLX's buffer cache so that a fresh output of this size likely reuses them."""
    for dt, item in ((mx.float16, 2), (mx.float32, 4)):
        p = mx.full((max(1, nbytes // item),), float("nan"), dt, stream=GPU)
        mx.eval(p)
        del p


def run_gpu(nbytes, fn, *args, **kwargs):
    poison(nbytes)
    out = fn(*args, **kwargs)
    mx.eval(out)
    return out


@pytest.mark.parametrize(
    ("bits", "group_size", "dtype"), list(itertools.product(BITS, GROUPS, HALF))
)
def test_qmatmul_paths(bits, group_size, dtype):
    # n = 72: a partial 16-row tile. k: only the word-load tail (320 / 384), and many 16-byte
    # chunks plus a tail (2176 / 2304).
    for k in (320, 2176) if group_size != 128 else (384, 2304):
        q, s, b = quantized((72, k), bits, group_size, dtype)
        w64 = dequant64(q, s, b, bits, group_size)
        for m in (1, 3, 8, 9, 16, 33, 64, 70):
            x = mx.random.normal((m, k), stream=CPU).astype(dtype, stream=CPU)
            out = run_gpu(m * 72 * 4, jang.qmatmul, x, q, s, b, bits, group_size, stream=GPU)
            assert out.dtype == dtype
            x64 = f64(x)
            ref, scale = x64 @ w64.T, np.abs(x64) @ np.abs(w64).T
            check(out, ref, scale, dtype, f"bits={bits} gs={group_size} k={k} m={m}")
            cpu = jang.qmatmul(x, q, s, b, bits, group_size, stream=CPU)
            check(out, f64(cpu), scale, dtype, f"vs CPU kernel, k={k} m={m}")


@pytest.mark.parametrize("bits", BITS)
def test_qmatmul_large_shapes(bits):
    # The benchmark's shape class: many chunks per row, several warps per block.
    q, s, b = quantized((1000, 4096), bits, 64, mx.float16)
    w64 = dequant64(q, s, b, bits, 64)
    for m in (1, 4, 16, 100):
        x = mx.random.normal((m, 4096), stream=CPU).astype(mx.float16, stream=CPU)
        out = run_gpu(m * 1000 * 2, jang.qmatmul, x, q, s, b, bits, 64, stream=GPU)
        x64 = f64(x)
        check(out, x64 @ w64.T, np.abs(x64) @ np.abs(w64).T, mx.float16, f"m={m}")


@pytest.mark.parametrize(("bits", "dtype"), list(itertools.product(BITS, HALF)))
def test_qmatmul_tiled(bits, dtype):
    # The shared-memory tiled kernel (M > 16): whole 64-row blocks and a partial one (n = 200),
    # k with 12 full stages of 128 codes and a 32-code tail, M on and off the 8/32/64-row tiles.
    k = 12 * 128 + 32
    q, s, b = quantized((200, k), bits, 32, dtype)
    w64 = dequant64(q, s, b, bits, 32)
    for m in (17, 32, 33, 64, 100, 128):
        x = mx.random.normal((m, k), stream=CPU).astype(dtype, stream=CPU)
        out = run_gpu(m * 200 * 4, jang.qmatmul, x, q, s, b, bits, 32, stream=GPU)
        x64 = f64(x)
        check(out, x64 @ w64.T, np.abs(x64) @ np.abs(w64).T, dtype, f"m={m}")


@pytest.mark.parametrize("bits", [3, 4])
def test_gather_qmm_tiled(bits):
    # Batched products with M > 16 (the tiled kernel per z), indices out of range -> zeros.
    q, s, b = quantized((3, 72, 512), bits, 64, mx.float16)
    x = mx.random.normal((2, 40, 512), stream=CPU).astype(mx.float16, stream=CPU)
    lhs = mx.array([1, 0, 7], mx.uint32)
    rhs = mx.array([2, 1, 0], mx.uint32)
    out = jang.gather_qmm(x, q, s, b, lhs, rhs, bits=bits, group_size=64, stream=GPU)
    w64 = dequant64(q, s, b, bits, 64)
    for i, (li, ri) in enumerate([(1, 2), (0, 1)]):
        x64 = f64(x[li])
        scale = np.abs(x64) @ np.abs(w64[ri]).T
        check(out[i], x64 @ w64[ri].T, scale, mx.float16, f"pair {i}")
    assert float(mx.abs(out[2]).max()) == 0.0


@pytest.mark.parametrize("bits", BITS)
def test_fp32_and_mixed_dtypes(bits):
    q, s, b = quantized((40, 256), bits, 64, mx.float16)
    w64 = dequant64(q, s, b, bits, 64)
    for xd in (mx.float32, mx.float16, mx.bfloat16):
        x = mx.random.normal((5, 256), stream=CPU).astype(xd, stream=CPU)
        out = jang.qmatmul(x, q, s, b, bits, 64, stream=GPU)
        expect = jang.qmatmul(x, q, s, b, bits, 64, stream=CPU)
        assert out.dtype == expect.dtype
        x64 = f64(x)
        scale = np.abs(x64) @ np.abs(w64).T
        check(out, x64 @ w64.T, scale, out.dtype if out.dtype != mx.float32 else mx.float16, xd)


def test_non_contiguous_and_batched_inputs():
    q, s, b = quantized((48, 256), 3, 32, mx.float16)
    w64 = dequant64(q, s, b, 3, 32)
    base = mx.random.normal((256, 12), stream=CPU).astype(mx.float16, stream=CPU)
    views = {
        "transposed": base.T,
        "row-strided": mx.random.normal((24, 256)).astype(mx.float16)[::3],
        "batched": mx.random.normal((2, 3, 256)).astype(mx.float16),
        "offset (unaligned)": mx.random.normal((4, 257)).astype(mx.float16)[:, 1:],
    }
    for name, x in views.items():
        out = jang.qmatmul(x, q, s, b, 3, 32, stream=GPU)
        x64 = f64(x)
        check(out, x64 @ w64.T, np.abs(x64) @ np.abs(w64).T, mx.float16, name)
    # Non-contiguous weights: a transposed-back copy.
    qt = mx.swapaxes(mx.swapaxes(q, 0, 1), 0, 1)
    x = mx.random.normal((2, 256)).astype(mx.float16)
    out = jang.qmatmul(x, qt, s, b, 3, 32, stream=GPU)
    x64 = f64(x)
    check(out, x64 @ w64.T, np.abs(x64) @ np.abs(w64).T, mx.float16, "weights")


@pytest.mark.parametrize(
    ("bits", "group_size", "dtype"),
    list(itertools.product(BITS, GROUPS, [mx.float16, mx.bfloat16, mx.float32])),
)
def test_dequantize_bit_exact(bits, group_size, dtype):
    for shape in ((3, group_size), (37, 4 * group_size + 128)):
        q, s, b = quantized(shape, bits, group_size, dtype)
        nbytes = shape[0] * shape[1] * 4
        out = run_gpu(nbytes, jang.dequantize, q, s, b, bits, group_size, stream=GPU)
        theirs = mx.dequantize(q, s, b, group_size=group_size, bits=bits, stream=CPU)
        assert out.dtype == theirs.dtype
        assert np.array_equal(
            np.array(out.astype(mx.float32, stream=CPU)),
            np.array(theirs.astype(mx.float32, stream=CPU)),
        ), (bits, group_size, dtype, shape)


@pytest.mark.parametrize(("bits", "dtype"), list(itertools.product(BITS, HALF)))
def test_gather_qmm(bits, dtype):
    q, s, b = quantized((4, 40, 256), bits, 64, dtype)
    x = mx.random.normal((3, 2, 256), stream=CPU).astype(dtype, stream=CPU)
    lhs = mx.array([2, 0, 1, 1, 5], mx.uint32)  # 5: out of range -> zeros
    rhs = mx.array([1, 3, 0, 9, 2], mx.uint32)  # 9: out of range -> zeros
    out = jang.gather_qmm(x, q, s, b, lhs, rhs, bits=bits, group_size=64, stream=GPU)
    ref = jang.gather_qmm(x, q, s, b, lhs, rhs, bits=bits, group_size=64, stream=CPU)
    w64 = dequant64(q, s, b, bits, 64)
    for i, (li, ri) in enumerate([(2, 1), (0, 3), (1, 0)]):
        x64 = f64(x[li])
        scale = np.abs(x64) @ np.abs(w64[ri]).T
        check(out[i], x64 @ w64[ri].T, scale, dtype, f"pair {i}")
        check(out[i], f64(ref[i]), scale, dtype, f"pair {i} vs CPU")
    assert float(mx.abs(out[3]).max()) == 0.0 and float(mx.abs(out[4]).max()) == 0.0


@pytest.mark.parametrize(
    ("gate", "up", "dtype"),
    [
        ((4, 64), (4, 64), mx.float16),
        ((2, 32), (6, 128), mx.bfloat16),
        ((3, 64), (8, 64), mx.float16),
        ((5, 32), (4, 64), mx.float32),
    ],
)
def test_moe_gate_up(gate, up, dtype):
    experts, hidden, k = 6, 72, 512
    gq, gs_, gb = quantized((experts, hidden, k), gate[0], gate[1], dtype)
    uq, us, ub = quantized((experts, hidden, k), up[0], up[1], dtype)
    for tokens in (1, 5):
        x = mx.random.normal((tokens, k), stream=CPU).astype(dtype, stream=CPU)
        ids = mx.array(np.random.randint(0, experts + 1, size=(tokens, 4)).astype(np.uint32))
        args = (x, gq, gs_, gb, uq, us, ub, ids)
        kw = dict(gate_bits=gate[0], gate_group_size=gate[1], up_bits=up[0], up_group_size=up[1])
        out = run_gpu(tokens * 4 * hidden * 4, jang.moe_gate_up, *args, **kw, stream=GPU)
        ref = jang.moe_gate_up(*args, **kw, stream=CPU)
        assert out.shape == ref.shape and out.dtype == ref.dtype
        got, want = f64(out), f64(ref)
        assert np.all(np.isfinite(got))
        mag = np.abs(want).max() + 1e-6
        tol = {mx.float16: 2e-2, mx.bfloat16: 6e-2, mx.float32: 1e-4}[dtype]
        assert np.max(np.abs(got - want)) <= tol * mag, (tokens, np.max(np.abs(got - want)), mag)


def test_empty_and_tiny():
    q, s, b = quantized((16, 64), 4, 32, mx.float16)
    x = mx.zeros((0, 64), mx.float16)
    assert jang.qmatmul(x, q, s, b, 4, 32, stream=GPU).shape == (0, 16)
    x = mx.random.normal((1, 64)).astype(mx.float16)
    w64 = dequant64(q, s, b, 4, 32)
    out = jang.qmatmul(x, q, s, b, 4, 32, stream=GPU)
    x64 = f64(x)
    check(out, x64 @ w64.T, np.abs(x64) @ np.abs(w64).T, mx.float16, "k=64")
