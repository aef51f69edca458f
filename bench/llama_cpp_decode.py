"""End-to-end decode of SmolLM2-135M on the CPU: jang bundles (jang's kernels and stock MLX)
against llama.cpp on the same machine, in one run, same prompt, same number of tokens.

Rows:
  jang bundles     `jang convert smollm2 --profile JANG_2S` and `--profile JANG_4K` (method rtn; rounding
                   does not change speed), loaded with `jang.load`; each decoded with jang's
                   kernels and with stock MLX (`use_jang_kernels(model, enabled=False)`)
  uniform-4        the GGUF's weights quantized in-process with `nn.quantize` at 4 bits, gs 64
                   (bench/e2e_decode.py's variant; the converter has no uniform profile)
  llama.cpp        the SmolLM2 GGUF from `jang data smollm2` (Q4_1) and, with --requantize,
                   copies llama.cpp's own quantizer makes from it (Q4_0, Q2_K, Q8_0: these are
                   requantized from Q4_1, so their quality is not meaningful, their speed is)

llama.cpp runs through `llama-cpp-python` in its own interpreter (--llama-python; build it in a
separate venv, e.g. `CMAKE_ARGS="-DGGML_NATIVE=ON" /tmp/llama-venv/bin/pip install
llama-cpp-python`): the project does not depend on it. A worker process loads every GGUF once;
rounds alternate over all rows so that load on a shared machine hits every row alike; the table
gives each row's best round (and the median).

Decode step = one forward pass on one token with a KV cache + greedy argmax, after a 16-token
prompt (the same token ids for every engine: the GGUF carries SmolLM2's own vocabulary).
Threads: jang's pool and llama.cpp both use --threads (default: all cores; --llama-threads adds
llama.cpp rows at other counts); stock MLX uses its own CPU backend as it is. llama.cpp's
OpenMP threads wait passively (OMP_WAIT_POLICY=PASSIVE unless set): spinning made it ~150x
slower on this shared 2-core machine.

Usage: python bench/llama_cpp_decode.py --llama-python /tmp/llama-venv/bin/python \
           [--tokens 64] [--rounds 3] [--dtypes float32 stored] [--requantize Q4_0 Q2_K Q8_0]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import mlx.core as mx

sys.path.insert(0, str(Path(__file__).resolve().parent))

DATA = Path(os.environ.get("JANG_DATA", Path.home() / ".cache/jang"))
GGUF = DATA / "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = [1, 504, 3458, 282, 4250, 314, 253, 1345, 28, 16, 17, 18, 19, 20, 21, 22]

# Runs under --llama-python. Commands on stdin, one JSON object per line:
#   {"load": name, "path": p, "threads": t} -> {"ok": true, "bytes": file size, ...}
#   {"run": name, "tokens": n} -> {"tps": tokens/s, "tokens": [...]}
#   {"quantize": src, "out": dst, "type": "Q4_0"} -> {"ok": true}
WORKER = r"""
import json, os, sys, time
import numpy as np
import llama_cpp
from llama_cpp import Llama

threads = int(sys.argv[1])  # for the quantizer
prompt = json.loads(sys.argv[2])
models = {}


def reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def last_logits(llm):
    return np.ctypeslib.as_array(
        llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),)
    )


def run(llm, n):
    llm.reset()  # eval() then drops the KV cache past the new prompt
    llm.eval(prompt)
    tok = int(np.argmax(last_logits(llm)))
    out = []
    t = time.perf_counter()
    for _ in range(n):
        llm.eval([tok])
        tok = int(np.argmax(last_logits(llm)))
        out.append(tok)
    return n / (time.perf_counter() - t), out


for line in sys.stdin:
    cmd = json.loads(line)
    if "quantize" in cmd:
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + cmd["type"])
        params.allow_requantize = True
        params.nthread = threads
        rc = llama_cpp.llama_model_quantize(
            cmd["quantize"].encode(), cmd["out"].encode(), params
        )
        reply({"ok": rc == 0})
    elif "load" in cmd:
        models[cmd["load"]] = Llama(
            model_path=cmd["path"], n_ctx=256, n_batch=64, n_threads=cmd["threads"],
            n_threads_batch=cmd["threads"], verbose=False,
        )
        reply({"ok": True, "bytes": os.path.getsize(cmd["path"]),
               "system": llama_cpp.llama_print_system_info().decode()})
    elif "run" in cmd:
        tps, toks = run(models[cmd["run"]], cmd["tokens"])
        reply({"tps": tps, "tokens": toks})
