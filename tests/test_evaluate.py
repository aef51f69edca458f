"""`jang eval`: windows, metrics against known values, both engines agree, the CLI."""

import json
import math

import numpy as np
import pytest

from jang import cli, engines
from jang import evaluate as ev
from jang import text as tx
from tiny_model import VOCAB, make_model_dir

torch = pytest.importorskip("torch", reason="the reference engine needs torch (eval extra)")
pytest.importorskip("transformers", reason="the reference engine needs transformers")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    src = make_model_dir(tmp_path_factory.mktemp("src") / "tiny")
    out = tmp_path_factory.mktemp("out") / "b4"
    assert cli.main(["convert", str(src), "-o", str(out), "--bits", "4.5", "--quiet"]) == 0
    rng = np.random.default_rng(1)
    text = tmp_path_factory.mktemp("text") / "t.txt"
    words = [VOCAB[i] for i in rng.integers(3, len(VOCAB), size=400)]
    text.write_text("\n\n".join(" ".join(words[i : i + 50]) for i in range(0, 400, 50)))
    return src, out, text


def test_windows_are_fixed_non_overlapping_and_start_with_bos():
    ids = np.arange(100, 200)
    w = tx.make_windows(ids, n_windows=3, length=10, bos=1)
    assert w.shape == (3, 10)
    assert (w[:, 0] == 1).all()
    assert w[1:, 1:].min() > w[0, 1:].max()  # no token appears in two windows
    assert list(w[0, 1:]) == list(range(100, 109))
    w = tx.make_windows(ids, n_windows=50, length=10, bos=None)
    assert w.shape == (10, 10) and list(w.reshape(-1)) == list(range(100, 200))
    with pytest.raises(ValueError):
        tx.make_windows(ids[:5], n_windows=1, length=10, bos=1)


def test_perplexity_and_kl_of_known_distributions():
    rng = np.random.default_rng(0)
    T, V = 33, 17
    ids = rng.integers(0, V, size=T)
    # uniform over V: perplexity is V
    stats = ev.TokenStats()
    stats.add(None, ev.log_softmax(np.zeros((T, V))), ids)
    assert stats.summary()["ppl"] == pytest.approx(V, rel=1e-6)
    # the next token gets probability 1/2 everywhere: perplexity 2
    logits = np.full((T, V), -1e9, dtype=np.float32)
    logits[np.arange(T - 1), ids[1:]] = 0.0
    logits[np.arange(T - 1), (ids[1:] + 1) % V] = 0.0
    logits[-1] = 0.0
    stats = ev.TokenStats()
    stats.add(None, ev.log_softmax(logits), ids)
    assert stats.summary()["ppl"] == pytest.approx(2.0, rel=1e-5)
    # KL and top-1 against a direct computation
    a, b = rng.normal(size=(T, V)) * 2, rng.normal(size=(T, V)) * 2
    pa = np.exp(a) / np.exp(a).sum(-1, keepdims=True)
    pb = np.exp(b) / np.exp(b).sum(-1, keepdims=True)
    kl = (pa * np.log(pa / pb)).sum(-1)[:-1].mean()
    stats = ev.TokenStats()
    stats.add(ev.log_softmax(a), ev.log_softmax(b), ids)
    s = stats.summary()
    assert s["kl"] == pytest.approx(kl, rel=1e-4)
    assert s["top1"] == pytest.approx((a.argmax(-1) == b.argmax(-1))[:-1].mean())
    assert s["kl"] > 0.1


def test_wilson_interval():
    lo, hi = ev.wilson_interval(50, 100)
    assert lo < 0.5 < hi and hi - lo == pytest.approx(0.19, abs=0.01)
    lo2, hi2 = ev.wilson_interval(500, 1000)
    assert hi2 - lo2 < (hi - lo) / 2
    assert ev.wilson_interval(0, 20)[0] == 0.0 and ev.wilson_interval(20, 20)[1] == 1.0


