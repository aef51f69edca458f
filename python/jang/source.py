"""Model sources: a Hugging Face directory, a safetensors file, or a GGUF file.

Every source presents the same thing: an HF-layout ``config`` dict, the list of
tensors under their Hugging Face names and shapes, ``read(name)`` returning one
tensor at a time as an MLX float array (so conversion memory stays near the
largest tensor), and the tokenizer files. GGUF files are mapped to the HF
layout (names, Q/K permutation, Gemma's +1 norms) and dequantized with the
``gguf`` package; FP8 safetensors are dequantized with their scales.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import shutil
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class SourceError(ValueError):
    """A model source is missing, malformed or unsupported (message names the file)."""


@dataclass(frozen=True)
class TensorInfo:
    """One source tensor: HF name, HF shape ((out, in) for a Linear), source dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.json",
    "chat_template.jinja",
    "generation_config.json",
)


def normalize_config(config: dict[str, Any]) -> dict[str, Any]:
    """Config as mlx-lm 0.32 reads it.

    transformers 5 writes ``rope_theta`` inside ``rope_parameters``; mlx-lm reads a
    top-level ``rope_theta`` and silently defaults to 10000 without it.
    """
    config = dict(config)
    params = config.get("rope_parameters")
    if isinstance(params, dict) and "rope_theta" not in config and "rope_theta" in params:
        config["rope_theta"] = params["rope_theta"]
    text = config.get("text_config")
    if isinstance(text, dict):
        config["text_config"] = normalize_config(text)
    return config


class ModelSource:
    """Base class: subclasses fill `config`, `_infos` and implement `read`."""

    path: Path
    config: dict[str, Any]
    _infos: dict[str, TensorInfo]

    def tensors(self) -> list[TensorInfo]:
        return list(self._infos.values())

    def info(self, name: str) -> TensorInfo:
        try:
            return self._infos[name]
        except KeyError:
            raise SourceError(f"{self.path}: no tensor named {name!r}") from None

    def read(self, name: str):  # -> mx.array
        raise NotImplementedError

    def raw_bytes(self, name: str) -> memoryview:
        """The tensor's bytes exactly as stored in the source file."""
        raise NotImplementedError

    def checksum(self, name: str) -> str:
        """sha256 of the tensor's stored bytes (identifies the source in manifests)."""
        return hashlib.sha256(self.raw_bytes(name)).hexdigest()

    def read_fresh(self, name: str):
        """`read`, after returning MLX's cached buffers to the system, so streaming over a
        model's tensors keeps resident memory near the largest tensor."""
        import mlx.core as mx

        mx.clear_cache()
        return self.read(name)

    def iter_tensors(self) -> Iterator[tuple[TensorInfo, Any]]:
        for info in self.tensors():
            yield info, self.read(info.name)

    def write_tokenizer(self, dest: Path) -> list[str]:
        """Write the tokenizer (and generation config) files into `dest`; return their names."""
        raise NotImplementedError

    @property
    def num_parameters(self) -> int:
        return sum(int(np.prod(i.shape)) for i in self._infos.values())


# ----------------------------------------------------------- safetensors ----

_ST_DTYPES = {
    "F32": ("float32", np.float32),
    "F16": ("float16", np.float16),
    "BF16": ("bfloat16", np.uint16),
    "F8_E4M3": ("float8_e4m3fn", np.uint8),
    "F64": ("float64", np.float64),
    "I64": ("int64", np.int64),
    "I32": ("int32", np.int32),
    "I16": ("int16", np.int16),
    "I8": ("int8", np.int8),
    "U8": ("uint8", np.uint8),
    "BOOL": ("bool", np.bool_),
}


def _e4m3_table() -> np.ndarray:
    """float32 value of each FP8 E4M3FN byte (bias 7, no infinities, 0x7f/0xff NaN)."""
    b = np.arange(256, dtype=np.uint32)
    sign = np.where(b & 0x80, -1.0, 1.0)
    exp = (b >> 3) & 0xF
    man = (b & 0x7).astype(np.float64)
    value = np.where(
        exp == 0, man / 8 * 2.0**-6, (1 + man / 8) * 2.0 ** (exp.astype(np.float64) - 7)
    )
    value = sign * value
    value[(b & 0x7F) == 0x7F] = np.nan
    return value.astype(np.float32)


