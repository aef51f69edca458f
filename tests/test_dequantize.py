"""jang.dequantize: bit-exact with mx.dequantize, composable, strict on bad input."""

import itertools

import mlx.core as mx
import numpy as np
import pytest

import jang
from testutil import bits_of

BITS = [2, 3, 4, 5, 6, 8]
GROUPS = [32, 64, 128]
DTYPES = [mx.float32, mx.float16, mx.bfloat16]


def quantized(shape, bits, group_size, dtype=mx.float16, scale=1.0):
    w = (mx.random.normal(shape) * scale).astype(dtype)
    return mx.quantize(w, group_size=group_size, bits=bits)


def assert_bit_exact(ours: mx.array, theirs: mx.array):
    assert ours.dtype == theirs.dtype
    assert ours.shape == theirs.shape
    np.testing.assert_array_equal(bits_of(ours), bits_of(theirs))


@pytest.mark.parametrize(
    ("bits", "group_size", "dtype"), list(itertools.product(BITS, GROUPS, DTYPES))
)
def test_bit_exact_random(bits, group_size, dtype):
    # 384 columns: a multiple of every group size and of every pack length.
    for shape, scale in [((13, 384), 1.0), ((2, 3, 768), 40.0), ((1, 128 * 3), 1e-3)]:
        if shape[-1] % group_size:
            continue
        q, s, b = quantized(shape, bits, group_size, dtype, scale)
        ours = jang.dequantize(q, s, b, bits, group_size)
        theirs = mx.dequantize(q, s, b, group_size=group_size, bits=bits)
        assert_bit_exact(ours, theirs)


