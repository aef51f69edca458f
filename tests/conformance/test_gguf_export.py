"""The GGUF files of the conformance families read back through jang as their HF models.

Each family's tiny HF model is written as F16 and Q6_K GGUF (`gguf_export`) and opened with
`jang.source.open_source`: the tensor names, the tensors (to bf16 precision for F16, to
quantization error for Q6_K), the config and the tokenizer must be those of the HF model.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize

from families import GGUF_ARCH
from family_models import hf_model
from gguf_export import gguf_model, hf_tensors, quantize_q6_k, rope_theta
from jang.config import normalize_config
from jang.source import open_source

PROMPTS = ("The capital of France is", " 42 numbers<|eos|> and\n  spaces!")
CASES = [(m, q) for m in GGUF_ARCH for q in ("F16", "Q6_K")]


def _rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-12))


def test_q6_k_round_trip():
    """The Q6_K quantizer's bytes decode (by the gguf package) to the weights, within the
    format's error (6-bit codes per 16 weights: ~1.7% for Gaussian data)."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((32, 512)) * 0.02).astype(np.float32)
    blocks = quantize_q6_k(w)
    assert blocks.shape == (32, 2 * 210) and blocks.dtype == np.uint8
    back = dequantize(blocks, GGMLQuantizationType.Q6_K)
    assert _rel_err(back, w) < 0.02
    assert not dequantize(
        quantize_q6_k(np.zeros((1, 256), np.float32)), GGMLQuantizationType.Q6_K
    ).any()


@pytest.mark.parametrize(("model_type", "qtype"), CASES)
def test_gguf_reads_back(model_type: str, qtype: str, tmp_path: Path):
    """jang reads the family's GGUF as its HF model: names, tensors, config, tokenizer."""
    from transformers import AutoTokenizer

    hf_dir = hf_model(model_type)
    hf_config = json.loads((hf_dir / "config.json").read_text())
    ref = hf_tensors(hf_dir)
    if hf_config.get("tie_word_embeddings"):
        ref.pop("lm_head.weight", None)
    source = open_source(gguf_model(model_type, qtype))

    assert {t.name for t in source.tensors()} == set(ref)
    for name, want in ref.items():
        got = np.array(source.read(name).astype(mx.float32))
        assert got.shape == want.shape, name
        if qtype == "F16" or want.ndim == 1:  # F16 holds every bf16 value; vectors are F32
            np.testing.assert_allclose(got, want, rtol=2**-8, atol=1e-6, err_msg=name)
        else:
            assert _rel_err(got, want) < 0.03, name

    config, hf_config = normalize_config(source.config), normalize_config(hf_config)
    for key in (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "intermediate_size",
        "vocab_size",
        "num_experts",
        "num_experts_per_tok",
        "moe_intermediate_size",
        "norm_topk_prob",
    ):
        assert config.get(key) == hf_config.get(key), key
    written_as = {"mistral": "llama"}  # llama.cpp writes Mistral as llama (same model)
    assert config["model_type"] == written_as.get(hf_config["model_type"], hf_config["model_type"])
    heads = hf_config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    assert head_dim == (hf_config.get("head_dim") or hf_config["hidden_size"] // heads)
    assert config.get("rope_theta") == rope_theta(hf_config)
    assert config["tie_word_embeddings"] == bool(hf_config.get("tie_word_embeddings"))

    source.write_tokenizer(tmp_path)
    want, got = (AutoTokenizer.from_pretrained(str(d)) for d in (hf_dir, tmp_path))
    for text in PROMPTS:
        assert got(text)["input_ids"] == want(text)["input_ids"], text