class _SafetensorsFile:
    """Header and zero-copy views of one .safetensors file."""

    def __init__(self, path: Path):
        self.path = path
        try:
            with open(path, "rb") as f:
                head = f.read(8)
                if len(head) != 8:
                    raise SourceError(f"{path}: not a safetensors file (shorter than 8 bytes)")
                (n,) = struct.unpack("<Q", head)
                size = path.stat().st_size
                if n > size - 8:
                    raise SourceError(f"{path}: header length {n} exceeds the file ({size} bytes)")
                header = json.loads(f.read(n))
        except json.JSONDecodeError as exc:
            raise SourceError(f"{path}: corrupt safetensors header ({exc})") from None
        self.metadata = header.pop("__metadata__", {}) or {}
        self.entries = header
        self.data_start = 8 + n
        self._file = open(path, "rb")  # kept open for the mmap's lifetime
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        for name, entry in header.items():
            start, end = entry["data_offsets"]
            if entry["dtype"] not in _ST_DTYPES:
                raise SourceError(f"{path}: tensor {name} has unsupported dtype {entry['dtype']}")
            if not 0 <= start <= end <= size - self.data_start:
                raise SourceError(f"{path}: tensor {name} data lies outside the file")

    def array(self, name: str) -> np.ndarray:
        entry = self.entries[name]
        start, end = entry["data_offsets"]
        np_dtype = _ST_DTYPES[entry["dtype"]][1]
        shape = tuple(entry["shape"])
        count = int(np.prod(shape)) if shape else 1
        if (end - start) != count * np.dtype(np_dtype).itemsize:
            raise SourceError(f"{self.path}: tensor {name} byte size does not match {shape}")
        return np.frombuffer(self._map, np_dtype, count, self.data_start + start).reshape(shape)


