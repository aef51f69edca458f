"""Block-wise tuning (`--tune`, the default scope) at several learning rates, on one GPTQ
rounding: held-out KL per rate, as `jang eval` measures it.

    python bench/experiments/block_tune_lr.py smollm2 --bits 3.0 --lr 1e-3 --lr 5e-3 \\
        --work /tmp/btl

GPTQ runs once (`--calib`, `--calib-samples` windows) into WORK/gptq, whose codes, scales
and biases every rate then starts from (the conversion's GPTQ step is replaced by reading
that bundle); each tuned bundle goes to WORK/lr-RATE and is scored on `--windows` windows
of wiki text against the source.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import mlx.core as mx

from jang import data
from jang import evaluate as ev
from jang.convert import calibrated, convert
from jang.quant.methods import Calibration, TuneOptions


def bundle_parts(bundle: Path) -> dict:
    """{module: (wq, scales, biases)} of every quantized matrix of a bundle."""
    manifest = json.loads((bundle / "jang.json").read_text())
    stored = {}
    for shard in bundle.glob("*.safetensors"):
        stored.update(mx.load(str(shard)))
    return {
        module: tuple(stored[f"{module}.{k}"] for k in ("weight", "scales", "biases"))
        for module, e in manifest["tensors"].items()
        if e["quantized"]
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("src")
    p.add_argument("--bits", type=float, default=3.0)
    p.add_argument("--lr", type=float, action="append", required=True)
    p.add_argument("--epochs", type=int, default=TuneOptions.epochs)
    p.add_argument("--calib", default="boolq")
    p.add_argument("--calib-samples", type=int, default=16)
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--work", type=Path, default=Path("/tmp/block_tune_lr"))
    args = p.parse_args()
    args.src = str(data.path(args.src) or args.src)  # a `jang data` name, or a path
    calibration = Calibration(args.calib, samples=args.calib_samples)
    base = args.work / "gptq"
    if not (base / "jang.json").is_file():
        convert(args.src, base, bits=args.bits, method="gptq", calibration=calibration,
                progress="quiet", force=True)  # fmt: skip
    parts = bundle_parts(base)
    calibrated.gptq_streamed = lambda *a, **k: parts  # the rounding: read, not recomputed
    rows = [("gptq", None, ev.evaluate(base, args.src, windows=args.windows)["kl"], 0.0)]
    print(rows[-1], flush=True)
    for lr in args.lr:
        out = args.work / f"lr-{lr:g}"
        t0 = time.perf_counter()
        convert(args.src, out, bits=args.bits, method="gptq", calibration=calibration,
                tune=TuneOptions(epochs=args.epochs, lr=lr), progress="quiet", force=True)  # fmt: skip
        seconds = time.perf_counter() - t0
        tune = json.loads((out / "jang.json").read_text())["tune"]
        kl = ev.evaluate(out, args.src, windows=args.windows)["kl"]
        rows.append((f"block lr {lr:g}", tune, kl, seconds))
        print(rows[-1], flush=True)
    print("| rounding | layer error first -> last | head KL first -> last | held-out KL | s |")
    print("|---|---|---|---|---|")
    for name, tune, kl, seconds in rows:
        if tune is None:
            print(f"| {name} | - | - | {kl:.3f} | - |")
        else:
            print(f"| {name} | {tune['error_first_epoch']:.4f} -> {tune['error_last_epoch']:.4f} "
                  f"| {tune['head_kl_first_epoch']:.3f} -> {tune['head_kl_last_epoch']:.3f} "
                  f"| {kl:.3f} | {seconds:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
