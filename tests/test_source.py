"""Model sources: HF dirs / safetensors / GGUF presented in one HF layout."""

import json
import struct

import mlx.core as mx
import numpy as np
import pytest

from jang import data
from jang.config import normalize_config
from jang.source import (
    GGUFSource,
    SafetensorsSource,
    SourceError,
    _e4m3_table,
    open_source,
)

CONFIG = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 1,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "vocab_size": 100,
    "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"},
}


def write_safetensors(path, tensors: dict[str, tuple[str, np.ndarray]]):
    """Minimal writer (dtype tag, raw array) so tests control bf16/fp8 bytes exactly."""
    header, blobs, offset = {}, [], 0
    for name, (dtype, arr) in tensors.items():
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {
            "dtype": dtype,
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def bf16_bits(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


def test_normalize_config_lifts_rope_theta():
    assert normalize_config(CONFIG)["rope_theta"] == 500000.0
    assert (
        normalize_config({"rope_theta": 1.0, "rope_parameters": {"rope_theta": 2.0}})["rope_theta"]
        == 1.0
    )
    nested = normalize_config({"text_config": dict(CONFIG)})
    assert nested["text_config"]["rope_theta"] == 500000.0


def test_normalize_config_fills_what_mlx_lm_reads():
    """transformers-5 configs, each key the way mlx-lm 0.32 reads it (the conformance
    matrix found each one: a missing key failed to load or silently changed the model)."""
    yarn = {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0, "partial_rotary_factor": 0.5}
    c = normalize_config({"hidden_size": 64, "num_attention_heads": 4, "rope_parameters": yarn})
    assert c["rope_scaling"] == {"rope_type": "yarn", "factor": 4.0, "partial_rotary_factor": 0.5}
    assert c["partial_rotary_factor"] == 0.5 and c["head_dim"] == 16
    assert normalize_config({"num_local_experts": 8})["num_experts"] == 8
    assert normalize_config({"num_local_experts": 8, "num_experts": 4})["num_experts"] == 4
    assert "rope_scaling" not in normalize_config(CONFIG)  # default RoPE: nothing to scale
    mamba2 = normalize_config(
        {
            "model_type": "mamba2",
            "num_heads": 8,
            "head_dim": 16,
            "time_step_limit": [0.0, {"__float__": "Infinity"}],
        }
    )
    assert mamba2["intermediate_size"] == 128 and mamba2["time_step_limit"] == [0.0, float("inf")]
    # a VLM's head is tied by the top-level flag, which the text tower must agree with
    vlm = normalize_config(
        {"tie_word_embeddings": True, "text_config": {"tie_word_embeddings": False}}
    )
    assert vlm["text_config"]["tie_word_embeddings"] is True
    assert "tie_word_embeddings" not in normalize_config({"text_config": {}})["text_config"]


def test_hf_directory(tmp_path):
    w = np.random.randn(8, 64).astype(np.float32)
    b = np.random.randn(64).astype(np.float16)
    write_safetensors(
        tmp_path / "model.safetensors", {"a.weight": ("BF16", bf16_bits(w)), "n.weight": ("F16", b)}
    )
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    src = open_source(tmp_path)
    assert isinstance(src, SafetensorsSource)
    assert src.config["rope_theta"] == 500000.0
    infos = {i.name: i for i in src.tensors()}
    assert infos["a.weight"].shape == (8, 64) and infos["a.weight"].dtype == "bfloat16"
    a = src.read("a.weight")
    assert a.dtype == mx.bfloat16
    np.testing.assert_allclose(np.array(a.astype(mx.float32)), w, rtol=1e-2, atol=1e-2)
    assert src.read("n.weight").dtype == mx.float16
    with pytest.raises(SourceError, match="no tensor named 'zz'"):
        src.read("zz")
    with pytest.raises(SourceError, match="no tokenizer"):
        src.write_tokenizer(tmp_path)


def test_sharded_directory_and_missing_shard(tmp_path):
    write_safetensors(
        tmp_path / "model-00001-of-00002.safetensors", {"a": ("F32", np.ones((2, 2), np.float32))}
    )
    write_safetensors(
        tmp_path / "model-00002-of-00002.safetensors", {"b": ("F32", np.zeros((3,), np.float32))}
    )
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    index = {
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        }
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert sorted(i.name for i in open_source(tmp_path).tensors()) == ["a", "b"]
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(SourceError, match="missing: model-00002-of-00002"):
        open_source(tmp_path)


def test_corrupt_files(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(struct.pack("<Q", 10_000) + b"{}")
    with pytest.raises(SourceError, match="header length"):
        open_source(tmp_path)
    bad.write_bytes(struct.pack("<Q", 5) + b"{oops")
    with pytest.raises(SourceError, match="corrupt safetensors header"):
        open_source(tmp_path)
    header = json.dumps({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 64]}}).encode()
    bad.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    with pytest.raises(SourceError, match="outside the file"):
        open_source(tmp_path)
    header = json.dumps({"t": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}).encode()
    bad.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    with pytest.raises(SourceError, match="unsupported dtype C64"):
        open_source(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(SourceError, match=r"no config\.json"):
        open_source(bad)
    with pytest.raises(SourceError, match="no such file"):
        open_source(tmp_path / "nope")


def test_e4m3_table():
    table = _e4m3_table()
    assert table[0x38] == 1.0 and table[0x40] == 2.0 and table[0xB8] == -1.0
    assert table[0x7E] == 448.0 and table[0x01] == 2.0**-9
    assert np.isnan(table[0x7F]) and np.isnan(table[0xFF])


def test_fp8_block_scales(tmp_path):
    codes = np.full((4, 6), 0x38, np.uint8)  # every weight 1.0 before scaling
    scale_inv = np.array([[2.0, 3.0], [5.0, 7.0]], np.float32)  # 2x3 blocks... of 2 rows x 3 cols
    write_safetensors(
        tmp_path / "model.safetensors",
        {"l.weight": ("F8_E4M3", codes), "l.weight_scale_inv": ("F32", scale_inv)},
    )
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    src = open_source(tmp_path)
    assert [i.name for i in src.tensors()] == ["l.weight"]
    w = np.array(src.read("l.weight").astype(mx.float32))
    expect = np.repeat(np.repeat(scale_inv, 2, axis=0), 3, axis=1)
    np.testing.assert_array_equal(w, expect)


def write_gguf(path, arch: str, tensors: dict[str, np.ndarray], heads=4, kv_heads=2):
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_context_length(128)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(16)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(12345.0)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["a", "b", "c", "ab"])
    writer.add_token_merges(["a b"])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    for name, arr in tensors.items():
        if isinstance(arr, tuple):  # (stored bytes, ggml type) of a quantized tensor
            writer.add_tensor(name, arr[0], raw_dtype=arr[1])
        else:
            writer.add_tensor(name, arr)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_chunked_read(tmp_path, monkeypatch):
    from jang import source as source_module

    monkeypatch.setattr(source_module, "_CHUNK", 48)  # 3 rows of 16 per block
    w = np.arange(10 * 16, dtype=np.float32).reshape(10, 16) / 7
    path = tmp_path / "c.gguf"
    write_gguf(path, "llama", {"blk.0.ffn_up.weight": w})
    got = open_source(path).read("model.layers.0.mlp.up_proj.weight")
    assert got.dtype == mx.bfloat16 and got.shape == (10, 16)
    np.testing.assert_array_equal(
        np.array(got.astype(mx.float32)),
        np.array(mx.array(w).astype(mx.bfloat16).astype(mx.float32)),
    )


@pytest.mark.parametrize("chunk", [None, 8, 16])  # default; one row (8 cols); two rows
def test_gguf_llama_layout(tmp_path, monkeypatch, chunk):
    from jang import source as source_module

    if chunk:  # Q/K rows land at their permuted places block by block
        monkeypatch.setattr(source_module, "_CHUNK", chunk)
    q_hf = np.arange(8 * 8, dtype=np.float32).reshape(8, 8)  # 4 heads x head_dim 2
    k_hf = np.arange(4 * 8, dtype=np.float32).reshape(4, 8) + 100  # 2 kv heads

    def permute(w, n_head):  # what llama.cpp's converter does to Q/K
        return (
            w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape)
        )

    tensors = {
        "token_embd.weight": np.random.randn(4, 8).astype(np.float32),
        "blk.0.attn_q.weight": permute(q_hf, 4),
        "blk.0.attn_k.weight": permute(k_hf, 2),
        "blk.0.attn_norm.weight": np.ones(8, np.float32),
        "blk.0.ffn_down.weight": np.random.randn(8, 16).astype(np.float16),
        "output_norm.weight": np.ones(8, np.float32),
    }
    path = tmp_path / "tiny.gguf"
    write_gguf(path, "llama", tensors)
    src = open_source(path)
    assert isinstance(src, GGUFSource)
    cfg = src.config
    assert cfg["model_type"] == "llama" and cfg["rope_theta"] == 12345.0
    assert cfg["num_attention_heads"] == 4 and cfg["num_key_value_heads"] == 2
    assert cfg["hidden_size"] == 8 and cfg["tie_word_embeddings"] is True and cfg["vocab_size"] == 4
    names = {i.name: i for i in src.tensors()}
    assert set(names) == {
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.weight",
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.mlp.down_proj.weight",
        "model.norm.weight",
    }
    assert names["model.layers.0.mlp.down_proj.weight"].shape == (8, 16)
    np.testing.assert_array_equal(
        np.array(src.read("model.layers.0.self_attn.q_proj.weight").astype(mx.float32)), q_hf
    )
    np.testing.assert_array_equal(
        np.array(src.read("model.layers.0.self_attn.k_proj.weight").astype(mx.float32)), k_hf
    )
    out = tmp_path / "tok"
    out.mkdir()
    assert "tokenizer.json" in src.write_tokenizer(out)
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 1


