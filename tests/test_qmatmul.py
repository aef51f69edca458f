"""jang.qmatmul / gather_qmm / moe_gate_up on the CPU: against float64 references,
stock MLX, across instruction sets, and under compile / vmap / grad."""

import itertools

import mlx.core as mx
import numpy as np
import pytest

import jang
from jang import _ext

BITS = [2, 3, 4, 5, 6, 8]
GROUPS = [32, 64, 128]
DTYPES = [mx.float32, mx.float16, mx.bfloat16]
# Relative tolerance of the output dtype (fp32 accumulation, one final rounding).
RTOL = {mx.float32: 2e-6, mx.float16: 2e-3, mx.bfloat16: 1.6e-2}
ISAS = [
    name
    for name, ok in [
        ("scalar", True),
        ("avx2", _ext.cpu_simd_level() in ("avx2", "avx512")),
        ("avx512", _ext.cpu_simd_level() == "avx512"),
        ("neon", _ext.cpu_simd_level() == "neon"),
    ]
    if ok
]


@pytest.fixture
def isa():
    """Restore the automatic choice of instruction set after a test forces one."""
    yield _ext.set_cpu_kernel_isa
    _ext.set_cpu_kernel_isa("auto")


def quantized(shape, bits, group_size, dtype=mx.float16):
    w = mx.random.normal(shape).astype(dtype)
    return mx.quantize(w, group_size=group_size, bits=bits)


def f64(a: mx.array) -> np.ndarray:
    return np.array(a.astype(mx.float32)).astype(np.float64)


def dequant64(q, s, b, bits, group_size) -> np.ndarray:
    """Exact scale * code + bias in float64 (codes via dequantize with scale 1, bias 0)."""
    codes = mx.dequantize(
        q,
        mx.ones(s.shape, mx.float32),
        mx.zeros(b.shape, mx.float32),
        group_size=group_size,
        bits=bits,
    )
    c = f64(codes).reshape(*s.shape, group_size)
    w = c * f64(s)[..., None] + f64(b)[..., None]
    return w.reshape(*s.shape[:-1], -1)


def assert_close(out: mx.array, ref: np.ndarray, scale: np.ndarray, rtol: float):
    """|out - ref| <= rtol * (|ref| + scale), with scale = |x| @ |w|.T (the sum's magnitude)."""
    got = f64(out)
    assert got.shape == ref.shape
    err = np.abs(got - ref)
    bound = rtol * (np.abs(ref) + 1e-3 * scale) + 2e-6 * scale
    worst = np.max(err - bound)
    assert worst <= 0, f"max excess error {worst}, max err {err.max()}"


def reference(x, q, s, b, bits, group_size):
    w = dequant64(q, s, b, bits, group_size)
    x64 = f64(x)
    return x64 @ w.T, np.abs(x64) @ np.abs(w).T


@pytest.mark.parametrize(
    ("bits", "group_size", "dtype"), list(itertools.product(BITS, GROUPS, DTYPES))
)
def test_matches_float64_reference(bits, group_size, dtype):
    # k = 384 or 320: never a multiple of 256, so every SIMD block layout has a tail.
    k = 384 if group_size == 128 else 320
    q, s, b = quantized((40, k), bits, group_size, dtype)
    for m in (1, 5, 16, 64):
        x = mx.random.normal((m, k)).astype(dtype)
        out = jang.qmatmul(x, q, s, b, bits, group_size)
        assert out.dtype == dtype
        ref, scale = reference(x, q, s, b, bits, group_size)
        assert_close(out, ref, scale, RTOL[dtype])


