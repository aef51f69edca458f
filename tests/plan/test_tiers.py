"""Tensor roles, tiers, positions, decision groups and floors."""

import pytest

from jang.plan.tiers import (
    COMPRESS,
    CRITICAL,
    IMPORTANT,
    NONE,
    ROLE_TIER,
    bounds,
    classify,
)
from plan_fixtures import FAMILY_FILES, load

# (fixture, tensor name, role)
ROLES = [
    ("llama", "model.embed_tokens.weight", "embedding"),
    ("llama", "lm_head.weight", "lm_head"),
    ("llama", "model.layers.2.self_attn.q_proj.weight", "attn_q"),
    ("llama", "model.layers.2.self_attn.k_proj.weight", "attn_k"),
    ("llama", "model.layers.2.self_attn.v_proj.weight", "attn_v"),
    ("llama", "model.layers.2.self_attn.o_proj.weight", "attn_o"),
    ("llama", "model.layers.2.mlp.gate_proj.weight", "mlp_gate"),
    ("llama", "model.layers.2.mlp.up_proj.weight", "mlp_up"),
    ("llama", "model.layers.2.mlp.down_proj.weight", "mlp_down"),
    ("llama", "model.layers.2.input_layernorm.weight", "norm"),
    ("qwen2", "model.layers.0.self_attn.q_proj.bias", "bias"),
    ("qwen3", "model.layers.0.self_attn.q_norm.weight", "norm"),
    ("gemma2", "model.layers.1.pre_feedforward_layernorm.weight", "norm"),
    ("phi3", "model.layers.0.self_attn.qkv_proj.weight", "attn_qkv"),
    ("phi3", "model.layers.0.mlp.gate_up_proj.weight", "mlp_gate_up"),
    ("mixtral", "model.layers.1.block_sparse_moe.gate.weight", "router"),
    ("mixtral", "model.layers.1.block_sparse_moe.experts.3.w1.weight", "expert_gate"),
    ("mixtral", "model.layers.1.block_sparse_moe.experts.3.w3.weight", "expert_up"),
    ("mixtral", "model.layers.1.block_sparse_moe.experts.3.w2.weight", "expert_down"),
    ("qwen2_moe", "model.layers.0.mlp.gate.weight", "router"),
    ("qwen2_moe", "model.layers.0.mlp.shared_expert.down_proj.weight", "shared_expert"),
    ("qwen2_moe", "model.layers.0.mlp.shared_expert_gate.weight", "shared_expert_gate"),
    ("qwen2_moe", "model.layers.0.mlp.experts.7.down_proj.weight", "expert_down"),
    ("deepseek_v2", "model.layers.1.self_attn.q_proj.weight", "attn_q"),
    ("deepseek_v3", "model.layers.1.self_attn.q_a_proj.weight", "mla_q_a"),
    ("deepseek_v3", "model.layers.1.self_attn.q_b_proj.weight", "mla_q_b"),
    ("deepseek_v3", "model.layers.1.self_attn.kv_a_proj_with_mqa.weight", "mla_kv_a"),
    ("deepseek_v3", "model.layers.1.self_attn.kv_b_proj.weight", "mla_kv_b"),
    ("deepseek_v3", "model.layers.1.self_attn.kv_a_layernorm.weight", "norm"),
    ("deepseek_v3", "model.layers.1.mlp.gate.weight", "router"),
    ("deepseek_v3", "model.layers.1.mlp.gate.e_score_correction_bias", "bias"),
    ("deepseek_v3", "model.layers.1.mlp.shared_experts.up_proj.weight", "shared_expert"),
    ("deepseek_v3", "model.layers.0.mlp.up_proj.weight", "mlp_up"),
    ("gpt_oss", "model.layers.0.mlp.router.weight", "router"),
    ("gpt_oss", "model.layers.0.mlp.experts.gate_up_proj", "expert_gate_up"),
    ("gpt_oss", "model.layers.0.mlp.experts.down_proj", "expert_down"),
    ("gpt_oss", "model.layers.0.mlp.experts.down_proj_bias", "bias"),
    ("gpt_oss", "model.layers.0.self_attn.sinks", "param"),
    ("jamba", "model.layers.0.mamba.in_proj.weight", "ssm_in"),
    ("jamba", "model.layers.0.mamba.x_proj.weight", "ssm_x"),
    ("jamba", "model.layers.0.mamba.dt_proj.weight", "ssm_dt"),
    ("jamba", "model.layers.0.mamba.out_proj.weight", "ssm_out"),
    ("jamba", "model.layers.0.mamba.conv1d.weight", "conv"),
    ("jamba", "model.layers.0.mamba.A_log", "param"),
    ("jamba", "model.layers.0.mamba.D", "param"),
    ("jamba", "model.layers.0.mamba.dt_layernorm.weight", "norm"),
    ("jamba", "model.layers.1.feed_forward.router.weight", "router"),
    ("jamba", "model.layers.1.feed_forward.experts.2.up_proj.weight", "expert_up"),
    ("jamba", "model.layers.0.feed_forward.down_proj.weight", "mlp_down"),
    ("nemotron_h", "backbone.embeddings.weight", "embedding"),
    ("nemotron_h", "backbone.layers.0.mixer.in_proj.weight", "ssm_in"),
    ("nemotron_h", "backbone.layers.0.mixer.out_proj.weight", "ssm_out"),
    ("nemotron_h", "backbone.layers.0.mixer.dt_bias", "bias"),
    ("nemotron_h", "backbone.layers.3.mixer.o_proj.weight", "attn_o"),
    ("nemotron_h", "backbone.layers.1.mixer.up_proj.weight", "mlp_up"),
    ("nemotron_h", "backbone.layers.5.mixer.gate.weight", "router"),
    ("nemotron_h", "backbone.layers.5.mixer.experts.0.down_proj.weight", "expert_down"),
    ("nemotron_h", "backbone.layers.5.mixer.shared_experts.up_proj.weight", "shared_expert"),
    ("mamba", "backbone.layers.1.mixer.x_proj.weight", "ssm_x"),
    ("mamba", "backbone.norm_f.weight", "norm"),
    ("qwen3_next", "model.layers.0.linear_attn.in_proj_qkvz.weight", "linattn_in"),
    ("qwen3_next", "model.layers.0.linear_attn.in_proj_ba.weight", "linattn_in"),
    ("qwen3_next", "model.layers.0.linear_attn.out_proj.weight", "linattn_out"),
    ("qwen3_next", "model.layers.0.linear_attn.conv1d.weight", "conv"),
    ("qwen3_next", "model.layers.0.linear_attn.A_log", "param"),
    ("qwen3_next", "model.layers.3.self_attn.q_proj.weight", "attn_q"),
    ("gemma3_vlm", "language_model.model.layers.0.self_attn.v_proj.weight", "attn_v"),
    ("gemma3_vlm", "vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight", "vision"),
    ("gemma3_vlm", "multi_modal_projector.mm_input_projection_weight", "vision"),
    ("qwen2_5_vl", "model.language_model.layers.0.mlp.up_proj.weight", "mlp_up"),
    ("qwen2_5_vl", "model.visual.blocks.0.attn.qkv.weight", "vision"),
    ("unknown", "transformer.h.0.attn.c_attn.weight", "attn_qkv"),
    ("unknown", "transformer.h.0.attn.c_proj.weight", "attn_o"),
    ("unknown", "transformer.h.0.mlp.c_proj.weight", "mlp_down"),
    ("unknown", "transformer.h.0.adapter.mystery_mix.weight", "other"),
]


