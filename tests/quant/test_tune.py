"""End-to-end tuning: exact start, codes untouched (or repacked exactly when trained), lower
held-out KL, tied heads, tuned norms written to the bundle."""

import copy
import json

import mlx.core as mx
import numpy as np
import pytest

from jang import cli
from jang import evaluate as ev
from jang import text as tx
from tiny_model import VOCAB, make_model_dir, tiny_config, tiny_weights

torch = pytest.importorskip("torch", reason="tuning runs in torch (eval extra)")
pytest.importorskip("transformers", reason="tuning builds the transformers model")

from jang import engines  # noqa: E402
from jang.quant import tune  # noqa: E402


def _text(path, seed: int, words: int = 2400):
    rng = np.random.default_rng(seed)
    toks = [VOCAB[i] for i in rng.integers(3, len(VOCAB), size=words)]
    path.write_text("\n\n".join(" ".join(toks[i : i + 60]) for i in range(0, words, 60)))
    return path


def _tied_dir(dest):
    """The tiny llama with a tied embedding (no lm_head tensor)."""
    make_model_dir(dest)
    config = tiny_config()
    config["tie_word_embeddings"] = True
    weights = tiny_weights(config)
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    mx.save_safetensors(str(dest / "model.safetensors"), weights)
    return dest


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    src = make_model_dir(root / "src")
    calib = _text(root / "calib.txt", seed=1)
    held_out = _text(root / "held_out.txt", seed=2)
    plain = root / "plain"
    args = ["convert", str(src), "--bits", "2.5", "--method", "rtn", "--quiet"]
    assert cli.main([*args, "-o", str(plain)]) == 0
    tune_args = ["--tune", "--calib", str(calib), "--calib-seq-len", "64"]
    tune_args += ["--tune-samples", "16", "--tune-epochs", "3", "--tune-lr", "1e-2"]
    tuned = root / "tuned"  # the default: block-wise
    assert cli.main([*args, "-o", str(tuned), *tune_args]) == 0
    e2e = root / "e2e"
    assert cli.main([*args, "-o", str(e2e), *tune_args, "--tune-scope", "model"]) == 0
    return src, plain, tuned, held_out, e2e


def _kl(bundle, src, text) -> float:
    run, _, _ = engines.load_engine(bundle, "torch")
    ref, _, _ = engines.load_engine(src, "torch")
    tok = engines.load_tokenizer(bundle)
    wins = tx.tokenize_windows(tok, text.read_text(), 8, 64, tx.bos_id(tok))
    return ev.compare_windows(wins, run, ref)["kl"]


@pytest.mark.parametrize("scope", ["block", "model"])
def test_tuning_keeps_the_codes_and_the_layout(tiny, scope):
    _, plain, block, _, e2e = tiny
    tuned = block if scope == "block" else e2e
    a = mx.load(str(plain / "model.safetensors"))
    b = mx.load(str(tuned / "model.safetensors"))
    assert a.keys() == b.keys()
    changed = 0
    for name in a:
        assert a[name].shape == b[name].shape and a[name].dtype == b[name].dtype, name
        if name.endswith(".weight"):  # codes, and the unquantized norms
            assert mx.array_equal(a[name], b[name]), name
        else:
            changed += not mx.array_equal(a[name], b[name])
    # every scale and bias (block-wise: the layers' and the head's, not the input embedding's)
    kept = "model.embed_tokens." if scope == "block" else "-"
    trained = [n for n in a if n.endswith(".scales") and not n.startswith(kept)]
    assert changed == len(trained) * 2
    assert cli.main(["validate", str(tuned)]) == 0


def test_tuning_lowers_the_held_out_kl(tiny):
    src, plain, block, held_out, e2e = tiny
    report = json.loads((e2e / "jang.json").read_text())["tune"]
    assert report["steps"] == 48 and report["windows"] == 16 and report["seq_len"] == 64
    assert report["kl_last_epoch"] < report["kl_first_epoch"]
    report = json.loads((block / "jang.json").read_text())["tune"]
    assert report["steps_per_layer"] == 48 and report["windows"] == 16
    assert report["error_last_epoch"] < report["error_first_epoch"]
    assert json.loads((plain / "jang.json").read_text())["tune"] is None
    before = _kl(plain, src, held_out)
    # end to end trains the KL itself and gains more (bench/RESULTS.md: SmolLM2 too)
    for tuned, most in ((block, 0.9), (e2e, 0.8)):
        after = _kl(tuned, src, held_out)
        assert after < most * before, (tuned.name, before, after)


def _quantized(bundle):
    """{module: (wq, scales, biases)} and {module: (bits, group_size)} of a bundle."""
    manifest = json.loads((bundle / "jang.json").read_text())
    stored = mx.load(str(bundle / "model.safetensors"))
    quantized, widths = {}, {}
    for module, e in manifest["tensors"].items():
        if e["quantized"]:
            quantized[module] = tuple(
                stored[f"{module}.{k}"] for k in ("weight", "scales", "biases")
            )
            widths[module] = (e["bits"], e["group_size"])
    return quantized, widths