@pytest.mark.parametrize(("bits", "group_size"), list(itertools.product(BITS, GROUPS)))
def test_simd_matches_scalar(isa, bits, group_size):
    k = 1088 if group_size != 128 else 1152  # several blocks plus a tail for every width
    q, s, b = quantized((72, k), bits, group_size)
    x = mx.random.normal((19, k))  # tiles of 16, 2 and 1 rows
    outs = {}
    for name in ISAS:
        isa(name)
        outs[name] = np.array(jang.qmatmul(x, q, s, b, bits, group_size))
        outs[name + "/1"] = np.array(jang.qmatmul(x[3], q, s, b, bits, group_size))
    # Only the summation order differs: bound by fp32 rounding of the sum of |terms|.
    ref, scale = reference(x, q, s, b, bits, group_size)
    for name in ISAS:
        assert np.all(np.abs(outs[name] - outs["scalar"]) <= 1e-6 * scale), name
        assert np.all(np.abs(outs[name + "/1"] - outs["scalar"][3]) <= 1e-6 * scale[3]), name
    assert_close(mx.array(outs["scalar"]), ref, scale, 2e-6)


@pytest.mark.parametrize("bits", BITS)
def test_matches_stock_quantized_matmul(bits):
    q, s, b = quantized((256, 512), bits, 64)
    for shape in [(1, 512), (7, 512), (2, 3, 512)]:
        x = mx.random.normal(shape)
        ours = jang.qmatmul(x, q, s, b, bits, 64)
        theirs = mx.quantized_matmul(x, q, s, b, transpose=True, group_size=64, bits=bits)
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
        mag = float(mx.abs(theirs).max())
        np.testing.assert_allclose(np.array(ours), np.array(theirs), rtol=0, atol=3e-6 * mag)


def test_dtype_promotion_follows_mlx():
    q, s, b = quantized((8, 128), 4, 64, mx.bfloat16)
    for xd in DTYPES:
        x = mx.random.normal((2, 128)).astype(xd)
        expect = mx.quantized_matmul(x, q, s, b, transpose=True, group_size=64, bits=4).dtype
        assert jang.qmatmul(x, q, s, b, 4, 64).dtype == expect


def test_non_contiguous_inputs():
    q, s, b = quantized((48, 256), 3, 32)
    base = mx.random.normal((256, 12))
    ref_w = dequant64(q, s, b, 3, 32)
    views = {
        "transposed": base.T,  # last-dimension stride 12
        "row-strided": mx.random.normal((24, 256))[::3],
        "broadcast": mx.broadcast_to(mx.random.normal((1, 256)), (5, 256)),
        "batched transpose": mx.swapaxes(mx.random.normal((4, 2, 256)), 0, 1),
    }
    for name, x in views.items():
        out = jang.qmatmul(x, q, s, b, 3, 32)
        x64 = f64(x)
        assert_close(out, x64 @ ref_w.T, np.abs(x64) @ np.abs(ref_w).T, RTOL[mx.float32]), name
    # weights, scales and biases as views: a row-sliced matrix and transposed scales
    qs, ss, bs = q[::2], s[::2], b[::2]
    x = mx.random.normal((3, 256))
    assert_close(jang.qmatmul(x, qs, ss, bs, 3, 32), *reference(x, qs, ss, bs, 3, 32), 2e-6)
    st = mx.array(np.ascontiguousarray(np.array(s).T)).T
    assert_close(jang.qmatmul(x, q, st, b, 3, 32), *reference(x, q, s, b, 3, 32), 2e-6)


def test_large_m_and_threads():
    q, s, b = quantized((300, 1024), 4, 128)
    x = mx.random.normal((70, 1024)).astype(mx.float16)
    assert_close(jang.qmatmul(x, q, s, b, 4, 128), *reference(x, q, s, b, 4, 128), 2e-3)
    assert _ext.cpu_num_threads() >= 1


def test_empty():
    q, s, b = quantized((16, 128), 4, 64)
    assert jang.qmatmul(mx.zeros((0, 128)), q, s, b, 4, 64).shape == (0, 16)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"bits": 7}, "bits must be one of"),
        ({"group_size": 16}, "group_size must be one of"),
        ({"x": mx.zeros((2, 100))}, "must end in k = 256"),
        ({"x": mx.zeros((2, 256), mx.int32)}, "x must be float32"),
        ({"w3": True}, "w must be 2-D"),
    ],
)
def test_bad_arguments(args, message):
    q, s, b = quantized((8, 256), 4, 64)
    x = args.get("x", mx.zeros((2, 256)))
    if args.get("w3"):
        q, s, b = q[None], s[None], b[None]
    with pytest.raises(ValueError, match=message):
        jang.qmatmul(x, q, s, b, args.get("bits", 4), args.get("group_size", 64))


