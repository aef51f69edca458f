"""The conformance matrix: every path a user takes, run on one family's tiny model.

`run_family` takes a family's tiny HF model (and its GGUF files where jang reads the
architecture) through `jang plan` with every profile and three budgets, `jang convert` with
each method, `jang validate`, `jang.load`, stock `mlx_lm.load` (a fresh process that never
imports jang), `jang generate`, and two numeric checks against the `transformers` float
forward pass of the same weights. Each path gives an `Outcome`; `table` renders them.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from families import FAMILIES, GGUF_ARCH, REFUSED
from family_models import CORPUS, hf_model

# long enough (~70 tokens) that positions far apart and sliding windows are exercised
PROMPT = (
    "The capital of France is Paris, and the capital of Italy is Rome. She opened the "
    "window, and the cold morning air filled the small room. He said that the train would "
    "leave at seven, but it left at eight, and the capital of Spain is"
)
BUDGETS = (2.5, 3.0, 4.5)

# 8 bits, group 32: each weight moves by at most half a step (range/510). The logits of
# the 8.5 bpw bundles of the dense families sit 0.011-0.025 of the logits' spread (mean
# |gap|) from the float32 reference, about a third of it from MLX's bf16 compute alone
# (0.007 for the unquantized model). A wrong model is far off: the families whose sliding
# window or norm convention mlx-lm read differently gave 0.26-0.45, and RoPE at another
# base gives 0.18 on this prompt (test_matrix.py's negative control asserts > 3x the bound).
MATCH_8BIT = 0.05  # mean |logit - ref| / std(ref)
# Routed experts: the top-k choice is discrete, and a random tiny router has near-ties
# (a margin of 0.002 where the median is 0.19) that the 8-bit error flips for 3-5% of the
# tokens of each MoE layer; later tokens attend to them. Measured on Mixtral: 0.05 with the
# flips, 0.019 when the float model's expert choice is replayed; the MoE families give
# 0.012-0.064 (DeepSeek-V3). Jamba's renormalization bug in mlx-lm gave 0.34.
MATCH_8BIT_MOE = 0.1
# The 4.5 bpw bundle against the same plan with every width one step lower (8->6, 6->5,
# ..., 3->2; same group sizes, same rounding): each weight's error roughly doubles, so the
# KL (quadratic in it) roughly quadruples, a ratio near 0.25. Measured on the matrix:
# 0.18-0.48, the MoE families highest (routing flips add KL that does not shrink with the
# width). A broken 4-bit path (codes read at another width or group, another tensor's
# scales) is worse than the correctly quantized lower plan: a ratio above 1. The bound is
# relative because these random models' KL at one width varies 1000x between families
# (chaotic random nets). Their logits spread 0.2-0.7 nats, a trained model's ~3: both logit
# sets are scaled by LOGIT_SPREAD / std(ref) before the KL, as a trained model's would be.
KL_4BIT_RATIO = 0.75
ONE_STEP_LOWER = {8: 6, 6: 5, 5: 4, 4: 3, 3: 2, 2: 2}
LOGIT_SPREAD = 3.0

PATHS = (
    "plan",
    "convert rtn",
    "convert clip",
    "convert gptq",
    "convert tune",
    "validate",
    "jang.load",
    "mlx_lm.load",
    "generate",
    "8-bit logits",
    "4-bit KL",
)
GGUF_PATHS = ("gguf F16", "gguf Q6_K")


@dataclass
class Outcome:
    ok: bool
    detail: str = ""


def cli(*args: str) -> str:
    """`jang ARGS` in this process; its stdout, or RuntimeError with its stderr."""
    from jang.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as exc:
            rc = exc.code
    if rc not in (0, None):
        raise RuntimeError(f"jang {' '.join(map(str, args[:2]))}: {err.getvalue().strip()}")
    return out.getvalue()


def prompt_ids(src: Path) -> np.ndarray:
    from transformers import AutoTokenizer

    return np.array(AutoTokenizer.from_pretrained(str(src))(PROMPT)["input_ids"])


def reference_logits(src: Path, ids: np.ndarray) -> np.ndarray:
    """The transformers float32 forward pass of the HF model's own weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    vlm = "vision_config" in json.loads((src / "config.json").read_text())
    auto = AutoModelForImageTextToText if vlm else AutoModelForCausalLM
    model = auto.from_pretrained(str(src), dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        return model(torch.tensor(ids)[None]).logits[0].float().numpy()


def bundle_logits(bundle: Path, ids: np.ndarray, kernels: bool = True) -> np.ndarray:
    import mlx.core as mx

    import jang

    model, _ = jang.load(bundle, kernels=kernels)
    logits = model(mx.array(ids)[None])[0].astype(mx.float32)
    return np.array(logits)


# A process that serves stock mlx-lm requests, one JSON line each, and never imports jang:
# started once (its ~3 s of imports would otherwise be paid per family).
STOCK_WORKER = """
import json, sys, traceback
import numpy as np
import mlx.core as mx
from mlx_lm import generate, load
for line in sys.stdin:
    request = json.loads(line)
    try:
        ids = mx.array(request["ids"])[None]
        for bundle, out in request["bundles"]:
            model, tok = load(bundle)
            np.save(out, np.array(model(ids)[0].astype(mx.float32)))
            assert generate(model, tok, "The capital of", max_tokens=4), "mlx_lm.generate: no text"
        assert not any(m == "jang" or m.startswith("jang.") for m in sys.modules), "jang imported"
        reply = {"ok": True}
    except Exception as exc:
        reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[-600:]}
    print(json.dumps(reply), flush=True)
"""
_stock_worker: subprocess.Popen | None = None


def stock_logits(bundles: list[Path], ids: np.ndarray, work: Path) -> list[np.ndarray]:
    """Logits from stock `mlx_lm.load` in a process that never imports jang (which also
    generates 4 tokens with `mlx_lm.generate` from each bundle)."""
    global _stock_worker
    if _stock_worker is None or _stock_worker.poll() is not None:
        _stock_worker = subprocess.Popen(
            [sys.executable, "-c", STOCK_WORKER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
    outs = [work / f"stock-{b.name}.npy" for b in bundles]
    request = {
        "ids": ids.tolist(),
        "bundles": [[str(b), str(o)] for b, o in zip(bundles, outs, strict=True)],
    }
    _stock_worker.stdin.write(json.dumps(request) + "\n")
    _stock_worker.stdin.flush()
    line = _stock_worker.stdout.readline()
    if not line:
        raise RuntimeError("mlx_lm.load: the stock mlx-lm process died")
    reply = json.loads(line)
    if not reply["ok"]:
        raise RuntimeError(f"mlx_lm.load: {reply['error']}")
    return [np.load(o) for o in outs]


def kl(ref: np.ndarray, test: np.ndarray) -> float:
    """Mean KL(ref || test) per token of two (T, V) logit arrays."""

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    p, q = log_softmax(ref.astype(np.float64)), log_softmax(test.astype(np.float64))
    return float((np.exp(p) * (p - q)).sum(-1).mean())


def kl_at_spread(ref: np.ndarray, test: np.ndarray) -> float:
    """`kl` with both logit sets scaled so the reference's spread is LOGIT_SPREAD."""
    scale = LOGIT_SPREAD / float(ref.std())
    return kl(ref * scale, test * scale)


def relative_gap(ref: np.ndarray, test: np.ndarray) -> float:
    """Mean |test - ref| over all logits, in units of the reference logits' spread."""
    return float(np.abs(test - ref).mean() / ref.std())


def calib_file(work: Path) -> Path:
    path = work / "calib.txt"
    path.write_text("\n".join(CORPUS))
    return path


def _attempt(results: dict[str, Outcome], path: str, fn: Callable[[], str]) -> bool:
    start = time.perf_counter()
    try:
        detail = fn() or ""
        results[path] = Outcome(True, detail)
    except Exception as exc:  # a failing path is recorded, not raised: the row shows it
        results[path] = Outcome(False, f"{type(exc).__name__}: {exc}"[:500])
    results[path].detail += f" ({time.perf_counter() - start:.1f} s)"
    return results[path].ok


SMALL_CALIB = ("--calib-samples", "4", "--calib-seq-len", "32")
SMALL_TUNE = (
    "--tune-epochs",
    "3",
    "--tune-samples",
    "2",
    "--tune-lr",
    "1e-2",
    "--calib-seq-len",
    "32",
)


def convert_args(method: str, calib: Path) -> list[str]:
    """The `jang convert` flags of each matrix path (small calibration: tiny models)."""
    return {
        "8bit": ["--bits", "8.5", "--method", "rtn"],
        "4bit": ["--bits", "4.5", "--method", "clip"],
        "rtn": ["--bits", "3.0", "--method", "rtn"],
        "clip": ["--bits", "2.5", "--method", "clip"],
        "gptq": ["--bits", "3.0", "--method", "gptq", "--calib", calib, *SMALL_CALIB],
        "tune": ["--bits", "3.0", "--method", "rtn", "--tune", "--calib", calib, *SMALL_TUNE],
    }[method]


def run_family(model_type: str, work: Path) -> dict[str, Outcome]:
    """Every path of the matrix for one family; `work` is an empty scratch directory."""
    from jang.arch import detect
    from jang.plan import profiles

    results: dict[str, Outcome] = {}
    src = hf_model(model_type)
    arch = detect(json.loads((src / "config.json").read_text()))
    calib = calib_file(work)
    ids = prompt_ids(src)
    ref = reference_logits(src, ids)
    bundles: dict[str, Path] = {}

    def plan_all() -> str:
        names = [*profiles.PROFILES, *profiles.BUDGET_PROFILES]
        for name in names:
            cli("plan", src, "--profile", name, "-o", work / "plan.json", "--quiet")
        for bits in BUDGETS:
            cli("plan", src, "--bits", bits, "-o", work / "plan.json", "--quiet")
        return f"{len(names)} profiles, {len(BUDGETS)} budgets"

    _attempt(results, "plan", plan_all)

    def convert(method: str) -> Callable[[], str]:
        def run() -> str:
            out = work / f"bundle-{method}"
            cli("convert", src, "-o", out, "--quiet", *convert_args(method, calib))
            bundles[method] = out
            return ""

        return run

    def both(*methods: str) -> Callable[[], str]:
        return lambda: "".join(convert(m)() for m in methods)

    # the 8-bit bundle is made by rtn and the 4.5 bpw one by clip: the numeric checks
    # below judge those two paths
    _attempt(results, "convert rtn", both("8bit", "rtn"))
    _attempt(results, "convert clip", both("4bit", "clip"))
    _attempt(results, "convert gptq", convert("gptq"))

    def tune() -> str:
        convert("tune")()
        report = json.loads((bundles["tune"] / "jang.json").read_text())["tune"]
        first, last = report["error_first_epoch"], report["error_last_epoch"]
        if not last < first:
            raise RuntimeError(
                f"tuning did not lower the layers' output error: {first:.4g} -> {last:.4g}"
            )
        return f"layer output error {first:.3g} -> {last:.3g}"

    _attempt(results, "convert tune", tune)

    def validate_all() -> str:
        for out in bundles.values():
            report = cli("validate", out)
            if "valid" not in report:
                raise RuntimeError(f"{out.name}: {report}")
        return f"{len(bundles)} bundles"

    _attempt(results, "validate", validate_all)
    jang_logits: dict[str, np.ndarray] = {}

    mlx_logits: dict[str, np.ndarray] = {}  # jang.load with MLX's own kernels

    def load_all() -> str:
        for method, out in bundles.items():
            jang_logits[method] = bundle_logits(out, ids)
            mlx_logits[method] = bundle_logits(out, ids, kernels=False)
            if not np.isfinite(jang_logits[method]).all():
                raise RuntimeError(f"{out.name}: non-finite logits")
        return f"{len(bundles)} bundles"

    _attempt(results, "jang.load", load_all)

    def stock_all() -> str:
        methods = list(mlx_logits)
        stock = stock_logits([bundles[m] for m in methods], ids, work)
        for method, logits in zip(methods, stock, strict=True):
            if not np.array_equal(logits, mlx_logits[method]):
                gap = relative_gap(mlx_logits[method], logits)
                raise RuntimeError(f"{method}: stock logits differ from jang.load's by {gap:.2e}")
        return f"{len(methods)} bundles, identical logits"

    _attempt(results, "mlx_lm.load", stock_all)

    def generate() -> str:
        text = cli("generate", bundles["4bit"], "-p", PROMPT, "-n", "4")
        if not text.strip():
            raise RuntimeError("no text")
        return ""

    _attempt(results, "generate", generate)

    def match8() -> str:
        gap = relative_gap(ref, jang_logits["8bit"])
        bound = MATCH_8BIT_MOE if arch.moe else MATCH_8BIT
        if gap > bound:
            raise RuntimeError(f"8-bit logits off by {gap:.4f} x std (bound {bound})")
        return f"{gap:.4f} x std"

    _attempt(results, "8-bit logits", match8)

    def kl4() -> str:
        lowered = work / "plan-lowered.json"
        cli("plan", src, "--bits", "4.5", "-o", lowered, "--quiet")
        plan = json.loads(lowered.read_text())
        for entry in plan["tensors"].values():
            if entry["quantized"]:
                entry["bits"] = ONE_STEP_LOWER[entry["bits"]]
        lowered.write_text(json.dumps(plan))
        out = work / "bundle-4bit-lowered"
        cli("convert", src, "-o", out, "--quiet", "--plan", lowered, "--method", "clip")
        value = kl_at_spread(ref, jang_logits["4bit"])
        low = kl_at_spread(ref, bundle_logits(out, ids))
        if not value < KL_4BIT_RATIO * low:
            raise RuntimeError(
                f"4.5 bpw KL {value:.4f} is not under half of {low:.4f}, one step lower"
            )
        return f"KL {value:.4f} (one step lower: {low:.4f})"

    _attempt(results, "4-bit KL", kl4)
    if model_type in GGUF_ARCH:
        bound = MATCH_8BIT_MOE if arch.moe else MATCH_8BIT
        for qtype in ("F16", "Q6_K"):
            _attempt(
                results,
                f"gguf {qtype}",
                lambda q=qtype: run_gguf(model_type, q, work, ids, ref, bound),
            )
    return results


def run_gguf(
    model_type: str, qtype: str, work: Path, ids: np.ndarray, ref: np.ndarray, bound: float
) -> str:
    """A GGUF of the family -> 3.0 bpw bundle -> both loaders and `jang generate`. The F16
    file holds the HF model's very weights, so its 8.5 bpw bundle must also match the
    transformers reference as the HF model's does (this checks the config jang rebuilds
    from GGUF metadata)."""
    from gguf_export import gguf_model

    gguf = gguf_model(model_type, qtype)
    detail = ""
    if qtype == "F16":
        out8 = work / "bundle-gguf-8bit"
        cli("convert", gguf, "-o", out8, "--quiet", "--bits", "8.5", "--method", "rtn")
        gap = relative_gap(ref, bundle_logits(out8, ids))
        if gap > bound:
            raise RuntimeError(f"8-bit logits of the GGUF off by {gap:.4f} x std (bound {bound})")
        detail = f"8-bit {gap:.4f} x std"
    out = work / f"bundle-gguf-{qtype}"
    cli("convert", gguf, "-o", out, "--quiet", "--bits", "3.0", "--method", "rtn")
    cli("validate", out)
    ours = bundle_logits(out, ids, kernels=False)
    (stock,) = stock_logits([out], ids, work)
    if not np.array_equal(ours, stock):
        raise RuntimeError(
            f"stock logits differ from jang.load's by {relative_gap(ours, stock):.2e}"
        )
    if not np.isfinite(bundle_logits(out, ids)).all():
        raise RuntimeError("non-finite logits with jang's kernels")
    if not cli("generate", out, "-p", PROMPT, "-n", "4").strip():
        raise RuntimeError("no text")
    return detail


def mark(model_type: str, path: str, results: dict[str, Outcome]) -> str:
    """A path's cell: pass, refused (a stated refusal, asserted), FAIL, or '-' (n/a)."""
    if path not in results:
        return "-"
    if path in REFUSED.get(model_type, {}):
        return "refused" if refused_as_stated(model_type, path, results[path]) else "FAIL"
    return "pass" if results[path].ok else "FAIL"


def refused_as_stated(model_type: str, path: str, outcome: Outcome) -> bool:
    """A refused path must fail with its stated message, before any work (< 2 s)."""
    seconds = float(outcome.detail.rsplit("(", 1)[-1].split()[0])
    return not outcome.ok and REFUSED[model_type][path] in outcome.detail and seconds < 2.0


def row(model_type: str, results: dict[str, Outcome]) -> str:
    """The family's markdown row of the conformance table."""
    from jang.arch import detect

    arch = detect(json.loads((hf_model(model_type) / "config.json").read_text()))
    cells = [model_type, arch.family + (" VLM" if arch.vlm else "")]
    cells += [mark(model_type, p, results) for p in PATHS + GGUF_PATHS]
    return "| " + " | ".join(cells) + " |"


TABLE_HEAD = (
    "| family | kind | " + " | ".join(PATHS + GGUF_PATHS) + " |\n"
    "|" + "---|" * (2 + len(PATHS) + len(GGUF_PATHS))
)


def table_rows(path: Path) -> dict[str, str]:
    """The committed table's rows by family."""
    rows = {}
    for line in path.read_text().splitlines():
        if line.startswith("| ") and not line.startswith("| family "):
            rows[line.split("|")[1].strip()] = line
    return rows


def write_table(path: Path, rows: list[str]) -> None:
    """Replace the table in `path` (between its markers) with `rows` under TABLE_HEAD."""
    text = path.read_text()
    begin, end = "<!-- matrix:begin -->", "<!-- matrix:end -->"
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    path.write_text(head + begin + "\n" + TABLE_HEAD + "\n" + "\n".join(rows) + "\n" + end + tail)


def main() -> None:
    """`python tests/conformance/matrix.py [FAMILY ...]`: run the matrix, print each path,
    and rewrite the table in docs/FAMILIES.md for the families run."""
    import tempfile

    table = Path(__file__).resolve().parents[2] / "docs" / "FAMILIES.md"
    rows = table_rows(table)
    for model_type in sys.argv[1:] or sorted(FAMILIES):
        with tempfile.TemporaryDirectory() as work:
            results = run_family(model_type, Path(work))
        print(f"== {model_type}")
        for path, outcome in results.items():
            print(f"  {mark(model_type, path, results):8} {path}: {outcome.detail}")
        rows[model_type] = row(model_type, results)
    write_table(table, [rows[k] for k in sorted(rows)])


if __name__ == "__main__":
    main()