def _by_name(fixture):
    config, tensors = load(fixture)
    c = classify(config, tensors)
    return c, {t.name: t for t in c.tensors}


@pytest.mark.parametrize(("fixture", "name", "role"), ROLES)
def test_role(fixture, name, role):
    _, table = _by_name(fixture)
    assert table[name].role == role
    assert table[name].tier == ROLE_TIER[role]


@pytest.mark.parametrize("fixture", FAMILY_FILES)
def test_no_silent_roles(fixture):
    """Known families: every matrix has a real role; 1-D and norms are never quantized."""
    c, _ = _by_name(fixture)
    for t in c.tensors:
        if fixture != "unknown":
            assert t.role != "other", t.name
        if len(t.shape) < 2 or t.role in ("norm", "bias", "param", "vision", "conv"):
            assert not t.quantizable, t.name
        if t.role == "vision":
            assert t.reason == "vision/audio tower"
    roles = {t.role for t in c.tensors}
    assert "embedding" in roles


def test_unmatched_tensors_are_named():
    c, _ = _by_name("unknown")
    warning = next(w for w in c.warnings if "match no role rule" in w)
    assert "transformer.h.0.adapter.mystery_mix.weight" in warning
    assert "transformer.h.1.adapter.mystery_mix.weight" in warning
    other = [t for t in c.tensors if t.role == "other"]
    assert other and all(t.tier == IMPORTANT and t.quantizable for t in other)


def test_tiers_of_the_public_tool():
    assert ROLE_TIER["attn_q"] == ROLE_TIER["attn_o"] == CRITICAL
    assert ROLE_TIER["router"] == ROLE_TIER["mla_kv_b"] == CRITICAL
    assert ROLE_TIER["embedding"] == ROLE_TIER["lm_head"] == IMPORTANT
    assert ROLE_TIER["mlp_down"] == ROLE_TIER["expert_gate"] == COMPRESS
    assert ROLE_TIER["norm"] == ROLE_TIER["vision"] == NONE


def test_edge_layers_are_first_and_last_two():
    c, _ = _by_name("qwen3_next")  # 4 layers: all edge
    assert all(t.edge for t in c.tensors if t.layer is not None)
    config, tensors = load("llama")
    config = {**config, "num_hidden_layers": 6}
    tensors = tensors + [
        (n.replace("layers.3.", f"layers.{i}."), s)
        for i in (4, 5)
        for n, s in tensors
        if "layers.3." in n
    ]
    c = classify(config, tensors)
    edges = {t.layer for t in c.tensors if t.edge}
    assert edges == {0, 1, 4, 5}
    assert not any(t.edge for t in c.tensors if t.layer is None)


