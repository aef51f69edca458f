"""The conformance matrix in CI: every family passes every path it claims, and the table
in docs/FAMILIES.md is what the matrix gives (regenerate it with
`python tests/conformance/matrix.py`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from families import FAMILIES
from family_models import hf_model
from jang.arch import UNSUPPORTED, supported_families
from matrix import (
    MATCH_8BIT,
    bundle_logits,
    calib_file,
    cli,
    convert_args,
    mark,
    prompt_ids,
    reference_logits,
    relative_gap,
    row,
    run_family,
    table_rows,
)

pytest.importorskip("transformers", reason="the tiny models are made by transformers")
pytest.importorskip("torch", reason="the reference forward pass runs in torch")

TABLE = Path(__file__).resolve().parents[2] / "docs" / "FAMILIES.md"


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_family(model_type, tmp_path):
    results = run_family(model_type, tmp_path)
    failed = {
        path: outcome.detail
        for path, outcome in results.items()
        if mark(model_type, path, results) == "FAIL"
    }
    assert not failed, f"{model_type}: " + "; ".join(f"{p}: {d}" for p, d in failed.items())
    assert table_rows(TABLE).get(model_type) == row(model_type, results), (
        f"docs/FAMILIES.md is stale for {model_type}: run python tests/conformance/matrix.py"
    )


def test_table_lists_exactly_the_claimed_families():
    assert sorted(table_rows(TABLE)) == sorted(FAMILIES) == supported_families()


def test_8bit_check_catches_a_wrong_model(tmp_path):
    """Negative control: the same 8-bit bundle with RoPE at another base (what mlx-lm
    silently did with transformers-5 configs) fails the 8-bit bound by a wide margin."""
    src = hf_model("llama")
    ids = prompt_ids(src)
    ref = reference_logits(src, ids)
    out = tmp_path / "b8"
    cli("convert", src, "-o", out, "--quiet", *convert_args("8bit", calib_file(tmp_path)))
    assert relative_gap(ref, bundle_logits(out, ids)) < MATCH_8BIT
    config = json.loads((out / "config.json").read_text())
    config["rope_theta"] = 1e6
    (out / "config.json").write_text(json.dumps(config))
    assert relative_gap(ref, bundle_logits(out, ids)) > 3 * MATCH_8BIT


@pytest.mark.parametrize("family", ["bert", *sorted(UNSUPPORTED)])
def test_unsupported_family_is_refused_before_any_work(tmp_path, family):
    """A family mlx-lm cannot build, or one jang knows it cannot convert right, fails at
    once with one line naming it (and the reason) and the supported families."""
    import mlx.core as mx

    src = tmp_path / family
    src.mkdir()
    config = {"model_type": family, "architectures": ["X"], "hidden_size": 64}
    config.update(num_hidden_layers=2, vocab_size=128)
    (src / "config.json").write_text(json.dumps(config))
    tensors = {"bert.encoder.layer.0.attention.self.query.weight": mx.zeros((64, 64))}
    mx.save_safetensors(str(src / "model.safetensors"), tensors)
    for command in (["plan", src], ["convert", src, "-o", tmp_path / "o"]):
        start = time.perf_counter()
        with pytest.raises(RuntimeError) as info:
            cli(*command, "--bits", "3.0")
        assert time.perf_counter() - start < 2.0
        message = str(info.value)
        assert f"model family '{family}' is not supported" in message
        assert UNSUPPORTED.get(family, "mlx-lm cannot build it") in message
        assert "supported: " + ", ".join(supported_families()) in message
    assert not (tmp_path / "o").exists()
    assert not list(Path.cwd().glob(f"{family}.*.plan.json"))


def test_refusals_are_for_their_stated_reason():
    """GPTQ and tuning are refused for the families with routed experts, and only them."""
    from families import REFUSED
    from jang.arch import detect

    for family in FAMILIES:
        arch = detect(json.loads((hf_model(family) / "config.json").read_text()))
        expected = {"convert gptq", "convert tune"} if arch.moe else set()
        assert set(REFUSED.get(family, {})) == expected, family