"""


class LlamaWorker:
    def __init__(self, python: str, threads: int, log: Path):
        self.log = log
        # llama.cpp's OpenMP threads spin-wait at every barrier by default; on a machine
        # shared with other jobs (more runnable threads than cores) that made a decode
        # step take seconds here. Passive waiting is what a shared machine needs.
        env = dict(os.environ)
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self.proc = subprocess.Popen(
            [python, "-c", WORKER, str(threads), json.dumps(PROMPT)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log.open("w"),  # llama.cpp's quantizer and loader are chatty
            text=True,
        )

    def ask(self, **cmd) -> dict:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            tail = self.log.read_text()[-2000:]
            raise RuntimeError(f"llama.cpp worker died; end of {self.log}:\n{tail}")
        return json.loads(line)

    def close(self) -> None:
        assert self.proc.stdin
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def convert(profile: str, work: Path) -> Path:
    out = work / f"smollm2-{profile}"
    if not (out / "config.json").is_file():
        cmd = [sys.executable, "-m", "jang", "convert", "smollm2", "-o", str(out)]
        subprocess.run([*cmd, "--profile", profile, "--method", "rtn", "--quiet"], check=True)
    return out


def bundle_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def mlx_decode(model, tokens: int) -> tuple[float, list[int]]:
    from e2e_decode import decode_tps

    return decode_tps(model, mx.array(PROMPT), tokens)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-python", help="interpreter with llama-cpp-python (omit: no llama.cpp)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument(
        "--dtypes",
        nargs="+",
        default=["float32", "stored"],
        help="MLX activation dtypes: float32 casts the whole model (scales and biases too), "
        "'stored' runs the bundle as converted (bf16)",
    )
    ap.add_argument(
        "--stock-dtypes",
        nargs="*",
        default=["float32"],
        help="dtypes that also get a stock MLX row (its fp16/bf16 CPU path takes seconds per "
        "token)",
    )
    ap.add_argument(
        "--llama-threads",
        type=int,
        nargs="*",
        help="llama.cpp thread counts (default: --threads); each is a row",
    )
    ap.add_argument("--requantize", nargs="*", default=None, help="llama.cpp types to add")
    ap.add_argument("--work", type=Path, default=DATA / "bench-decode")
    args = ap.parse_args()
    os.environ["JANG_NUM_THREADS"] = str(args.threads)

    from e2e_decode import build
    from mlx.utils import tree_flatten

    import jang
    from jang.kernels import use_jang_kernels

    mx.set_default_device(mx.cpu)
    args.work.mkdir(parents=True, exist_ok=True)

    def weights_mb(model) -> float:
        return sum(v.nbytes for _, v in tree_flatten(model.parameters())) / 1e6

    # name -> (kind, model or None, MB of weights as run, with a stock MLX row)
    rows: dict[str, tuple[str, object, float, bool]] = {}
    for dt in args.dtypes:
        for profile in ("JANG_2S", "JANG_4K"):
            model, _ = jang.load(convert(profile, args.work))
            if dt != "stored":
                model.set_dtype(getattr(mx, dt))
            mx.eval(model.parameters())
            row = ("mlx", model, weights_mb(model), dt in args.stock_dtypes)
            rows[f"jang {profile} [{dt}]"] = row
        model = build(GGUF, "uniform-4", getattr(mx, "float16" if dt == "stored" else dt))
        use_jang_kernels(model)
        row = ("mlx", model, weights_mb(model), dt in args.stock_dtypes)
        rows[f"uniform-4 nn.quantize [{'float16' if dt == 'stored' else dt}]"] = row

    worker = None
    system = ""
    if args.llama_python:
        worker = LlamaWorker(args.llama_python, args.threads, args.work / "llama_worker.log")
        ggufs = {"Q4_1": GGUF}
        for qtype in args.requantize if args.requantize is not None else []:
            out = args.work / f"SmolLM2-135M-Instruct.{qtype}.gguf"
            if not out.is_file():
                assert worker.ask(quantize=str(GGUF), out=str(out), type=qtype)["ok"], qtype
            ggufs[qtype] = out
        for qtype, path in ggufs.items():
            for t in args.llama_threads or [args.threads]:
                name = f"llama.cpp {qtype}" + ("" if t == args.threads else f" ({t} thread)")
                reply = worker.ask(load=name, path=str(path), threads=t)
                system = reply["system"]
                rows[name] = ("llama", None, reply["bytes"] / 1e6, False)

    engines = []  # (row, engine label)
    for name, (kind, _, _, stock) in rows.items():
        if kind == "mlx":
            engines.append((name, "jang"))
            if stock:
                engines.append((name, "stock MLX"))
        else:
            engines.append((name, "llama.cpp"))
    tps: dict[tuple[str, str], list[float]] = {e: [] for e in engines}
    toks: dict[tuple[str, str], list[int]] = {}
    for _ in range(args.rounds):
        for name, engine in engines:
            kind, model, _, _ = rows[name]
            if kind == "mlx":
                use_jang_kernels(model, enabled=engine == "jang")
                rate, out = mlx_decode(model, args.tokens)
            else:
                assert worker is not None
                reply = worker.ask(run=name, tokens=args.tokens)
                rate, out = reply["tps"], reply["tokens"]
            tps[(name, engine)].append(rate)
            toks[(name, engine)] = out
    if worker is not None:
        worker.close()

    print(
        f"SmolLM2-135M, {args.tokens} greedy tokens after a {len(PROMPT)}-token prompt, "
        f"{args.rounds} alternating rounds, {args.threads} threads, "
        f"jang ISA {jang.load_extension().cpu_kernel_isa()}"
    )
    if system:
        omp = os.environ.get("OMP_WAIT_POLICY", "PASSIVE")
        print(f"llama.cpp (OMP_WAIT_POLICY={omp}): {system.strip()}")
    print(
        "| model [MLX dtype] | weights MB as run | engine | tok/s (best) | tok/s (median) | ms/token (best) |"
    )
    print("|---|---|---|---|---|---|")
    for name, engine in engines:
        best = max(tps[(name, engine)])
        med = statistics.median(tps[(name, engine)])
        mb = rows[name][2]
        print(f"| {name} | {mb:.1f} | {engine} | {best:.1f} | {med:.1f} | {1e3 / best:.1f} |")
    same = [
        name
        for name, (_, _, _, stock) in rows.items()
        if stock and toks[(name, "jang")] == toks[(name, "stock MLX")]
    ]
    print(f"jang and stock MLX chose the same greedy tokens for: {', '.join(same) or 'none'}")
    print("greedy tokens per row:")
    for (name, engine), out in toks.items():
        print(f"  {name} / {engine}: {out[:16]}")


if __name__ == "__main__":
    main()
