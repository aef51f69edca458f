"""Tiny HF models written as GGUF files, the way llama.cpp's converter writes them.

`write_gguf` turns a directory made by `build.hf_model` into a GGUF file with the `gguf`
package: tensor names from `gguf.TensorNameMap`, llama's Q/K rows permuted into rotary
pairs, Gemma's norms stored as 1 + w, the hyperparameters and the byte-level BPE tokenizer
under llama.cpp's metadata keys. "F16" stores matrices in float16; "Q6_K" stores matrices
whose rows are a multiple of 256 in Q6_K (quantized here: gguf 0.19 only dequantizes it),
other matrices in Q8_0. Vectors (norms, biases) stay float32 in both, as in llama.cpp.
`gguf_model` caches the file next to the HF directory.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q

from families import GGUF_ARCH
from family_models import hf_model

EXPORT_VERSION = 2  # bump when the written files change
QTYPES = {"F16": gguf.LlamaFileType.MOSTLY_F16, "Q6_K": gguf.LlamaFileType.MOSTLY_Q6_K}
QK_K = 256  # K-quant super-block


# ------------------------------------------------------------- reading HF ----


def hf_tensors(hf_dir: Path) -> dict[str, np.ndarray]:
    """The float32 tensors of `hf_dir/model.safetensors` (bf16/f16/f32; numpy has no bf16,
    so the file is parsed here instead of through `safetensors.numpy`)."""
    raw = (hf_dir / "model.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    out = {}
    for name, h in header.items():
        start, stop = (8 + n + o for o in h["data_offsets"])
        data = np.frombuffer(raw, np.uint8, stop - start, start)
        if h["dtype"] == "BF16":
            w = (data.view("<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            w = data.view({"F16": "<f2", "F32": "<f4"}[h["dtype"]]).astype(np.float32)
        out[name] = w.reshape(h["shape"])
    return out


def rope_theta(config: dict[str, Any]) -> float:
    """The (global) RoPE base of an HF config: top-level in transformers 4, inside
    `rope_parameters` (per layer type for Gemma 3) in transformers 5."""
    if "rope_theta" in config:
        return float(config["rope_theta"])
    params = config.get("rope_parameters") or {}
    params = params.get("full_attention", params)
    return float(params.get("rope_theta", 10000.0))


# ------------------------------------------------------------------- Q6_K ----


def quantize_q6_k(w: np.ndarray) -> np.ndarray:
    """Q6_K blocks of `w` (last axis a multiple of 256) as uint8 (..., n_blocks * 210).

    A block holds 256 weights as 16 sub-blocks of 16: 6-bit codes q in [-32, 31], an int8
    scale per sub-block and an fp16 super-scale d, so w ~ d * scale[j] * q. Bytes: ql[128]
    (low 4 bits), qh[64] (high 2 bits), scales[16], d[2], in the order
    `gguf.quants.dequantize` reads them. Each sub-block's scale is the best of a few
    (least squared error) that map its largest-magnitude weight near code -32.
    """
    x = w.astype(np.float32).reshape(-1, QK_K // 16, 16)
    n = x.shape[0]
    peak = np.take_along_axis(x, np.abs(x).argmax(-1)[..., None], -1)  # (n, 16, 1), signed
    best_s = np.zeros((*x.shape[:2], 1), np.float32)
    best_err = np.full((*x.shape[:2], 1), np.inf, np.float32)
    for t in np.linspace(28.0, 32.0, 17):
        s = -peak / t
        safe = np.where(s == 0, 1.0, s)
        err = ((np.clip(np.rint(x / safe), -32, 31) * s - x) ** 2).sum(-1, keepdims=True)
        better = err < best_err
        best_s, best_err = np.where(better, s, best_s), np.where(better, err, best_err)
    d = (np.abs(best_s).max(axis=1, keepdims=True) / 127).astype(np.float16)  # (n, 1, 1)
    d32 = d.astype(np.float32)
    scales = np.clip(np.rint(best_s / np.where(d32 == 0, 1, d32)), -128, 127)
    step = d32 * scales
    q = np.clip(np.rint(x / np.where(step == 0, 1, step)), -32, 31)
    q = (q + 32).astype(np.uint8).reshape(n, QK_K)
    halves = q.reshape(n, 2, 2, 64)  # (block half, nibble slot, 64)
    ql = halves[:, :, 0] & 0xF | (halves[:, :, 1] & 0xF) << 4
    high = q.reshape(n, 2, 4, 32) >> 4  # (block half, 2-bit slot, 32)
    qh = high[:, :, 0] | high[:, :, 1] << 2 | high[:, :, 2] << 4 | high[:, :, 3] << 6
    blocks = np.concatenate(
        [
            ql.reshape(n, 128),
            qh.reshape(n, 64),
            scales.reshape(n, 16).astype(np.int8).view(np.uint8),
            d.reshape(n, 1).view(np.uint8),
        ],
        axis=1,
    )
    return blocks.reshape(*w.shape[:-1], w.shape[-1] // QK_K * blocks.shape[1])


def _encode(w: np.ndarray, qtype: str) -> tuple[np.ndarray, Q]:
    """`w` in the storage type llama.cpp gives it in a `qtype` file."""
    if w.ndim == 1:
        return w.astype(np.float32), Q.F32
    if qtype == "Q6_K" and w.shape[-1] % QK_K == 0:
        return quantize_q6_k(w), Q.Q6_K
    if qtype == "Q6_K" and w.shape[-1] % 32 == 0:
        return gguf.quants.quantize(w, Q.Q8_0), Q.Q8_0
    return w.astype(np.float16), Q.F16


# ---------------------------------------------------------------- writing ----


def _rotary_pairs(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's Q/K row order for llama: per head, row i of the first rotary half and row
    i of the second become rows 2i and 2i + 1 (HF keeps the halves apart)."""
    return (
        w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def _add_hparams(writer: gguf.GGUFWriter, config: dict[str, Any], qtype: str) -> None:
    """The hyperparameter keys llama.cpp's converter writes for these architectures."""
    arch = writer.arch
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(rope_theta(config))
    if head_dim:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if arch in ("llama", "qwen2", "qwen3"):
        writer.add_rope_dimension_count(head_dim or config["hidden_size"] // heads)
    if arch == "llama":
        writer.add_vocab_size(config["vocab_size"])
    if config.get("sliding_window"):
        writer.add_sliding_window(config["sliding_window"])
    if arch == "gemma3" and config.get("sliding_window_pattern"):
        # not in llama.cpp's conversions (its loader fixes the pattern at 6); ours is 2
        writer.add_sliding_window_pattern(config["sliding_window_pattern"])
    experts = config.get("num_experts") or config.get("num_local_experts")
    if experts:
        writer.add_expert_count(experts)
        writer.add_expert_used_count(config["num_experts_per_tok"])
        if config.get("moe_intermediate_size"):
            writer.add_expert_feed_forward_length(config["moe_intermediate_size"])
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        if config.get(key) is not None:
            getattr(writer, f"add_{key}")(config[key])
    writer.add_file_type(QTYPES[qtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_tokenizer(writer: gguf.GGUFWriter, hf_dir: Path, vocab_size: int) -> None:
    """The byte-level BPE vocabulary as a "gpt2" tokenizer: tokens by id (added special
    tokens marked CONTROL, ids the file lacks padded as UNUSED), merges and special ids
    (by the `gguf` package's `SpecialVocab`, as llama.cpp does)."""
    tok = json.loads((hf_dir / "tokenizer.json").read_text())
    vocab: dict[str, int] = tok["model"]["vocab"]
    added = {t["id"]: t for t in tok["added_tokens"]}
    n = max(vocab_size, max(vocab.values()) + 1, max(added, default=-1) + 1)
    tokens = [f"[PAD{i}]" for i in range(n)]
    types = [gguf.TokenType.UNUSED] * n
    for text, i in vocab.items():
        tokens[i], types[i] = text, gguf.TokenType.NORMAL
    for i, t in added.items():
        tokens[i] = t["content"]
        types[i] = gguf.TokenType.CONTROL if t["special"] else gguf.TokenType.USER_DEFINED
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(hf_dir, load_merges=True, n_vocab=n).add_to_gguf(writer, quiet=True)


_EXPERT = re.compile(
    r"^model\.layers\.(\d+)\.(?:mlp|block_sparse_moe)\.experts\.(\d+)\.(\w+)\.weight$"
)
_EXPS = {
    "gate_proj": "gate",
    "w1": "gate",
    "up_proj": "up",
    "w3": "up",
    "down_proj": "down",
    "w2": "down",
}


def _stack_experts(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-expert HF tensors stacked into llama.cpp's (E, out, in) ``blk.N.ffn_*_exps``."""
    out: dict[str, np.ndarray] = {}
    stacks: dict[str, dict[int, np.ndarray]] = {}
    for name, w in tensors.items():
        m = _EXPERT.match(name)
        if m is None:
            out[name] = w
            continue
        layer, expert, proj = m.groups()
        key = f"blk.{layer}.ffn_{_EXPS[proj]}_exps.weight"
        stacks.setdefault(key, {})[int(expert)] = w
    for key, members in stacks.items():
        out[key] = np.stack([members[e] for e in range(len(members))])
    return out


def write_gguf(hf_dir: Path, out: Path, qtype: str) -> Path:
    """Write the model in `hf_dir` to `out` as a GGUF file of `qtype` ("F16" or "Q6_K")."""
    if qtype not in QTYPES:
        raise ValueError(f"qtype {qtype!r}: expected one of {sorted(QTYPES)}")
    config = json.loads((hf_dir / "config.json").read_text())
    arch = GGUF_ARCH[config["model_type"]]
    model_arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    names = gguf.TensorNameMap(model_arch, config["num_hidden_layers"])
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    tied = bool(config.get("tie_word_embeddings"))

    writer = gguf.GGUFWriter(out, arch)
    writer.add_name(hf_dir.name)
    _add_hparams(writer, config, qtype)
    _add_tokenizer(writer, hf_dir, config["vocab_size"])
    for name, w in _stack_experts(hf_tensors(hf_dir)).items():
        if tied and name == "lm_head.weight":
            continue
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if name.startswith("blk."):  # stacked experts, named here
            gguf_name = name
        if gguf_name is None:
            raise ValueError(f"{hf_dir}: no GGUF name for {name} ({arch})")
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            w = _rotary_pairs(w, heads if "q_proj" in name else kv_heads)
        if arch.startswith("gemma") and name.endswith("norm.weight"):
            w = w + 1.0
        data, ggml_type = _encode(w, qtype)
        writer.add_tensor(gguf_name, data, raw_dtype=ggml_type if data.dtype == np.uint8 else None)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def gguf_model(model_type: str, qtype: str) -> Path:
    """The cached GGUF file of `model_type`'s tiny model (written beside its HF directory)."""
    hf_dir = hf_model(model_type)
    out = hf_dir.with_name(f"{hf_dir.name}-gguf{EXPORT_VERSION}-{qtype}.gguf")
    if out.is_file():
        return out
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        write_gguf(hf_dir, tmp, qtype)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