def test_gguf_gemma_norms_and_unknown_tensor(tmp_path):
    path = tmp_path / "g.gguf"
    write_gguf(
        path, "gemma3", {"blk.0.attn_norm.weight": np.full(8, 1.5, np.float32)}, heads=4, kv_heads=1
    )
    src = open_source(path)
    assert src.config["model_type"] == "gemma3_text"
    np.testing.assert_allclose(
        np.array(src.read("model.layers.0.input_layernorm.weight").astype(mx.float32)), 0.5
    )
    write_gguf(path, "llama", {"blk.0.mystery.weight": np.ones(8, np.float32)})
    with pytest.raises(
        SourceError, match=r"no Hugging Face name for llama: blk\.0\.mystery\.weight"
    ):
        open_source(path)
    write_gguf(path, "rwkv6", {"token_embd.weight": np.ones((4, 8), np.float32)})
    with pytest.raises(SourceError, match="architecture 'rwkv6' is not supported"):
        open_source(path)


@pytest.mark.skipif(
    data.path("smollm2") is None, reason="SmolLM2 not prepared: run `jang data smollm2`"
)
def test_real_smollm2_gguf():
    src = open_source(data.path("smollm2"))
    cfg = src.config
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"]) == (
        30,
        576,
        9,
    )
    assert cfg["rope_theta"] == 100000.0 and cfg["tie_word_embeddings"] is True
    assert len(src.tensors()) == 272
    assert 134e6 < src.num_parameters < 136e6
    emb = src.read("model.embed_tokens.weight")
    assert emb.shape == (49152, 576) and emb.dtype == mx.bfloat16


