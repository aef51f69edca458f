"""Bundles: conversion round trip, stock mlx-lm compatibility, zero-copy load, validation."""

import json
import os
import shutil
import struct
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest

import jang
from jang import bundle, convert
from jang.bundle import BundleError, validate
from jang.quant import tensor
from tiny_model import make_model_dir

TOKENS = [[1, 5, 9, 33, 70, 100, 2, 7]]

STOCK_LOGITS = rf"""
import sys, numpy as np, mlx.core as mx
from mlx_lm import load
model, _ = load(sys.argv[1])
assert not any(m == "jang" or m.startswith("jang.") for m in sys.modules), "jang was imported"
np.save(sys.argv[2], np.array(model(mx.array({TOKENS})).astype(mx.float32)))
"""


def jang_logits(path, **kwargs):
    model, _ = jang.load(path, **kwargs)
    return np.array(model(mx.array(TOKENS)).astype(mx.float32))


def test_bundle_layout(converted):
    assert validate(converted, deep=True) == []
    manifest = bundle.read_manifest(converted)
    config = json.loads((converted / "config.json").read_text())
    assert config["rope_theta"] == 10000.0  # lifted from rope_parameters for mlx-lm
    quant = config["quantization"]
    quantized = {k: v for k, v in manifest["tensors"].items() if v["quantized"]}
    assert len(quantized) == 2 * 7 + 2  # 7 matrices per layer, embedding, lm_head
    for key, entry in quantized.items():
        assert quant[key] == {
            "group_size": entry["group_size"],
            "bits": entry["bits"],
            "mode": "affine",
        }
    assert 2.9 <= manifest["summary"]["bpw_all_in"] <= 3.0
    # the data region of the shard starts on a page and every tensor is aligned to its dtype
    header, start = bundle.read_header(converted / "model.safetensors")
    assert start % bundle.PAGE == 0
    for entry in header.values():
        assert (start + entry["data_offsets"][0]) % bundle.ST_DTYPES[entry["dtype"]][1] == 0
    # the source checksums are recorded
    assert all(len(e["source"]["sha256"]) == 64 for e in manifest["tensors"].values())


def test_stock_mlx_lm_load_matches_jang_load(converted, tmp_path):
    ref = tmp_path / "ref.npy"
    result = subprocess.run(
        [sys.executable, "-c", STOCK_LOGITS, str(converted), str(ref)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(jang_logits(converted, kernels=False), np.load(ref))


def test_load_is_zero_copy(converted):
    shard_bytes = (converted / "model.safetensors").stat().st_size
    mx.clear_cache()
    before = mx.get_active_memory()
    model, _, stats = jang.load(converted, kernels=False, return_stats=True)
    grown = mx.get_active_memory() - before
    assert stats.copied_tensors == 0 and stats.format == "jang"
    assert grown < 0.05 * shard_bytes, f"{grown} bytes allocated for a {shard_bytes}-byte shard"
    del model


def test_mapped_weights_survive_in_place_ops(converted):
    model, _ = jang.load(converted, kernels=False)
    norm = model.model.norm.weight
    original = np.array(norm.astype(mx.float32))
    model.model.norm.weight = None
    out = norm + 1  # the last reference may be donated: the private mapping must absorb it
    del norm
    np.testing.assert_allclose(np.array(out.astype(mx.float32)), original + 1)
    reloaded, _ = jang.load(converted, kernels=False)
    np.testing.assert_array_equal(np.array(reloaded.model.norm.weight.astype(mx.float32)), original)


def test_mlx_community_style_bundle(model_dir, tmp_path):
    # uniform 4-bit through mlx-lm's own converter: what mlx-community repos contain
    from mlx_lm import convert as mlx_convert

    out = tmp_path / "mlx4"
    mlx_convert(str(model_dir), mlx_path=str(out), quantize=True, q_bits=4, q_group_size=64)
    ref = tmp_path / "ref.npy"
    subprocess.run(
        [sys.executable, "-c", STOCK_LOGITS, str(out), str(ref)], check=True, capture_output=True
    )
    model, _, stats = jang.load(out, kernels=False, return_stats=True)
    assert stats.format == "mlx"
    np.testing.assert_array_equal(
        np.array(model(mx.array(TOKENS)).astype(mx.float32)), np.load(ref)
    )


def test_existing_output_is_not_clobbered(converted, model_dir):
    before = sorted(p.name for p in converted.iterdir())
    with pytest.raises(BundleError, match="already exists; pass --force"):
        convert.convert(model_dir, converted, bits=3.0, method="rtn", progress="quiet")
    assert sorted(p.name for p in converted.iterdir()) == before


def test_force_replaces_a_bundle_or_an_empty_directory(model_dir, converted, tmp_path):
    out = tmp_path / "b"
    shutil.copytree(converted, out)
    (out / "stale.txt").write_text("old")  # a bundle with an extra file is still a bundle
    convert.convert(model_dir, out, profile="JANG_4M", method="rtn", progress="quiet", force=True)
    assert not (out / "stale.txt").exists() and validate(out) == []
    assert bundle.read_manifest(out)["plan"]["request"]["profile"] == "JANG_4M"
    empty = tmp_path / "empty"
    empty.mkdir()
    convert.convert(model_dir, empty, bits=3.0, method="rtn", progress="quiet", force=True)
    assert validate(empty) == []
    assert not list(tmp_path.glob(".*.jang-*"))


@pytest.mark.parametrize("case", ["user files", "the source's own directory", "the source"])
def test_force_never_deletes_what_is_not_a_bundle(model_dir, tmp_path, case):
    """--force refuses, before any work, an OUT that is not a jang bundle or an empty
    directory, or that is or holds the source: nothing there is touched."""
    src = tmp_path / "src"
    shutil.copytree(model_dir, src)
    out = {"user files": tmp_path / "mine", "the source's own directory": src}.get(case, src)
    source = src / "model.safetensors" if case == "the source's own directory" else src
    if case == "user files":
        out.mkdir()
        (out / "thesis.tex").write_text("years of work")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    message = "is or holds the source" if case != "user files" else "is not a jang bundle"
    with pytest.raises(BundleError, match=message):
        convert.convert(source, out, bits=3.0, method="rtn", progress="quiet", force=True)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_second_conversion_into_the_same_out_fails_at_once(model_dir, tmp_path):
    out = tmp_path / "b"
    with bundle.claim_output(out, force=False):
        with pytest.raises(BundleError, match="another conversion is writing"):
            convert.convert(model_dir, out, bits=3.0, method="rtn", progress="quiet")
    assert not out.exists() and not list(tmp_path.glob(".b.jang-lock"))


def test_stale_temp_dirs_of_dead_processes_are_swept(model_dir, tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = tmp_path / f".b.jang-tmp-{dead.stdout.strip()}"
    stale.mkdir()
    (stale / "shard-00000.safetensors").write_bytes(b"x" * 1000)
    live = tmp_path / f".b.jang-tmp-{os.getppid()}"  # a running process's: kept
    live.mkdir()
    convert.convert(model_dir, tmp_path / "b", bits=3.0, method="rtn", progress="quiet")
    assert not stale.exists() and live.exists()


def test_failure_leaves_nothing(model_dir, tmp_path, monkeypatch):
    calls = []

    def failing(w, bits, group_size, method, debias=False):
        calls.append(1)
        if len(calls) == 5:
            raise OSError(28, "No space left on device")
        return mx.quantize(w, group_size=group_size, bits=bits)

    monkeypatch.setattr(tensor, "quantize", failing)
    out = tmp_path / "never"
    with pytest.raises(
        convert.ConversionError, match=r"No space left on device.*nothing was written"
    ):
        convert.convert(model_dir, out, bits=3.0, method="rtn", progress="quiet")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_json_progress(model_dir, tmp_path, capsys):
    convert.convert(model_dir, tmp_path / "j", profile="JANG_2S", method="rtn", progress="json")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[-1]["done_bytes"] == lines[-1]["total_bytes"]
    assert {"name", "mb_per_s", "eta_s", "done_tensors"} <= set(lines[0])


def test_moe_experts_are_stacked(tmp_path):
    src = make_model_dir(tmp_path / "moe", model_type="mixtral")
    out = tmp_path / "moe-bundle"
    convert.convert(src, out, profile="JANG_2S", method="rtn", progress="quiet")
    assert validate(out) == []
    manifest = bundle.read_manifest(out)
    stacked = manifest["tensors"]["model.layers.0.block_sparse_moe.switch_mlp.gate_proj"]
    assert stacked["shape"] == [4, 128, 64] and len(stacked["source"]["names"]) == 4
    assert stacked["arrays"]["weight"]["shape"][0] == 4
    assert not any(".experts." in k for k in manifest["tensors"])
    ref = tmp_path / "ref.npy"
    result = subprocess.run(
        [sys.executable, "-c", STOCK_LOGITS, str(out), str(ref)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(jang_logits(out, kernels=False), np.load(ref))


# ------------------------------------------------------------- validation ----


@pytest.fixture
def copy_of(converted, tmp_path):
    dest = tmp_path / "copy"
    shutil.copytree(converted, dest)
    return dest


def test_validate_truncated_shard(copy_of):
    shard = copy_of / "model.safetensors"
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size - 100)
    problems = validate(copy_of)
    assert any("runs past the end of the file" in p for p in problems)
    with pytest.raises(BundleError, match=r"runs past|outside|missing"):
        jang.load(copy_of)


def test_validate_manifest_disagrees(copy_of):
    manifest = json.loads((copy_of / "jang.json").read_text())
    key = next(k for k, v in manifest["tensors"].items() if v["quantized"])
    manifest["tensors"][key]["arrays"]["scales"]["offset"] += 2
    manifest["tensors"][key]["bits"] = 8 if manifest["tensors"][key]["bits"] != 8 else 2
    (copy_of / "jang.json").write_text(json.dumps(manifest))
    problems = validate(copy_of)
    assert any(f"{key}.scales: offset/size differ" in p for p in problems)
    assert any("does not hold" in p for p in problems)
    assert any("in config.json but" in p for p in problems)


def test_validate_missing_tokenizer_and_bad_header(copy_of):
    (copy_of / "tokenizer.json").unlink()
    shard = copy_of / "model.safetensors"
    data = bytearray(shard.read_bytes())
    data[8:12] = b"\xff\xfe\x00{"
    shard.write_bytes(bytes(data))
    problems = validate(copy_of)
    assert any("no tokenizer" in p for p in problems)
    assert any("corrupt header" in p for p in problems)


def test_validate_not_a_bundle(tmp_path):
    assert validate(tmp_path) == [f"{tmp_path}: no jang.json (not a jang bundle)"]
    (tmp_path / "jang.json").write_text(json.dumps({"format": "jang", "format_version": 99}))
    assert "format_version 99 is not supported" in validate(tmp_path)[0]


def test_mmap_reader_fuzzed_headers(converted, tmp_path):
    """Random corruptions of the header never crash the C++ reader: ValueError or success."""
    ext = jang.load_extension()
    original = (converted / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", original[:8])
    rng = np.random.default_rng(0)
    target = tmp_path / "fuzz.safetensors"
    outcomes = {"ok": 0, "error": 0}
    for _ in range(300):
        data = bytearray(original[: 8 + n + 4096])
        for _ in range(rng.integers(1, 6)):
            pos = int(rng.integers(0, 8 + n))
            data[pos] = int(rng.integers(0, 256))
        if rng.random() < 0.2:  # also corrupt the length prefix
            data[0:8] = struct.pack("<Q", int(rng.integers(0, 2 * n)))
        target.write_bytes(bytes(data))
        try:
            arrays, _, _ = ext.load_mmap(str(target))
            for a in arrays.values():  # any tensor handed out must be readable
                mx.eval(a.sum() if a.size else a)
            outcomes["ok"] += 1
        except ValueError as exc:
            assert "fuzz.safetensors" in str(exc)
            outcomes["error"] += 1
    assert outcomes["error"] > 0


PUBLIC = __import__("pathlib").Path(__file__).parent / "data" / "public_jang_v2_2L"


def test_public_jang_v2_bundle(tmp_path):
    ref = tmp_path / "ref.npy"
    result = subprocess.run(
        [sys.executable, "-c", STOCK_LOGITS, str(PUBLIC), str(ref)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    model, _, stats = jang.load(PUBLIC, kernels=False, return_stats=True)
    assert stats.format == "jang-public"
    assert model.lm_head.bits == 8 and model.model.layers[0].mlp.down_proj.bits == 2
    np.testing.assert_array_equal(
        np.array(model(mx.array(TOKENS)).astype(mx.float32)), np.load(ref)
    )


def test_public_jang_unsupported_variants(tmp_path):
    bad = tmp_path / "pub"
    shutil.copytree(PUBLIC, bad)
    meta = json.loads((bad / "jang_config.json").read_text())
    meta["quantization"]["hadamard_rotation"] = True
    (bad / "jang_config.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="Hadamard-rotated"):
        jang.load(bad)
    meta["quantization"]["hadamard_rotation"] = False
    meta["format_version"] = "1.1"
    (bad / "jang_config.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="only JANG v2"):
        jang.load(bad)


def test_float_bias_beside_quantized_weight(tmp_path):
    """A float `.bias` stored beside a quantized module (Qwen2's q/k/v) gets its own
    manifest record: records are keyed by stored array name, never by splitting names."""
    out = tmp_path / "b"
    w, s, b = mx.quantize(mx.random.normal((8, 64)), group_size=64, bits=4)
    with bundle.BundleWriter(out) as writer:
        writer.add_quantized("m.k_proj", w, s, b, bits=4, group_size=64, shape=(8, 64), source={})
        writer.add_float("m.k_proj.bias", mx.ones((8,), mx.bfloat16), source={})
        writer.finish({"model_type": "llama"}, {})
    tensors = bundle.read_manifest(out)["tensors"]
    assert tensors["m.k_proj.bias"]["arrays"]["bias"]["shape"] == [8]
    assert tensors["m.k_proj"]["arrays"]["scales"]["shard"] == "model.safetensors"
    with pytest.raises(BundleError, match="written twice"):
        with bundle.BundleWriter(tmp_path / "c") as writer:
            writer.add_float("m.k_proj.bias", mx.ones((8,)), source={})
            writer.add_quantized(
                "m.k_proj.bias", w, s, b, bits=4, group_size=64, shape=(8, 64), source={}
            )


def test_sigterm_mid_conversion_leaves_nothing(model_dir, tmp_path, monkeypatch):
    """`jang convert` turns SIGTERM into an interrupt: temp dir and lock removed."""
    import signal

    from jang.commands import convert as command

    calls = []

    def killed(w, bits, group_size, method, debias=False):
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return mx.quantize(w, group_size=group_size, bits=bits)

    monkeypatch.setattr(tensor, "quantize", killed)
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        command._interrupt_on_termination()
        with pytest.raises(convert.ConversionError, match="interrupted; nothing was written"):
            convert.convert(model_dir, tmp_path / "b", bits=3.0, method="rtn", progress="quiet")
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "row"), [("model.norm.weight", "its values"), ("lm_head.weight", "row 7")]
)
def test_non_finite_weights_are_refused_by_name(tmp_path, name, row):
    from tiny_model import tiny_config, tiny_weights, write_tokenizer

    src = tmp_path / "src"
    src.mkdir()
    config = tiny_config()
    weights = tiny_weights(config)
    w = np.array(weights[name].astype(mx.float32))
    w.reshape(-1, w.shape[-1])[7 if w.ndim > 1 else 0, 3] = np.inf
    weights[name] = mx.array(w).astype(mx.bfloat16)
    (src / "config.json").write_text(json.dumps(config))
    mx.save_safetensors(str(src / "model.safetensors"), weights)
    write_tokenizer(src)
    with pytest.raises(convert.ConversionError, match=f"{name}: {row} holds NaN or Inf"):
        convert.convert(src, tmp_path / "o", bits=4.5, method="rtn", progress="quiet")
    assert not (tmp_path / "o").exists()
