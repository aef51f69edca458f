"""The model card every bundle carries (jang.card) and the provenance it states."""

import json
import shutil

import pytest
import yaml

from jang import bundle, cli
from jang.card import read_evals, record_eval, render, write_card
from jang.convert import convert
from jang.errors import BundleError
from jang.provenance import file_checksum, provenance
from jang.source import open_source
from tiny_model import make_model_dir


def _card(path):
    text = (path / "README.md").read_text()
    assert text.startswith("---\n")
    head, _, body = text[4:].partition("\n---\n")
    return yaml.safe_load(head), body


def test_every_bundle_has_a_card_that_matches_its_manifest(converted):
    meta, body = _card(converted)
    assert meta["library_name"] == "mlx" and meta["pipeline_tag"] == "text-generation"
    assert {"mlx", "jang", "quantized"} <= set(meta["tags"])
    assert "license" not in meta and "base_model" not in meta  # the tiny source states neither
    manifest = bundle.read_manifest(converted)
    assert f"{manifest['summary']['bpw_all_in']:.2f} bits per weight all-in" in body
    assert "--bits 3 --method rtn" in body  # the command that repeats the conversion
    assert "the source states none" in body and "Not evaluated yet" in body
    for role in ("mlp_down", "attn_q", "embedding"):
        assert f"| {role} | " in body
    # the card is documentation, rewritten after an eval: not under the manifest's checksums
    assert "README.md" not in manifest["files"]
    assert bundle.validate(converted) == []


@pytest.fixture(scope="module")
def hub_snapshot(tmp_path_factory):
    """A tiny model laid out as a Hugging Face cache snapshot, with a card and a LICENSE."""
    root = tmp_path_factory.mktemp("hub") / "models--acme--tiny-chat" / "snapshots" / "0123abcd"
    src = make_model_dir(root)
    (src / "README.md").write_text(
        "---\nlicense: other\nlicense_name: acme-open\nlicense_link: LICENSE\n"
        "pipeline_tag: text-generation\n---\n# tiny-chat\n"
    )
    (src / "LICENSE").write_text("ACME open license: do what you like.\n")
    return src


def test_provenance_of_a_hub_snapshot(hub_snapshot):
    record = provenance(open_source(hub_snapshot))
    assert record["repo"] == "acme/tiny-chat" and record["revision"] == "0123abcd"
    assert record["license"] == "other" and record["license_name"] == "acme-open"
    assert record["license_file"] == "LICENSE"
    weights = hub_snapshot / "model.safetensors"
    assert record["files"] == {
        "model.safetensors": {"bytes": weights.stat().st_size, "xxh3": file_checksum(weights)}
    }


def test_license_and_base_model_carried_into_the_bundle(hub_snapshot, tmp_path):
    out = tmp_path / "tiny-chat-jang"
    convert(hub_snapshot, out, bits=4.0, method="rtn", progress="quiet")
    meta, body = _card(out)
    assert meta["base_model"] == "acme/tiny-chat" and meta["base_model_relation"] == "quantized"
    assert meta["license"] == "other" and meta["license_name"] == "acme-open"
    assert (out / "LICENSE").read_bytes() == (hub_snapshot / "LICENSE").read_bytes()
    assert "revision `0123abcd`" in body and "its LICENSE file is included" in body
    assert 'load("tiny-chat-jang")' in body
    # the copied license is checksummed like the tokenizer: an edit is reported
    assert "LICENSE" in bundle.read_manifest(out)["files"]
    (out / "LICENSE").write_text("edited\n")
    assert any("LICENSE" in p for p in bundle.validate(out))


def test_quantized_gguf_source_is_said_on_the_card():
    manifest = {
        "source": {"path": "m.gguf", "format": "GGUFSource", "name": "M", "quantized": "Q4_1"},
        "tensors": {},
    }
    assert "already quantized (Q4_1)" in render(manifest, "m-jang")


def test_eval_is_recorded_and_jang_card_puts_it_on_the_card(converted, model_dir, tmp_path):
    pytest.importorskip("torch", reason="jang eval's torch engine needs the eval extra")
    out = tmp_path / "b"
    shutil.copytree(converted, out)
    text = tmp_path / "t.txt"
    text.write_text(" ".join(f"w{i % 50}" for i in range(2000)))
    args = ["eval", str(out), "--ref", str(model_dir), "--text", str(text)]
    assert cli.main([*args, "--windows", "2", "--length", "16"]) == 0
    (run,) = read_evals(out)
    assert run["windows"] == 2 and run["kl"] > 0 and run["date"]
    assert "Not evaluated yet" in _card(out)[1]  # the card changes only when asked
    assert cli.main(["card", str(out)]) == 0
    body = _card(out)[1]
    assert f"| {run['kl']:.4f} | {run['top1']:.3f} |" in body
    assert bundle.validate(out) == []  # eval.json and the new card leave the bundle valid
    assert cli.main([*args, "--windows", "2", "--length", "16", "--no-record"]) == 0
    assert len(read_evals(out)) == 1


def test_record_eval_appends_and_a_damaged_record_is_named(tmp_path):
    record_eval(tmp_path, {"kl": 1.0})
    record_eval(tmp_path, {"kl": 0.5})
    assert [r["kl"] for r in read_evals(tmp_path)] == [1.0, 0.5]
    (tmp_path / "eval.json").write_text("{not json")
    with pytest.raises(BundleError, match=r"eval\.json"):
        read_evals(tmp_path)


def test_card_of_a_bundle_without_a_card(converted, tmp_path):
    """Bundles made before cards existed get one from `jang card`."""
    out = tmp_path / "old"
    shutil.copytree(converted, out)
    (out / "README.md").unlink()
    path = write_card(out)
    assert path.name == "README.md" and "# old" in path.read_text()
    assert json.loads((out / "jang.json").read_text())["format"]