def pack_bitstream(codes: np.ndarray, bits: int) -> np.ndarray:
    """Reference packing, one bit at a time: code k occupies bits [k*bits, (k+1)*bits)."""
    rows, n = codes.shape
    out = np.zeros((rows, n * bits // 32), dtype=np.uint32)
    for r in range(rows):
        for k in range(n):
            for j in range(bits):
                if (int(codes[r, k]) >> j) & 1:
                    bit = k * bits + j
                    out[r, bit // 32] |= np.uint32(1 << (bit % 32))
    return out


@pytest.mark.parametrize("bits", BITS)
def test_layout_is_little_endian_bitstream(bits):
    # Every code value, packed independently of MLX, with scale 1 and bias 0.
    rows, n = 3, 128 * 3
    codes = (np.arange(rows * n).reshape(rows, n) * 7 + 3) % (1 << bits)
    q = mx.array(pack_bitstream(codes, bits))
    s = mx.ones((rows, n // 128), mx.float32)
    b = mx.zeros((rows, n // 128), mx.float32)
    np.testing.assert_array_equal(
        np.array(jang.dequantize(q, s, b, bits, 128)), codes.astype(np.float32)
    )
    assert_bit_exact(
        jang.dequantize(q, s, b, bits, 128), mx.dequantize(q, s, b, group_size=128, bits=bits)
    )


def test_non_contiguous_inputs():
    q, s, b = quantized((4, 6, 256), 3, 64)
    qt, st, bt = (mx.swapaxes(a, 0, 1) for a in (q, s, b))
    assert_bit_exact(
        jang.dequantize(qt, st, bt, 3, 64), mx.dequantize(qt, st, bt, group_size=64, bits=3)
    )
    # strided slices along rows, and scales broadcast along a batch dim
    qs, ss, bs = q[:, ::2], s[:, ::2], b[:, ::2]
    assert_bit_exact(
        jang.dequantize(qs, ss, bs, 3, 64), mx.dequantize(qs, ss, bs, group_size=64, bits=3)
    )
    s0 = mx.broadcast_to(s[:1], s.shape)
    b0 = mx.broadcast_to(b[:1], b.shape)
    assert_bit_exact(
        jang.dequantize(q, s0, b0, 3, 64), mx.dequantize(q, s0, b0, group_size=64, bits=3)
    )


def test_strided_last_dimension():
    # A transposed view: the packed words of a row are 64 elements apart in memory.
    words = mx.array(np.random.randint(0, 2**32, size=(8, 64), dtype=np.uint64).astype(np.uint32))
    qv = words.T  # (64 rows, 8 words) = 64 codes of 4 bits per row
    s = mx.random.normal((64, 1)).astype(mx.float16)
    b = mx.random.normal((64, 1)).astype(mx.float16)
    assert_bit_exact(
        jang.dequantize(qv, s, b, 4, 64), mx.dequantize(qv, s, b, group_size=64, bits=4)
    )


def test_empty_rows():
    q, s, b = quantized((0, 128), 4, 64)
    out = jang.dequantize(q, s, b, 4, 64)
    assert out.shape == (0, 128)


def test_compile():
    q, s, b = quantized((8, 512), 5, 128, mx.bfloat16)

    @mx.compile
    def f(q, s, b):
        return jang.dequantize(q, s, b, 5, 128) * 2

    assert_bit_exact(f(q, s, b), mx.dequantize(q, s, b, group_size=128, bits=5) * 2)
    # a second call with new values reuses the compiled graph
    q2, s2, b2 = quantized((8, 512), 5, 128, mx.bfloat16)
    assert_bit_exact(f(q2, s2, b2), mx.dequantize(q2, s2, b2, group_size=128, bits=5) * 2)


def test_compile_shapeless():
    f = mx.compile(lambda q, s, b: jang.dequantize(q, s, b, 6, 32), shapeless=True)
    for rows in (3, 7):
        q, s, b = quantized((rows, 192), 6, 32)
        assert_bit_exact(f(q, s, b), mx.dequantize(q, s, b, group_size=32, bits=6))


def test_vmap():
    q, s, b = quantized((5, 4, 256), 2, 32, mx.float32)
    ref = mx.dequantize(q, s, b, group_size=32, bits=2)
    f = mx.vmap(lambda q, s, b: jang.dequantize(q, s, b, 2, 32))
    assert_bit_exact(f(q, s, b), ref)
    # vmap over axis 1, and an un-mapped (shared) scale/bias
    g = mx.vmap(lambda q, s, b: jang.dequantize(q, s, b, 2, 32), in_axes=(1, None, None))
    qt = mx.swapaxes(q, 0, 1)
    out = g(qt, s[0], b[0])
    expect = mx.dequantize(
        q, mx.broadcast_to(s[0], s.shape), mx.broadcast_to(b[0], b.shape), group_size=32, bits=2
    )
    assert_bit_exact(out, expect)


def test_vmap_inside_compile():
    q, s, b = quantized((3, 2, 128), 8, 64)
    f = mx.compile(mx.vmap(lambda q, s, b: jang.dequantize(q, s, b, 8, 64)))
    assert_bit_exact(f(q, s, b), mx.dequantize(q, s, b, group_size=64, bits=8))


def test_stream_argument():
    q, s, b = quantized((2, 64), 4, 64)
    assert_bit_exact(
        jang.dequantize(q, s, b, 4, 64, stream=mx.cpu),
        mx.dequantize(q, s, b, group_size=64, bits=4),
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bits": 7}, "bits must be one of"),
        ({"bits": 1}, "bits must be one of"),
        ({"group_size": 16}, "group_size must be one of"),
        ({"group_size": 256}, "group_size must be one of"),
        (
            {"bits": 3},
            "whole number of 3-bit codes",
        ),  # 4-bit words: 32 words is not a multiple of 3
        ({"bits": 8}, "describe"),  # 32 words at 8 bits = 128 codes, scales describe 256
    ],
)
def test_bad_parameters(kwargs, message):
    q, s, b = quantized((4, 256), 4, 64)
    args = {"bits": 4, "group_size": 64, **kwargs}
    with pytest.raises(ValueError, match=message):
        jang.dequantize(q, s, b, args["bits"], args["group_size"])


def test_bad_shapes_and_dtypes():
    q, s, b = quantized((4, 256), 4, 64)
    with pytest.raises(ValueError, match="w must be uint32"):
        jang.dequantize(q.astype(mx.int32), s, b, 4, 64)
    with pytest.raises(ValueError, match="w must be uint32"):
        jang.dequantize(s, s, b, 4, 64)
    with pytest.raises(ValueError, match="scales must be float32"):
        jang.dequantize(q, s.astype(mx.int32), b.astype(mx.int32), 4, 64)
    with pytest.raises(ValueError, match="biases must have the dtype of scales"):
        jang.dequantize(q, s, b.astype(mx.float32), 4, 64)
    with pytest.raises(ValueError, match="same number of dimensions"):
        jang.dequantize(q, s[None], b[None], 4, 64)
    with pytest.raises(ValueError, match="same shape"):
        jang.dequantize(q, s, b[:, :2], 4, 64)
    with pytest.raises(ValueError, match="leading dimensions"):
        jang.dequantize(q, s[:3], b[:3], 4, 64)
    with pytest.raises(ValueError, match="describe"):
        jang.dequantize(q[:, :16], s, b, 4, 64)
    with pytest.raises(TypeError):
        jang.dequantize(q, s, b, "4", 64)


def test_errors_inside_transforms_are_value_errors():
    q, s, b = quantized((2, 4, 256), 4, 64)
    with pytest.raises(ValueError, match="bits must be one of"):
        mx.vmap(lambda q, s, b: jang.dequantize(q, s, b, 7, 64))(q, s, b)
    with pytest.raises(ValueError, match="group_size must be one of"):
        mx.compile(lambda q, s, b: jang.dequantize(q, s, b, 4, 48))(q, s, b)
