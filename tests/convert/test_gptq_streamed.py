"""Layer-streamed GPTQ: the same bundle as the whole-model path, and resumable."""

import pytest

from jang import data
from jang.convert import calibrated, checkpoint, convert
from jang.errors import ConversionError
from jang.quant.methods import Calibration
from testutil import bundle_bytes


def _whole_model(source, plan, renamed, calibration, say, *args, **kwargs):
    """The reference: GPTQ with the whole float model in memory."""
    return calibrated.gptq_whole_model(source, plan, renamed, calibration, say)


def _gptq(src, out, calib, **kwargs):
    return convert(src, out, bits=3.0, method="gptq", calibration=calib, progress="quiet", **kwargs)


def test_streamed_equals_whole_model(deep_model, calib, tmp_path, monkeypatch):
    streamed = tmp_path / "streamed"
    _gptq(deep_model, streamed, calib)
    assert not checkpoint.spill_dir(streamed).exists()  # removed once the bundle is in place
    monkeypatch.setattr(calibrated, "gptq_streamed", _whole_model)
    whole = tmp_path / "whole"
    _gptq(deep_model, whole, calib)
    assert bundle_bytes(streamed) == bundle_bytes(whole)


@pytest.mark.skipif(data.path("smollm2") is None, reason="run `jang data smollm2`")
def test_streamed_equals_whole_model_on_smollm2(tmp_path, monkeypatch):
    """The real model (30 layers, tied head): every code, scale and bias the same."""
    calib = Calibration(None, samples=4, seq_len=64)
    streamed = tmp_path / "streamed"
    _gptq(data.path("smollm2"), streamed, calib)
    monkeypatch.setattr(calibrated, "gptq_streamed", _whole_model)
    whole = tmp_path / "whole"
    _gptq(data.path("smollm2"), whole, calib)
    assert bundle_bytes(streamed) == bundle_bytes(whole)


def test_an_interrupted_gptq_resumes_to_identical_bytes(deep_model, calib, tmp_path, killer):
    reference = tmp_path / "reference"
    _gptq(deep_model, reference, calib)

    kill = killer("gptq")
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        _gptq(deep_model, out, calib)
    assert not out.exists() and checkpoint.Checkpoint(out).state()["next_layer"] == 2
    kill.armed = False
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
    kill.layers.clear()
    _gptq(deep_model, out, calib, resume=True, force=True)
    assert kill.layers == [2, 3]  # layers 0 and 1 came from the checkpoint
    assert bundle_bytes(out) == bundle_bytes(reference)
    assert not checkpoint.spill_dir(out).exists()


def test_resume_needs_gptq(deep_model, tmp_path):
    with pytest.raises(ConversionError, match="--resume"):
        convert(deep_model, tmp_path / "o", bits=3.0, method="rtn", progress="quiet", resume=True)
