"""jang.gguf_file: our GGUF reader, checked against the gguf package and on broken files."""

import hashlib
import json
import struct
import time

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V

from jang.gguf_file import GGUFError, GGUFFile, StringArray
from jang.source import SourceError, open_source


def s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    return s(key) + struct.pack("<I", vtype) + payload


def gguf_bytes(kvs=(), tensors=(), data=b"", version=3, align=32, counts=None) -> bytes:
    """A GGUF file from raw pieces: kvs are kv() blobs, tensors (name, dims, type, offset)."""
    n_t, n_kv = counts or (len(tensors), len(kvs))
    out = b"GGUF" + struct.pack("<IQQ", version, n_t, n_kv) + b"".join(kvs)
    for name, dims, ggml_type, offset in tensors:
        out += s(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        out += struct.pack("<IQ", ggml_type, offset)
    out += b"\0" * (-len(out) % align)
    return out + data


ARCH = kv("general.architecture", V.STRING, s("llama"))


def write_reference(path, alignment=None):
    """A file with every metadata type and a few tensor types, written by the gguf package."""
    w = gguf.GGUFWriter(str(path), "llama")
    if alignment:
        w.add_custom_alignment(alignment)
    w.add_uint8("t.u8", 250)
    w.add_int8("t.i8", -7)
    w.add_uint16("t.u16", 65000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4_000_000_000)
    w.add_int32("t.i32", -2_000_000_000)
    w.add_float32("t.f32", 0.1)
    w.add_float64("t.f64", 0.1)
    w.add_bool("t.bool", True)
    w.add_uint64("t.u64", 2**63 + 5)
    w.add_int64("t.i64", -(2**62))
    w.add_string("t.str", "héllo ✓")
    w.add_array("t.ints", [1, 2, 3])
    w.add_array("t.floats", [0.5, -1.25])
    w.add_array("t.bools", [True, False, True])
    w.add_array("t.strs", ["a", "", "ünï", "▁the"])
    w.add_array("t.nested", [[1, 2], [3]])
    rng = np.random.default_rng(0)
    w.add_tensor("f32", rng.standard_normal((3, 8)).astype(np.float32))
    w.add_tensor("f16", rng.standard_normal((16,)).astype(np.float16))
    q8 = gguf.quants.quantize(rng.standard_normal((4, 64)).astype(np.float32), Q.Q8_0)
    w.add_tensor("q8", q8, raw_dtype=Q.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_matches_gguf_reader(tmp_path):
    path = tmp_path / "ref.gguf"
    write_reference(path)
    ours, theirs = GGUFFile(path), gguf.GGUFReader(path)
    assert ours.version == 3 and ours.alignment == 32 and ours.data_offset == theirs.data_offset
    for key, field in theirs.fields.items():
        if key.startswith("GGUF."):
            continue
        mine = ours.metadata[key]
        value = field.contents()
        if isinstance(mine, (np.ndarray, StringArray)):
            mine = mine.tolist()
        if key == "t.nested":
            assert [list(a) for a in mine] == [[1, 2], [3]]  # gguf flattens nested arrays
        else:
            assert mine == value, key
    assert ours.metadata["t.f32"] == np.float32(0.1) and ours.metadata["t.u64"] == 2**63 + 5
    assert isinstance(ours.metadata["t.strs"], StringArray)
    for t in theirs.tensors:
        mine = ours.tensor(t.name)
        assert mine.type == t.tensor_type and mine.offset == t.data_offset
        assert mine.dims == tuple(int(d) for d in t.shape) and mine.n_bytes == t.n_bytes
        assert ours.data(mine).tobytes() == t.data.tobytes()
        rows = ours.rows(mine, 1, mine.rows)
        assert rows.shape == (mine.rows - 1, mine.row_bytes)
        assert rows.tobytes() == t.data.tobytes()[mine.row_bytes :]
        ours.release_tensor(mine)  # pages dropped; the data reads back the same
        assert ours.data(mine).tobytes() == t.data.tobytes()
    with pytest.raises(GGUFError, match="no tensor named 'zz'"):
        ours.tensor("zz")
    ours.close()


def test_custom_alignment(tmp_path):
    path = tmp_path / "a.gguf"
    write_reference(path, alignment=256)
    f = GGUFFile(path)
    assert f.alignment == 256 and f.data_offset % 256 == 0
    assert all((t.offset - f.data_offset) % 256 == 0 for t in f.tensors.values())
    ref = gguf.GGUFReader(path)
    assert f.data(f.tensor("q8")).tobytes() == ref.tensors[2].data.tobytes()


def test_string_array():
    items = ["a", "", "ünï", "x" * 300]
    blob = b"".join(s(x) for x in items)
    starts, pos = [], 0
    for x in items:
        pos += 8
        starts.append(pos)
        pos += len(x.encode())
    a = StringArray(blob, np.array([*starts, pos + 8], np.int64))
    assert len(a) == 4 and a[2] == "ünï" and a[-1] == "x" * 300 and a.tolist() == items
    assert list(a) == items and "4 strings" in repr(a)
    with pytest.raises(IndexError):
        a[4]
    with pytest.raises(TypeError):
        a["0"]


def test_invalid_utf8_values_decode_with_replacement(tmp_path):
    path = tmp_path / "u.gguf"
    strs = struct.pack("<IQ", V.STRING, 2) + s(b"ok") + s(b"\xff\xfe")
    path.write_bytes(gguf_bytes([ARCH, kv("v", V.STRING, s(b"a\xffb")), kv("arr", V.ARRAY, strs)]))
    f = GGUFFile(path)
    assert f.metadata["v"] == "a\ufffdb" and f.metadata["arr"].tolist() == ["ok", "\ufffd\ufffd"]


BROKEN = {
    "not a GGUF file": b"GGML" + b"\0" * 40,
    "version 1 is not supported": b"GGUF" + struct.pack("<IQQ", 1, 0, 0),
    "big-endian": b"GGUF" + struct.pack(">IQQ", 3, 0, 0),
    "cannot fit": b"GGUF" + struct.pack("<IQQ", 3, 0, 2**40),
    "metadata key #0 needs 1000 bytes": b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 1000) + b"\0" * 8,
    "unknown value type 13": gguf_bytes([kv("k", 13, b"\0" * 8)]),
    "unknown array item type 77": gguf_bytes([kv("k", V.ARRAY, struct.pack("<IQ", 77, 1))]),
    "1000 strings cannot fit": gguf_bytes(
        [kv("k", V.ARRAY, struct.pack("<IQ", V.STRING, 1000) + s("a"))]
    ),
    r"'k'\[1\] needs 100 bytes": gguf_bytes(
        [kv("k", V.ARRAY, struct.pack("<IQ", V.STRING, 2) + s("a") + struct.pack("<Q", 100))]
    ),
    r"'k' \(9 items\) needs 36 bytes": gguf_bytes(
        [kv("k", V.ARRAY, struct.pack("<IQ", V.INT32, 9) + b"\0" * 8)]
    ),
    "nested more than 8 deep": gguf_bytes(
        [kv("k", V.ARRAY, struct.pack("<IQ", V.ARRAY, 1) * 9 + struct.pack("<IQ", V.UINT8, 0))]
    ),
    "appears twice": gguf_bytes([ARCH, ARCH]),
    "metadata key #0: not valid UTF-8": gguf_bytes([kv(b"\xff\xfe", V.UINT8, b"\0")]),
    "general.alignment must be a uint32": gguf_bytes(
        [kv("general.alignment", V.UINT64, struct.pack("<Q", 32))]
    ),
    "alignment 48 is not a power of two": gguf_bytes(
        [kv("general.alignment", V.UINT32, struct.pack("<I", 48))]
    ),
    "'t': 0 dimensions": gguf_bytes([ARCH], [("t", (), Q.F32, 0)]),
    "'t': 5 dimensions": gguf_bytes([ARCH], [("t", (1, 1, 1, 1, 1), Q.F32, 0)]),
    "'t' has unknown ggml type 99": gguf_bytes([ARCH], [("t", (4,), 99, 0)], b"\0" * 16),
    "'t': row length 20 is not a multiple of the Q8_0 block size 32": gguf_bytes(
        [ARCH], [("t", (20,), Q.Q8_0, 0)], b"\0" * 64
    ),
    "'t': data offset 4 is not a multiple of the alignment 32": gguf_bytes(
        [ARCH], [("t", (4,), Q.F32, 4)], b"\0" * 64
    ),
    r"'t': data \(bytes .*\) runs past the end of the file": gguf_bytes(
        [ARCH], [("t", (64,), Q.F32, 0)], b"\0" * 100
    ),
    "'t' has an impossible shape": gguf_bytes([ARCH], [("t", (2**63, 2), Q.F32, 0)]),
    "tensor 't' appears twice": gguf_bytes(
        [ARCH], [("t", (4,), Q.F32, 0), ("t", (4,), Q.F32, 32)], b"\0" * 64
    ),
}


@pytest.mark.parametrize("problem", list(BROKEN))
def test_broken_headers(tmp_path, problem):
    path = tmp_path / "broken.gguf"
    path.write_bytes(BROKEN[problem])
    with pytest.raises(GGUFError, match=problem) as info:
        GGUFFile(path)
    assert str(path) in str(info.value)
    with pytest.raises(SourceError, match=problem):
        open_source(path)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "e.gguf").write_bytes(b"")
    with pytest.raises(GGUFError, match="not a GGUF file"):
        GGUFFile(tmp_path / "e.gguf")
    with pytest.raises(GGUFError, match="cannot open"):
        GGUFFile(tmp_path / "missing.gguf")


