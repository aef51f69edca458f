"""`jang convert`."""

import argparse
import json
import sys
from pathlib import Path

from jang.commands import PROFILES_EXPLAINED, add_size
from jang.quant.methods import DEFAULT_METHOD, METHODS, TUNE_SCOPES, Calibration, TuneOptions

HELP = "convert a model (HF dir, safetensors or GGUF) into a bundle"
DESCRIPTION = """\
Convert SRC (a Hugging Face directory, a .safetensors file with config.json beside it,
a .gguf file, or a `jang data` model) into a mixed-precision MLX bundle at OUT that stock
mlx_lm.load opens. Size: --profile NAME, --bits X or --plan FILE. OUT appears only when
complete: a failed or interrupted run leaves nothing behind.

examples:
  jang convert smollm2 -o sm-3bit --bits 3.0
  jang convert ~/models/Llama-3.2-1B -o llama-4k --profile JANG_4K
  jang convert smollm2 -o sm-3bit --bits 3.0 --method gptq --calib boolq --tune
"""

EPILOG = PROFILES_EXPLAINED


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src", type=Path, help="model path, or a `jang data` model (smollm2, gemma3)"
    )
    parser.add_argument("-o", "--out", type=Path, required=True, help="output bundle directory")
    size = add_size(parser)
    size.add_argument(
        "--plan",
        type=Path,
        metavar="FILE",
        help="a plan JSON (`jang plan -o FILE`, maybe edited), used as is",
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
        metavar="TEXT",
        help="calibration text for gptq and --tune: a UTF-8 file, or a `jang data` text "
        "(boolq, lambada, wiki; boolq+lambada joins two). Default: a small built-in sample",
    )
    parser.add_argument(
        "--calib-samples",
        type=int,
        metavar="N",
        default=Calibration.samples,
        help="calibration windows (gptq)",
    )
    parser.add_argument(
        "--calib-seq-len",
        type=int,
        metavar="N",
        default=Calibration.seq_len,
        help="tokens per window",
    )
    parser.add_argument(
        "--debias",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="rescale each row to undo the shrinkage of MSE rounding (default: on for clip)",
    )
    tune = parser.add_argument_group(
        "tuning",
        "train every group's scale and bias (codes frozen) so the bundle matches the float\n"
        "model on --calib: same size, much lower error at 2-3 bits. Block-wise by default\n"
        "(each decoder layer reproduces the float layer's outputs; one layer in memory);\n"
        "--tune-scope model trains the next-token KL through the whole model in memory.\n"
        "Runs in torch (the eval extra), on a GPU when torch sees one",
    )
    tune.add_argument("--tune", action="store_true", help="tune scales and biases")
    tune.add_argument(
        "--tune-scope",
        choices=TUNE_SCOPES,
        default=TuneOptions.scope,
        help="block: layer by layer, any model size; model: end to end, the model in memory",
    )
    tune.add_argument(
        "--tune-epochs",
        type=int,
        metavar="N",
        default=TuneOptions.epochs,
        help="passes over the windows",
    )
    tune.add_argument(
        "--tune-samples",
        type=int,
        metavar="N",
        default=TuneOptions.samples,
        help="windows for tuning",
    )
    tune.add_argument(
        "--tune-lr", type=float, metavar="LR", default=TuneOptions.lr, help="Adam learning rate"
    )
    tune.add_argument(
        "--tune-norms", action="store_true", help="also tune the normalization gains (float)"
    )
    parser.add_argument("--force", action="store_true", help="replace OUT if it is a jang bundle")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted --method gptq or --tune from its last saved layer",
    )
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--quiet", action="store_true", help="no progress, only the result line")
    out.add_argument(
        "--json-progress",
        action="store_true",
        help="JSON lines on stdout (per tensor, tuning step, message; an error event on failure)",
    )


def run(args: argparse.Namespace) -> int:
    from jang import data
    from jang.convert import convert
    from jang.errors import JangError
    from jang.progress import emit_event

    mode = "quiet" if args.quiet else "json" if args.json_progress else "bar"
    tune = TuneOptions(
        args.tune_epochs, args.tune_samples, args.tune_lr, args.tune_norms, args.tune_scope
    )
    if not args.tune and tune != TuneOptions():
        print(
            "jang convert: error: --tune-epochs/--tune-samples/--tune-lr/--tune-norms/"
            "--tune-scope need --tune",
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
            resume=args.resume,
            progress=mode,
            log=say,
        )
    except JangError as exc:  # printed by the command line; scripts get an event too
        if mode == "json":
            emit_event("error", message=str(exc))
        raise
    except KeyboardInterrupt:  # before any bundle file was written (planning, GPTQ, tuning)
        message = f"interrupted; nothing was written to {args.out}" + _kept(args.out)
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


def _kept(out: Path) -> str:
    """What an interrupted GPTQ or tuning left for --resume, said in a clause ('' if
    nothing)."""
    from jang.convert.checkpoint import KINDS, Checkpoint

    kept = []
    for kind in KINDS:
        saved = Checkpoint(out, kind)
        state = saved.state()
        if state and state.get("next_layer"):
            kept.append(f"{saved.label} of {state['next_layer']} layers is kept in {saved.dir}")
    if not kept:
        return ""
    return f"; {'; '.join(kept)}: the same command with --resume continues it"


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