def test_tied_embedding_and_dropped_head():
    c, table = _by_name("qwen2")
    assert table["model.embed_tokens.weight"].tied
    config, tensors = load("qwen2")
    c = classify(config, [*tensors, ("lm_head.weight", (1024, 256))])
    head = next(t for t in c.tensors if t.name == "lm_head.weight")
    assert not head.quantizable and "tied" in head.reason
    assert any("lm_head.weight present" in w for w in c.warnings)


def test_experts_share_a_group_key():
    _, table = _by_name("mixtral")
    a = table["model.layers.1.block_sparse_moe.experts.0.w2.weight"]
    b = table["model.layers.1.block_sparse_moe.experts.3.w2.weight"]
    other = table["model.layers.2.block_sparse_moe.experts.3.w2.weight"]
    assert a.group == b.group == "model.layers.1.block_sparse_moe.experts.*.w2.weight"
    assert other.group != a.group
    assert (a.expert, b.expert) == (0, 3)


def test_stacked_and_transposed_experts():
    _, table = _by_name("gpt_oss")
    gu = table["model.layers.0.mlp.experts.gate_up_proj"]  # (E, hidden, 2*inter)
    assert (gu.matrices, gu.rows, gu.cols, gu.transposed) == (4, 384, 256, True)
    down = table["model.layers.0.mlp.experts.down_proj"]  # (E, inter, hidden)
    assert (down.matrices, down.rows, down.cols, down.transposed) == (4, 256, 192, True)
    config, _ = load("qwen3_moe")
    c = classify(config, [("model.layers.0.mlp.switch_mlp.down_proj.weight", (8, 256, 128))])
    t = c.tensors[0]
    assert (t.role, t.matrices, t.rows, t.cols, t.transposed) == ("expert_down", 8, 256, 128, False)


def test_mismatched_expert_shapes_fail_loudly():
    config, _ = load("mixtral")
    tensors = [
        ("model.layers.0.block_sparse_moe.experts.0.w1.weight", (512, 256)),
        ("model.layers.0.block_sparse_moe.experts.1.w1.weight", (256, 256)),
    ]
    with pytest.raises(ValueError, match="differ in shape"):
        classify(config, tensors)


def test_input_dim_no_group_size_divides_stays_unquantized():
    _, table = _by_name("jamba")
    dt = table["model.layers.0.mamba.dt_proj.weight"]  # (inner, dt_rank=16)
    assert not dt.quantizable and "not divisible" in dt.reason


def test_floors():
    c, table = _by_name("deepseek_v3")  # 256 routed experts
    arch = c.arch
    router = bounds(table["model.layers.1.mlp.gate.weight"], arch)
    assert router.min_bits == 8 and router.allow_unquantized
    shared = bounds(table["model.layers.1.mlp.shared_experts.down_proj.weight"], arch)
    assert shared.min_bits == 4
    gate = bounds(table["model.layers.1.mlp.experts.5.gate_proj.weight"], arch)
    up = bounds(table["model.layers.1.mlp.experts.5.up_proj.weight"], arch)
    down = bounds(table["model.layers.1.mlp.experts.5.down_proj.weight"], arch)
    assert (gate.min_bits, up.min_bits, down.min_bits) == (4, 2, 3)
    assert gate.group_sizes == (128,)  # >= 150 experts
    assert down.group_sizes == (32, 64)  # input dim 64: 128 does not divide it
    dense = bounds(table["model.layers.0.mlp.up_proj.weight"], arch)
    assert dense.min_bits == 2 and dense.group_sizes == (32, 64, 128)
    c8, t8 = _by_name("qwen3_moe")  # 8 experts: no expert floors
    e = bounds(t8["model.layers.0.mlp.experts.1.gate_proj.weight"], c8.arch)
    assert e.min_bits == 2 and e.group_sizes == (32, 64, 128)
    sg = bounds(_by_name("qwen2_moe")[1]["model.layers.0.mlp.shared_expert_gate.weight"], arch)
    assert sg.min_bits == 8 and sg.allow_unquantized


def test_routers_stay_float_and_mla_halves_are_kv_b():
    """Routers are never quantized (several mlx-lm models hold them as plain parameters);
    mlx-lm's DeepSeek-V3 holds kv_b_proj as embed_q / unembed_out, both kv_b's role."""
    config, _ = load("deepseek_v3")
    c = classify(
        config,
        [
            ("model.layers.1.mlp.gate.weight", (256, 256)),
            ("model.layers.1.self_attn.embed_q.weight", (4, 512, 128)),
            ("model.layers.1.self_attn.unembed_out.weight", (4, 128, 512)),
        ],
    )
    router, embed_q, unembed_out = c.tensors
    assert router.role == "router" and not router.quantizable and "float" in router.reason
    assert embed_q.role == unembed_out.role == "mla_kv_b"
    assert (embed_q.matrices, embed_q.cols) == (4, 128) and unembed_out.quantizable
