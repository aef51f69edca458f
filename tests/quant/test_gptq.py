"""GPTQ on one layer: beats RTN and clip on output error, matches a float64 reference."""

import mlx.core as mx
import numpy as np
import pytest

from jang.quant import (
    Hessian,
    QuantizationError,
    dequantize_tensor,
    gptq_quantize,
    quantize_tensor,
    unpack,
)
from jang.quant.clip import clip_block
from jang.quant.gptq import inverse_cholesky
from jang.quant.groups import rounder
from jang.quant.rtn import rtn_block


def synthetic_inputs(n, dim, seed):
    """Correlated features with very different channel scales, like LLM activations."""
    rng = np.random.default_rng(seed)
    mix = np.eye(dim) + 2 * rng.standard_normal((dim, dim)) / np.sqrt(dim)
    scale = np.exp(rng.standard_normal(dim))
    return ((rng.standard_normal((n, dim)) @ mix) * scale).astype(np.float32)


def output_error(x, w, q, bits, group_size):
    wf = np.array(w.astype(mx.float32), np.float64)
    deq = np.array(dequantize_tensor(*q, bits, group_size).astype(mx.float32), np.float64)
    return np.linalg.norm(x @ (wf - deq).T) / np.linalg.norm(x @ wf.T)


@pytest.fixture(scope="module")
def layer():
    dim, out = 256, 64
    x = synthetic_inputs(2048, dim, seed=0)
    w = mx.array(np.random.default_rng(1).standard_normal((out, dim)).astype(np.float32))
    h = Hessian(dim)
    h.add(mx.array(x[:1000]))
    h.add(mx.array(x[1000:]))
    return x, w.astype(mx.float16), h


def test_hessian_accumulates_2xtx_over_n(layer):
    x, _, h = layer
    expected = 2 * x.T.astype(np.float64) @ x / len(x)
    np.testing.assert_allclose(h.matrix(), expected, rtol=1e-4, atol=1e-5 * expected.max())


