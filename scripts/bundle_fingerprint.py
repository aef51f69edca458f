"""Convert one model with every method and print each bundle file's SHA-256.

A refactor that must not change bundle bytes is checked by running this before
and after and comparing the two JSON files (`--compare`):

    python scripts/bundle_fingerprint.py smollm2 -o before.json
    ... change the code ...
    python scripts/bundle_fingerprint.py smollm2 -o after.json --compare before.json

The calibrated methods run with few windows and steps: the point is equal bytes,
not quality. Runs through the `jang` CLI of whichever jang Python imports.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CALIB = ["--calib-samples", "4", "--calib-seq-len", "64"]
TUNE = ["--tune", "--tune-epochs", "1", "--tune-samples", "4", "--calib-seq-len", "64"]
# name -> convert arguments after SRC
METHODS: dict[str, list[str]] = {
    "rtn-3.0": ["--bits", "3.0", "--method", "rtn"],
    "rtn-2S": ["--profile", "JANG_2S", "--method", "rtn"],
    "clip-4.5": ["--bits", "4.5", "--method", "clip"],
    "clip-nodebias-2.5": ["--bits", "2.5", "--method", "clip", "--no-debias"],
    "gptq-3.0": ["--bits", "3.0", "--method", "gptq", *CALIB],
    "rtn-tune-3.0": ["--bits", "3.0", "--method", "rtn", *TUNE],
    "gptq-tune-norms-3.0": ["--bits", "3.0", "--method", "gptq", *CALIB, *TUNE, "--tune-norms"],
}


VOLATILE = {"seconds", "measure_s", "total_s"}  # manifest timings: differ run to run


def _stable(obj):
    """A manifest without its timings."""
    if isinstance(obj, dict):
        return {k: _stable(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_stable(v) for v in obj]
    return obj


def digest(path: Path) -> dict[str, str]:
    """SHA-256 of every file in a bundle directory, by relative name (jang.json without
    its timings)."""
    out = {}
    for f in sorted(path.rglob("*")):
        if f.is_file():
            data = f.read_bytes()
            if f.name == "jang.json":
                data = json.dumps(_stable(json.loads(data)), sort_keys=True).encode()
            out[str(f.relative_to(path))] = hashlib.sha256(data).hexdigest()
    return out


def fingerprint(src: str, methods: list[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in methods:
            bundle = Path(tmp) / name
            start = time.perf_counter()
            cmd = [sys.executable, "-m", "jang", "convert", src, "-o", str(bundle), "--quiet"]
            subprocess.run([*cmd, *METHODS[name]], check=True)
            out[name] = digest(bundle)
            print(f"{name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src", help="model (directory, .gguf or a `jang data` name)")
    ap.add_argument("-o", "--out", type=Path, required=True, help="write the digests here")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--compare", type=Path, help="digests of an earlier run: exit 1 on a change")
    args = ap.parse_args()
    result = fingerprint(args.src, args.methods)
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    if args.compare is None:
        return 0
    before = json.loads(args.compare.read_text())
    changed = [
        f"{m}/{f}"
        for m in result
        for f in sorted(set(result[m]) | set(before.get(m, {})))
        if result[m].get(f) != before.get(m, {}).get(f)
    ]
    for name in changed:
        print(f"changed: {name}")
    print(f"{len(result)} bundles, {len(changed)} files differ")
    return 1 if changed else 0


if __name__ == "__main__":
    raise SystemExit(main())
