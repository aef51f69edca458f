"""`jang plan` and `jang estimate` from the command line."""

import json

import numpy as np
import pytest

from jang import cli, estimate
from plan_fixtures import load


@pytest.mark.parametrize(
    ("text", "value"), [("70B", 70e9), ("1.5b", 1.5e9), ("135M", 135e6), ("7e9", 7e9)]
)
def test_parse_params(text, value):
    assert estimate.parse_params(text) == pytest.approx(value)


@pytest.mark.parametrize("bad", ["seventy", "12", "-3B"])
def test_parse_params_rejects(bad):
    with pytest.raises(ValueError):
        estimate.parse_params(bad)


@pytest.mark.parametrize("n", [135e6, 1e9, 8e9, 70e9])
def test_llama_like_hits_the_count(n):
    _, tensors, desc = estimate.llama_like(n)
    total = sum(int(np.prod(s)) for _, s in tensors)
    assert abs(total - n) / n < 0.06, desc


def test_estimate_command(capsys):
    assert cli.main(["estimate", "70B", "--profile", "JANG_2S", "--bits", "3.5"]) == 0
    out = capsys.readouterr().out
    assert "Llama-3.1-70B" in out and "JANG_2S" in out and "3.500" in out
    row = next(line for line in out.splitlines() if line.startswith("JANG_2S"))
    gb, bpw = float(row.split()[2]), float(row.split()[4])
    assert 2.5 < bpw < 4.0 and gb == pytest.approx(bpw * 69.7 / 8, rel=0.05)


def test_estimate_bad_input(capsys):
    assert cli.main(["estimate", "lots", "--profile", "JANG_2S"]) == 1
    assert "not a parameter count" in capsys.readouterr().err


@pytest.fixture
def tiny_model(tmp_path):
    from safetensors.numpy import save_file

    config, tensors = load("llama")
    rng = np.random.default_rng(0)
    arrays = {n: (rng.standard_normal(s) * 0.02).astype(np.float16) for n, s in tensors}
    save_file(arrays, str(tmp_path / "model.safetensors"))
    full = {**config, "torch_dtype": "float16", "rms_norm_eps": 1e-5}  # mlx-lm builds it
    (tmp_path / "config.json").write_text(json.dumps(full))
    return tmp_path


def test_plan_command(tiny_model, tmp_path, capsys):
    out = tmp_path / "p.json"
    cache = tmp_path / "c.json"
    args = ["plan", str(tiny_model), "--bits", "3.5", "-o", str(out), "--cache", str(cache)]
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    assert "attn_v" in text and "layer" in text and str(out) in text
    plan = json.loads(out.read_text())
    assert plan["totals"]["bpw_all_in"] <= 3.5 and cache.is_file()
    assert (
        cli.main(["plan", str(tiny_model), "--profile", "JANG_4M", "-o", str(out), "--quiet"]) == 0
    )
    assert json.loads(out.read_text())["request"]["tiers"] == [8, 4, 4]


def test_plan_writes_nothing_unless_asked(tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "cache" / "c.json"
    before = sorted(p.name for p in tmp_path.iterdir())
    assert cli.main(["plan", str(tiny_model), "--profile", "JANG_2S", "--cache", str(cache)]) == 0
    text = capsys.readouterr().out
    # the request in words (tier names are not sizes), a summary and no per-layer rows
    assert "JANG_2S: fixed widths per tier" in text and "bits per layer" not in text
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "cache"])
    assert "written" not in text


def test_short_p_means_prompt_everywhere(tiny_model, capsys):
    """-p is generate's --prompt; in plan/convert/estimate it says what to write instead."""
    for argv in (
        ["plan", str(tiny_model), "-p", "JANG_2S"],
        ["convert", str(tiny_model), "-o", "x", "-p", "JANG_2S"],
        ["estimate", "1B", "-p", "JANG_2S"],
    ):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 2
        assert (
            "-p is --prompt (jang generate); here write --profile NAME" in capsys.readouterr().err
        )


def test_plan_command_errors(tiny_model, tmp_path, capsys):
    out = str(tmp_path / "p.json")
    assert cli.main(["plan", str(tiny_model), "--bits", "2.1", "-o", out, "--no-cache"]) == 1
    assert "smallest plan" in capsys.readouterr().err
    assert cli.main(["plan", str(tiny_model), "--profile", "JANG_3M", "--prior", "bogus=2"]) == 1
    assert "ROLE=WEIGHT" in capsys.readouterr().err