def test_isa_selection(isa):
    assert _ext.cpu_kernel_isa() in ("scalar", "avx2", "avx512", "neon")
    with pytest.raises(ValueError, match="must be one of"):
        isa("sse9")
    assert isa("scalar") in ISAS
    assert _ext.cpu_kernel_isa() == "scalar"


# ------------------------------------------------------------ transforms -----


def test_compile():
    q, s, b = quantized((64, 256), 5, 64)
    f = mx.compile(lambda x: jang.qmatmul(x, q, s, b, 5, 64) * 2)
    for m in (1, 3):
        x = mx.random.normal((m, 256))
        expect = jang.qmatmul(x, q, s, b, 5, 64) * 2
        np.testing.assert_array_equal(np.array(f(x)), np.array(expect))
    g = mx.compile(lambda x: jang.qmatmul(x, q, s, b, 5, 64), shapeless=True)
    for m in (2, 6):
        x = mx.random.normal((m, 256))
        np.testing.assert_array_equal(np.array(g(x)), np.array(jang.qmatmul(x, q, s, b, 5, 64)))


def test_vmap():
    q, s, b = quantized((32, 128), 4, 32)
    xs = mx.random.normal((5, 3, 128))
    f = mx.vmap(lambda x: jang.qmatmul(x, q, s, b, 4, 32))
    np.testing.assert_allclose(
        np.array(f(xs)), np.array(jang.qmatmul(xs, q, s, b, 4, 32)), rtol=1e-6, atol=1e-5
    )
    # over a trailing-position axis of x
    g = mx.vmap(lambda x: jang.qmatmul(x, q, s, b, 4, 32), in_axes=1)
    np.testing.assert_allclose(
        np.array(g(mx.swapaxes(xs, 0, 1))),
        np.array(jang.qmatmul(xs, q, s, b, 4, 32)),
        rtol=1e-6,
        atol=1e-5,
    )
    # over stacked weights
    qw, sw, bw = quantized((4, 32, 128), 3, 64)
    x = mx.random.normal((4, 2, 128))
    h = mx.vmap(lambda x, q, s, b: jang.qmatmul(x, q, s, b, 3, 64))
    out = h(x, qw, sw, bw)
    for i in range(4):
        ref, scale = reference(x[i], qw[i], sw[i], bw[i], 3, 64)
        assert_close(out[i], ref, scale, 2e-6)


def test_grad_matches_stock():
    q, s, b = quantized((48, 256), 4, 64, mx.float32)
    x = mx.random.normal((3, 256))
    cot = mx.random.normal((3, 48))

    def ours(x, s, b):
        return (jang.qmatmul(x, q, s, b, 4, 64) * cot).sum()

    def stock(x, s, b):
        return (mx.quantized_matmul(x, q, s, b, group_size=64, bits=4) * cot).sum()

    g1 = mx.grad(ours, argnums=(0, 1, 2))(x, s, b)
    g2 = mx.grad(stock, argnums=(0, 1, 2))(x, s, b)
    for a, e in zip(g1, g2, strict=True):
        assert a.shape == e.shape and a.dtype == e.dtype
        np.testing.assert_allclose(np.array(a), np.array(e), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="no gradient"):
        mx.grad(lambda w: jang.qmatmul(x, w, s, b, 4, 64).sum())(q)
    # jvp in x is the same product
    _, jv = mx.jvp(lambda x: jang.qmatmul(x, q, s, b, 4, 64), (x,), (x,))
    np.testing.assert_allclose(np.array(jv[0]), np.array(jang.qmatmul(x, q, s, b, 4, 64)))


