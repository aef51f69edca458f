"""Clip search: never worse than RTN on any group, strictly better on heavy tails, valid layout."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from jang.quant import dequantize_tensor, quantize_tensor, relative_error, unpack

BITS = (2, 3, 4, 5, 6, 8)


def group_errors(w, q, bits, group_size, h=None):
    """Per-group squared error in float64 of the stored (codes, scales, biases)."""
    wq, scales, biases = q
    rows = w.shape[0]
    codes = unpack(np.array(wq), bits).reshape(rows, -1, group_size).astype(np.float64)
    s = np.array(scales.astype(mx.float32), np.float64)[..., None]
    b = np.array(biases.astype(mx.float32), np.float64)[..., None]
    x = np.array(w.astype(mx.float32), np.float64).reshape(rows, -1, group_size)
    r2 = (codes * s + b - x) ** 2
    if h is not None:
        r2 = r2 * np.asarray(h, np.float64).reshape(1, -1, group_size)
    return r2.sum(-1)


def heavy_tailed(rows, cols, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return mx.array(rng.standard_t(3, (rows, cols)).astype(np.float32)).astype(dtype)


@pytest.mark.parametrize("dtype", (mx.float32, mx.float16, mx.bfloat16))
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("group_size", (32, 128))
def test_never_worse_than_rtn_per_group(dtype, bits, group_size):
    w = heavy_tailed(48, 512, dtype)
    h = np.random.default_rng(1).gamma(0.5, size=512).astype(np.float32)
    for imp in (None, h):
        rtn = group_errors(w, quantize_tensor(w, bits, group_size), bits, group_size, imp)
        clip = group_errors(
            w, quantize_tensor(w, bits, group_size, "clip", imp), bits, group_size, imp
        )
        assert np.all(clip <= rtn), np.max(clip - rtn)
        # and it is a real improvement, not RTN in disguise
        assert clip.sum() < 0.97 * rtn.sum()
        assert (clip < rtn).mean() > 0.5


@pytest.mark.parametrize("bits", (2, 3, 4))
def test_strictly_better_on_heavy_tails(bits):
    w = heavy_tailed(64, 1024, mx.float16, seed=2)
    rtn, clip = relative_error(w, bits, 64), relative_error(w, bits, 64, "clip")
    assert clip < 0.95 * rtn


def test_importance_steers_the_error():
    """Weighting by importance lowers the weighted error compared with unweighted clip."""
    w = heavy_tailed(64, 512, mx.float16, seed=3)
    h = np.exp(2 * np.random.default_rng(4).standard_normal(512)).astype(np.float32)
    plain = group_errors(w, quantize_tensor(w, 3, 64, "clip"), 3, 64, h).sum()
    weighted = group_errors(w, quantize_tensor(w, 3, 64, "clip", h), 3, 64, h).sum()
    assert weighted < 0.95 * plain
    assert relative_error(w, 3, 64, "clip", h) < relative_error(w, 3, 64, "clip")


def test_degenerate_groups_fall_back_to_rtn():
    """Constant, zero and zero-importance groups keep RTN's exact codes and parameters."""
    w = np.random.default_rng(5).standard_normal((4, 128)).astype(np.float32)
    w[0, :64] = 0.0
    w[1, :64] = -2.5
    w = mx.array(w).astype(mx.float16)
    h = np.ones(128, np.float32)
    h[64:] = 0.0
    rtn = quantize_tensor(w, 4, 64)
    clip = quantize_tensor(w, 4, 64, "clip", h)
    for a, b in zip(rtn, clip, strict=True):
        a, b = np.array(a.astype(mx.float32)), np.array(b.astype(mx.float32))
        if a.shape[-1] == 2:  # scales/biases: (rows, groups)
            np.testing.assert_array_equal(a[:2, 0], b[:2, 0])
            np.testing.assert_array_equal(a[:, 1], b[:, 1])
    deq = np.array(dequantize_tensor(*clip, 4, 64).astype(mx.float32))
    np.testing.assert_array_equal(deq[0, :64], 0.0)
    np.testing.assert_array_equal(deq[1, :64], -2.5)


@pytest.mark.parametrize("bits", (3, 4))
def test_output_runs_in_mlx(bits):
    """The clip output is ordinary MLX affine data: QuantizedLinear computes with it."""
    w = heavy_tailed(32, 256, mx.float32, seed=6)
    wq, scales, biases = quantize_tensor(w, bits, 64, "clip")
    layer = nn.QuantizedLinear(256, 32, bias=False, group_size=64, bits=bits)
    layer.weight, layer.scales, layer.biases = wq, scales, biases
    x = mx.random.normal((5, 256))
    expected = x @ dequantize_tensor(wq, scales, biases, bits, 64).T
    got, want = np.array(layer(x).astype(mx.float32)), np.array(expected.astype(mx.float32))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
