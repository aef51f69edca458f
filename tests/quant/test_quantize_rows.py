"""quant.tensor.quantize_rows: quantizing a block of rows at a time == one call, bit for bit."""

import mlx.core as mx
import numpy as np
import pytest

from jang.quant import tensor


def bits_of(a: mx.array) -> np.ndarray:
    return np.array(a.view({2: mx.uint16, 4: mx.uint32}[a.dtype.size]))


@pytest.mark.parametrize(
    ("method", "debias", "bits"), [("rtn", False, 3), ("rtn", False, 4), ("clip", True, 3)]
)
@pytest.mark.parametrize("source_dtype", ["bfloat16", "float32"])
def test_blocks_match_one_call(monkeypatch, method, debias, bits, source_dtype):
    monkeypatch.setattr(tensor, "QUANT_BLOCK", 64 * 7)  # 7 rows of 64 per block: ragged tail
    w = mx.random.normal((50, 64), key=mx.random.key(0)).astype(getattr(mx, source_dtype))
    whole = tensor.quantize(w.astype(mx.bfloat16), bits, 32, method, debias)
    blocks = tensor.quantize_rows(w, mx.bfloat16, bits, 32, method, debias)
    for a, b in zip(whole, blocks, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(bits_of(a), bits_of(b))


def test_blocks_keep_leading_dims(monkeypatch):
    monkeypatch.setattr(tensor, "QUANT_BLOCK", 64 * 3)
    w = mx.random.normal((2, 5, 64), key=mx.random.key(1)).astype(mx.bfloat16)
    q, s, b = tensor.quantize_rows(w, mx.bfloat16, 4, 64, "rtn", False)
    q0, s0, b0 = mx.quantize(w, group_size=64, bits=4)
    assert q.shape == q0.shape == (2, 5, 8) and s.shape == s0.shape == (2, 5, 1)
    for a, c in ((q, q0), (s, s0), (b, b0)):
        np.testing.assert_array_equal(bits_of(a), bits_of(c))