def test_the_untrained_student_is_the_bundle_and_a_tied_head_follows(tmp_path):
    src = _tied_dir(tmp_path / "src")
    out = tmp_path / "b"
    assert cli.main(["convert", str(src), "-o", str(out), "--bits", "3.3", "--quiet"]) == 0
    quantized, widths = _quantized(out)
    assert len({w for w in widths.values()}) > 1  # a mixed plan: several widths
    assert "model.embed_tokens" in quantized and "lm_head" not in quantized
    bundle_model, _, _ = engines.reference_model(out)
    teacher, _, _ = engines.reference_model(src)
    student = copy.deepcopy(teacher)
    tune._attach(torch, student, quantized, widths)
    ids = torch.tensor([[1, 5, 9, 40, 77, 3, 12, 100]])
    with torch.no_grad():
        want = bundle_model(input_ids=ids).logits
        got = student(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    head, emb = student.lm_head.weight, student.model.embed_tokens.weight
    assert torch.equal(head, emb)  # the tied head is the same quantized function
    tokens = np.random.default_rng(0).integers(3, len(VOCAB), size=(4, 32))
    fresh_student = copy.deepcopy(teacher)
    tuned, floats, report = tune.tune_scales(
        teacher, fresh_student, quantized, widths, tokens, epochs=1, lr=1e-2
    )
    assert floats == {} and report.codes_changed == 0 and report.norms == 0
    assert report.steps == 4 and set(tuned) == set(quantized)
    before = np.array(quantized["model.embed_tokens"][1].astype(mx.float32))
    after = np.array(tuned["model.embed_tokens"][1])
    assert after.shape == before.shape and not np.allclose(after, before)
    assert torch.equal(fresh_student.lm_head.weight, fresh_student.model.embed_tokens.weight)


def test_tuning_rejects_moe_and_bad_input(tmp_path):
    src = make_model_dir(tmp_path / "moe", model_type="mixtral")
    out = tmp_path / "o"
    args = ["convert", str(src), "-o", str(out), "--bits", "3.0", "--tune", "--quiet"]
    assert cli.main(args) == 1
    assert not out.exists()
    assert cli.main([*args[:-1], "--tune-lr", "-1", "--quiet"]) == 1
    assert not out.exists()
    plain = ["convert", str(src), "-o", str(out), "--bits", "3.0", "--quiet"]
    assert cli.main([*plain, "--tune-epochs", "3"]) == 1  # a tuning option without --tune
    assert cli.main([*plain, "--tune-norms"]) == 1
    assert not out.exists()
    with pytest.raises(tune.QuantizationError, match="at least one epoch"):
        tune.tune_scales(None, None, {}, {}, np.zeros((1, 4)), epochs=0)
    with pytest.raises(tune.QuantizationError, match="windows"):
        tune.tune_scales(None, None, {}, {}, np.zeros(4))


def test_trained_codes_are_repacked_exactly(tmp_path):
    src = _tied_dir(tmp_path / "src")
    out = tmp_path / "b"
    assert cli.main(["convert", str(src), "-o", str(out), "--bits", "2.5", "--quiet"]) == 0
    quantized, widths = _quantized(out)
    teacher, _, _ = engines.reference_model(src)
    student = copy.deepcopy(teacher)
    tokens = np.random.default_rng(0).integers(3, len(VOCAB), size=(8, 32))
    tuned, floats, report = tune.tune_scales(
        teacher,
        student,
        quantized,
        widths,
        tokens,
        epochs=2,
        lr=1e-2,
        train_codes=True,
        code_lr=0.2,
        train_norms=True,
    )
    assert report.codes_changed > 0 and report.norms == len(floats) > 0
    assert all("norm" in name for name in floats)
    # the trained student is exactly what the repacked codes, scales and biases give
    params = dict(teacher.named_parameters())
    rebuilt = copy.deepcopy(teacher)
    rebuilt_params = dict(rebuilt.named_parameters())
    moved = 0
    with torch.no_grad():
        for module, (wq, s, b) in tuned.items():
            bits, group = widths[module]
            moved += not mx.array_equal(wq, quantized[module][0])
            w = mx.dequantize(wq, s, b, group_size=group, bits=bits)
            rebuilt_params[module + ".weight"].copy_(torch.from_numpy(np.array(w)))
        for name, value in floats.items():
            assert not np.array_equal(value, params[name].numpy()), name
            rebuilt_params[name].copy_(torch.from_numpy(value))
        ids = torch.tensor([[1, 5, 9, 40, 77, 3, 12, 100]])
        got, want = rebuilt(input_ids=ids).logits, student(input_ids=ids).logits
    assert moved > 0
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_tuned_norms_reach_the_bundle(tiny, tmp_path):
    src, plain, _, _, _ = tiny
    calib = _text(tmp_path / "calib.txt", seed=3)
    out = tmp_path / "norms"
    args = ["convert", str(src), "-o", str(out), "--bits", "2.5", "--method", "rtn", "--quiet"]
    args += ["--tune", "--tune-norms", "--tune-scope", "model", "--calib", str(calib)]
    args += ["--calib-seq-len", "64"]
    assert cli.main([*args, "--tune-samples", "4", "--tune-epochs", "1", "--tune-lr", "1e-2"]) == 0
    a = mx.load(str(plain / "model.safetensors"))
    b = mx.load(str(out / "model.safetensors"))
    norms = [n for n in a if "norm" in n]
    assert norms and all(not mx.array_equal(a[n], b[n]) for n in norms)
    codes = [n for n in a if n.endswith(".weight") and n not in norms]
    assert all(mx.array_equal(a[n], b[n]) for n in codes)  # codes frozen without --tune-codes
    report = json.loads((out / "jang.json").read_text())["tune"]
    assert report["norms"] == len(norms) and report["codes_changed"] == 0
    assert cli.main(["validate", str(out)]) == 0