@pytest.mark.parametrize("bits", (2, 3, 4))
def test_output_error_below_rtn_and_clip(layer, bits):
    x, w, h = layer
    importance = (x.astype(np.float64) ** 2).sum(0).astype(np.float32)
    rtn = output_error(x, w, quantize_tensor(w, bits, 64), bits, 64)
    clip = output_error(x, w, quantize_tensor(w, bits, 64, "clip", importance), bits, 64)
    gptq = gptq_quantize(w, h, bits, 64)
    err = output_error(x, w, gptq, bits, 64)
    assert err < 0.8 * clip < 0.8 * rtn
    assert gptq[0].shape == (64, 256 * bits // 32)
    assert gptq[1].dtype == mx.float16 and gptq[1].shape == (64, 4)
    if bits > 2:  # without act-order and with plain min/max groups it still beats RTN
        plain = gptq_quantize(w, h, bits, 64, act_order=False, params="rtn")
        assert output_error(x, w, plain, bits, 64) < rtn


def reference_gptq(w, hess, bits, group_size, damp=0.01, params=rtn_block):
    """Textbook GPTQ in float64: full inverse, one column at a time, no lazy blocks."""
    w = np.array(w.astype(mx.float32), np.float64)
    h = hess.astype(np.float64).copy()
    rows, cols = w.shape
    diag = np.diag(h).copy()
    dead = np.nonzero(diag <= 0)[0]
    h[dead, dead] = 1
    diag[dead] = 0
    perm = np.argsort(-diag, kind="stable")
    w, h = w[:, perm], h[np.ix_(perm, perm)]
    h += damp * np.mean(np.diag(h)) * np.eye(cols)
    u = np.linalg.cholesky(np.linalg.inv(h)).T
    rnd = rounder(mx.float16)
    scales = np.zeros((rows, cols // group_size))
    biases = np.zeros_like(scales)
    seen = set()
    codes = np.zeros((rows, cols))
    for j in range(cols):
        g = perm[j] // group_size
        if g not in seen:
            members = [
                np.nonzero(perm == c)[0][0] for c in range(g * group_size, (g + 1) * group_size)
            ]
            current = np.ascontiguousarray(w[:, members].T, np.float32)
            imp = np.repeat(diag[g * group_size : (g + 1) * group_size, None], rows, 1)
            _, scales[:, g], biases[:, g] = params(current, bits, rnd, imp.astype(np.float32))
            seen.add(g)
        s, b = scales[:, g], biases[:, g]
        q = np.clip(np.rint((w[:, j] - b) / s), 0, (1 << bits) - 1)
        err = (w[:, j] - (s * q + b)) / u[j, j]
        w[:, j:] -= np.outer(err, u[j, j:])
        codes[:, j] = q
    return codes[:, np.argsort(perm)], scales, biases


@pytest.mark.parametrize(("bits", "params"), [(3, rtn_block), (4, clip_block), (5, rtn_block)])
def test_matches_float64_reference(bits, params):
    dim, out = 128, 24
    x = synthetic_inputs(512, dim, seed=2)
    x[:, 5] = 0  # a dead input
    hess = 2 * x.T.astype(np.float64) @ x / len(x)
    w = mx.array(np.random.default_rng(3).standard_normal((out, dim))).astype(mx.float16)
    name = "clip" if params is clip_block else "rtn"
    ref_codes, ref_s, ref_b = reference_gptq(w, hess, bits, 32, params=params)
    wq, s, b = gptq_quantize(w, hess, bits, 32, block_size=64, params=name, precision="float64")
    np.testing.assert_array_equal(unpack(np.array(wq), bits), ref_codes)
    np.testing.assert_array_equal(np.array(s.astype(mx.float32)), ref_s)
    np.testing.assert_array_equal(np.array(b.astype(mx.float32)), ref_b)
    # the float32 run (the default) lands on nearly the same codes
    codes32 = unpack(
        np.array(gptq_quantize(w, hess, bits, 32, block_size=64, params=name)[0]), bits
    )
    assert (codes32 == ref_codes).mean() > 0.97


def test_mlx_backend_matches_numpy(layer):
    x, w, h = layer
    a = gptq_quantize(w, h, 3, 64, backend="numpy")
    b = gptq_quantize(w, h, 3, 64, backend="mlx")
    agree = (unpack(np.array(a[0]), 3) == unpack(np.array(b[0]), 3)).mean()
    assert agree > 0.97
    assert output_error(x, w, b, 3, 64) == pytest.approx(output_error(x, w, a, 3, 64), rel=0.05)


def test_dead_inputs_and_zero_hessian():
    w = mx.array(np.random.default_rng(4).standard_normal((16, 64)).astype(np.float32))
    # no input ever active: every column is plain rounding with RTN's grid -> mx.quantize
    wq, s, _ = gptq_quantize(w, np.zeros((64, 64), np.float32), 4, 64)
    ref = mx.quantize(w, 64, 4)
    np.testing.assert_array_equal(np.array(wq), np.array(ref[0]))
    np.testing.assert_array_equal(np.array(s), np.array(ref[1]))


def test_rank_deficient_hessian_is_damped():
    x = synthetic_inputs(8, 128, seed=5)  # 8 samples, 128 inputs: rank 8
    w = mx.array(np.random.default_rng(6).standard_normal((16, 128)).astype(np.float32))
    q = gptq_quantize(w, 2 * x.T @ x / 8, 4, 64)
    assert np.all(np.isfinite(np.array(dequantize_tensor(*q, 4, 64))))
    assert output_error(x, w, q, 4, 64) < output_error(x, w, quantize_tensor(w, 4, 64), 4, 64)


def test_indefinite_hessian_gets_more_damping_or_an_error():
    h = np.array([[1.0, 2.0], [2.0, 1.0]])  # eigenvalues 3 and -1
    u, frac = inverse_cholesky(h, 0.01)
    assert frac == pytest.approx(10.0)
    np.testing.assert_allclose(u.T @ u, np.linalg.inv(h + 10 * np.eye(2)), rtol=1e-10)
    with pytest.raises(QuantizationError, match="positive definite"):
        inverse_cholesky(np.array([[1.0, 30.0], [30.0, 1.0]]), 0.01)


@pytest.mark.parametrize(
    ("hessian", "match"),
    [
        (np.full((64, 64), np.nan, np.float32), "NaN"),
        (np.eye(32, dtype=np.float32), "shape"),
    ],
)
def test_bad_hessians(hessian, match):
    with pytest.raises(QuantizationError, match=match):
        gptq_quantize(mx.zeros((8, 64)), hessian, 4, 32)


def test_bad_weights():
    w = np.zeros((8, 64), np.float32)
    w[2, 3] = np.nan
    with pytest.raises(QuantizationError, match="NaN"):
        gptq_quantize(mx.array(w), np.eye(64), 4, 32)
    with pytest.raises(QuantizationError, match="divisible"):
        gptq_quantize(mx.zeros((8, 48)), np.eye(48), 4, 32)
    with pytest.raises(QuantizationError, match="calibration"):
        Hessian(8).matrix()
