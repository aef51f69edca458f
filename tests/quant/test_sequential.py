"""Sequential GPTQ over a tiny random mlx-lm Llama."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm.models import llama

import jang.quant.sequential as seq
from jang.quant import (
    QuantizationError,
    activation_importance,
    dequantize_tensor,
    gptq_model,
    quantize_tensor,
)

ARGS = llama.ModelArgs(
    model_type="llama",
    hidden_size=64,
    num_hidden_layers=2,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-5,
    vocab_size=256,
    rope_theta=10000.0,
    tie_word_embeddings=True,
)


def tiny_model(seed=0, dtype=mx.float32):
    mx.random.seed(seed)
    model = llama.Model(ARGS)
    model.set_dtype(dtype)
    mx.eval(model.parameters())
    return model


def dtypes(model):
    return {k: v.dtype for k, v in tree_flatten(model.parameters())}


def linears(model):
    return [n for n, m in model.named_modules() if type(m) is nn.Linear]


@pytest.fixture(scope="module")
def tokens():
    return mx.array(np.random.default_rng(0).integers(0, 256, (8, 32)).astype(np.int32))


def logits_error(model, ref, tokens):
    out = model(tokens)
    return float(mx.linalg.norm(out - ref) / mx.linalg.norm(ref))


def test_stages_follow_the_dataflow(tokens):
    model = tiny_model()
    layer = model.model.layers[0]
    captured = seq._capture(model, model.model.layers, [tokens])
    x, (args, kwargs) = captured[0][0], captured[0][1][0]
    driver = seq._LayerDriver(layer, numpy=True)
    with driver.installed():
        stages = [names for _, names in driver.stages(x, args, kwargs)]
    assert stages == [
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
        ["self_attn.o_proj"],
        ["mlp.gate_proj", "mlp.up_proj"],
        ["mlp.down_proj"],
    ]
    assert type(layer.self_attn.q_proj) is nn.Linear  # taps removed


@pytest.mark.parametrize("bits", (2, 3))
def test_gptq_model_beats_rtn_and_clip(tokens, bits):
    ref = tiny_model()(tokens)
    plan = {n: (bits, 32) for n in linears(tiny_model())}
    errors = {}
    for method in ("rtn", "clip"):
        model = tiny_model()
        mods = dict(model.named_modules())
        for n in plan:
            q = quantize_tensor(mods[n].weight, bits, 32, method)
            mods[n].weight = dequantize_tensor(*q, bits, 32)
        errors[method] = logits_error(model, ref, tokens)
    model = tiny_model()
    results = gptq_model(model, plan, tokens, batch_size=4)
    assert set(results) == set(plan)
    for n, (wq, scales, biases) in results.items():
        m = dict(model.named_modules())[n]
        assert isinstance(m, nn.QuantizedLinear) and m.bits == bits and m.group_size == 32
        assert wq.dtype == mx.uint32 and scales.shape == biases.shape == (
            wq.shape[0],
            m.scales.shape[1],
        )
    errors["gptq"] = logits_error(model, ref, tokens)
    assert errors["gptq"] < 0.9 * errors["clip"] < 0.9 * errors["rtn"], errors


def test_hessians_see_the_quantized_sublayers(tokens, monkeypatch):
    """o_proj's Hessian comes from attention run with the already-quantized q/k/v."""
    seen = {}
    real = seq.gptq_quantize

    def spy(w, hessian, bits, group_size, **kw):
        seen[len(seen)] = hessian.matrix()
        return real(w, hessian, bits, group_size, **kw)

    monkeypatch.setattr(seq, "gptq_quantize", spy)
    names = ["q_proj", "k_proj", "v_proj", "o_proj"]
    plan = {f"model.layers.0.self_attn.{n}": (2, 32) for n in names}
    results = gptq_model(tiny_model(), plan, tokens, batch_size=8, replace=False)
    h_o = seen[3]

    def o_proj_hessian(model):
        inputs = []
        attn = model.model.layers[0].self_attn
        o_proj = attn.o_proj

        class Spy(nn.Module):
            def __call__(self, x):
                inputs.append(x)
                return o_proj(x)

        attn.o_proj = Spy()
        model(tokens)
        x = np.array(inputs[0].reshape(-1, 64), np.float64)
        return 2 * x.T @ x / len(x)

    model = tiny_model()
    float_h = o_proj_hessian(model)
    model = tiny_model()
    for n in names[:3]:
        mod = getattr(model.model.layers[0].self_attn, n)
        mod.weight = dequantize_tensor(*results[f"model.layers.0.self_attn.{n}"], 2, 32)
    quant_h = o_proj_hessian(model)
    scale = np.abs(quant_h).max()
    np.testing.assert_allclose(h_o, quant_h, atol=1e-4 * scale)
    assert np.abs(h_o - float_h).max() > 1e-2 * scale  # the test can tell the two apart


