"""Model sources: a Hugging Face directory, a safetensors file, or a GGUF file.

Every source presents the same thing: an HF-layout ``config`` dict, the list of
tensors under their Hugging Face names and shapes, ``read(name)`` returning one
tensor at a time as an MLX float array (so conversion memory stays near the
largest tensor), and the tokenizer files. GGUF files are mapped to the HF
layout (names, Q/K permutation, Gemma's +1 norms), read with `jang.gguf_file` and
dequantized with the ``gguf`` package; FP8 safetensors are dequantized with their
scales.
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

from jang.config import normalize_config
from jang.errors import SourceError

_HASH_BLOCK = 1 << 24  # bytes hashed between page releases
_CHUNK = 1 << 20  # elements dequantized at once (4 MB of fp32)
_MAX_DIM = 2**31 - 1  # MLX shapes are int32


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
        """sha256 of the tensor's stored bytes (identifies the source in manifests), hashed
        a block at a time with the mapped pages released behind the hash."""
        data = self.raw_bytes(name)
        digest = hashlib.sha256()
        for start in range(0, len(data), _HASH_BLOCK):
            stop = min(len(data), start + _HASH_BLOCK)
            digest.update(data[start:stop])
            self._release(name, start, stop)
        return digest.hexdigest()

    def _release(self, name: str, start: int, stop: int) -> None:
        """Let the system drop the mapped pages of stored bytes [start, stop) of `name`."""

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

    def weight_files(self) -> list[Path]:
        """The files the weights are read from."""
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
        self.size = size
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

    def release(self, name: str, start: int = 0, stop: int | None = None) -> None:
        """Drop the mapped pages of bytes [start, stop) of tensor `name` from this process."""
        begin, end = self.entries[name]["data_offsets"]
        base = self.data_start + begin
        _release_pages(
            self._map, self.size, base + start, base + (end - begin if stop is None else stop)
        )


def _release_pages(m: mmap.mmap | None, size: int, start: int, stop: int) -> None:
    """madvise(DONTNEED) the whole pages of [start, stop): a read-only file mapping's pages
    leave this process's resident set (and come back from the page cache if touched)."""
    page = mmap.PAGESIZE
    lo = start // page * page
    hi = min(-(-stop // page) * page, -(-size // page) * page)
    if m is not None and lo < size and hi > lo and hasattr(mmap, "MADV_DONTNEED"):
        m.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


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
        """The tensor as an MLX array (one copy out of the mapping, whose pages are then
        released); FP8 is dequantized to bf16 a block of rows at a time."""
        import mlx.core as mx

        info = self.info(name)
        f = self._where[name]
        raw = f.array(name)
        if info.dtype == "float8_e4m3fn":
            out = self._read_fp8(name, raw)
        elif info.dtype in ("bfloat16", "float16", "float32"):
            # copied a block at a time, releasing the mapped pages behind the copy, so the
            # file's pages and the copy are never both resident in full
            out, view = mlx_buffer(info.shape, getattr(mx, info.dtype))
            src, dst = raw.reshape(-1), view.reshape(-1)
            step = _CHUNK * 4 // raw.itemsize
            for i in range(0, src.size, step):
                dst[i : i + step] = src[i : i + step].view(dst.dtype)
                f.release(name, i * raw.itemsize, min(src.size, i + step) * raw.itemsize)
        else:
            out = mx.array(raw)  # copies now
        del raw
        f.release(name)
        return out

    def raw_bytes(self, name: str) -> memoryview:
        self.info(name)
        return memoryview(np.ascontiguousarray(self._where[name].array(name)).reshape(-1)).cast("B")

    def _release(self, name: str, start: int, stop: int) -> None:
        self._where[name].release(name, start, stop)

    def _scale(self, name: str) -> np.ndarray:
        f = self._where[name]
        raw = f.array(name)
        if f.entries[name]["dtype"] == "BF16":
            return (raw.astype(np.uint32) << 16).view(np.float32)
        return np.asarray(raw, dtype=np.float32)

    def _read_fp8(self, name: str, raw: np.ndarray):
        """FP8 E4M3 codes times their scales, rounded to bf16, `_CHUNK` elements at a time
        straight into the output."""
        import mlx.core as mx

        table = _e4m3_table()
        base = name.removesuffix(".weight")
        block = f"{base}.weight_scale_inv" in self._where  # DeepSeek-V3 style block scales
        if block:
            scale = self._scale(f"{base}.weight_scale_inv")
        elif f"{base}.weight_scale" in self._where:  # per-tensor or per-channel scale
            scale = self._scale(f"{base}.weight_scale").reshape(-1)
        else:
            raise SourceError(f"{self.path}: FP8 tensor {name} has no weight_scale(_inv)")
        if raw.ndim != 2:
            raise SourceError(f"{self.path}: FP8 tensor {name} has shape {raw.shape}, not 2-D")
        rows, cols = raw.shape
        if block:
            if scale.ndim != 2 or 0 in scale.shape:
                raise SourceError(f"{self.path}: {base}.weight_scale_inv has shape {scale.shape}")
            bo, bi = -(-rows // scale.shape[0]), -(-cols // scale.shape[1])
            col_block = np.arange(cols) // bi
        elif scale.size not in (1, rows):
            raise SourceError(
                f"{self.path}: {base}.weight_scale has {scale.size} values for {rows} rows"
            )
        out, bits = mlx_buffer((rows, cols))
        step = max(1, _CHUNK // max(cols, 1))
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            w = table[raw[r0:r1]]
            if block:
                w *= scale[np.arange(r0, r1) // bo][:, col_block]
            elif scale.size == 1:
                w *= scale[0]
            else:
                w *= scale[r0:r1, None]
            bits[r0:r1] = np.array(mx.array(w).astype(mx.bfloat16).view(mx.uint16), copy=False)
        return out

    def weight_files(self) -> list[Path]:
        return [f.path for f in self._files]

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

# GGUF architecture -> (HF model_type, HF architectures entry)
_GGUF_ARCHS = {
    "llama": ("llama", "LlamaForCausalLM"),
    "mistral": ("mistral", "MistralForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
    "qwen3": ("qwen3", "Qwen3ForCausalLM"),
    "gemma": ("gemma", "GemmaForCausalLM"),
    "gemma2": ("gemma2", "Gemma2ForCausalLM"),
    "gemma3": ("gemma3_text", "Gemma3ForCausalLM"),
    "qwen3moe": ("qwen3_moe", "Qwen3MoeForCausalLM"),
}
# a llama-architecture GGUF with experts is a Mixtral
_GGUF_MOE_ARCHS = {"llama": ("mixtral", "MixtralForCausalLM")}

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
# stacked experts (E, out, in) are presented as the per-expert tensors of the HF layout
_QWEN_MOE_BLOCK_NAMES = {
    **_GGUF_BLOCK_NAMES,
    "ffn_gate_inp": "mlp.gate",
    "ffn_gate_exps": "mlp.experts.{e}.gate_proj",
    "ffn_up_exps": "mlp.experts.{e}.up_proj",
    "ffn_down_exps": "mlp.experts.{e}.down_proj",
}
_MIXTRAL_BLOCK_NAMES = {
    **_GGUF_BLOCK_NAMES,
    "ffn_gate_inp": "block_sparse_moe.gate",
    "ffn_gate_exps": "block_sparse_moe.experts.{e}.w1",
    "ffn_up_exps": "block_sparse_moe.experts.{e}.w3",
    "ffn_down_exps": "block_sparse_moe.experts.{e}.w2",
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
        pieces = stem.split(".", 2)
        if len(pieces) != 3 or not pieces[1].isdecimal():
            return None
        _, layer, part = pieces
        table = {
            # Gemma 2 and 3 have four norms a block; Gemma 1's ffn_norm is the llama one
            "gemma2": _GEMMA_BLOCK_NAMES,
            "gemma3": _GEMMA_BLOCK_NAMES,
            "qwen3moe": _QWEN_MOE_BLOCK_NAMES,
            "llama": _MIXTRAL_BLOCK_NAMES,  # the expert names occur only in MoE files
        }.get(arch, _GGUF_BLOCK_NAMES)
        if part not in table:
            return None
        return f"model.layers.{layer}.{table[part]}.{suffix}"
    if stem in _GGUF_GLOBAL_NAMES:
        return f"{_GGUF_GLOBAL_NAMES[stem]}.{suffix}"
    return None


@dataclass(frozen=True)
class _Part:
    """The stored rows of one HF tensor: a whole GGUF tensor, or one expert's rows of a
    stacked (E, out, in) one."""

    tensor: Any  # jang.gguf_file.GGUFTensor
    row0: int
    rows: int
    shape: tuple[int, ...]

    @property
    def n_bytes(self) -> int:
        return self.rows * self.tensor.row_bytes

    @property
    def start(self) -> int:
        """File offset of the first stored byte."""
        return self.tensor.offset + self.row0 * self.tensor.row_bytes


class GGUFSource(ModelSource):
    """A llama.cpp GGUF file, presented in the Hugging Face layout.

    Read with `jang.gguf_file.GGUFFile` (memory-mapped; the vocabulary stays packed until
    the tokenizer is written). `read` dequantizes a block of rows at a time straight into
    the one output array, so a tensor never exists twice.
    """

    def __init__(self, path: Path):
        from jang.gguf_file import GGUFError, GGUFFile

        self.path = path
        try:
            self._file = GGUFFile(path)
        except GGUFError as exc:
            raise SourceError(str(exc)) from None
        self.metadata = self._file.metadata
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str) or arch not in _GGUF_ARCHS:
            raise SourceError(
                f"{path}: GGUF architecture {arch!r} is not supported yet "
                f"(supported: {', '.join(sorted(_GGUF_ARCHS))})"
            )
        self.arch = arch
        self._by_hf: dict[str, _Part] = {}
        unmapped = []
        for t in self._file.tensors.values():
            hf = _gguf_to_hf_name(t.name, arch)
            if hf is None:
                unmapped.append(t.name)
                continue
            if max(t.dims) > _MAX_DIM:
                raise SourceError(
                    f"{path}: tensor {t.name!r} has shape {list(t.shape)}; MLX arrays hold at "
                    f"most {_MAX_DIM} elements per dimension"
                )
            if "{e}" not in hf:
                self._by_hf[hf] = _Part(t, 0, t.rows, t.shape)
                continue
            if len(t.shape) != 3:
                raise SourceError(f"{path}: stacked experts {t.name!r} have shape {t.shape}")
            experts, out_rows = t.shape[0], t.shape[1]
            for e in range(experts):
                self._by_hf[hf.format(e=e)] = _Part(t, e * out_rows, out_rows, t.shape[1:])
        if unmapped:
            raise SourceError(
                f"{path}: GGUF tensors with no Hugging Face name for {arch}: "
                f"{', '.join(unmapped[:5])}{' ...' if len(unmapped) > 5 else ''}"
            )
        self.config = self._build_config()
        self._infos = {
            hf: TensorInfo(hf, p.shape, p.tensor.type.name, p.n_bytes)
            for hf, p in self._by_hf.items()
        }

    def _meta_int(self, key: str) -> int | None:
        value = self.metadata.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise SourceError(f"{self.path}: GGUF metadata {key} should be an integer: {value!r}")
        return int(value)

    def _build_config(self) -> dict[str, Any]:
        arch = self.arch
        experts = self._meta_int(f"{arch}.expert_count") or 0
        model_type, architecture = (
            _GGUF_MOE_ARCHS[arch] if experts and arch in _GGUF_MOE_ARCHS else _GGUF_ARCHS[arch]
        )
        config: dict[str, Any] = {"architectures": [architecture], "model_type": model_type}
        for key, hf_key in _GGUF_CONFIG_KEYS.items():
            value = self.metadata.get(f"{arch}.{key}")
            if value is not None:
                config[hf_key] = _plain(value)
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        if "vocab_size" not in config and tokens is not None:
            config["vocab_size"] = len(tokens)
        config["tie_word_embeddings"] = "lm_head.weight" not in self._by_hf
        for key in ("bos", "eos", "padding"):
            token_id = self._meta_int(f"tokenizer.ggml.{key}_token_id")
            if token_id is not None:
                config["pad_token_id" if key == "padding" else f"{key}_token_id"] = token_id
        if experts:
            config["num_local_experts" if model_type == "mixtral" else "num_experts"] = experts
            config["num_experts_per_tok"] = self._meta_int(f"{arch}.expert_used_count")
            moe_ff = self._meta_int(f"{arch}.expert_feed_forward_length")
            if moe_ff:
                config["moe_intermediate_size"] = moe_ff
            if model_type == "qwen3_moe":  # llama.cpp's qwen3moe renormalizes the top-k
                config.update(norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[])
        if arch in ("gemma2", "gemma3"):  # GGUF has no key for it; llama.cpp uses head_dim
            config.setdefault("head_dim", 256)
            config["query_pre_attn_scalar"] = config["head_dim"]
        if arch == "gemma3":
            config["rope_local_base_freq"] = 10000.0
            pattern = self._meta_int("gemma3.attention.sliding_window_pattern")
            config["sliding_window_pattern"] = pattern or 6
            config["hidden_activation"] = "gelu_pytorch_tanh"
        config["torch_dtype"] = "bfloat16"
        if self.metadata.get(f"{arch}.rope.scaling.type") not in (None, "none"):
            warnings.warn(f"{self.path}: GGUF RoPE scaling metadata is ignored", stacklevel=2)
        return normalize_config(config)

    def read(self, name: str):
        """The tensor in bfloat16 (the dtype of the reference models built from GGUF files).

        Rows are dequantized `_CHUNK` elements at a time, rounded to bf16 and written
        into one preallocated MLX array (llama's Q/K rows go straight to their permuted
        place); the file's pages are released behind the reader. Peak memory: the bf16
        tensor plus a few chunk-sized temporaries.
        """
        import mlx.core as mx

        info = self.info(name)
        part = self._by_hf[name]
        t = part.tensor
        out, bits = mlx_buffer((part.rows, t.row_elements))
        row_map = self._row_map(name, part.rows)
        norm = self.arch.startswith("gemma") and name.endswith("norm.weight")
        step = max(1, _CHUNK // max(t.row_elements, 1))
        for r0 in range(0, part.rows, step):
            r1 = min(part.rows, r0 + step)
            raw = self._file.rows(t, part.row0 + r0, part.row0 + r1)
            if t.type.name == "BF16" and not norm:
                block = raw.view(np.uint16)  # already bf16: copy the bits
            else:
                w = self._dequantize(t, raw)
                if norm:
                    w = w - 1.0  # llama.cpp stores Gemma's (1 + w) norm scale
                block = np.array(mx.array(w).astype(mx.bfloat16).view(mx.uint16), copy=False)
            if row_map is None:
                bits[r0:r1] = block
            else:
                bits[row_map[r0:r1]] = block
            del raw, block
            self._file.release(part.start + r0 * t.row_bytes, part.start + r1 * t.row_bytes)
        return out.reshape(info.shape)

    def _row_map(self, name: str, rows: int) -> np.ndarray | None:
        """HF row of each stored row, for llama.cpp's interleaved rotary halves of Q/K."""
        if self.arch not in ("llama", "mistral") or not name.endswith(
            ("self_attn.q_proj.weight", "self_attn.k_proj.weight")
        ):
            return None
        key = "num_attention_heads" if "q_proj" in name else "num_key_value_heads"
        heads = self.config.get(key)
        if not isinstance(heads, int) or heads <= 0 or rows % (2 * heads):
            raise SourceError(
                f"{self.path}: {name} has {rows} rows, which do not split into "
                f"{key}={heads!r} heads of two rotary halves"
            )
        half = rows // heads // 2
        g = np.arange(rows)
        head, rem = np.divmod(g, 2 * half)
        return head * 2 * half + (rem % 2) * half + rem // 2

    def _dequantize(self, t, raw: np.ndarray) -> np.ndarray:
        """float32 (rows, row_elements) of a (rows, row_bytes) block of stored bytes."""
        from gguf import GGMLQuantizationType as Q
        from gguf.quants import dequantize

        if t.type == Q.F32:
            return raw.view(np.float32)
        if t.type == Q.F16:
            return raw.view(np.float16).astype(np.float32)
        if t.type == Q.BF16:
            return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        try:
            return dequantize(raw, t.type)
        except NotImplementedError:
            raise SourceError(
                f"{self.path}: tensor {t.name} has GGUF type {t.type.name}, "
                "which the gguf package cannot dequantize"
            ) from None

    def raw_bytes(self, name: str) -> memoryview:
        self.info(name)
        part = self._by_hf[name]
        start = part.row0 * part.tensor.row_bytes
        return memoryview(self._file.data(part.tensor))[start : start + part.n_bytes]

    def _release(self, name: str, start: int, stop: int) -> None:
        part = self._by_hf[name]
        self._file.release(part.start + start, part.start + stop)

    def weight_files(self) -> list[Path]:
        return [self.path]

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
                name: _plain(md[f"tokenizer.{key}"])
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
            token_id = self._meta_int(f"tokenizer.ggml.{key}")
            if token_id is not None:
                if not 0 <= token_id < len(tokens):
                    raise SourceError(
                        f"{self.path}: tokenizer.ggml.{key} {token_id} is outside the "
                        f"{len(tokens)}-token vocabulary"
                    )
                tok_config[special] = tokens[token_id]
        backend, extra = convert_gguf_tokenizer(self.arch, vocab)
        del vocab, groups, tokens
        # Handing `backend` to PreTrainedTokenizerFast would deep-copy it (~300 MB for a
        # 262k vocabulary); going through tokenizer.json keeps one copy alive at a time.
        backend.save(str(dest / "tokenizer.json"))
        del backend
        trim_memory()
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_file=str(dest / "tokenizer.json"), **tok_config, **extra
        )
        tokenizer.save_pretrained(str(dest))
        del tokenizer
        trim_memory()
        generation = {
            k: self.config[k]
            for k in ("bos_token_id", "eos_token_id", "pad_token_id")
            if k in self.config
        }
        (dest / "generation_config.json").write_text(json.dumps(generation, indent=2))
        return sorted(p.name for p in dest.iterdir() if p.name in TOKENIZER_FILES)


def trim_memory() -> None:
    """Return freed memory to the system: MLX's buffer cache, and (glibc) the malloc heap,
    which otherwise keeps the high-water mark of e.g. a tokenizer build resident."""
    import ctypes
    import gc

    import mlx.core as mx

    gc.collect()
    mx.clear_cache()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):  # not glibc
        pass


def _plain(value: Any) -> Any:
    """A GGUF metadata value as plain Python (lists for numpy and string arrays)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "tolist"):  # jang.gguf_file.StringArray
        return value.tolist()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def mlx_buffer(shape: tuple[int, ...], dtype=None):
    """(MLX array of `dtype` (default bfloat16), writable numpy view of its memory as
    unsigned integers of the same width).

    MLX cannot wrap foreign memory and `mx.array(numpy)` copies, so a tensor assembled
    block by block would otherwise exist twice. Here MLX allocates the output (evaluated
    zeros) and blocks are written into it in place through numpy; nothing else references
    the fresh buffer while it is being filled.
    """
    import mlx.core as mx

    dtype = mx.bfloat16 if dtype is None else dtype
    uint = {1: mx.uint8, 2: mx.uint16, 4: mx.uint32, 8: mx.uint64}[dtype.size]
    out = mx.zeros(shape, dtype=dtype)
    bits = out.view(uint)
    mx.eval(out, bits)
    view = np.array(bits, copy=False)
    if view.size:  # check that writes through the view reach `out` (MLX shares the buffer)
        view.flat[0] = 1
        if not view.flags.writeable or out.reshape(-1)[:1].view(uint).item() != 1:
            raise RuntimeError("internal: cannot fill an MLX array in place through numpy")
        view.flat[0] = 0
    return out, view


# ------------------------------------------------------------------ open ----


def open_source(path: str | Path) -> ModelSource:
    """Open a model: HF directory, `.safetensors` file (config.json beside it) or `.gguf` file."""
    path = Path(path).expanduser()
    if not path.exists():
        raise SourceError(f"{path}: no such file or directory")
    folder = path if path.is_dir() else path.parent
    if (folder / "jang.json").is_file():
        raise SourceError(
            f"{path} is already a jang bundle (it has jang.json); convert the model it was "
            "made from, or load it with `jang generate` / jang.load"
        )
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
