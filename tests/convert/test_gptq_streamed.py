"""Layer-streamed GPTQ: the same bundle as the whole-model path, and resumable."""

import json

import pytest

from jang import data
from jang.convert import calibrated, checkpoint, convert
from jang.errors import ConversionError
from jang.quant.methods import Calibration
from tiny_model import make_model_dir


def _whole_model(source, plan, renamed, calibration, say, *args, **kwargs):
    """The reference: GPTQ with the whole float model in memory."""
    return calibrated.gptq_whole_model(source, plan, renamed, calibration, say)


def _bundle_bytes(path):
    """Every shard's bytes, and the manifest less the planner's timings (the second plan
    of a model comes from the error cache, faster)."""
    manifest = json.loads((path / "jang.json").read_text())
    manifest["plan"].pop("timing")
    manifest["plan"]["solver"].pop("seconds")
    shards = {f.name: f.read_bytes() for f in sorted(path.glob("*.safetensors"))}
    return shards, manifest


def _gptq(src, out, calib, **kwargs):
    return convert(src, out, bits=3.0, method="gptq", calibration=calib, progress="quiet", **kwargs)


@pytest.fixture(scope="module")
def deep_model(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("deep") / "tiny", layers=4)


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    text = tmp_path_factory.mktemp("calib") / "calib.txt"
    text.write_text(" ".join(f"w{(i * 7) % 50}" for i in range(3000)))
    return Calibration(text, samples=6, seq_len=24)


def test_streamed_equals_whole_model(deep_model, calib, tmp_path, monkeypatch):
    streamed = tmp_path / "streamed"
    _gptq(deep_model, streamed, calib)
    assert not checkpoint.spill_dir(streamed).exists()  # removed once the bundle is in place
    monkeypatch.setattr(calibrated, "gptq_streamed", _whole_model)
    whole = tmp_path / "whole"
    _gptq(deep_model, whole, calib)
    assert _bundle_bytes(streamed) == _bundle_bytes(whole)


@pytest.mark.skipif(data.path("smollm2") is None, reason="run `jang data smollm2`")
def test_streamed_equals_whole_model_on_smollm2(tmp_path, monkeypatch):
    """The real model (30 layers, tied head): every code, scale and bias the same."""
    calib = Calibration(None, samples=4, seq_len=64)
    streamed = tmp_path / "streamed"
    _gptq(data.path("smollm2"), streamed, calib)
    monkeypatch.setattr(calibrated, "gptq_streamed", _whole_model)
    whole = tmp_path / "whole"
    _gptq(data.path("smollm2"), whole, calib)
    assert _bundle_bytes(streamed) == _bundle_bytes(whole)


class _Killed(KeyboardInterrupt):
    pass


def test_an_interrupted_gptq_resumes_to_identical_bytes(deep_model, calib, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    _gptq(deep_model, reference, calib)

    monkeypatch.setattr(checkpoint, "CHECKPOINT_SECONDS", 0.0)  # keep inputs after every layer
    save = checkpoint.Checkpoint.save_layer
    layers_run = []

    def killed_after_layer_1(self, layer, *args, **kwargs):
        save(self, layer, *args, **kwargs)
        layers_run.append(layer)
        if layer == 1 and kill:
            raise _Killed

    monkeypatch.setattr(checkpoint.Checkpoint, "save_layer", killed_after_layer_1)
    out = tmp_path / "out"
    kill = True
    with pytest.raises(KeyboardInterrupt):
        _gptq(deep_model, out, calib)
    assert not out.exists() and checkpoint.Checkpoint(out).state()["next_layer"] == 2
    kill = False
    # the saved layers are never dropped silently: a run without --resume is refused
    with pytest.raises(ConversionError, match="--resume"):
        _gptq(deep_model, out, calib)
    # a different conversion does not continue this one
    with pytest.raises(ConversionError, match="different conversion"):
        convert(
            deep_model,
            out,
            bits=4.0,
            method="gptq",
            calibration=calib,
            progress="quiet",
            resume=True,
        )
    # another method's bundle into the same OUT leaves the saved layers alone
    convert(deep_model, out, bits=3.0, method="rtn", progress="quiet")
    assert checkpoint.Checkpoint(out).state()["next_layer"] == 2
    layers_run.clear()
    _gptq(deep_model, out, calib, resume=True, force=True)
    assert layers_run == [2, 3]  # layers 0 and 1 came from the checkpoint
    assert _bundle_bytes(out) == _bundle_bytes(reference)
    assert not checkpoint.spill_dir(out).exists()


def test_resume_needs_gptq(deep_model, tmp_path):
    with pytest.raises(ConversionError, match="--resume"):
        convert(deep_model, tmp_path / "o", bits=3.0, method="rtn", progress="quiet", resume=True)