# ------------------------------------------------------------ gather_qmm -----


@pytest.mark.parametrize(("bits", "dtype"), [(4, mx.float32), (3, mx.float16), (6, mx.bfloat16)])
def test_gather_qmm_matches_stock(bits, dtype):
    experts, n, k = 6, 40, 192
    q, s, b = quantized((experts, n, k), bits, 64, dtype)
    # SwitchGLU shapes: x (B, L, 1, 1, k), indices (B, L, top_k)
    x = mx.random.normal((2, 3, 1, 1, k)).astype(dtype)
    idx = mx.random.randint(0, experts, (2, 3, 2))
    ours = jang.gather_qmm(x, q, s, b, rhs_indices=idx, bits=bits, group_size=64)
    theirs = mx.gather_qmm(x, q, s, b, rhs_indices=idx, transpose=True, group_size=64, bits=bits)
    assert ours.shape == theirs.shape == (2, 3, 2, 1, n)
    w = dequant64(q, s, b, bits, 64)
    x64, i64 = f64(x), np.array(idx)
    ref = np.einsum("blk,blenk->blen", x64[:, :, 0, 0], w[i64])[:, :, :, None, :]
    scale = np.einsum("blk,blenk->blen", np.abs(x64[:, :, 0, 0]), np.abs(w[i64]))[:, :, :, None]
    assert_close(ours, ref, scale, RTOL[dtype])
    # sorted form: x (T*k, 1, k) and flat indices
    xs = mx.random.normal((8, 1, k)).astype(dtype)
    ids = mx.sort(mx.random.randint(0, experts, (8,)))
    ours = jang.gather_qmm(xs, q, s, b, rhs_indices=ids, bits=bits, group_size=64)
    theirs = mx.gather_qmm(
        xs, q, s, b, rhs_indices=ids, transpose=True, group_size=64, bits=bits, sorted_indices=True
    )
    mag = float(mx.abs(theirs.astype(mx.float32)).max())
    np.testing.assert_allclose(
        np.array(ours.astype(mx.float32)),
        np.array(theirs.astype(mx.float32)),
        atol=4 * RTOL[dtype] * mag,
    )


def test_gather_qmm_lhs_indices_and_bounds():
    q, s, b = quantized((3, 16, 64), 2, 32)
    x = mx.random.normal((4, 2, 64))
    lhs = mx.array([3, 0, 1])
    rhs = mx.array([1, 2, 7])  # 7 is out of range -> zeros
    out = jang.gather_qmm(x, q, s, b, lhs, rhs, bits=2, group_size=32)
    assert out.shape == (3, 2, 16)
    for i, (li, ri) in enumerate([(3, 1), (0, 2)]):
        ref, scale = reference(x[li], q[ri], s[ri], b[ri], 2, 32)
        assert_close(out[i], ref, scale, 2e-6)
    assert float(mx.abs(out[2]).max()) == 0.0
    with pytest.raises(ValueError, match="leading expert dimensions"):
        jang.gather_qmm(x, q[0], s[0], b[0], rhs_indices=rhs, bits=2, group_size=32)
    with pytest.raises(ValueError, match="integer"):
        jang.gather_qmm(x, q, s, b, rhs_indices=mx.array([0.5]), bits=2, group_size=32)


def test_gather_qmm_grad_and_vmap():
    q, s, b = quantized((4, 24, 128), 4, 64, mx.float32)
    x = mx.random.normal((5, 1, 128))
    idx = mx.array([0, 3, 3, 1, 2])
    cot = mx.random.normal((5, 1, 24))

    def ours(x):
        return (jang.gather_qmm(x, q, s, b, rhs_indices=idx, bits=4, group_size=64) * cot).sum()

    def stock(x):
        y = mx.gather_qmm(x, q, s, b, rhs_indices=idx, transpose=True, group_size=64, bits=4)
        return (y * cot).sum()

    np.testing.assert_allclose(
        np.array(mx.grad(ours)(x)), np.array(mx.grad(stock)(x)), rtol=1e-4, atol=1e-4
    )
    f = mx.vmap(lambda x: jang.gather_qmm(x, q, s, b, rhs_indices=idx, bits=4, group_size=64))
    xv = mx.random.normal((3, 5, 1, 128))
    out = f(xv)
    for i in range(3):
        expect = jang.gather_qmm(xv[i], q, s, b, rhs_indices=idx, bits=4, group_size=64)
        np.testing.assert_allclose(np.array(out[i]), np.array(expect), rtol=1e-6, atol=1e-5)