def random_blocks(qtype, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Stored bytes of a (rows, cols) tensor of `qtype` with finite fp16 block scales."""
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = np.random.default_rng(seed).integers(0, 256, (rows, cols // block, size), np.uint8)
    if qtype in (gguf.GGMLQuantizationType.Q4_K, gguf.GGMLQuantizationType.Q5_K):
        raw[..., :4] = np.frombuffer(np.float16([0.01, 0.002]).tobytes(), np.uint8)  # d, dmin
    elif qtype == gguf.GGMLQuantizationType.Q6_K:
        raw[..., -2:] = np.frombuffer(np.float16([0.01]).tobytes(), np.uint8)  # d (last)
    else:
        raw[..., :2] = np.frombuffer(np.float16([0.01]).tobytes(), np.uint8)  # d (first)
        if qtype == gguf.GGMLQuantizationType.Q4_1:
            raw[..., 2:4] = np.frombuffer(np.float16([-0.05]).tobytes(), np.uint8)  # m
    return raw.reshape(rows, -1)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K", "BF16"])
def test_gguf_quantized_types_read_in_chunks(tmp_path, monkeypatch, qtype):
    """Blocks of rows dequantized into one output == the whole tensor dequantized at once."""
    import gguf

    from jang import source as source_module

    kind = gguf.GGMLQuantizationType[qtype]
    rows, cols = 12, 512
    if qtype == "BF16":
        raw = bf16_bits(np.random.default_rng(0).standard_normal((rows, cols))).view(np.uint8)
        expect = mx.array(raw.view(np.uint16)).view(mx.bfloat16)
    else:
        raw = random_blocks(kind, rows, cols)
        expect = mx.array(gguf.quants.dequantize(raw, kind)).astype(mx.bfloat16)
    path = tmp_path / "q.gguf"
    write_gguf(path, "llama", {"blk.0.ffn_up.weight": (raw, kind)})
    monkeypatch.setattr(source_module, "_CHUNK", cols * 5)  # 5 rows per block, 3 blocks
    src = open_source(path)
    info = src.info("model.layers.0.mlp.up_proj.weight")
    assert info.shape == (rows, cols) and info.dtype == qtype and info.nbytes == raw.nbytes
    got = src.read(info.name)
    assert got.dtype == mx.bfloat16 and got.shape == (rows, cols)
    np.testing.assert_array_equal(np.array(got.view(mx.uint16)), np.array(expect.view(mx.uint16)))


def test_gguf_truncated_data_names_the_tensor(tmp_path):
    path = tmp_path / "t.gguf"
    write_gguf(path, "llama", {"blk.0.ffn_up.weight": np.ones((4, 64), np.float32)})
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(SourceError, match=r"t\.gguf: tensor 'blk\.0\.ffn_up\.weight': data"):
        open_source(path)


def test_safetensors_read_in_blocks(tmp_path, monkeypatch):
    from jang import source as source_module

    monkeypatch.setattr(source_module, "_CHUNK", 5)  # 20 bytes per block: blocks cross rows
    rng = np.random.default_rng(0)
    tensors = {
        "b": ("BF16", bf16_bits(rng.standard_normal((7, 9)))),
        "h": ("F16", rng.standard_normal((7, 9)).astype(np.float16)),
        "f": ("F32", rng.standard_normal((3, 5, 3)).astype(np.float32)),
        "i": ("I64", np.arange(10, dtype=np.int64)),
        "s": ("F32", np.array(2.5, np.float32)),
    }
    write_safetensors(tmp_path / "model.safetensors", tensors)
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    src = open_source(tmp_path)
    for name, (_, arr) in tensors.items():
        got = src.read(name)
        assert got.shape == arr.shape, name
        raw = np.array(got.view(mx.uint16)) if got.dtype == mx.bfloat16 else np.array(got)
        np.testing.assert_array_equal(raw, arr)
        assert src.read(name).shape == arr.shape  # pages released, data reads back
        assert src.checksum(name) == __import__("hashlib").sha256(arr.tobytes()).hexdigest()


@pytest.mark.parametrize("scale_dtype", ["F32", "BF16"])
def test_fp8_channel_and_tensor_scales_in_blocks(tmp_path, monkeypatch, scale_dtype):
    from jang import source as source_module

    monkeypatch.setattr(source_module, "_CHUNK", 12)  # 2 rows of 6 per block
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 0x7E, (5, 6), dtype=np.uint8)  # finite E4M3 values
    per_row = np.array([0.5, 2.0, 3.0, 0.25, 1.5], np.float32)

    def stored(x):
        return (scale_dtype, bf16_bits(x) if scale_dtype == "BF16" else x)

    write_safetensors(
        tmp_path / "model.safetensors",
        {
            "c.weight": ("F8_E4M3", codes),
            "c.weight_scale": stored(per_row.reshape(5, 1)),
            "t.weight": ("F8_E4M3", codes),
            "t.weight_scale": stored(np.array([4.0], np.float32)),
            "bad.weight": ("F8_E4M3", codes),
            "bad.weight_scale": stored(np.ones(3, np.float32)),
        },
    )
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    src = open_source(tmp_path)
    table = _e4m3_table()
    for name, scale in (("c.weight", per_row[:, None]), ("t.weight", np.float32(4.0))):
        expect = mx.array(table[codes] * scale).astype(mx.bfloat16)
        got = src.read(name)
        assert got.dtype == mx.bfloat16
        np.testing.assert_array_equal(
            np.array(got.view(mx.uint16)), np.array(expect.view(mx.uint16))
        )
    with pytest.raises(SourceError, match=r"bad\.weight_scale has 3 values for 5 rows"):
        src.read("bad.weight")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32", "uint32", "uint8"])
def test_mlx_buffer_is_filled_in_place(dtype):
    from jang.source import mlx_buffer

    out, view = mlx_buffer((3, 4), getattr(mx, dtype))
    assert out.dtype == getattr(mx, dtype) and view.shape == (3, 4)
    assert view.itemsize == out.dtype.size and not view.any()
    view[1] = np.arange(4) + 1  # raw bits, seen by MLX
    uint = {1: mx.uint8, 2: mx.uint16, 4: mx.uint32}[out.dtype.size]
    np.testing.assert_array_equal(np.array(out.view(uint)), [[0] * 4, [1, 2, 3, 4], [0] * 4])


def _peak_growth(fn):
    """(fn(), growth of peak RSS over the RSS before it, in bytes), via VmHWM (Linux)."""
    from jang.source import trim_memory

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

    trim_memory()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak to the current RSS
    except OSError:
        pytest.skip("needs Linux's /proc/self/clear_refs")
    before = status("VmRSS:")
    result = fn()
    return result, status("VmHWM:") - before


def test_gguf_read_memory_stays_near_the_tensor(tmp_path, monkeypatch):
    """Reading a large quantized tensor peaks at its bf16 size plus block-sized temporaries
    (not: the stored bytes resident, an fp32 copy, or blocks plus their concatenation)."""
    import gguf

    from jang import source as source_module

    monkeypatch.setattr(source_module, "_HASH_BLOCK", 1 << 22)
    rows, cols = 16384, 2048
    q8 = gguf.GGMLQuantizationType.Q8_0
    path = tmp_path / "big.gguf"
    write_gguf(path, "llama", {"token_embd.weight": (random_blocks(q8, rows, cols), q8)})
    src = open_source(path)
    name = "model.embed_tokens.weight"
    size = rows * cols * 2
    w, growth = _peak_growth(lambda: src.read(name))
    assert w.shape == (rows, cols) and growth < 1.5 * size, growth / size  # was 4x
    del w
    _, growth = _peak_growth(lambda: src.checksum(name))  # 4 MB blocks of 36 MB stored
    assert growth < 0.3 * src.info(name).nbytes, growth / src.info(name).nbytes


def test_safetensors_read_memory_stays_near_the_tensor(tmp_path):
    rows, cols = 8192, 4096
    w = np.random.default_rng(0).integers(0, 1 << 16, (rows, cols), dtype=np.uint16)
    write_safetensors(tmp_path / "model.safetensors", {"w": ("BF16", w)})
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    src = open_source(tmp_path)
    got, growth = _peak_growth(lambda: src.read("w"))
    assert got.dtype == mx.bfloat16 and growth < 1.3 * w.nbytes, growth / w.nbytes  # was 2x
    np.testing.assert_array_equal(np.array(got.view(mx.uint16)), w)
