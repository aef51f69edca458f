"""Conversion time and peak resident memory per model and method.

Each conversion runs `jang convert` in its own process; wall time and that process's
peak RSS (ru_maxrss from wait4) are recorded. The floor is measured the same way: a
process that only imports what a conversion imports (MLX, mlx-lm, transformers and the
torch it pulls in, tokenizers, gguf, jang), so "above floor" is what converting costs.
Prints a markdown table.

    python bench/convert_bench.py [--models smollm2 gemma3] [--methods rtn clip gptq]
        [--bits 3.0] [--out-dir /tmp/jang-convert-bench]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# everything a GGUF conversion has imported by the time it exits (checked with sys.modules)
FLOOR_IMPORTS = (
    "import jang.cli, jang.commands.convert, jang.data, jang.convert, jang.plan, jang.source, "
    "jang.gguf_file, jang.quant, mlx.core, mlx_lm.utils, mlx_lm.tokenizer_utils, "
    "mlx_lm.models.gemma3_text, transformers, tokenizers, gguf, tqdm; "
    "from transformers import PreTrainedTokenizerFast; "
    "from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer"
)


def run_child(cmd: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one child process; exits with its stderr if it fails."""
    with tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{' '.join(cmd)} failed:\n{err.read()}")
    return seconds, usage.ru_maxrss / 1024  # ru_maxrss is KiB on Linux


def run_one(src: str, out: Path, method: str, size: list[str]) -> tuple[float, float, int]:
    cmd = [sys.executable, "-m", "jang", "convert", src, "-o", str(out), *size]
    cmd += ["--method", method, "--quiet", "--force"]
    seconds, rss = run_child(cmd)
    size_bytes = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    return seconds, rss, size_bytes


def largest_tensor_mb(src: Path) -> float:
    """The largest tensor as a conversion holds it (bf16 for GGUF/FP8/bf16 sources)."""
    from math import prod

    from jang.source import open_source

    source = open_source(src)
    itemsize = {"float32": 4, "float64": 8}
    return max(prod(i.shape) * itemsize.get(i.dtype, 2) for i in source.tensors()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2", "gemma3"])
    parser.add_argument("--methods", nargs="+", default=["rtn", "clip", "gptq"])
    parser.add_argument("--bits", default="3.0")
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/jang-convert-bench"))
    args = parser.parse_args()
    from jang import data

    args.out_dir.mkdir(parents=True, exist_ok=True)
    floor_s, floor = run_child([sys.executable, "-c", FLOOR_IMPORTS])
    print(f"floor (imports only): {floor:.0f} MB peak RSS, {floor_s:.1f} s\n")
    print(
        "| model | source MB | largest tensor MB | method | --bits | convert s | "
        "peak RSS MB | above floor MB | bundle MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for model in args.models:
        src = data.prepare([model], quiet=True)[model]
        largest = largest_tensor_mb(src)
        for method in args.methods:
            out = args.out_dir / f"{model}-{method}"
            seconds, rss, size = run_one(str(src), out, method, ["--bits", args.bits])
            print(
                f"| {model} | {src.stat().st_size / 1e6:.0f} | {largest:.0f} | {method} | "
                f"{args.bits} | {seconds:.1f} | {rss:.0f} | {rss - floor:.0f} | "
                f"{size / 1e6:.1f} |",
                flush=True,
            )
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
