"""The families of the conformance matrix: each one's real config, shrunk to test size.

A family's tiny model keeps every tensor kind the family has (biases, q/k norms, sliding
windows, shared experts, routers, MLA's low-rank projections, SSM mixers) but with 2-4
layers, hidden 64 and 16 experts, so the whole matrix runs in minutes on 2 cores. Sizes that
a family ties together (heads x head_dim, mamba's expand x hidden = heads x head_dim) are set
per family. `GGUF_ARCH` names the families whose GGUF form jang reads (written by
`tests/conformance/gguf_export.py` with the `gguf` package's tensor-name map).
"""

from __future__ import annotations

from typing import Any

# Keys every family shrinks when its config has them (filtered by the config's own keys).
SHRINK: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 256,  # GGUF K-quant blocks are 256 wide: down_proj rows qualify
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 512,
    "num_local_experts": 16,
    "num_experts": 16,
    "n_routed_experts": 16,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 256,  # experts hold most weights, as in real MoE models
    "shared_expert_intermediate_size": 128,
    "n_shared_experts": 1,
    "initializer_range": 0.08,  # logits with a spread, so a wrong model shows in the KL
}

# A VLM's vision tower is never quantized (mlx-lm drops it): it only has to exist.
VISION_SHRINK: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "depth": 1,
    "num_attention_heads": 2,
    "num_heads": 2,
    "head_dim": 16,
    "embed_dim": 32,
    "image_size": 28,
    "patch_size": 14,
    "out_hidden_size": 64,
}

# DeepSeek's real configs scale RoPE by YaRN (mlx-lm's deepseek models require it)
YARN = {
    "rope_type": "yarn",
    "rope_theta": 10000.0,
    "factor": 4.0,
    "original_max_position_embeddings": 128,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "mscale": 1.0,
    "mscale_all_dim": 1.0,
}

# Routed experts pick their top-k discretely: with the random weights' large logits a
# near-tie flipped by 8-bit rounding in one layer grows ~15x a layer after it (Qwen3-Next:
# 8.7e-2 of the logits' spread from a 1e-3 nudge). Half the init keeps the MoE models
# about as chaotic as the dense ones, which trained models are far less than either.
MOE_INIT = 0.04

# DeepSeek V2 and V3 (MLA, a shared expert beside many routed ones, a dense first layer)
DEEPSEEK = {
    "initializer_range": MOE_INIT,
    "head_dim": 8,  # = qk_rope_head_dim, as in the real config
    "rope_parameters": YARN,
    "n_routed_experts": 32,  # one shared expert beside many routed ones, as in V2/V3
    "kv_lora_rank": 32,
    "q_lora_rank": 32,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 8,
    "v_head_dim": 16,
    "n_group": 1,
    "topk_group": 1,
    "first_k_dense_replace": 1,
    "num_hidden_layers": 4,
}

# model_type -> overrides of SHRINK and the family's own keys.
FAMILIES: dict[str, dict[str, Any]] = {
    "llama": {"attention_bias": False},
    "qwen2": {},
    "qwen3": {},
    "mistral": {},
    "gemma": {},
    "gemma2": {"query_pre_attn_scalar": 16},  # = head_dim, what a GGUF file implies
    # shorter than the test prompt, so the window is exercised; only where mlx-lm implements
    # sliding windows (other families keep their config's window, longer than the prompt)
    "gemma3_text": {
        "sliding_window": 8,
        "sliding_window_pattern": 2,
        "layer_types": None,
        "query_pre_attn_scalar": 16,
    },
    "phi3": {},
    "smollm3": {"no_rope_layer_interval": 2},
    "olmo2": {},
    "granite": {"embedding_multiplier": 2.0, "logits_scaling": 4.0, "residual_multiplier": 0.5},
    "starcoder2": {"use_bias": True},
    "mixtral": {"initializer_range": MOE_INIT},
    "qwen2_moe": {"initializer_range": MOE_INIT, "decoder_sparse_step": 1},
    "qwen3_moe": {"initializer_range": MOE_INIT, "norm_topk_prob": True},  # as Qwen3 ships
    "deepseek_v2": DEEPSEEK,
    "deepseek_v3": DEEPSEEK,
    "gpt_oss": {"initializer_range": MOE_INIT, "rope_parameters": None},
    "olmoe": {"initializer_range": MOE_INIT},
    "nemotron_h": {
        "initializer_range": MOE_INIT,
        "hybrid_override_pattern": "M*-E",
        "num_hidden_layers": 4,
        "mamba_num_heads": 8,
        "mamba_head_dim": 16,
        "ssm_state_size": 16,
        "n_groups": 1,
        "moe_shared_expert_intermediate_size": 128,
        "chunk_size": 16,
    },
    "mamba": {},
    "mamba2": {"num_heads": 8, "head_dim": 16, "n_groups": 1, "expand": 2, "state_size": 16},
    "qwen3_next": {
        "initializer_range": 0.02,  # the most chaotic: 8-bit gap 0.096 at MOE_INIT, 0.027 here
        "num_hidden_layers": 4,  # full attention every 4th layer
        "linear_num_key_heads": 2,
        "linear_num_value_heads": 4,
        "linear_key_head_dim": 16,
        "linear_value_head_dim": 16,
    },
}

# Qwen2-VL's multimodal RoPE sections, for head_dim 16 (they sum to head_dim / 2)
MROPE = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}

# VLM containers whose text tower jang quantizes: the same tiny text tower, a token vision
# tower.
FAMILIES.update(
    {
        "gemma3": {
            "text": FAMILIES["gemma3_text"],
            "vision": {},
            "vocab_size": 320,  # mlx-lm's gemma3 gives the text tower the top-level vocab
            "mm_tokens_per_image": 4,
            "image_token_index": 3,
            "boi_token_index": 4,
            "eoi_token_index": 5,
        },
        "qwen2_vl": {"text": {"rope_parameters": MROPE}, "vision": {}},
        "qwen2_5_vl": {"text": {"rope_parameters": MROPE}, "vision": {}},
        "mistral3": {"text": {}, "vision": {}, "image_token_index": 3},
        "llava": {"text": {}, "vision": {}, "image_token_index": 3},
    }
)

# Families whose GGUF form jang reads: model_type -> llama.cpp architecture name.
GGUF_ARCH: dict[str, str] = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma": "gemma",
    "gemma2": "gemma2",
    "gemma3_text": "gemma3",
    "qwen3_moe": "qwen3moe",
    "mixtral": "llama",
}

# Paths a family refuses, with the start of the one-line error each gives before any work.
# GPTQ and tuning hold the whole float model and know no routed experts yet: the
# layer-streamed rewrite (issue 19) brings experts to both.
_NO_EXPERTS = {
    "convert gptq": "--method gptq does not handle MoE experts yet",
    "convert tune": "--tune does not handle MoE experts yet",
}
REFUSED: dict[str, dict[str, str]] = {
    family: _NO_EXPERTS
    for family in (
        "mixtral",
        "qwen2_moe",
        "qwen3_moe",
        "deepseek_v2",
        "deepseek_v3",
        "gpt_oss",
        "olmoe",
        "nemotron_h",
        "qwen3_next",
    )
}
