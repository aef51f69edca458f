"""Bad input gets a clear QuantizationError, never silent garbage."""

import mlx.core as mx
import numpy as np
import pytest

from jang.quant import QuantizationError, quantize_tensor, relative_error


def with_value(value, row=3, col=17):
    w = np.random.standard_normal((8, 128)).astype(np.float32)
    w[row, col] = value
    return mx.array(w)


@pytest.mark.parametrize("method", ("rtn", "clip"))
@pytest.mark.parametrize("dtype", (mx.float32, mx.float16, mx.bfloat16))
@pytest.mark.parametrize("value", (np.nan, np.inf, -np.inf))
def test_non_finite_weights(method, dtype, value):
    w = with_value(value).astype(dtype)
    with pytest.raises(QuantizationError, match=r"row 3 .*NaN/Inf"):
        quantize_tensor(w, 4, 64, method)
    with pytest.raises(QuantizationError, match="NaN/Inf"):
        relative_error(w, 4, 64, method)


def test_range_overflowing_float32():
    w = np.zeros((2, 64), np.float32)
    w[1, :2] = [-3e38, 3e38]
    with pytest.raises(QuantizationError, match="row 1"):
        quantize_tensor(mx.array(w), 4, 64)


@pytest.mark.parametrize(
    ("w", "bits", "gs", "match"),
    [
        (mx.zeros((0, 64)), 4, 64, "empty"),
        (mx.zeros((4, 0)), 4, 32, "empty"),
        (mx.zeros((64,)), 4, 64, "2 dimensions"),
        (mx.zeros((4, 96)), 4, 64, "not divisible by group size 64"),
        (mx.zeros((4, 100)), 4, 32, "not divisible"),
        (mx.zeros((4, 64), dtype=mx.int32), 4, 64, "dtype"),
        (mx.zeros((4, 64)), 7, 64, "bits"),
        (mx.zeros((4, 64)), 1, 64, "bits"),
        (mx.zeros((4, 64)), 4, 16, "group_size"),
        (np.zeros((4, 64), np.float32), 4, 64, "mx.array"),
    ],
)
def test_bad_shapes_and_parameters(w, bits, gs, match):
    for method in ("rtn", "clip"):
        with pytest.raises(QuantizationError, match=match):
            quantize_tensor(w, bits, gs, method)
        with pytest.raises(QuantizationError, match=match):
            relative_error(w, bits, gs, method)


@pytest.mark.parametrize(
    ("importance", "match"),
    [
        (np.ones(64, np.float32), "64 entries"),
        (-np.ones(128, np.float32), "non-negative"),
        (np.full(128, np.nan, np.float32), "finite"),
    ],
)
def test_bad_importance(importance, match):
    with pytest.raises(QuantizationError, match=match):
        quantize_tensor(mx.zeros((4, 128)), 4, 64, "clip", importance)


def test_unknown_method():
    with pytest.raises(QuantizationError, match="method"):
        quantize_tensor(mx.zeros((4, 64)), 4, 64, "gptq")
