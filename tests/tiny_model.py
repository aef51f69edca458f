"""A tiny random Hugging Face model directory (llama or mixtral) for fast tests."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx

VOCAB = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(125)]


def write_tokenizer(dest: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(str(dest))


def tiny_config(model_type: str = "llama", layers: int = 2) -> dict:
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "vocab_size": len(VOCAB),
        "max_position_embeddings": 256,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
    }
    if model_type == "mixtral":
        config.update(
            architectures=["MixtralForCausalLM"],
            model_type="mixtral",
            num_local_experts=4,
            num_experts_per_tok=2,
        )
    return config


def tiny_weights(config: dict, seed: int = 0) -> dict[str, mx.array]:
    mx.random.seed(seed)
    d, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = d // config["num_attention_heads"] * config["num_key_value_heads"]

    def w(*shape, scale=0.08):
        return (mx.random.normal(shape) * scale).astype(mx.bfloat16)

    weights = {
        "model.embed_tokens.weight": w(v, d, scale=0.5),
        "model.norm.weight": mx.ones((d,), mx.bfloat16),
    }
    if not config.get("tie_word_embeddings"):
        weights["lm_head.weight"] = w(v, d)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}"
        weights.update(
            {
                f"{p}.self_attn.q_proj.weight": w(d, d),
                f"{p}.self_attn.k_proj.weight": w(kv, d),
                f"{p}.self_attn.v_proj.weight": w(kv, d),
                f"{p}.self_attn.o_proj.weight": w(d, d),
                f"{p}.input_layernorm.weight": mx.ones((d,), mx.bfloat16),
                f"{p}.post_attention_layernorm.weight": mx.ones((d,), mx.bfloat16),
            }
        )
        if config["model_type"] == "mixtral":
            weights[f"{p}.block_sparse_moe.gate.weight"] = w(config["num_local_experts"], d)
            for e in range(config["num_local_experts"]):
                q = f"{p}.block_sparse_moe.experts.{e}"
                weights.update(
                    {
                        f"{q}.w1.weight": w(f, d),
                        f"{q}.w2.weight": w(d, f),
                        f"{q}.w3.weight": w(f, d),
                    }
                )
        else:
            weights.update(
                {
                    f"{p}.mlp.gate_proj.weight": w(f, d),
                    f"{p}.mlp.up_proj.weight": w(f, d),
                    f"{p}.mlp.down_proj.weight": w(d, f),
                }
            )
    return weights


def make_model_dir(dest: Path, model_type: str = "llama", layers: int = 2) -> Path:
    """Write config.json, model.safetensors and a tokenizer into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    config = tiny_config(model_type, layers)
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    mx.save_safetensors(str(dest / "model.safetensors"), tiny_weights(config))
    write_tokenizer(dest)
    return dest