def test_size_of_a_uniform_bundle(tiny):
    _, out, _ = tiny
    _, _, size = engines.reference_model(out)
    manifest = json.loads((out / "jang.json").read_text())
    plan = manifest["summary"]
    assert size.bpw_all_in == pytest.approx(plan["bpw_all_in"], abs=1e-3)
    assert size.bpw_codes == pytest.approx(plan["bpw_codes"], abs=1e-3)
    assert size.file_bytes == sum(f.stat().st_size for f in out.glob("*.safetensors"))


def test_both_engines_agree_and_self_kl_is_zero(tiny):
    src, out, text = tiny
    tok = engines.load_tokenizer(out)
    wins = tx.tokenize_windows(tok, text.read_text(), 2, 64, tx.bos_id(tok))
    assert wins.shape == (2, 64)
    torch_run, _, _ = engines.load_engine(out, "torch")
    mlx_run, _, _ = engines.load_engine(out, "mlx")
    src_run, _, _ = engines.load_engine(src, "torch")
    for ids in wins:
        a, b = torch_run(ids), mlx_run(ids)
        assert a.shape == b.shape == (64, len(VOCAB))
        np.testing.assert_allclose(a, b, atol=2e-3 * np.abs(a).max())
        assert np.abs(a - src_run(ids)).max() > 1e-3  # quantization changes the logits
    same = ev.compare_windows(wins, torch_run, ref_engine=torch_run)
    assert same["kl"] == pytest.approx(0.0, abs=1e-6)
    assert same["top1"] == 1.0 and same["ppl"] == pytest.approx(same["ppl_ref"])
    agree = ev.compare_windows(wins, mlx_run, ref_engine=torch_run)
    assert agree["kl"] < 1e-4 and agree["top1"] > 0.95
    vs_src = ev.compare_windows(wins, torch_run, ref_engine=src_run)
    assert vs_src["kl"] > 10 * agree["kl"]


