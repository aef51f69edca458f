"""Block-wise tuning: one decoder layer in memory, codes untouched, resumable to identical
bytes, and after GPTQ as after per-tensor rounding."""

import json

import mlx.core as mx
import pytest

import jang.convert
from jang.convert import checkpoint, convert, tune_stream
from jang.errors import ConversionError
from jang.quant.methods import TuneOptions
from testutil import bundle_bytes

torch = pytest.importorskip("torch", reason="tuning runs in torch (eval extra)")
pytest.importorskip("transformers", reason="tuning builds the transformers model")

from jang import torch_models  # noqa: E402

TUNE = TuneOptions(epochs=2, samples=6, lr=1e-2, norms=True)


def _tuned(src, out, calib, method="rtn", **kwargs):
    return convert(
        src, out, bits=2.5, method=method, calibration=calib, tune=TUNE, progress="quiet", **kwargs
    )


def test_one_layer_in_memory_and_the_codes_frozen(deep_model, calib, tmp_path, monkeypatch):
    models = []
    skeleton = torch_models.skeleton

    def kept(config):
        models.append(skeleton(config))
        return models[-1]

    real = []  # per tuned layer: the names of every parameter of the model not on meta
    tune_block = tune_stream.tuning.tune_block

    def watched(block, *args, **kwargs):
        real.append([n for n, p in models[0].named_parameters() if p.device.type != "meta"])
        return tune_block(block, *args, **kwargs)

    monkeypatch.setattr(torch_models, "skeleton", kept)
    monkeypatch.setattr(tune_stream.tuning, "tune_block", watched)
    out = tmp_path / "tuned"
    _tuned(deep_model, out, calib)
    assert len(real) == 4
    for i, names in enumerate(real):
        assert names and all(n.startswith(f"model.layers.{i}.") for n in names), names
    assert not checkpoint.spill_dir(out, "tune").exists()  # removed once the bundle is in place
    plain = tmp_path / "plain"
    convert(deep_model, plain, bits=2.5, method="rtn", progress="quiet")
    a, b = mx.load(str(plain / "model.safetensors")), mx.load(str(out / "model.safetensors"))
    assert a.keys() == b.keys()
    trained = ("model.layers.", "lm_head.", "model.norm.")  # the layers, then the head
    for name in a:
        same = mx.array_equal(a[name], b[name])
        if name.endswith(".weight") and "norm" not in name:
            assert same, name  # the codes never move
        elif name.startswith(trained):
            assert not same, name  # scales, biases and (--tune-norms) norm gains trained
        else:
            assert same, name  # the input embedding keeps its rounding
    report = json.loads((out / "jang.json").read_text())["tune"]
    assert report["scope"] == "block" and report["steps_per_layer"] == 12
    assert report["error_last_epoch"] < report["error_first_epoch"]
    assert report["norms"] == 9  # two per layer, and the final norm with the head
    assert report["head_kl_last_epoch"] < report["head_kl_first_epoch"]
    assert "block-wise" in (out / "README.md").read_text()


def test_an_interrupted_tuning_resumes_to_identical_bytes(
    deep_model, calib, tmp_path, monkeypatch, killer
):
    reference = tmp_path / "reference"
    _tuned(deep_model, reference, calib, method="gptq")
    kill = killer("tune")
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        _tuned(deep_model, out, calib, method="gptq")
    assert not out.exists()
    assert checkpoint.Checkpoint(out, "tune").state()["next_layer"] == 2
    assert checkpoint.Checkpoint(out, "gptq").state()["next_layer"] == 4  # GPTQ had finished
    kill.armed = False

    def no_planning(*args):
        raise AssertionError("the kept layers must be refused before planning")

    with monkeypatch.context() as m:
        m.setattr(jang.convert, "_make_plan", no_planning)
        with pytest.raises(ConversionError, match=r"block-wise tuning.*--resume"):
            _tuned(deep_model, out, calib, method="gptq")
    kill.layers.clear()
    _tuned(deep_model, out, calib, method="gptq", resume=True)
    assert kill.layers == [2, 3]
    assert bundle_bytes(out) == bundle_bytes(reference)
    assert not checkpoint.spill_dir(out, "tune").exists()
    assert not checkpoint.spill_dir(out, "gptq").exists()


def test_the_model_scope_still_tunes_end_to_end(deep_model, calib, tmp_path):
    out = tmp_path / "e2e"
    options = TuneOptions(epochs=1, samples=4, lr=1e-2, scope="model")
    convert(
        deep_model, out, bits=2.5, method="rtn", calibration=calib, tune=options, progress="quiet"
    )
    report = json.loads((out / "jang.json").read_text())["tune"]
    assert report["scope"] == "model" and report["steps"] == 4
    assert not checkpoint.spill_dir(out, "tune").exists()
    with pytest.raises(Exception, match="--tune-scope"):
        TuneOptions(scope="layer").check()


@pytest.mark.parametrize("tied", [False, True])
def test_the_head_model_gives_the_full_models_logits(tmp_path, tied):
    """What the head is tuned on: the last layer's outputs through the final norm and the
    head, with the family's head logic, equal the whole float model's logits."""
    import numpy as np

    from tiny_model import tiny_config, tiny_weights

    config = tiny_config()
    config["tie_word_embeddings"] = tied
    weights = {k: np.array(v.astype(mx.float32)) for k, v in tiny_weights(config).items()}
    if tied:
        weights.pop("lm_head.weight", None)
    full = torch_models.load_tensors(torch_models.build_model(config), weights, config)
    tokens = np.random.default_rng(0).integers(3, 100, size=(3, 16)).astype(np.int64)
    outputs = []
    _, layers = torch_models.decoder_layers(full)
    hook = layers[-1].register_forward_hook(lambda m, i, o: outputs.append(tune_stream._out(o)))
    with torch.no_grad():
        want = [full(input_ids=torch.from_numpy(t)[None]).logits for t in tokens]
    hook.remove()
    stream = torch.cat(outputs).to(torch_models.device())
    head = "model.embed_tokens.weight" if tied else "lm_head.weight"
    rest = {n: w for n, w in weights.items() if n == "model.norm.weight"}
    model = tune_stream._head_model(
        torch, config, {**rest, "lm_head.weight": weights[head]}, stream, tokens
    )
    with torch.no_grad():
        for t, w in zip(tokens[::-1], want[::-1], strict=True):  # any order: found by tokens
            got = model(input_ids=torch.from_numpy(t)[None].to(stream.device)).logits
            torch.testing.assert_close(got.cpu(), w, rtol=1e-5, atol=1e-5)
