"""use_jang_kernels: mlx-lm models run through jang's kernels and match stock MLX."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

pytest.importorskip("mlx_lm")

from mlx_lm.models import llama
from mlx_lm.models.switch_layers import SwitchGLU

from jang.kernels import (
    JangQuantizedEmbedding,
    JangQuantizedLinear,
    JangSwitchGLU,
    use_jang_kernels,
)


def tiny_llama(tie: bool) -> nn.Module:
    args = llama.ModelArgs(
        model_type="llama",
        hidden_size=128,
        num_hidden_layers=2,
        intermediate_size=384,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        vocab_size=512,
        tie_word_embeddings=tie,
    )
    model = llama.Model(args)
    mx.eval(model.parameters())
    return model


def mixed_bits(path: str, module: nn.Module):
    """Per-module widths, as a jang plan gives them."""
    if not hasattr(module, "to_quantized"):
        return False
    if "embed" in path or "lm_head" in path:
        return {"bits": 6, "group_size": 64}
    if "self_attn" in path:
        return {"bits": 8 if "v_proj" in path else 5, "group_size": 32}
    if "layers.0." in path:
        return {"bits": 3, "group_size": 64}
    return {"bits": 2, "group_size": 128}


@pytest.mark.parametrize("tie", [True, False])
def test_mixed_precision_llama_matches_stock(tie):
    model = tiny_llama(tie)
    nn.quantize(model, class_predicate=mixed_bits)
    tokens = mx.array([[1, 7, 42, 300, 5, 9]])
    stock = model(tokens)
    swapped = use_jang_kernels(model)
    classes = {type(m) for _, m in model.named_modules()}
    assert JangQuantizedLinear in classes and JangQuantizedEmbedding in classes
    # 7 linears per layer, plus the embedding and an untied head
    assert swapped == 2 * 7 + 1 + (0 if tie else 1)
    bits = {m.bits for _, m in model.named_modules() if isinstance(m, JangQuantizedLinear)}
    assert bits == ({2, 3, 5, 8} if tie else {2, 3, 5, 6, 8})
    ours = model(tokens)
    mag = float(mx.abs(stock).max())
    np.testing.assert_allclose(np.array(ours), np.array(stock), rtol=0, atol=1e-4 * mag)
    # decode step with a cache goes through the M = 1 path
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    model(tokens, cache=cache)
    step = model(mx.array([[11]]), cache=cache)
    assert step.shape == (1, 1, 512)
    # restore
    assert use_jang_kernels(model, enabled=False) == swapped
    assert not any(
        isinstance(m, (JangQuantizedLinear, JangQuantizedEmbedding))
        for _, m in model.named_modules()
    )
    np.testing.assert_array_equal(np.array(model(tokens)), np.array(stock))


def test_opt_out_env(monkeypatch):
    model = tiny_llama(True)
    nn.quantize(model, bits=4, group_size=64)
    monkeypatch.setenv("JANG_KERNELS", "0")
    assert use_jang_kernels(model) == 0
    monkeypatch.setenv("JANG_KERNELS", "1")
    assert use_jang_kernels(model) > 0


def test_unsupported_modes_stay_stock():
    lin = nn.Linear(64, 32)
    q = nn.QuantizedLinear.from_linear(lin, group_size=32, bits=4, mode="mxfp4")
    holder = nn.Sequential(q)
    assert use_jang_kernels(holder) == 0
    assert type(holder.layers[0]) is nn.QuantizedLinear


@pytest.mark.parametrize("tokens", [1, 40])
def test_quantized_switch_glu_matches_stock(tokens):
    glu = SwitchGLU(128, 64, num_experts=8)
    mx.eval(glu.parameters())

    def predicate(path, module):
        if not hasattr(module, "to_quantized"):
            return False
        return {"bits": 4, "group_size": 64} if "down" in path else {"bits": 3, "group_size": 32}

    nn.quantize(glu, class_predicate=predicate)
    x = mx.random.normal((2, tokens, 128))
    idx = mx.random.randint(0, 8, (2, tokens, 2))
    stock = glu(x, idx)
    assert use_jang_kernels(glu) == 4  # gate, up, down and the GLU itself
    assert type(glu) is JangSwitchGLU
    ours = glu(x, idx)
    assert ours.shape == stock.shape
    mag = float(mx.abs(stock).max())
    np.testing.assert_allclose(np.array(ours), np.array(stock), rtol=0, atol=1e-4 * mag)
    use_jang_kernels(glu, enabled=False)
    assert type(glu) is SwitchGLU
