"""A model's config.json as jang and mlx-lm read it: normalized across transformers versions.

Every config that enters jang (a source's, a bundle's) goes through `normalize_config`, so
that mlx-lm, transformers and the planner all see the same values.
"""

from __future__ import annotations

import math
from typing import Any


def normalize_config(config: dict[str, Any]) -> dict[str, Any]:
    """Config as mlx-lm 0.32 reads it.

    transformers 5 writes ``rope_theta`` inside ``rope_parameters``; mlx-lm reads a
    top-level ``rope_theta`` and silently defaults to 10000 without it, and reads RoPE
    scaling (llama3, yarn) from ``rope_scaling``, not from there. transformers 5 also
    writes ``num_local_experts`` where mlx-lm's Qwen MoE models read ``num_experts``, and
    leaves out a ``head_dim`` equal to hidden_size / num_attention_heads, which some mlx-lm
    models require. Only keys that are absent are filled, so the values always agree.
    """
    config = dict(config)
    params = config.get("rope_parameters")
    if isinstance(params, dict) and "rope_theta" not in config and "rope_theta" in params:
        config["rope_theta"] = params["rope_theta"]
    if isinstance(params, dict) and params.get("rope_type", "default") != "default":
        config.setdefault("rope_scaling", {k: v for k, v in params.items() if k != "rope_theta"})
    if isinstance(params, dict) and "partial_rotary_factor" in params:
        config.setdefault("partial_rotary_factor", params["partial_rotary_factor"])
    if "num_local_experts" in config and "num_experts" not in config:
        config["num_experts"] = config["num_local_experts"]
    hidden, heads = config.get("hidden_size"), config.get("num_attention_heads")
    if config.get("head_dim") is None and isinstance(hidden, int) and isinstance(heads, int):
        if heads > 0 and hidden % heads == 0:
            config["head_dim"] = hidden // heads
    # mlx-lm's mamba2 requires intermediate_size, which transformers' Mamba2Config never
    # writes; the model takes its width from num_heads * head_dim (= expand * hidden_size)
    if config.get("model_type") == "mamba2" and "intermediate_size" not in config:
        if isinstance(config.get("num_heads"), int) and isinstance(config.get("head_dim"), int):
            config["intermediate_size"] = config["num_heads"] * config["head_dim"]
    config = decode_floats(config)
    text = config.get("text_config")
    if isinstance(text, dict):
        text = normalize_config(text)
        # transformers ties a VLM's head by the top-level flag; mlx-lm's text model reads
        # its own (absent in transformers-5 text configs, or left at another value)
        if isinstance(config.get("tie_word_embeddings"), bool):
            text["tie_word_embeddings"] = config["tie_word_embeddings"]
        config["text_config"] = text
    return config


_FLOAT_TAGS = {"Infinity": float("inf"), "-Infinity": float("-inf"), "NaN": float("nan")}


def decode_floats(obj: Any) -> Any:
    """transformers 5 writes a non-finite float as {"__float__": "Infinity"} (mamba2's
    time_step_limit); its config classes and mlx-lm's load_config decode it, a dict passed
    to them straight (AutoConfig.for_model(**config), ModelArgs.from_dict) does not."""
    if isinstance(obj, dict):
        if set(obj) == {"__float__"} and obj["__float__"] in _FLOAT_TAGS:
            return _FLOAT_TAGS[obj["__float__"]]
        return {k: decode_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode_floats(v) for v in obj]
    return obj


def encode_floats(obj: Any) -> Any:
    """The inverse of `decode_floats`, so a written config.json stays strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        tag = "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
        return {"__float__": tag}
    if isinstance(obj, dict):
        return {k: encode_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [encode_floats(v) for v in obj]
    return obj
