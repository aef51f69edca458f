"""Tiny random-weight models of real families, built once and cached in the data dir.

`hf_model(model_type)` writes a Hugging Face directory (config.json, bfloat16
model.safetensors, a byte-level BPE tokenizer) made by `transformers` from the family's
config shrunk by `families.FAMILIES`, with a fixed seed; the cache key hashes the spec and
the transformers version, so a changed spec or library builds anew.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from families import FAMILIES, SHRINK, VISION_SHRINK

VOCAB_SIZE = 320
BOS, EOS, PAD = 0, 1, 2
SEED = 1234
BUILD_VERSION = 1  # bump when the build itself changes

# A fixed English text for the tokenizer's merges and the calibration windows.
CORPUS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "A model of language predicts the next word from the words before it.",
    "Quantization stores each weight in a few bits and a scale per group.",
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "She opened the window, and the cold morning air filled the small room.",
    "Numbers like 1, 2, 3 and 42 appear in text as often as names do.",
    "Every layer of the network reads the hidden state and writes it back.",
    "He said that the train would leave at seven, but it left at eight.",
] * 4


def data_root() -> Path:
    from jang.data import cache_dir

    return cache_dir() / "conformance"


def write_tokenizer(dest: Path) -> None:
    """A byte-level BPE tokenizer of `VOCAB_SIZE` tokens trained on `CORPUS` (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<|bos|>", "<|eos|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>"
    )
    fast.save_pretrained(str(dest))


def _shrunk(known: dict[str, Any], shrink: dict[str, Any], own: dict[str, Any]) -> dict:
    """The shrink keys a config knows, then the family's own overrides (None drops a key)."""
    kwargs = {k: v for k, v in shrink.items() if k in known}
    kwargs.update(own)
    return {k: v for k, v in kwargs.items() if v is not None}


def config_kwargs(model_type: str) -> dict[str, Any]:
    """AutoConfig.for_model keyword arguments of the family's tiny model. A VLM container's
    spec has "text" and "vision" parts: the text tower is shrunk like any family (its
    model_type from the container's default text config), the vision tower by VISION_SHRINK."""
    from transformers import AutoConfig

    spec = dict(FAMILIES[model_type])
    ids = dict(vocab_size=VOCAB_SIZE, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    base = AutoConfig.for_model(model_type)
    if "vision" not in spec:
        return _shrunk(base.to_dict(), SHRINK, {**spec, **ids})
    text = _shrunk(base.text_config.to_dict(), SHRINK, {**spec.pop("text"), **ids})
    text["model_type"] = base.text_config.model_type
    vision = _shrunk(base.vision_config.to_dict(), VISION_SHRINK, spec.pop("vision"))
    vision["model_type"] = base.vision_config.model_type
    return {**spec, "text_config": text, "vision_config": vision}


def _spec_hash(model_type: str) -> str:
    import transformers

    spec = json.dumps(
        [BUILD_VERSION, transformers.__version__, model_type, config_kwargs(model_type)],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(spec.encode()).hexdigest()[:12]


def _randomize(model) -> None:
    """Move every vector parameter (norm gains, biases, SSM constants) off its
    initial value by a little noise: a loader that drops or shifts one (Gemma's 1+w norm,
    a missing bias) then changes the logits."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and p.is_floating_point():
                p.add_(torch.randn_like(p) * 0.1)
            if name.endswith("A_log"):  # keep the SSM decay rates in their usual range
                p.clamp_(-2.0, 2.0)


def hf_model(model_type: str) -> Path:
    """The cached tiny HF model directory of `model_type` (built on first use)."""
    dest = data_root() / f"{model_type}-{_spec_hash(model_type)}"
    if (dest / "model.safetensors").is_file():
        return dest
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    config = AutoConfig.for_model(model_type, **config_kwargs(model_type))
    torch.manual_seed(SEED)
    auto = AutoModelForImageTextToText if "vision" in FAMILIES[model_type] else AutoModelForCausalLM
    model = auto.from_config(config, dtype=torch.float32)
    _randomize(model)
    model = model.to(torch.bfloat16)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    write_tokenizer(tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest
