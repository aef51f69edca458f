"""Bad input and faults (issue 21): a damaged bundle or source is refused in one clear line
naming the file and the tensor, or works correctly; never a traceback, never a wrong answer
accepted. The fuzz test at the end mutates a bundle's files at random."""

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
from jang import cli, convert
from jang.bundle import BundleError, read_manifest, validate
from tiny_model import tiny_config, tiny_weights, write_tokenizer

TOKENS = [[1, 5, 9, 33, 70, 100, 2, 7]]


@pytest.fixture
def copy_of(converted, tmp_path):
    dest = tmp_path / "copy"
    shutil.copytree(converted, dest)
    return dest


def logits(path, **kwargs) -> np.ndarray:
    model, _ = jang.load(path, **kwargs)
    return np.array(model(mx.array(TOKENS)).astype(mx.float32))


def a_record(bundle, suffix="scales"):
    """(module, record) of the first quantized module's `suffix` array."""
    manifest = read_manifest(bundle)
    key = next(k for k, v in manifest["tensors"].items() if v["quantized"])
    return key, manifest["tensors"][key]["arrays"][suffix]


# ---------------------------------------------------------------- checksums ----


def test_every_array_has_a_checksum(converted):
    manifest = read_manifest(converted)
    records = [r for e in manifest["tensors"].values() for r in e["arrays"].values()]
    assert records and all(len(r["xxh3"]) == 16 for r in records)
    assert {"config.json", "tokenizer.json"} <= set(manifest["files"])


def test_flipped_bytes_are_caught_by_validate_and_verify(copy_of):
    key, rec = a_record(copy_of, "weight")
    shard = copy_of / rec["shard"]
    data = bytearray(shard.read_bytes())
    for i in range(64):  # 64 flipped bytes inside one tensor: the layout is untouched
        data[rec["offset"] + i] ^= 0xFF
    shard.write_bytes(bytes(data))
    problems = validate(copy_of)
    assert problems == [
        f"{shard}: tensor {key}.weight: bytes differ from the manifest's checksum "
        "(file changed or corrupt)"
    ]
    with pytest.raises(BundleError, match=rf"{key}\.weight: bytes differ"):
        jang.load(copy_of, verify=True)
    jang.load(copy_of)  # without verify the bytes are not read: it loads (and is wrong)


def test_an_edited_config_is_reported(copy_of, converted):
    config = json.loads((copy_of / "config.json").read_text())
    config["rms_norm_eps"] = 0.1
    (copy_of / "config.json").write_text(json.dumps(config))
    assert any("config.json: changed since the conversion" in p for p in validate(copy_of))
    with pytest.raises(BundleError, match=r"config\.json: changed since the conversion"):
        jang.load(copy_of, verify=True)


# ---------------------------------------------------- lies between the files ----


def test_config_quantization_that_lies_is_refused_by_the_loader(copy_of):
    key, _ = a_record(copy_of)
    config = json.loads((copy_of / "config.json").read_text())
    config["quantization"][key]["bits"] = 8
    (copy_of / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match=rf"config.json: {key} is 8-bit g\d+ in config.json"):
        jang.load(copy_of)


def test_shard_header_dtype_that_lies_is_refused(copy_of):
    _, rec = a_record(copy_of)
    shard = copy_of / rec["shard"]
    data = bytearray(shard.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header[rec["name"]]["dtype"] = "F16" if rec["dtype"] == "BF16" else "BF16"  # same size
    text = json.dumps(header, separators=(",", ":")).encode().ljust(n, b" ")
    shard.write_bytes(bytes(data[:8]) + text + bytes(data[8 + n :]))
    assert any(f"tensor {rec['name']}: manifest says" in p for p in validate(copy_of))
    with pytest.raises(BundleError, match=rf"tensor {rec['name']}: manifest says"):
        jang.load(copy_of)


def test_a_corrupt_shard_header_is_one_problem(copy_of):
    shard = copy_of / "model.safetensors"
    data = bytearray(shard.read_bytes())
    data[8:12] = b"\xff\xfe\x00{"
    shard.write_bytes(bytes(data))
    problems = validate(copy_of)
    assert len(problems) == 1 and "corrupt header" in problems[0]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(tensors=[]), "needs a 'shards' list and a 'tensors' object"),
        (lambda m: m["shards"].append(7), "shard 1 is not an object"),
        (
            lambda m: next(iter(m["tensors"].values())).update(shape="big"),
            "has no valid 'shape'",
        ),
        (
            lambda m: next(iter(next(iter(m["tensors"].values()))["arrays"].values())).update(
                offset=-1.5
            ),
            "has no valid 'offset'",
        ),
    ],
)
def test_a_damaged_manifest_is_named(copy_of, edit, message):
    manifest = json.loads((copy_of / "jang.json").read_text())
    edit(manifest)
    (copy_of / "jang.json").write_text(json.dumps(manifest))
    assert message in validate(copy_of)[0]
    with pytest.raises(BundleError, match=message.replace("(", r"\(")):
        jang.load(copy_of)


def test_inspect_warns_about_a_shard_that_disagrees(copy_of, capsys):
    key, rec = a_record(copy_of)
    manifest = json.loads((copy_of / "jang.json").read_text())
    manifest["tensors"][key]["arrays"]["scales"]["offset"] += 2
    (copy_of / "jang.json").write_text(json.dumps(manifest))
    assert cli.main(["inspect", str(copy_of)]) == 0
    assert f"warning: {rec['shard']}: tensor {rec['name']}: offset/size" in capsys.readouterr().err


# ------------------------------------------------------ values the quantizer refuses ----


def write_source(dest, weights, config):
    dest.mkdir()
    (dest / "config.json").write_text(json.dumps(config))
    mx.save_safetensors(str(dest / "model.safetensors"), weights)
    write_tokenizer(dest)
    return dest


def test_an_absurd_outlier_is_refused_by_name(tmp_path):
    config = tiny_config()
    weights = tiny_weights(config)
    name = "model.layers.1.mlp.down_proj.weight"
    w = np.array(weights[name].astype(mx.float32))
    w[5, 9] = 1e30
    weights[name] = mx.array(w).astype(mx.bfloat16)
    src = write_source(tmp_path / "src", weights, config)
    with pytest.raises(
        convert.ConversionError, match=rf"{name}: row 5 holds 1e\+30, .*x the typical row"
    ):
        convert.convert(src, tmp_path / "o", bits=4.5, method="rtn", progress="quiet")
    assert not (tmp_path / "o").exists()


def test_scales_that_overflow_float16_are_refused(tmp_path):
    config = {**tiny_config(), "torch_dtype": "float16"}
    weights = {k: v.astype(mx.float32) for k, v in tiny_weights(config).items()}
    name = "model.layers.0.self_attn.o_proj.weight"
    weights[name] = weights[name] * 1e6  # finite in float32, too large for float16 groups
    src = write_source(tmp_path / "src", weights, config)
    with pytest.raises(convert.ConversionError, match=rf"{name}: row \d+: .* overflows float16"):
        convert.convert(src, tmp_path / "o", bits=4.5, method="rtn", progress="quiet")


# ------------------------------------------------------------------ commands ----


def test_json_progress_ends_with_an_error_event(tmp_path, capsys):
    missing = tmp_path / "nothing-here"
    assert cli.main(["convert", str(missing), "-o", str(tmp_path / "o"), "--bits", "3",
                     "--json-progress"]) == 1  # fmt: skip
    captured = capsys.readouterr()
    event = json.loads(captured.out.strip().splitlines()[-1])
    assert event["event"] == "error" and "nothing-here" in event["message"]
    assert "jang convert: error:" in captured.err


@pytest.mark.parametrize("top_p", ["0", "1.5", "-0.1"])
def test_generate_refuses_top_p_outside_0_1(converted, capsys, top_p):
    assert cli.main(["generate", str(converted), "-p", "w1", "--top-p", top_p]) == 2
    assert f"--top-p must be in (0, 1], got {float(top_p)}" in capsys.readouterr().err


def bad_invocations(tmp_path, converted):
    """Every command with arguments a user could get wrong: missing paths, files that are
    not what they should be, a bundle where a source belongs and the reverse."""
    missing = tmp_path / "missing"
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01not a model\xff" * 10)
    empty = tmp_path / "empty"
    empty.mkdir(exist_ok=True)
    text = tmp_path / "text.txt"
    text.write_text("hello")
    out = str(tmp_path / "out")
    for bad in (missing, junk, empty, text):
        yield ["plan", str(bad), "--bits", "3"]
        yield ["convert", str(bad), "-o", out, "--bits", "3"]
        yield ["inspect", str(bad)]
        yield ["validate", str(bad)]
        yield ["generate", str(bad), "-p", "w1", "-n", "2"]
        yield ["eval", str(bad), "--ref", str(converted), "--windows", "1", "--length", "16"]
    yield ["convert", str(converted), "-o", out, "--bits", "3"]  # a bundle as the source
    yield ["plan", str(converted), "--bits", "3"]
    yield ["convert", str(converted), "-o", out, "--plan", str(junk)]
    yield ["convert", str(converted), "-o", out, "--plan", str(text)]
    yield ["estimate", "12Q"]
    yield ["estimate", "-3B"]
    yield ["data", "no-such-target"]


def test_no_command_shows_a_traceback(tmp_path, converted, capsys):
    for argv in bad_invocations(tmp_path, converted):
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code
        err = capsys.readouterr().err
        assert code not in (0, None), argv
        assert "Traceback" not in err, (argv, err)
        # one line that says which command failed (validate lists what is invalid)
        assert err.startswith((f"jang {argv[0]}", "usage:", "INVALID:")), (argv, err)


# ---------------------------------------------------------------------- fuzz ----

