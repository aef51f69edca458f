"""Conversion time and peak resident memory per model and method.

Each conversion runs `jang convert` in its own process; wall time and that process's
peak RSS (ru_maxrss from wait4) are recorded. Prints a markdown table.

    python bench/convert_bench.py [--models smollm2 gemma3] [--methods rtn clip gptq]
        [--bits 3.0] [--out-dir /tmp/jang-convert-bench]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def run_one(src: str, out: Path, method: str, size: list[str]) -> tuple[float, float, int]:
    cmd = [sys.executable, "-m", "jang", "convert", src, "-o", str(out), *size]
    cmd += ["--method", method, "--quiet", "--force"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr.read()}")
    size_bytes = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    return seconds, usage.ru_maxrss / 1024, size_bytes  # ru_maxrss is KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2", "gemma3"])
    parser.add_argument("--methods", nargs="+", default=["rtn", "clip", "gptq"])
    parser.add_argument("--bits", default="3.0")
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/jang-convert-bench"))
    args = parser.parse_args()
    from jang import data

    args.out_dir.mkdir(parents=True, exist_ok=True)
    print("| model | source MB | method | --bits | convert s | peak RSS MB | bundle MB |")
    print("|---|---|---|---|---|---|---|")
    for model in args.models:
        src = data.prepare([model], quiet=True)[model]
        for method in args.methods:
            out = args.out_dir / f"{model}-{method}"
            seconds, rss, size = run_one(str(src), out, method, ["--bits", args.bits])
            print(
                f"| {model} | {src.stat().st_size / 1e6:.0f} | {method} | {args.bits} | "
                f"{seconds:.1f} | {rss:.0f} | {size / 1e6:.1f} |",
                flush=True,
            )
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