def write_model(path):
    """A small llama GGUF with quantized and float tensors and a vocabulary."""
    from test_source import write_gguf

    rng = np.random.default_rng(1)
    tensors = {
        "token_embd.weight": (
            gguf.quants.quantize(rng.standard_normal((4, 64)).astype(np.float32), Q.Q8_0),
            Q.Q8_0,
        ),
        "blk.0.attn_q.weight": rng.standard_normal((8, 8)).astype(np.float32),
        "blk.0.attn_k.weight": rng.standard_normal((4, 8)).astype(np.float16),
        "blk.0.attn_norm.weight": np.ones(8, np.float32),
    }
    write_gguf(path, "llama", tensors)


def test_truncated_file_names_the_file_and_field(tmp_path):
    path = tmp_path / "m.gguf"
    write_model(path)
    full = path.read_bytes()
    f = GGUFFile(path)
    data_end = max(t.offset + t.n_bytes for t in f.tensors.values())
    f.close()
    cut = tmp_path / "cut.gguf"
    for size in range(data_end):  # every prefix that loses a byte of a tensor
        cut.write_bytes(full[:size])
        with pytest.raises(SourceError) as info:
            open_source(cut)
        assert str(cut) in str(info.value), size
    cut.write_bytes(full[: data_end - 1])
    with pytest.raises(SourceError, match=r"tensor 'blk\.0\.attn_norm\.weight': data .* truncated"):
        open_source(cut)