WORKER = r"""
import json, sys
import mlx.core as mx, numpy as np
import jang
from jang.bundle import validate
from jang.errors import JangError
reference, TOKENS = np.load(sys.argv[1]), json.loads(sys.argv[2])
for path in sys.argv[3:]:
    out = {"case": path}
    try:
        out["valid"] = validate(path) == []
    except JangError as exc:
        out["valid"] = False
    for verify in (True, False):
        try:
            model, _ = jang.load(path, verify=verify)
            got = np.array(model(mx.array(TOKENS)).astype(mx.float32))
            out[f"load_{verify}"] = "same" if np.array_equal(got, reference) else "different"
        except JangError as exc:
            out[f"load_{verify}"] = "refused"
            out[f"why_{verify}"] = str(exc)
    print(json.dumps(out), flush=True)
"""


def mutate(bundle, rng) -> str:
    """One random damage to a bundle's files, described."""
    files = sorted(p for p in bundle.iterdir() if p.suffix in (".json", ".safetensors"))
    target = files[int(rng.integers(len(files)))]
    data = bytearray(target.read_bytes())
    kind = ["bytes", "truncate", "json"][int(rng.integers(3))]
    if kind == "json" and target.suffix == ".json":
        obj = json.loads(data)
        parent, key = None, None
        node = obj
        for _ in range(int(rng.integers(1, 5))):  # walk down to a random value
            if not isinstance(node, (dict, list)) or not node:
                break
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            parent, key = node, keys[int(rng.integers(len(keys)))]
            node = node[key]
        if parent is not None:
            parent[key] = [None, -1, 2**40, "x", [], {}, 3.5, True][int(rng.integers(8))]
        target.write_text(json.dumps(obj))
        return f"{target.name}: {key} replaced"
    if kind == "truncate":
        target.write_bytes(bytes(data[: int(rng.integers(len(data)))]))
        return f"{target.name}: truncated"
    end = len(data)
    if target.suffix == ".safetensors" and rng.random() < 0.5:  # the header, half the time
        end = 8 + struct.unpack("<Q", data[:8])[0]
    for _ in range(int(rng.integers(1, 9))):
        data[int(rng.integers(end))] = int(rng.integers(256))
    target.write_bytes(bytes(data))
    return f"{target.name}: bytes changed" + (" (header)" if end < len(data) else "")


FUZZ_CASES = int(os.environ.get("JANG_FUZZ_CASES", 120))


def test_fuzzed_bundles_are_refused_or_load_correctly(converted, tmp_path):
    reference = tmp_path / "reference.npy"
    np.save(reference, logits(converted))
    rng = np.random.default_rng(int(os.environ.get("JANG_FUZZ_SEED", 21)))
    cases = {}
    for i in range(FUZZ_CASES):
        case = tmp_path / f"case{i}"
        shutil.copytree(converted, case)
        cases[str(case)] = mutate(case, rng)
    result = subprocess.run(
        [sys.executable, "-c", WORKER, str(reference), json.dumps(TOKENS), *cases],
        capture_output=True,
        text=True,
        timeout=600,
    )
    outcomes = [json.loads(line) for line in result.stdout.splitlines()]
    if len(outcomes) < len(cases):
        culprit = list(cases)[len(outcomes)]
        raise AssertionError(f"the worker died on {cases[culprit]}:\n{result.stderr[-3000:]}")
    for o in outcomes:
        what = cases[o["case"]]
        assert o["load_True"] in ("same", "refused"), what  # verify: never a wrong answer
        if o["valid"]:  # what validate passes loads correctly without verify too
            assert o["load_False"] == "same", (what, o)
    assert any(o["load_True"] == "refused" for o in outcomes)


def test_disk_full_while_writing_a_shard_leaves_nothing(model_dir, tmp_path, monkeypatch):
    from jang import bundle

    real, calls = bundle.ShardWriter._write, []

    def full(self, name, tag, raw):
        calls.append(name)
        if len(calls) == 6:
            raise OSError(28, "No space left on device", str(self.path))
        return real(self, name, tag, raw)

    monkeypatch.setattr(bundle.ShardWriter, "_write", full)
    out = tmp_path / "out"
    with pytest.raises(convert.ConversionError, match=r"No space left on device.*nothing was"):
        convert.convert(model_dir, out, bits=3.0, method="rtn", progress="quiet")
    assert list(tmp_path.iterdir()) == []  # no temp dir, no temp shard


def test_float_tensors_beyond_float16_are_refused(tmp_path):
    config = {**tiny_config(), "torch_dtype": "float16"}
    weights = {k: v.astype(mx.float32) for k, v in tiny_weights(config).items()}
    weights["model.norm.weight"] = weights["model.norm.weight"] * 0 + 1e5  # kept in float
    src = write_source(tmp_path / "src", weights, config)
    with pytest.raises(convert.ConversionError, match=r"model\.norm\.weight: holds values beyond"):
        convert.convert(src, tmp_path / "o", bits=4.5, method="rtn", progress="quiet")
