"""RTN is bit-identical to mx.quantize / mx.dequantize, for every width, group size, dtype."""

import mlx.core as mx
import numpy as np
import pytest

from jang.quant import dequantize_tensor, quantize_tensor, relative_error, unpack
from jang.quant import groups as G
from testutil import bits_of

BITS = (2, 3, 4, 5, 6, 8)
DTYPES = (mx.float32, mx.float16, mx.bfloat16)


def awkward_weight(rows: int, cols: int, dtype) -> mx.array:
    """Heavy-tailed rows plus groups that stress the edge cases of MLX's arithmetic."""
    w = mx.random.normal((rows, cols)) * mx.exp(2 * mx.random.normal((rows, 1)))
    w = np.array(w)
    w[0, :32] = 0.0  # all zero: q0 == 0, bias 0
    w[1, :32] = 0.37  # constant: scale clamps to 1e-7
    w[2, :32] = -np.abs(w[2, :32])  # one-signed
    w[3, :32] = np.abs(w[3, :32])
    w[4, :32] = 1e-9 * w[4, :32]  # below eps
    w[5, :32] = np.linspace(-3, 5, 32)  # values exactly on a grid
    w[6, 32:64] = 6e4 * np.sign(w[6, 32:64])  # near the fp16 limit
    return mx.array(w).astype(dtype)


def assert_same(a: mx.array, b: mx.array) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    if a.dtype == mx.uint32:
        np.testing.assert_array_equal(np.array(a), np.array(b))
    else:
        np.testing.assert_array_equal(bits_of(a), bits_of(b))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("group_size", (32, 64, 128))
def test_rtn_equals_mx_quantize(dtype, bits, group_size):
    w = awkward_weight(40, 384, dtype)
    ours = quantize_tensor(w, bits, group_size)
    ref = mx.quantize(w, group_size, bits)
    for a, b in zip(ours, ref, strict=True):
        assert_same(a, b)
    assert_same(dequantize_tensor(*ours, bits, group_size), mx.dequantize(*ref, group_size, bits))


def test_chunking_is_invisible(monkeypatch):
    """Many slabs and blocks with a ragged last block give the same bytes as one pass."""
    w = awkward_weight(203, 256, mx.bfloat16).reshape(7, 29, 256)  # 3-D, like stacked experts
    monkeypatch.setattr(G, "BLOCK_ELEMENTS", 3 * 256)
    monkeypatch.setattr(G, "SLAB_ELEMENTS", 10 * 256)
    for bits in (3, 4):
        ours = quantize_tensor(w, bits, 64)
        ref = mx.quantize(w, 64, bits)
        for a, b in zip(ours, ref, strict=True):
            assert_same(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", (2, 3, 8))
def test_relative_error_is_that_of_the_stored_tensor(dtype, bits):
    w = awkward_weight(16, 256, dtype)
    wq, scales, biases = mx.quantize(w, 64, bits)
    codes = unpack(np.array(wq), bits).reshape(16, 4, 64).astype(np.float64)
    s = np.array(scales.astype(mx.float32), np.float64)[..., None]
    b = np.array(biases.astype(mx.float32), np.float64)[..., None]
    x = np.array(w.astype(mx.float32), np.float64)
    expected = np.linalg.norm(x - (codes * s + b).reshape(16, 256)) / np.linalg.norm(x)
    assert relative_error(w, bits, 64) == pytest.approx(expected, rel=1e-4)


def test_relative_error_weighted():
    w = mx.random.normal((8, 128))
    h = np.random.rand(128).astype(np.float32)
    deq = np.array(mx.dequantize(*mx.quantize(w, 64, 3), 64, 3), np.float64)
    x = np.array(w, np.float64)
    expected = np.sqrt(((x - deq) ** 2 * h).sum() / (x**2 * h).sum())
    assert relative_error(w, 3, 64, importance=h) == pytest.approx(expected, rel=1e-5)
    assert relative_error(mx.zeros((4, 64)), 4, 64) == 0.0