def test_reused_intermediates_change_nothing(tokens, monkeypatch):
    """Passes over a layer reuse final sublayers' results: same codes, one attention each."""
    from jang.quant import cpu_forward

    calls = []
    real = cpu_forward.attention

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(cpu_forward, "attention", counting)
    plan = {n: (3, 32) for n in linears(tiny_model())}
    batches = 2
    reused = gptq_model(tiny_model(), plan, tokens, batch_size=4, backend="numpy", replace=False)
    layers = ARGS.num_hidden_layers
    # one discovery pass on the first batch, then every batch's attention computed once
    assert len(calls) == layers * (1 + batches)
    calls.clear()
    monkeypatch.setattr(seq, "MEMO_BYTES", 0)
    recomputed = gptq_model(
        tiny_model(), plan, tokens, batch_size=4, backend="numpy", replace=False
    )
    # without reuse: the o, gate/up and down passes and the output pass each recompute it
    assert len(calls) == layers * (1 + 4 * batches)
    for n in plan:
        for a, b in zip(reused[n], recomputed[n], strict=True):
            np.testing.assert_array_equal(np.array(a), np.array(b))


def test_partial_plan_and_replace_false(tokens):
    model = tiny_model(dtype=mx.float16)
    types = dtypes(model)
    before = {n: np.array(m.weight) for n, m in model.named_modules() if type(m) is nn.Linear}
    embed_before = np.array(model.model.embed_tokens.weight)
    plan = {"model.layers.1.mlp.down_proj": (4, 64), "model.embed_tokens": (6, 64)}
    results = gptq_model(model, plan, tokens, replace=False)
    assert set(results) == set(plan)
    assert results["model.embed_tokens"][0].shape == (256, 64 * 6 // 32)
    for n, w in before.items():  # the model is left as it was
        np.testing.assert_array_equal(np.array(dict(model.named_modules())[n].weight), w)
    np.testing.assert_array_equal(np.array(model.model.embed_tokens.weight), embed_before)
    assert dtypes(model) == types  # float32 only while calibrating
    assert all(q[1].dtype == mx.float16 for q in results.values())

    results = gptq_model(model, plan, tokens)
    assert isinstance(model.model.embed_tokens, nn.QuantizedEmbedding)
    assert isinstance(model.model.layers[1].mlp.down_proj, nn.QuantizedLinear)
    assert type(model.model.layers[1].mlp.up_proj) is nn.Linear
    assert model(tokens).shape == (8, 32, 256)


def test_mlx_backend_agrees(tokens):
    plan = {n: (4, 32) for n in linears(tiny_model()) if ".layers.0." in n}
    a = gptq_model(tiny_model(), plan, tokens, backend="numpy", replace=False)
    b = gptq_model(tiny_model(), plan, tokens, backend="mlx", replace=False)
    for n in plan:
        wa = np.array(dequantize_tensor(*a[n], 4, 32))
        wb = np.array(dequantize_tensor(*b[n], 4, 32))
        assert np.abs(wa - wb).mean() < 0.05 * np.abs(wa).mean()


def test_activation_importance(tokens):
    half = tiny_model(dtype=mx.bfloat16)
    types = dtypes(half)
    imp16 = activation_importance(half, tokens)
    assert dtypes(half) == types
    model = tiny_model()
    imp = activation_importance(model, tokens, batch_size=3)
    assert set(imp) == set(linears(model))
    inputs = []
    q = model.model.layers[1].self_attn.q_proj

    class Spy(nn.Module):
        def __call__(self, x):
            inputs.append(np.array(x, np.float64).reshape(-1, 64))
            return q(x)

    model.model.layers[1].self_attn.q_proj = Spy()
    model(tokens)
    expected = (inputs[0] ** 2).sum(0)
    np.testing.assert_allclose(imp["model.layers.1.self_attn.q_proj"], expected, rtol=1e-4)
    np.testing.assert_allclose(imp16["model.layers.1.self_attn.q_proj"], expected, rtol=0.1)


@pytest.mark.parametrize(
    ("plan", "match"),
    [
        ({"model.layers.0.self_attn.nope": (4, 64)}, "not a module"),
        ({"model.layers.0.input_layernorm": (4, 64)}, "RMSNorm"),
        ({"model.layers.0.mlp.down_proj": (4, 96)}, "group_size"),
        ({"model.layers.0.mlp.down_proj": (7, 64)}, "bits"),
    ],
)
def test_bad_plans(tokens, plan, match):
    with pytest.raises(QuantizationError, match=match):
        gptq_model(tiny_model(), plan, tokens)


def test_bad_tokens():
    with pytest.raises(QuantizationError, match="samples, length"):
        gptq_model(tiny_model(), {}, mx.zeros((0, 16), dtype=mx.int32))


def head_model(tied: bool, seed=0):
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs(**{**ARGS.__dict__, "tie_word_embeddings": tied}))
    mx.eval(model.parameters())
    return model