def test_eval_command_prints_a_table_and_writes_json(tiny, tmp_path, capsys):
    src, out, text = tiny
    dest = tmp_path / "r.json"
    args = ["eval", str(out), "--ref", str(src), "--text", str(text)]
    assert cli.main([*args, "--windows", "3", "--length", "32", "--json", str(dest)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(dest.read_text())
    assert result["windows"] == 3 and result["length"] == 32
    assert result["kl"] > 0 and 0 <= result["top1"] <= 1
    assert math.isfinite(result["ppl"]) and result["bpw_all_in"] == pytest.approx(4.5, abs=0.6)
    assert "| variant |" in printed and f"{result['kl']:.4g}" in printed
    assert cli.main(["eval", str(tmp_path / "nope"), "--text", str(text)]) == 1


def test_multiple_choice_picks_the_most_likely_continuation(tiny):
    _, out, _ = tiny
    tok = engines.load_tokenizer(out)
    favoured = tok.convert_tokens_to_ids("w7")

    def engine(ids):  # every position predicts w7 with high probability
        logits = np.zeros((len(ids), len(VOCAB)), dtype=np.float32)
        logits[:, favoured] = 5.0
        return logits

    qs = [
        ev.Question("w1 w2", (" w3", " w7", " w9"), gold=1),
        ev.Question("w4", (" w7 w7", " w8 w7"), gold=0),
        ev.Question("w4", (" w7", " w8"), gold=1),
    ]
    res = ev.mc_accuracy(engine, tok, qs, tx.bos_id(tok))
    assert res["n"] == 3 and res["acc"] == pytest.approx(2 / 3)
    lo, hi = res["ci95"]
    assert lo < 2 / 3 < hi
    scores = ev.choice_loglik(engine, tok, qs[1], tx.bos_id(tok))
    assert scores[0] > scores[1] and scores[0] == pytest.approx(2 * scores[0] / 2)


class _Digits:
    """A tokenizer of space-separated integers."""

    def encode(self, text, add_special_tokens=False):
        return [int(t) for t in text.split()]


def test_continuations_are_judged_by_reference_perplexity_and_loops():
    V = 10
    favoured, other = math.log(0.5), math.log(0.5 / (V - 1))

    def ref(ids):  # the next token is (t + 1) % V with probability 1/2
        logits = np.full((len(ids), V), other)
        logits[np.arange(len(ids)), (np.asarray(ids) + 1) % V] = favoured
        return logits

    tok = _Digits()
    ok, loop = ev.continuations(
        lambda p: {"1 2": " 3 4 5 6 7 8", "5": " 1 1 1 1 1 1"}[p], tok, ref, prompts=["1 2", "5"]
    )
    assert ok.ref_ppl == pytest.approx(2.0, rel=1e-6) and ok.distinct == 1.0 and ok.coherent
    # "5 -> 1" is off-rule (1/18), then every "1 -> 1" too: ppl 18, one distinct token in six
    assert loop.ref_ppl == pytest.approx(2 * (V - 1), rel=1e-6)
    assert loop.distinct == pytest.approx(1 / 6) and not loop.coherent
    # a BOS shifts the scored positions but not the score of this position-free reference
    (with_bos,) = ev.continuations(lambda p: " 3 4", tok, ref, prompts=["1 2"], bos=0)
    assert with_bos.ref_ppl == pytest.approx(2.0, rel=1e-6)
    assert ev.judge_continuation(ref, [1], []) == (math.inf, 0.0)


def test_top_k_kl_is_a_lower_bound_that_closes_at_the_vocabulary():
    """KL over the reference's top k plus the rest: exact at k = V, never above the
    exact KL, and close to it when the rest carries little mass."""
    rng = np.random.default_rng(3)
    T, V = 40, 300
    ids = rng.integers(0, V, T)
    ref = ev.log_softmax(rng.normal(size=(T, V)) * 4)
    quant = ev.log_softmax(ev.log_softmax(rng.normal(size=(T, V)) * 4) * 0.7 + ref * 0.3)
    exact = ev.TokenStats()
    exact.add(ref, quant, ids)
    full = exact.summary()
    previous = 0.0
    for k in (1, 8, 64, V):
        stats = ev.TokenStats()
        stats.add(ev.RefWindow.of(ref, ids, k), quant, ids)
        got = stats.summary()
        # grows with k, bounded by the exact KL (to float32 rounding)
        assert previous * (1 - 1e-5) <= got["kl"] <= full["kl"] * (1 + 1e-5)
        assert got["ppl_ref"] == pytest.approx(full["ppl_ref"], rel=1e-6)
        assert got["top1"] == full["top1"]
        previous = got["kl"]
    assert previous == pytest.approx(full["kl"], rel=1e-5)


def test_eval_holds_one_model_at_a_time(tiny, monkeypatch):
    """The reference is scored and freed before the bundle is loaded, and scored once for
    several bundles (`memo`); its float16 log-probs give the exact KL to 1e-3."""
    import gc
    import weakref

    src, out, text = tiny
    loaded, alive = [], []
    real = ev.load_engine

    def tracking(path, *args, **kwargs):
        gc.collect()
        loaded.append((str(path), [r() is not None for r in alive]))
        result = real(path, *args, **kwargs)
        alive.append(weakref.ref(result[0]))
        return result

    monkeypatch.setattr(ev, "load_engine", tracking)
    memo = {}
    first = ev.evaluate(out, src, text_file=text, windows=2, length=16, memo=memo)
    assert [p for p, _ in loaded] == [str(src), str(out)]
    assert loaded[1][1] == [False]  # the reference's engine was gone when the bundle loaded
    loaded.clear()
    again = ev.evaluate(out, src, text_file=text, windows=2, length=16, memo=memo)
    assert [p for p, _ in loaded] == [str(out)]  # the reference's scores were reused
    assert again["kl"] == first["kl"] and "kl_top_k" not in first
    # the two models side by side, float32 throughout: the same KL
    wins = tx.tokenize_windows(engines.load_tokenizer(out), text.read_text(), 2, 16, first["bos"])
    both = ev.compare_windows(wins, real(out)[0], ref_engine=real(src)[0])
    assert first["kl"] == pytest.approx(both["kl"], rel=1e-3)
    top = ev.evaluate(out, src, text_file=text, windows=2, length=16, top_k=8)
    assert top["kl_top_k"] == 8 and top["kl"] <= first["kl"] * (1 + 1e-5)