# ----------------------------------------------------------- moe_gate_up -----


@pytest.mark.parametrize(
    ("gate", "up", "dtype"),
    [
        ((4, 64), (4, 64), mx.float32),
        ((2, 32), (6, 128), mx.float16),
        ((3, 64), (8, 32), mx.bfloat16),
    ],
)
def test_moe_gate_up_matches_stock(gate, up, dtype):
    experts, hidden, k = 8, 64, 256
    gq, gs, gb = quantized((experts, hidden, k), gate[0], gate[1], dtype)
    uq, us, ub = quantized((experts, hidden, k), up[0], up[1], dtype)
    x = mx.random.normal((2, 5, k)).astype(dtype)
    ids = mx.random.randint(0, experts, (2, 5, 3))
    ours = jang.moe_gate_up(
        x, gq, gs, gb, uq, us, ub, ids,
        gate_bits=gate[0], gate_group_size=gate[1], up_bits=up[0], up_group_size=up[1],
    )  # fmt: skip
    assert ours.shape == (2, 5, 3, hidden) and ours.dtype == dtype
    # stock composition, in fp32
    xe = mx.expand_dims(x.astype(mx.float32), (-2, -3))
    g = mx.gather_qmm(xe, gq, gs.astype(mx.float32), gb.astype(mx.float32), rhs_indices=ids,
                      transpose=True, group_size=gate[1], bits=gate[0])  # fmt: skip
    u = mx.gather_qmm(xe, uq, us.astype(mx.float32), ub.astype(mx.float32), rhs_indices=ids,
                      transpose=True, group_size=up[1], bits=up[0])  # fmt: skip
    expect = (g * mx.sigmoid(g) * u).squeeze(-2)
    mag = float(mx.abs(expect).max())
    np.testing.assert_allclose(
        np.array(ours.astype(mx.float32)),
        np.array(expect),
        rtol=RTOL[dtype],
        atol=RTOL[dtype] * mag,
    )
    # down projection through gather_qmm completes the expert MLP
    dq, ds, db = quantized((experts, k, hidden), 4, 32, dtype)
    down = jang.gather_qmm(
        mx.expand_dims(ours, -2), dq, ds, db, rhs_indices=ids, bits=4, group_size=32
    )
    assert down.shape == (2, 5, 3, 1, k)


def test_moe_gate_up_vmap_compile_and_errors():
    gq, gs, gb = quantized((4, 32, 128), 4, 64)
    uq, us, ub = quantized((4, 32, 128), 4, 64)

    def f(x, ids):
        return jang.moe_gate_up(
            x, gq, gs, gb, uq, us, ub, ids,
            gate_bits=4, gate_group_size=64, up_bits=4, up_group_size=64,
        )  # fmt: skip

    x = mx.random.normal((3, 2, 128))
    ids = mx.random.randint(0, 4, (3, 2, 2))
    direct = f(x, ids)
    np.testing.assert_allclose(np.array(mx.vmap(f)(x, ids)), np.array(direct), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.array(mx.compile(f)(x, ids)), np.array(direct))
    with pytest.raises(ValueError, match="expert_ids"):
        f(x, ids[:, :1, :])
    with pytest.raises(ValueError, match="different matrices"):
        jang.moe_gate_up(
            x, gq, gs, gb, uq[:, :16], us[:, :16], ub[:, :16], ids,
            gate_bits=4, gate_group_size=64, up_bits=4, up_group_size=64,
        )  # fmt: skip