def final_hidden_hessian(model, tokens):
    """2 X^T X / n of the final norm's outputs: what the output head reads."""
    norm, seen = model.model.norm, []

    class Spy(nn.Module):
        def __call__(self, x):
            out = norm(x)
            seen.append(np.array(out, np.float64).reshape(-1, out.shape[-1]))
            return out

    model.model.norm = Spy()
    model(tokens)
    model.model.norm = norm
    x = np.concatenate(seen)
    return 2 * x.T @ x / len(x)


@pytest.mark.parametrize("tied", (True, False))
def test_output_head_gets_gptq_on_the_final_hidden_states(tokens, tied, monkeypatch):
    """The module the model calls as its head is GPTQ-quantized on the Hessian of the
    final norm's outputs (of the model whose layers are already quantized); it then
    beats the clip search on the logits."""
    head = "model.embed_tokens" if tied else "lm_head"
    seen = {}
    real = seq.gptq_quantize

    def spy(w, hessian, bits, group_size, **kw):
        if w.shape == (256, 64):
            seen["h"] = hessian.matrix()
        return real(w, hessian, bits, group_size, **kw)

    monkeypatch.setattr(seq, "gptq_quantize", spy)
    layer_plan = {n: (3, 32) for n in linears(head_model(tied)) if ".layers." in n}
    plan = {**layer_plan, head: (2, 32)}
    model = head_model(tied)
    results = gptq_model(model, plan, tokens, batch_size=4)
    assert "h" in seen

    # the Hessian: the final states of the model with its layers (and, tied, the
    # embedding's lookup as clip left it) quantized
    expected = head_model(tied)
    mods = dict(expected.named_modules())
    for n, (bits, gs) in layer_plan.items():
        mods[n].weight = dequantize_tensor(*results[n], bits, gs)
    if tied:
        clipped = quantize_tensor(mods[head].weight, 2, 32, method="clip")
        mods[head].weight = dequantize_tensor(*clipped, 2, 32)
    h = final_hidden_hessian(expected, tokens)
    np.testing.assert_allclose(seen["h"], h, atol=1e-4 * np.abs(h).max())

    # what GPTQ minimises, the head's output error on those states, against the clip search
    float_head = dict(head_model(tied).named_modules())[head].weight

    def head_error(q):
        e = np.array(dequantize_tensor(*q, 2, 32) - float_head, np.float64)
        return np.einsum("ij,jk,ik->", e, h, e)

    clip_error = head_error(quantize_tensor(float_head, 2, 32, "clip"))
    assert head_error(results[head]) < 0.9 * clip_error
    installed = dict(model.named_modules())[head]  # replace=True installs the GPTQ result
    assert isinstance(installed, nn.QuantizedEmbedding if tied else nn.QuantizedLinear)
    np.testing.assert_array_equal(np.array(installed.weight), np.array(results[head][0]))


def test_an_untied_embedding_keeps_the_clip_search(tokens, monkeypatch):
    called = []
    monkeypatch.setattr(seq, "gptq_quantize", lambda *a, **k: called.append(1))
    model = head_model(tied=False)
    weight = model.model.embed_tokens.weight
    results = gptq_model(model, {"model.embed_tokens": (3, 32)}, tokens, replace=False)
    assert not called
    for a, b in zip(
        results["model.embed_tokens"], quantize_tensor(weight, 3, 32, "clip"), strict=True
    ):
        np.testing.assert_array_equal(np.array(a), np.array(b))


def test_a_matrix_before_the_layers_is_not_taken_for_the_head(tokens, monkeypatch):
    """A planned Linear that runs before the decoder layers (an input projection) keeps the
    clip search; the head is still the tied embedding used after them."""

    class ProjectedEmbedding(nn.Module):
        def __init__(self, embed):
            super().__init__()
            self.embed, self.proj = embed, nn.Linear(64, 64, bias=False)

        def __call__(self, x):
            return self.proj(self.embed(x))

        def as_linear(self, x):
            return self.embed.as_linear(x)

    mx.random.seed(1)
    model = head_model(tied=True)
    model.model.embed_tokens = ProjectedEmbedding(model.model.embed_tokens)
    mx.eval(model.parameters())
    proj = model.model.embed_tokens.proj.weight
    shapes = []
    real = seq.gptq_quantize

    def spy(w, hessian, bits, group_size, **kw):
        shapes.append(w.shape)
        return real(w, hessian, bits, group_size, **kw)

    monkeypatch.setattr(seq, "gptq_quantize", spy)
    plan = {"model.embed_tokens.proj": (3, 32), "model.embed_tokens.embed": (2, 32)}
    results = gptq_model(model, plan, tokens, replace=False)
    assert shapes == [(256, 64)]  # the embedding, as the head
    for a, b in zip(
        results["model.embed_tokens.proj"], quantize_tensor(proj, 3, 32, "clip"), strict=True
    ):
        np.testing.assert_array_equal(np.array(a), np.array(b))