class SafetensorsSource(ModelSource):
    """A Hugging Face model directory (sharded or not) or a single safetensors file."""

    def __init__(self, path: Path, config_path: Path | None = None):
        self.path = path
        if path.is_dir():
            files = sorted(path.glob("*.safetensors"))
            index = path / "model.safetensors.index.json"
            if index.is_file():
                weight_map = json.loads(index.read_text()).get("weight_map", {})
                files = sorted({path / f for f in weight_map.values()})
                missing = [f for f in files if not f.is_file()]
                if missing:
                    raise SourceError(f"{index} names shards that are missing: {missing[0].name}")
            if not files:
                raise SourceError(f"{path}: no *.safetensors files")
            config_path = config_path or path / "config.json"
            self._dir = path
        else:
            files = [path]
            config_path = config_path or path.parent / "config.json"
            self._dir = path.parent
        if not config_path.is_file():
            raise SourceError(f"{path}: no config.json next to the weights ({config_path})")
        try:
            self.config = normalize_config(json.loads(config_path.read_text()))
        except json.JSONDecodeError as exc:
            raise SourceError(f"{config_path}: invalid JSON ({exc})") from None
        self._files = [_SafetensorsFile(f) for f in files]
        self._where: dict[str, _SafetensorsFile] = {}
        for f in self._files:
            for name in f.entries:
                self._where[name] = f
        scale_names = {n for n in self._where if n.endswith((".weight_scale_inv", ".weight_scale"))}
        self._infos = {}
        for name, f in self._where.items():
            if name in scale_names:
                continue
            entry = f.entries[name]
            start, end = entry["data_offsets"]
            self._infos[name] = TensorInfo(
                name, tuple(entry["shape"]), _ST_DTYPES[entry["dtype"]][0], end - start
            )

    def read(self, name: str):
        import mlx.core as mx

        info = self.info(name)
        raw = self._where[name].array(name)
        if info.dtype == "bfloat16":
            return mx.array(raw).view(mx.bfloat16)
        if info.dtype == "float8_e4m3fn":
            return mx.array(self._dequantize_fp8(name, raw)).astype(mx.bfloat16)
        return mx.array(raw)

    def raw_bytes(self, name: str) -> memoryview:
        self.info(name)
        return memoryview(np.ascontiguousarray(self._where[name].array(name)).reshape(-1)).cast("B")

    def _dequantize_fp8(self, name: str, raw: np.ndarray) -> np.ndarray:
        w = _e4m3_table()[raw]
        base = name.removesuffix(".weight")
        if f"{base}.weight_scale_inv" in self._where:  # block scales (DeepSeek-V3 style)
            scale = self._where[f"{base}.weight_scale_inv"].array(f"{base}.weight_scale_inv")
            scale = np.asarray(scale, dtype=np.float32)
            if scale.dtype != np.float32:
                scale = scale.astype(np.float32)
            bo = -(-w.shape[0] // scale.shape[0])
            bi = -(-w.shape[1] // scale.shape[1])
            full = np.repeat(np.repeat(scale, bo, axis=0), bi, axis=1)[: w.shape[0], : w.shape[1]]
            return w * full
        if f"{base}.weight_scale" in self._where:  # per-tensor or per-channel scale
            scale = np.asarray(self._where[f"{base}.weight_scale"].array(f"{base}.weight_scale"))
            return w * scale.astype(np.float32).reshape(-1, *([1] * (w.ndim - 1)))
        raise SourceError(f"{self.path}: FP8 tensor {name} has no weight_scale(_inv)")

    def write_tokenizer(self, dest: Path) -> list[str]:
        written = []
        for fname in TOKENIZER_FILES:
            src = self._dir / fname
            if src.is_file():
                shutil.copy2(src, dest / fname)
                written.append(fname)
        if not any(f in written for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
            raise SourceError(
                f"{self._dir}: no tokenizer (tokenizer.json, tokenizer.model or vocab.json)"
            )
        return written


# ------------------------------------------------------------------ GGUF ----

_GGUF_CHUNK = 1 << 24  # elements dequantized at once (64 MB of fp32)

# GGUF architecture -> (HF model_type, HF architectures entry)
_GGUF_ARCHS = {
    "llama": ("llama", "LlamaForCausalLM"),
    "mistral": ("mistral", "MistralForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
    "qwen3": ("qwen3", "Qwen3ForCausalLM"),
    "gemma": ("gemma", "GemmaForCausalLM"),
    "gemma2": ("gemma2", "Gemma2ForCausalLM"),
    "gemma3": ("gemma3_text", "Gemma3ForCausalLM"),
}

# "{arch}.<key>" -> HF config key
_GGUF_CONFIG_KEYS = {
    "context_length": "max_position_embeddings",
    "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size",
    "embedding_length": "hidden_size",
    "rope.freq_base": "rope_theta",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "attention.key_length": "head_dim",
    "attention.sliding_window": "sliding_window",
    "vocab_size": "vocab_size",
    "attn_logit_softcapping": "attn_logit_softcapping",
    "final_logit_softcapping": "final_logit_softcapping",
}

_GGUF_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_GGUF_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_GEMMA_BLOCK_NAMES = {
    **_GGUF_BLOCK_NAMES,
    "ffn_norm": "pre_feedforward_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}


def _gguf_to_hf_name(gguf_name: str, arch: str) -> str | None:
    stem, _, suffix = gguf_name.rpartition(".")
    if suffix not in ("weight", "bias"):
        return None
    if stem.startswith("blk."):
        _, layer, part = stem.split(".", 2)
        table = _GEMMA_BLOCK_NAMES if arch.startswith("gemma") else _GGUF_BLOCK_NAMES
        if part not in table:
            return None
        return f"model.layers.{layer}.{table[part]}.{suffix}"
    if stem in _GGUF_GLOBAL_NAMES:
        return f"{_GGUF_GLOBAL_NAMES[stem]}.{suffix}"
    return None


class GGUFSource(ModelSource):
    """A llama.cpp GGUF file, presented in the Hugging Face layout."""

    def __init__(self, path: Path):
        from gguf import GGUFReader

        self.path = path
        try:
            self._reader = GGUFReader(path)
        except Exception as exc:  # the gguf package raises assorted errors on bad files
            raise SourceError(
                f"{path}: not a readable GGUF file ({type(exc).__name__}: {exc})"
            ) from exc
        self.metadata = {k: f.contents() for k, f in self._reader.fields.items()}
        arch = self.metadata.get("general.architecture")
        if arch not in _GGUF_ARCHS:
            raise SourceError(
                f"{path}: GGUF architecture {arch!r} is not supported yet "
                f"(supported: {', '.join(sorted(_GGUF_ARCHS))})"
            )
        self.arch = arch
        self._by_hf: dict[str, Any] = {}
        unmapped = []
        for t in self._reader.tensors:
            hf = _gguf_to_hf_name(t.name, arch)
            if hf is None:
                unmapped.append(t.name)
                continue
            self._by_hf[hf] = t
        if unmapped:
            raise SourceError(
                f"{path}: GGUF tensors with no Hugging Face name for {arch}: "
                f"{', '.join(unmapped[:5])}{' ...' if len(unmapped) > 5 else ''}"
            )
        self.config = self._build_config()
        self._infos = {
            hf: TensorInfo(
                hf,
                tuple(int(d) for d in reversed(t.shape)),
                t.tensor_type.name,
                int(t.n_bytes),
            )
            for hf, t in self._by_hf.items()
        }

    def _build_config(self) -> dict[str, Any]:
        arch = self.arch
        model_type, architecture = _GGUF_ARCHS[arch]
        config: dict[str, Any] = {"architectures": [architecture], "model_type": model_type}
        for key, hf_key in _GGUF_CONFIG_KEYS.items():
            value = self.metadata.get(f"{arch}.{key}")
            if value is not None:
                config[hf_key] = value
        if "vocab_size" not in config and "tokenizer.ggml.tokens" in self.metadata:
            config["vocab_size"] = len(self.metadata["tokenizer.ggml.tokens"])
        config["tie_word_embeddings"] = "lm_head.weight" not in self._by_hf
        for key in ("bos", "eos", "padding"):
            token_id = self.metadata.get(f"tokenizer.ggml.{key}_token_id")
            if token_id is not None:
                config["pad_token_id" if key == "padding" else f"{key}_token_id"] = int(token_id)
        if arch == "gemma3":
            config.setdefault("head_dim", 256)
            config["query_pre_attn_scalar"] = config["head_dim"]
            config["rope_local_base_freq"] = 10000.0
            config["sliding_window_pattern"] = 6
            config["hidden_activation"] = "gelu_pytorch_tanh"
        config["torch_dtype"] = "bfloat16"
        if self.metadata.get(f"{arch}.rope.scaling.type") not in (None, "none"):
            warnings.warn(f"{self.path}: GGUF RoPE scaling metadata is ignored", stacklevel=2)
        return config

    def read(self, name: str):
        """The tensor in bfloat16 (the dtype of the reference models built from GGUF files),
        dequantized a block of rows at a time so a large tensor never exists twice in fp32."""
        import mlx.core as mx

        info = self.info(name)
        data = self._by_hf[name].data
        whole = len(info.shape) < 2 or self._needs_whole(name)
        if whole or int(np.prod(info.shape)) <= _GGUF_CHUNK:
            w = self._dequantize(name, data).reshape(info.shape)
            return mx.array(self._to_hf_layout(name, w)).astype(mx.bfloat16)
        rows = info.shape[0]
        step = max(1, _GGUF_CHUNK // int(np.prod(info.shape[1:])))
        data = data.reshape(rows, -1)
        parts = []
        for r in range(0, rows, step):
            block = self._dequantize(name, data[r : r + step]).reshape(-1, *info.shape[1:])
            parts.append(mx.array(block).astype(mx.bfloat16))
            mx.eval(parts[-1])
        return mx.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]

    def _needs_whole(self, name: str) -> bool:
        """Layout fixes that mix rows (llama's Q/K permutation) need the whole tensor."""
        return self.arch in ("llama", "mistral") and name.endswith(
            ("self_attn.q_proj.weight", "self_attn.k_proj.weight")
        )

    def _dequantize(self, name: str, data: np.ndarray) -> np.ndarray:
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        kind = self._by_hf[name].tensor_type
        if kind in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            return np.asarray(data, dtype=np.float32)
        if kind == GGMLQuantizationType.BF16:
            return (np.asarray(data).view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        try:
            return dequantize(data, kind)
        except NotImplementedError:
            raise SourceError(
                f"{self.path}: tensor {self._by_hf[name].name} has GGUF type {kind.name}, "
                "which the gguf package cannot dequantize"
            ) from None

    def raw_bytes(self, name: str) -> memoryview:
        self.info(name)
        return memoryview(np.ascontiguousarray(self._by_hf[name].data).reshape(-1)).cast("B")

    def _to_hf_layout(self, name: str, w: np.ndarray) -> np.ndarray:
        if self.arch in ("llama", "mistral") and name.endswith(
            ("self_attn.q_proj.weight", "self_attn.k_proj.weight")
        ):
            # llama.cpp interleaves the rotary halves of each Q/K head; undo it.
            key = "num_attention_heads" if "q_proj" in name else "num_key_value_heads"
            heads = int(self.config[key])
            half = w.shape[0] // heads // 2
            w = w.reshape(heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
        if self.arch.startswith("gemma") and name.endswith("norm.weight"):
            w = w - 1.0  # llama.cpp stores Gemma's (1 + w) norm scale
        return w

    def write_tokenizer(self, dest: Path) -> list[str]:
        from transformers import PreTrainedTokenizerFast
        from transformers.integrations.gguf.gguf_tokenizer_mapping import (
            GGUF_TOKENIZER_MAPPING,
            convert_gguf_tokenizer,
        )

        md = self.metadata
        if "tokenizer.ggml.tokens" not in md:
            raise SourceError(f"{self.path}: GGUF file carries no tokenizer vocabulary")
        groups = {
            group: {
                name: md[f"tokenizer.{key}"]
                for key, name in renames.items()
                if f"tokenizer.{key}" in md
            }
            for group, renames in GGUF_TOKENIZER_MAPPING.items()
        }
        vocab, tok_config = groups["tokenizer"], groups["tokenizer_config"]
        if vocab.get("tokenizer_type") == "llama":
            tok_config.setdefault("add_bos_token", True)
        tokens = vocab["tokens"]
        for special, key in (
            ("bos_token", "bos_token_id"),
            ("eos_token", "eos_token_id"),
            ("unk_token", "unknown_token_id"),
            ("pad_token", "padding_token_id"),
        ):
            token_id = md.get(f"tokenizer.ggml.{key}")
            if token_id is not None:
                tok_config[special] = tokens[int(token_id)]
        backend, extra = convert_gguf_tokenizer(self.arch, vocab)
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **tok_config, **extra)
        tokenizer.save_pretrained(str(dest))
        generation = {
            k: self.config[k]
            for k in ("bos_token_id", "eos_token_id", "pad_token_id")
            if k in self.config
        }
        (dest / "generation_config.json").write_text(json.dumps(generation, indent=2))
        return sorted(p.name for p in dest.iterdir() if p.name in TOKENIZER_FILES)


# ------------------------------------------------------------------ open ----


def open_source(path: str | Path) -> ModelSource:
    """Open a model: HF directory, `.safetensors` file (config.json beside it) or `.gguf` file."""
    path = Path(path).expanduser()
    if not path.exists():
        raise SourceError(f"{path}: no such file or directory")
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not list(path.glob("*.safetensors")) and len(ggufs) == 1:
            return GGUFSource(ggufs[0])
        return SafetensorsSource(path)
    if path.suffix == ".gguf":
        return GGUFSource(path)
    if path.suffix == ".safetensors":
        return SafetensorsSource(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"GGUF":
        return GGUFSource(path)
    raise SourceError(f"{path}: not a model directory, .safetensors or .gguf file")
