"""The bundle subcommands end to end on a tiny model: convert, validate, inspect, generate."""

import json

import pytest

from jang import cli
from tiny_model import make_model_dir


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    src = make_model_dir(tmp_path_factory.mktemp("src") / "tiny")
    out = tmp_path_factory.mktemp("out") / "b"
    assert (
        cli.main(
            ["convert", str(src), "-o", str(out), "--bits", "3.5", "--method", "rtn", "--quiet"]
        )
        == 0
    )
    return src, out


def test_convert_json_progress_and_refusal(tiny_bundle, capsys):
    src, out = tiny_bundle
    capsys.readouterr()
    assert cli.main(["convert", str(src), "-o", str(out), "--bits", "3", "--json-progress"]) == 1
    assert "already exists; pass --force" in capsys.readouterr().err
    code = cli.main(
        [
            "convert",
            str(src),
            "-o",
            str(out),
            "--profile",
            "JANG_2S",
            "--method",
            "rtn",
            "--json-progress",
            "--force",
        ]
    )
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[-1]["event"] == "done" and lines[-1]["bytes"] > 0
    assert {line["event"] for line in lines} == {"log", "tensor", "done"}
    # the request said in words first (tier names are not sizes), then the plan's size
    assert lines[0]["event"] == "log"
    assert lines[0]["message"].startswith("profile JANG_2S: fixed widths per tier")
    assert lines[1]["event"] == "log" and lines[1]["message"].startswith("plan: ")
    assert (
        cli.main(
            [
                "convert",
                str(src),
                "-o",
                str(out),
                "--bits",
                "3.5",
                "--method",
                "rtn",
                "--quiet",
                "--force",
            ]
        )
        == 0
    )


def test_convert_errors_name_the_problem(tmp_path, capsys):
    assert (
        cli.main(["convert", str(tmp_path / "missing"), "-o", str(tmp_path / "o"), "--bits", "3"])
        == 1
    )
    assert "no such file or directory" in capsys.readouterr().err
    src = make_model_dir(tmp_path / "m")
    assert (
        cli.main(["convert", str(src), "-o", str(tmp_path / "o"), "--bits", "0.5", "--quiet"]) == 1
    )
    err = capsys.readouterr().err
    assert "jang convert: error:" in err and not (tmp_path / "o").exists()


def test_validate(tiny_bundle, tmp_path, capsys):
    _, out = tiny_bundle
    assert cli.main(["validate", str(out), "--deep"]) == 0
    assert "valid" in capsys.readouterr().out
    assert cli.main(["validate", str(tmp_path)]) == 1
    assert "INVALID: " in capsys.readouterr().err


def test_inspect(tiny_bundle, capsys):
    _, out = tiny_bundle
    assert cli.main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "mlp_down" in text and "bpw" in text
    # the summary by default; the per-layer rows behind a flag
    assert "bits per layer" not in text and "--layers prints" in text
    assert cli.main(["inspect", str(out), "--layers"]) == 0
    assert "bits per layer" in capsys.readouterr().out


def test_generate(tiny_bundle, capsys):
    _, out = tiny_bundle
    assert cli.main(["generate", str(out), "-p", "w1 w2 w3", "-n", "5", "--stock"]) == 0
    captured = capsys.readouterr()
    assert "generated" in captured.err and "tok/s" in captured.err


def test_convert_with_an_edited_plan(tiny_bundle, tmp_path, capsys):
    """`jang plan` -> edit -> `jang convert --plan` (no profile or --bits needed)."""
    src, _ = tiny_bundle
    plan_path = tmp_path / "plan.json"
    assert cli.main(["plan", str(src), "--bits", "3.5", "-o", str(plan_path)]) == 0
    plan = json.loads(plan_path.read_text())
    name = next(n for n, t in plan["tensors"].items() if t["quantized"])
    plan["tensors"][name]["bits"] = 8
    plan_path.write_text(json.dumps(plan))
    out = tmp_path / "b"
    args = ["convert", str(src), "-o", str(out), "--plan", str(plan_path), "--method", "rtn"]
    assert cli.main([*args, "--quiet"]) == 0
    manifest = json.loads((out / "jang.json").read_text())
    entry = next(e for e in manifest["tensors"].values() if name in e["source"]["names"])
    assert entry["bits"] == 8
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli.main([*args, "--bits", "3"])  # a plan already fixes the size
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-n", "0"], "-n/--max-tokens must be at least 1, got 0"),
        (["-n", "-5"], "-n/--max-tokens must be at least 1, got -5"),
        (["--temp", "-1"], "--temp must be 0 (greedy) or positive, got -1.0"),
        (["-p", "   "], "-p/--prompt is empty"),
    ],
)
def test_generate_refuses_meaningless_arguments(tiny_bundle, capsys, argv, message):
    _, out = tiny_bundle
    args = ["generate", str(out), "-p", "w1 w2", *argv]
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err


def test_bits_above_the_largest_plan_is_refused(tiny_bundle, tmp_path, capsys):
    src, _ = tiny_bundle
    assert cli.main(["plan", str(src), "--bits", "12", "-o", str(tmp_path / "p.json")]) == 1
    assert "above the largest plan for this model (9.000 bpw" in capsys.readouterr().err
    assert cli.main(["convert", str(src), "-o", str(tmp_path / "o"), "--bits", "12"]) == 1
    assert "above the largest plan" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bad_plan_files_and_bundle_sources_are_named(tiny_bundle, tmp_path, capsys):
    src, out = tiny_bundle
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    for plan, message in [
        (tmp_path / "missing.json", "No such file or directory"),
        (junk, "is not JSON"),
        (listed, "is not a jang plan"),
    ]:
        assert cli.main(["convert", str(src), "-o", str(tmp_path / "o"), "--plan", str(plan)]) == 1
        assert f"--plan {plan}" in (err := capsys.readouterr().err) and message in err
    assert cli.main(["convert", str(out), "-o", str(tmp_path / "o"), "--bits", "3"]) == 1
    assert "is already a jang bundle" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
