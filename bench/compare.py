"""Every row of the quantization comparison for one model, on the same windows, in one run.

    python bench/compare.py smollm2                      # all rows, 20 windows x 512 tokens
    python bench/compare.py smollm2 --windows 8 --only uniform,mixed,ours
    python bench/compare.py gemma3 --methods rtn,clip

Rows: unquantized; MLX uniform 2/3/4/6/8-bit at g64 and g32 (`mlx_lm.convert`); mlx-lm
`mixed_2_6/3_6/4_6`; the public `jang` tool's JANG_2S/2L/3M/4K (its own converter, in its own
venv); our `--bits` targets (2.5 = JANG_2K, 3.5 = JANG_3K, 4.5 = JANG_4K) with each method. Every bundle is evaluated by the torch
reference engine (`jang.engines`) against the unquantized model's log-probabilities, computed
once and cached on disk per window. Results go to bench/results/<model>.json (rewritten after
every row, so a cut-off run keeps what it measured), a markdown table on stdout and
bench/results/<model>.md, and the plot bench/kl_vs_bpw_<model>.png (`--plot-only` redraws it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

from jang import data, engines
from jang import evaluate as ev
from jang import text as tx

HERE = Path(__file__).resolve().parent
PUBLIC_JANG = ("jang==2.5.50", "mlx[cpu]==0.32.4", "mlx-lm==0.32.2")
UNIFORM = [(b, g) for b in (2, 3, 4, 6, 8) for g in (64, 32)]
MIXED = ("mixed_2_6", "mixed_3_6", "mixed_4_6")
PUBLIC = ("JANG_2S", "JANG_2L", "JANG_3M", "JANG_4K")
OURS_BITS = (2.5, 3.0, 3.5, 4.0, 4.5)
GROUPS = ("base", "uniform", "mixed", "public", "ours")
WINDOWS = 20  # x 512 tokens; with GPTQ_SAMPLES, SmolLM2 runs every row in 27 min on 2 cores
GPTQ_SAMPLES = 16


# ------------------------------------------------------------------ source ----


def hf_dir(model: str, cache: Path) -> Path:
    """The model as a bf16 Hugging Face directory (what every converter reads), made once."""
    import mlx.core as mx

    from jang.config import normalize_config
    from jang.source import open_source

    src = data.path(model) or Path(model)
    out = cache / "hf"
    if (out / "model.safetensors").is_file():
        return out
    source = open_source(src)
    tmp = cache / "hf.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {i.name: source.read(i.name).astype(mx.bfloat16) for i in source.tensors()}
    mx.save_safetensors(str(tmp / "model.safetensors"), tensors, metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(normalize_config(source.config), indent=2))
    source.write_tokenizer(tmp)
    tmp.rename(out)
    return out


# ------------------------------------------------------------------ builders ----


def build_uniform(hf: Path, out: Path, bits: int, group: int) -> None:
    from mlx_lm import convert

    convert(str(hf), str(out), quantize=True, q_bits=bits, q_group_size=group)


def build_mixed(hf: Path, out: Path, recipe: str) -> None:
    from mlx_lm import convert

    convert(str(hf), str(out), quantize=True, q_group_size=64, quant_predicate=recipe)


def public_jang_venv(cache: Path) -> Path:
    """A venv with the public `jang` tool (its name clashes with ours: never the project venv)."""
    for cand in (os.environ.get("JANG_PUBLIC_VENV"), "/tmp/pubjang/venv", cache / "public-jang"):
        if cand and (Path(cand) / "bin" / "jang").is_file():
            return Path(cand)
    venv = cache / "public-jang"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *PUBLIC_JANG], check=True)
    return venv


def build_public(hf: Path, out: Path, profile: str, cache: Path) -> None:
    venv = public_jang_venv(cache.parent)
    cmd = [str(venv / "bin" / "jang"), "convert", str(hf), "-o", str(out), "--profile", profile]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"public jang failed: {res.stderr.strip()[-500:]}")


def calibration_file(cache: Path) -> Path:
    """GPTQ calibration text: the second half of the Wikipedia sample's articles, which the
    evaluation windows (taken from the start) never reach."""
    path = cache / "calib_wiki_second_half.txt"
    if not path.is_file():
        articles = tx.dataset_text().split("\n\n")
        path.write_text("\n\n".join(articles[len(articles) // 2 :]), encoding="utf-8")
    return path


def build_ours(
    hf: Path, out: Path, target: str, method: str, cache: Path, samples: int = 128
) -> None:
    from jang.convert import convert
    from jang.quant.methods import Calibration

    kw: dict = {"method": method, "progress": "quiet", "force": True}
    if method == "gptq":
        kw.update(calibration=Calibration(calibration_file(cache), samples, 512))
    if target.upper().startswith("JANG"):
        convert(hf, out, profile=target, **kw)
    else:
        convert(hf, out, bits=float(target), **kw)


def rows(groups: set[str], methods: list[str], hf: Path, cache: Path, samples: int) -> list:
    """(name, group, method family, builder(out)) for every requested row; the rows that
    decide the comparison (<= 4 bits) come first, so that a run cut short keeps them."""
    every = list(_rows(groups, methods, hf, cache, samples))
    high = [r for r in every if r[0].startswith(("MLX uniform 6", "MLX uniform 8"))]
    return [r for r in every if r not in high] + high


def _rows(groups: set[str], methods: list[str], hf: Path, cache: Path, samples: int):
    if "uniform" in groups:
        for b, g in UNIFORM:
            yield (
                f"MLX uniform {b}-bit g{g}",
                "uniform",
                f"MLX uniform g{g}",
                (lambda o, b=b, g=g: build_uniform(hf, o, b, g)),
            )
    if "mixed" in groups:
        for r in MIXED:
            yield f"mlx-lm {r}", "mixed", "mlx-lm mixed", lambda o, r=r: build_mixed(hf, o, r)
    if "ours" in groups:
        for m in methods:
            for t in OURS_BITS:
                name = f"jang {t if isinstance(t, str) else f'{t:g} bpw'} {m}"
                yield (
                    name,
                    "ours",
                    f"jang {m}",
                    lambda o, t=t, m=m: build_ours(hf, o, str(t), m, cache, samples),
                )
    if "public" in groups:
        for p in PUBLIC:
            yield (
                f"public jang {p}",
                "public",
                "public jang",
                (lambda o, p=p: build_public(hf, o, p, cache)),
            )


def slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


# ------------------------------------------------------------------ evaluation ----


class RefCache:
    """The reference's log-probs of every window, float16 on disk (computed once per model).

    float16 keeps 40 x 512 x 49152 log-probs at 2 GB; the KL this rounding alone causes is
    measured when the cache is filled and reported on the unquantized row (the floor)."""

    def __init__(self, path: Path, windows: np.ndarray, vocab: int):
        self.path, self.windows = path, windows
        self.shape = (*windows.shape, vocab)
        key = path.with_suffix(".ids.npy")
        fresh = not path.is_file() or not key.is_file() or not np.array_equal(np.load(key), windows)
        if fresh:
            key.unlink(missing_ok=True)
        self.ready = not fresh

    def fill(self, engine: engines.Engine) -> dict[str, float]:
        mm = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.float16, shape=self.shape)
        stats = ev.TokenStats()
        for i, ids in enumerate(self.windows):
            lp = ev.log_softmax(engine(ids))
            mm[i] = lp.astype(np.float16)
            # KL of the float32 log-probs against their float16 copy: the floor of every KL
            stats.add(mm[i].astype(np.float32), lp, ids)
        mm.flush()
        np.save(self.path.with_suffix(".ids.npy"), self.windows)
        self.ready = True
        return stats.summary()

    def __call__(self, i: int) -> np.ndarray:
        return np.load(self.path, mmap_mode="r")[i].astype(np.float32)


def evaluate_row(
    bundle: Path, config: dict, windows: np.ndarray, ref: RefCache, mc: tuple | None = None
) -> dict:
    """Metrics of one bundle; `mc` = (tokenizer, questions, bos) adds MC accuracy."""
    from jang import engines

    model, _, size = engines.reference_model(bundle, config)
    engine = engines.torch_engine(model)
    result = ev.compare_windows(windows, engine, ref_cache=ref)
    if mc is not None:
        result["mc"] = ev.mc_accuracy(engine, mc[0], mc[1], mc[2])
    del model
    return {**size.to_json(), "file_mb": size.file_bytes / 1e6, **result}


# ------------------------------------------------------------------ report ----


def write_report(model: str, meta: dict, results: list[dict], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{model}.json").write_text(json.dumps({"meta": meta, "rows": results}, indent=1))
    ok = sorted((r for r in results if "kl" in r or r["group"] == "base"), key=_order)
    table = ev.format_table(ok)
    failed = [f"- {r['name']}: {r['error']}" for r in results if "error" in r]
    text = f"{table}\n" + ("\nRows that failed:\n" + "\n".join(failed) + "\n" if failed else "")
    (out_dir / f"{model}.md").write_text(text)


def _order(r: dict) -> tuple:
    return (r.get("bpw_all_in") or 99, r["name"])


def plot(model: str, results: list[dict], dest: Path) -> None:
    from jang.plots import Series, kl_vs_bpw

    families: dict[str, Series] = {}
    for r in results:
        if not r.get("kl") or r["group"] == "base":
            continue
        fam = r["family"]
        if fam not in families:
            if fam == "public jang":  # fixed profiles, not a series: points with their names
                families[fam] = Series(fam, style="D", named=True)
            else:
                families[fam] = Series(fam, style="-o" if fam.startswith("jang") else "--s")
        families[fam].points.append((r["bpw_all_in"], r["kl"], r["name"].split()[-1]))
    kl_vs_bpw([families[f] for f in sorted(families)], f"{model}: KL vs size", dest)


# ------------------------------------------------------------------ main ----


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("model", help="smollm2, gemma3 (prepared by `jang data`) or a source path")
    p.add_argument(
        "--windows",
        type=int,
        default=WINDOWS,
        help=f"evaluation windows (default {WINDOWS}: every row of SmolLM2 in < 30 min on 2 cores; "
        f"ANCHORS.md uses {tx.DEFAULT_WINDOWS})",
    )
    p.add_argument("--length", type=int, default=tx.DEFAULT_LENGTH)
    p.add_argument("--only", default=",".join(GROUPS), help=f"row groups: {','.join(GROUPS)}")
    p.add_argument("--methods", default="rtn,clip,gptq", help="our methods (rtn,clip,gptq)")
    p.add_argument("--match", help="only rows whose name contains one of these (comma list)")
    p.add_argument("--cache", type=Path, default=data.cache_dir() / "bench")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument(
        "--rebuild", action="store_true", help="reconvert and re-measure rows that exist"
    )
    p.add_argument("--plot-only", action="store_true")
    p.add_argument(
        "--gptq-samples",
        type=int,
        default=GPTQ_SAMPLES,
        help=f"GPTQ calibration windows of 512 tokens (default {GPTQ_SAMPLES})",
    )
    p.add_argument("--mc", help="also score a multiple-choice task (arc_easy, hellaswag, ...)")
    p.add_argument("--mc-limit", type=int, default=200, help="questions (fixed random subset)")
    args = p.parse_args(argv)

    name = Path(args.model).stem if not data.TARGETS.get(args.model) else args.model
    cache = args.cache / name
    cache.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"{name}.json"
    previous = json.loads(json_path.read_text()) if json_path.is_file() else {"rows": []}
    if args.plot_only:
        plot(name, previous["rows"], HERE / f"kl_vs_bpw_{name}.png")
        return 0

    import torch
    from transformers import AutoTokenizer

    from jang import engines, torch_models

    torch.set_num_threads(os.cpu_count() or 1)
    hf = hf_dir(args.model, cache)
    config = json.loads((hf / "config.json").read_text())
    tok = AutoTokenizer.from_pretrained(str(hf))
    bos = tx.bos_id(tok, config)
    windows = tx.tokenize_windows(tok, tx.dataset_text(), args.windows, args.length, bos)
    meta = {
        "model": name,
        "date": date.today().isoformat(),
        "windows": int(windows.shape[0]),
        "length": int(windows.shape[1]),
        "bos": bos,
        "text": "wiki",
        "engine": f"torch {torch.__version__} fp32 (jang.engines) on {torch_models.device()}",
        "command": "python bench/compare.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    # earlier rows on the same windows are kept; rows re-run here replace them
    same = (
        previous.get("meta", {}).get("windows") == meta["windows"]
        and previous.get("meta", {}).get("length") == meta["length"]
    )
    results = {r["name"]: r for r in previous["rows"]} if same else {}

    mc = None
    if args.mc:
        mc = (tok, ev.load_mc(args.mc, args.mc_limit), bos)
        meta["mc"] = {"task": args.mc, "n": len(mc[1])}
    ref = RefCache(
        cache / f"ref_{windows.shape[0]}x{windows.shape[1]}.npy", windows, config["vocab_size"]
    )
    groups = set(args.only.split(","))
    match = args.match.split(",") if args.match else None
    if "base" in groups or not ref.ready:
        t0 = time.perf_counter()
        model, _, size = engines.reference_model(hf, config)
        summary = ref.fill(engines.torch_engine(model))
        del model
        results["unquantized (bf16)"] = {
            "name": "unquantized (bf16)",
            "group": "base",
            "family": "bf16",
            **size.to_json(),
            "bpw_all_in": 16.0,
            "file_mb": size.file_bytes / 1e6,
            **summary,
            "eval_s": time.perf_counter() - t0,
        }
        print(f"reference: ppl {summary['ppl']:.4g} ({time.perf_counter() - t0:.0f} s)", flush=True)
        write_report(name, meta, list(results.values()), args.out)

    methods = [m for m in args.methods.split(",") if m]
    for row_name, group, family, build in rows(groups, methods, hf, cache, args.gptq_samples):
        if match and not any(m in row_name for m in match):
            continue
        if not args.rebuild and "kl" in results.get(row_name, {}):
            continue  # measured on these windows by an earlier run
        out = cache / "bundles" / slug(row_name)
        row = {"name": row_name, "group": group, "family": family}
        try:
            stamp = out / ".convert_s"
            if args.rebuild or not stamp.is_file():
                shutil.rmtree(out, ignore_errors=True)
                out.parent.mkdir(parents=True, exist_ok=True)
                t0 = time.perf_counter()
                build(out)
                stamp.write_text(f"{time.perf_counter() - t0:.2f}")
            row["convert_s"] = float(stamp.read_text())
            t0 = time.perf_counter()
            row.update(evaluate_row(out, config, windows, ref, mc))
            row["eval_s"] = time.perf_counter() - t0
            print(
                f"{row_name}: {row['bpw_all_in']:.3f} bpw, KL {row['kl']:.4g}, "
                f"ppl {row['ppl']:.4g} ({row['eval_s']:.0f} s)",
                flush=True,
            )
        except Exception as exc:  # a failing baseline is a row that says why
            row["error"] = f"{type(exc).__name__}: {exc}"[:400]
            print(f"{row_name}: FAILED {row['error']}", flush=True)
        results[row_name] = row
        write_report(name, meta, list(results.values()), args.out)
    rows_all = list(results.values())
    print((args.out / f"{name}.md").read_text())
    try:
        plot(name, rows_all, HERE / f"kl_vs_bpw_{name}.png")
    except ImportError:
        print("matplotlib is missing: no plot (pip install matplotlib)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
