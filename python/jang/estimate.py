"""Size estimates without weights: a parameter count -> a typical llama-like dense shape.

``jang estimate 70B --profile JANG_2S`` needs tensor shapes, not values. For a bare parameter count
we assume a Llama-family dense decoder (SwiGLU MLP, grouped-query attention, RMSNorm) and take
the width, MLP size, heads and vocabulary of the nearest well-known model of that class
(table below), then choose the layer count that lands on the requested total. Models up to 3B
tie the embedding (as Llama-3.2 1B/3B, Qwen2.5 0.5B and SmolLM2 do). Real models differ (a
larger vocabulary, MoE): give a model directory for an exact tensor list.
"""

from __future__ import annotations

import re
from typing import Any

# (max params, hidden, intermediate, heads, kv heads, vocab, tied, like)
TEMPLATES: tuple[tuple[float, int, int, int, int, int, bool, str], ...] = (
    (0.3e9, 576, 1536, 9, 3, 49152, True, "SmolLM2-135M"),
    (1.0e9, 896, 4864, 14, 2, 151936, True, "Qwen2.5-0.5B"),
    (2.0e9, 2048, 8192, 32, 8, 128256, True, "Llama-3.2-1B"),
    (5.0e9, 3072, 8192, 24, 8, 128256, True, "Llama-3.2-3B"),
    (11e9, 4096, 14336, 32, 8, 128256, False, "Llama-3.1-8B"),
    (20e9, 5120, 13824, 40, 8, 128256, False, "Llama-2-13B (with GQA)"),
    (50e9, 5120, 27648, 40, 8, 152064, False, "Qwen2.5-32B"),
    (150e9, 8192, 28672, 64, 8, 128256, False, "Llama-3.1-70B"),
    (float("inf"), 16384, 53248, 128, 8, 128256, False, "Llama-3.1-405B"),
)
_UNITS = {"": 1.0, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}


def parse_params(text: str) -> float:
    """'70B', '1.5b', '135M', '7e9' -> a parameter count."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmbgtKMBGT]?)\s*", text)
    if not m:
        raise ValueError(f"not a parameter count: {text!r} (try 70B, 1.5B, 135M)")
    value = float(m.group(1)) * _UNITS[m.group(2).upper()]
    if value < 1e6:
        raise ValueError(f"{text!r} is under a million parameters")
    return value


def llama_like(params: float) -> tuple[dict[str, Any], list[tuple[str, tuple[int, ...]]], str]:
    """(config, tensors, description) of a llama-like dense model of about `params` weights."""
    _, d, f, heads, kv, vocab, tied, like = next(t for t in TEMPLATES if params <= t[0])
    hd = d // heads
    per_layer = d * heads * hd * 2 + d * kv * hd * 2 + 3 * d * f + 2 * d
    embed = vocab * d * (1 if tied else 2) + d
    layers = max(1, round((params - embed) / per_layer))
    config = {
        "model_type": "llama",
        "hidden_size": d,
        "intermediate_size": f,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "vocab_size": vocab,
        "tie_word_embeddings": tied,
    }
    tensors: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (vocab, d))]
    for i in range(layers):
        p = f"model.layers.{i}"
        tensors += [
            (f"{p}.input_layernorm.weight", (d,)),
            (f"{p}.self_attn.q_proj.weight", (heads * hd, d)),
            (f"{p}.self_attn.k_proj.weight", (kv * hd, d)),
            (f"{p}.self_attn.v_proj.weight", (kv * hd, d)),
            (f"{p}.self_attn.o_proj.weight", (d, heads * hd)),
            (f"{p}.post_attention_layernorm.weight", (d,)),
            (f"{p}.mlp.gate_proj.weight", (f, d)),
            (f"{p}.mlp.up_proj.weight", (f, d)),
            (f"{p}.mlp.down_proj.weight", (d, f)),
        ]
    tensors.append(("model.norm.weight", (d,)))
    if not tied:
        tensors.append(("lm_head.weight", (vocab, d)))
    total = sum(_numel(s) for _, s in tensors)
    desc = (
        f"llama-like dense, shaped as {like}: {layers} layers, hidden {d}, MLP {f}, "
        f"{heads}/{kv} heads, vocab {vocab}{', tied embedding' if tied else ''}; "
        f"{total / 1e9:.2f}B parameters"
    )
    return config, tensors, desc


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def estimate(
    config: dict[str, Any], tensors: list[tuple[str, tuple[int, ...]]], profile: str
) -> dict[str, Any]:
    """Bytes and bits per weight of `profile` on a model, from shapes only.

    Tier profiles are exact (their bits do not depend on the weights). Budget profiles
    (``JANG_nK``, numbers) report the budget itself: the solver lands within 0.01 bpw below it.
    """
    from jang import plan
    from jang.plan import profiles

    prof = profiles.get(profile) if not _is_number(profile) else profiles.get(bits=float(profile))
    probe = plan.make_plan(config, tensors, profile="JANG_4M")  # shapes, floors, other bytes
    tot = probe["totals"]
    if prof.tiers:
        p = plan.make_plan(config, tensors, profile=prof.name)
        t = p["totals"]
        planned, codes = t["bytes"], t["code_bytes"]
    else:
        planned = int(prof.bits * tot["params"] // 8)
        codes = None
    return {
        "profile": prof.name,
        "kind": prof.kind,
        "params": tot["params"] + tot["other_params"],
        "planned_params": tot["params"],
        "bytes": planned + tot["other_bytes"],
        "bpw_all_in": 8 * planned / tot["params"],
        "bpw_codes": None if codes is None else 8 * codes / tot["params"],
    }


def _is_number(text: str) -> bool:
    return re.fullmatch(r"\s*[0-9]*\.?[0-9]+\s*", text) is not None