def test_fuzzed_headers_raise_clear_errors(tmp_path):
    """Random corruptions of a real header: the source opens (and every tensor reads) or a
    SourceError naming the file comes out; never another exception, never a long stall."""
    path = tmp_path / "m.gguf"
    write_model(path)
    original = path.read_bytes()
    header_end = GGUFFile(path).data_offset
    infos = original.index(b"token_embd.weight") - 8  # where the tensor infos start
    rng = np.random.default_rng(0)
    target = tmp_path / "fuzz.gguf"
    outcomes = {"ok": 0, "error": 0}
    extremes = [0, 1, 2, 5, 32, 2**31, 2**32 - 1, 2**63, 2**64 - 1, len(original)]
    for i in range(400):
        data = bytearray(original)
        lo = infos if i % 2 else 0  # half of the mutations hit the tensor infos
        for _ in range(rng.integers(1, 5)):
            pos = int(rng.integers(lo, header_end - 8))
            if rng.random() < 0.3:  # a plausible-looking but wrong count, length or shape
                value = extremes[int(rng.integers(0, len(extremes)))]
                data[pos : pos + 8] = struct.pack("<Q", value)
            else:
                data[pos] = int(rng.integers(0, 256))
        if i % 7 == 0:
            data = data[: int(rng.integers(0, len(data)))]
        target.write_bytes(bytes(data))
        start = time.monotonic()
        try:
            src = open_source(target)
            json.dumps(src.config)  # what config.json gets
            for info in src.tensors():
                src.read(info.name)
                src.checksum(info.name)
            outcomes["ok"] += 1
        except SourceError as exc:
            assert "fuzz.gguf" in str(exc), exc
            outcomes["error"] += 1
        assert time.monotonic() - start < 5, f"mutation {i} took too long"
    assert outcomes["error"] > 200 and outcomes["ok"] > 0


def test_checksum_is_sha256_of_stored_bytes(tmp_path, monkeypatch):
    from jang import source as source_module

    monkeypatch.setattr(source_module, "_HASH_BLOCK", 100)  # several blocks per tensor
    path = tmp_path / "m.gguf"
    write_model(path)
    src = open_source(path)
    f = GGUFFile(path)
    for name, gguf_name in (
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.layers.0.self_attn.k_proj.weight", "blk.0.attn_k.weight"),
    ):
        stored = f.data(f.tensor(gguf_name)).tobytes()
        assert src.checksum(name) == hashlib.sha256(stored).hexdigest()
        assert bytes(src.raw_bytes(name)) == stored
