"""The numpy linear and attention used on the CPU agree with MLX's own operations."""

import mlx.core as mx
import numpy as np
import pytest

from jang.quant import cpu_forward


@pytest.mark.parametrize("mask", [None, "causal", "additive", "bool"])
@pytest.mark.parametrize("dtype", (mx.float32, mx.bfloat16))
def test_attention_matches_mlx(mask, dtype):
    q = mx.random.normal((2, 6, 9, 16)).astype(dtype)
    k = mx.random.normal((2, 2, 13, 16)).astype(dtype)
    v = mx.random.normal((2, 2, 13, 16)).astype(dtype)
    m = {
        "additive": mx.random.normal((9, 13)).astype(dtype),
        "bool": mx.random.uniform(shape=(2, 1, 9, 13)) > 0.3,
    }.get(mask, mask)
    ref = cpu_forward.ORIGINAL_ATTENTION(q, k, v, scale=0.25, mask=m)
    out = cpu_forward.attention(q, k, v, scale=0.25, mask=m)
    assert out.dtype == dtype and out.shape == ref.shape
    tol = 1e-5 if dtype == mx.float32 else 3e-2
    np.testing.assert_allclose(
        np.array(out.astype(mx.float32)), np.array(ref.astype(mx.float32)), atol=tol
    )


def test_patch_is_scoped():
    with cpu_forward.numpy_attention():
        assert mx.fast.scaled_dot_product_attention is cpu_forward.attention
    assert mx.fast.scaled_dot_product_attention is cpu_forward.ORIGINAL_ATTENTION


def test_linear_matches_mlx():
    x = mx.random.normal((3, 5, 32)).astype(mx.float16)
    w, b = mx.random.normal((24, 32)), mx.random.normal((24,))
    out = cpu_forward.linear(x, np.array(w), np.array(b))
    ref = x.astype(mx.float32) @ w.T + b
    assert out.dtype == mx.float16 and out.shape == (3, 5, 24)
    np.testing.assert_allclose(
        np.array(out.astype(mx.float32)), np.array(ref), rtol=2e-3, atol=2e-2
    )


def test_numpy_model_matches_mlx():
    from mlx_lm.models import llama

    args = llama.ModelArgs(
        model_type="llama",
        hidden_size=64,
        num_hidden_layers=2,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        vocab_size=128,
        tie_word_embeddings=False,
    )
    model = llama.Model(args)
    tokens = mx.array(np.random.default_rng(0).integers(0, 128, (2, 16)))
    ref = model(tokens)
    with cpu_forward.numpy_model(model):
        assert isinstance(model.lm_head, cpu_forward._NumpyLinear)
        out = model(tokens)
    assert type(model.lm_head).__name__ == "Linear"
    np.testing.assert_allclose(np.array(out), np.array(ref), atol=1e-4)
