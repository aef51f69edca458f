"""Convert a model (HF dir, safetensors, GGUF) into a bundle, one tensor at a time.

Flow: source -> plan -> round each tensor -> bundle writer. Tensors are read, rounded and
written one at a time (experts of one MoE projection are stacked once all of them have
been rounded), so peak memory stays near the largest tensor, not the model. The bundle
appears at OUT only when complete (`jang.bundle.claim_output`, `BundleWriter`).

The rounding method comes from the registry (`jang.quant.methods`). A model-level method
(GPTQ, `jang.convert.calibrated`) and tuning (`jang.convert.tune_stream`) run layer by layer
first, each keeping its finished layers on disk beside OUT, from where the writer takes
them. Where each tensor goes in the bundle (renames, drops, stacked experts) is
`jang.convert.layout`'s business.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jang import __version__, card
from jang.arch import detect, require_supported
from jang.bundle import BundleWriter, claim_output, quantization_config
from jang.convert import calibrated, layout, tune_stream
from jang.convert.checkpoint import Checkpoint
from jang.errors import ArchError, ConversionError
from jang.mlx_view import mlx_view
from jang.plan.profiles import from_request
from jang.progress import Progress
from jang.provenance import license_path, provenance
from jang.quant.methods import DEFAULT_METHOD, Calibration, Method, TuneOptions, get_method
from jang.quant.tensor import QUANT_BLOCK, quantize_rows
from jang.source import ModelSource, open_source, trim_memory


@dataclass
class ConversionReport:
    out: Path
    seconds: float
    plan_seconds: float
    bytes_written: int
    bpw_all_in: float
    bpw_codes: float
    tensors: int


def convert(
    src: str | Path,
    out: str | Path,
    *,
    profile: str | None = None,
    bits: float | None = None,
    plan: dict[str, Any] | None = None,
    method: str = DEFAULT_METHOD,
    debias: bool | None = None,
    calibration: Calibration | None = None,
    tune: TuneOptions | None = None,
    force: bool = False,
    resume: bool = False,
    progress: str = "bar",
    log: Callable[[str], None] | None = None,
) -> ConversionReport:
    """Convert `src` into a bundle at `out`, sized by `profile`, `bits` or a ready `plan`.

    `method` rounds each planned matrix (`jang.quant.methods`; `debias` defaults to the
    method's own choice); `calibration` is the text GPTQ and tuning read; with `tune`
    every group's scale and bias is then trained against the float model before anything
    is written. GPTQ keeps each finished layer in a directory beside `out`
    (`jang.convert.checkpoint`); `resume` continues an interrupted GPTQ from it. OUT is
    held for the whole conversion: an OUT that is or holds the source, or (with `force`)
    anything but a jang bundle or an empty directory, is refused before any work, and a
    second conversion into the same OUT fails at once. `progress` is
    "bar", "json" or "quiet"; `log` receives one-line stage messages.
    """
    spec = get_method(method)
    if tune is not None:
        tune.check()  # before any work: rounding and GPTQ can take minutes
    debias = spec.debias if debias is None else debias
    say = log or (lambda msg: None)
    calibration = calibration or Calibration()
    with claim_output(out, force, [src]):
        t0 = time.perf_counter()
        saved = Checkpoint(Path(out))
        saved_tune = Checkpoint(Path(out), "tune")
        block_tune = tune is not None and tune.scope == "block"
        if resume and not (spec.calibrated or block_tune):
            raise ConversionError(
                "--resume continues an interrupted --method gptq or --tune; this is neither"
            )
        # before planning, which can take minutes; the later stage first, as the one the
        # interrupted run had reached
        for kept, runs in ((saved_tune, block_tune), (saved, spec.calibrated)):
            if runs:
                kept.refuse_kept(resume)
        source = _open(src, spec, tune)
        origin = provenance(source)
        if origin.get("quantized"):
            say(
                f"source: weights stored as {origin['quantized']}; the bundle re-quantizes "
                "their dequantized values (a 16-bit source keeps more quality)"
            )
        if plan is None:
            plan = _make_plan(source, src, profile, bits)
        plan_seconds = time.perf_counter() - t0
        request = plan.get("request") or {}
        if request.get("profile"):
            say(f"profile {from_request(request).describe()}")
        say(
            f"plan: {plan['totals']['bpw_all_in']:.3f} bpw all-in, "
            f"{plan['totals']['bpw_codes']:.3f} codes-only ({plan_seconds:.1f} s)"
        )
        dtype = _output_dtype(source)
        dropped, renamed = layout.sanitized_names(source)
        rounded: dict[str, Any] = {}
        floats: dict[str, Any] = {}
        tune_report = None
        if spec.calibrated:
            rounded = calibrated.gptq_streamed(
                source, plan, renamed, calibration, say, saved, resume, progress
            )
        if tune is not None and tune.scope == "model":
            if not rounded:
                rounded = calibrated.rounded_all(source, plan, dtype, method, debias, say)
            rounded, floats, model_report = calibrated.tuned(
                source, plan, rounded, calibration, tune, say, progress
            )
            tune_report = {"scope": "model", **model_report.to_json()}
        elif tune is not None:
            start = rounded or tune_stream.RoundedOnDemand(source, plan, dtype, method, debias)
            rounded, floats, tune_report = tune_stream.tune_streamed(
                source, plan, start, calibration, tune, say, progress, saved_tune, resume, method,
                debias,
            )  # fmt: skip
        manifest = {
            "jang_version": __version__,
            "method": method,
            "debias": debias,
            "calibration": str(calibration.text) if calibration.text else None,
            "tune": tune_report,
            "source": {
                "path": str(src),
                "parameters": source.num_parameters,
                "format": type(source).__name__,
                **origin,
            },
            "plan": {k: v for k, v in plan.items() if k != "tensors"},
            "summary": dict(plan["totals"]),
        }
        _write(
            source,
            Path(out),
            plan,
            dtype,
            spec,
            debias,
            rounded,
            floats,
            dropped,
            renamed,
            manifest,
            force,
            progress,
        )
        if spec.calibrated:  # the bundle is in place: the layers kept for --resume are done
            saved.remove()
        if block_tune:
            saved_tune.remove()
    total = sum(f.stat().st_size for f in Path(out).glob("*.safetensors"))
    return ConversionReport(
        out=Path(out),
        seconds=time.perf_counter() - t0,
        plan_seconds=plan_seconds,
        bytes_written=total,
        bpw_all_in=plan["totals"]["bpw_all_in"],
        bpw_codes=plan["totals"]["bpw_codes"],
        tensors=len(source.tensors()),
    )


def _open(src: str | Path, method: Method, tune: TuneOptions | None) -> ModelSource:
    """The source as mlx-lm's model holds it, after every refusal that does not need the
    weights: a family jang does not convert, and the paths GPTQ and tuning do not handle
    yet."""
    source = open_source(src)
    try:
        require_supported(source.config)
        arch = detect(source.config, [i.name for i in source.tensors()])
    except ArchError as exc:
        raise ConversionError(str(exc)) from None
    if arch.moe and method.calibrated:
        raise ConversionError(f"--method {method.name} does not handle MoE experts yet; use clip")
    if arch.moe and tune is not None:
        raise ConversionError("--tune does not handle MoE experts yet")
    return mlx_view(source)


def _make_plan(source: ModelSource, src, profile: str | None, bits: float | None):
    from jang import plan as planner
    from jang.plan.errors import default_cache_path

    return planner.make_plan(
        source.config,
        [(i.name, i.shape) for i in source.tensors()],
        source.read_fresh,
        profile=profile,
        bits=bits,
        cache=default_cache_path(),
        source=str(src),
    )


def _output_dtype(source: ModelSource):
    """Float dtype for scales, biases and unquantized tensors: the source's 16-bit type,
    bf16 where the source is fp32/GGUF (fp16 can overflow on real weights)."""
    import mlx.core as mx

    declared = str(source.config.get("torch_dtype") or source.config.get("dtype") or "")
    return mx.float16 if "float16" in declared and "bfloat16" not in declared else mx.bfloat16


def _write(
    source: ModelSource,
    out: Path,
    plan: dict[str, Any],
    dtype,
    method: Method,
    debias: bool,
    rounded: dict[str, Any],
    floats: dict[str, Any],
    dropped: set[str],
    renamed: dict[str, str],
    manifest: dict[str, Any],
    force: bool,
    progress: str,
) -> None:
    """Read, round (unless `rounded` holds the tensor already) and write every tensor, then
    the config, tokenizer, the source's LICENSE, the manifest and the model card
    (`jang.card`); the bundle appears at `out` only when complete."""
    import mlx.core as mx

    infos = source.tensors()
    entries = plan["tensors"]
    missing = [i.name for i in infos if i.name not in entries]
    if missing:
        raise ConversionError(
            f"the plan has no entry for {missing[0]} (plan made for another model?)"
        )
    experts = layout.expert_groups(infos, entries, source.config.get("model_type"))
    presanitize = layout.presanitized(source, experts)
    pending: dict[str, list[tuple[int, Any, Any, Any]]] = {}
    float_modules: list[str] = []
    meter = Progress(sum(i.nbytes for i in infos), progress)
    try:
        with BundleWriter(out, force=force) as writer:
            for info in infos:
                entry = entries[info.name]
                if info.name in dropped:
                    meter.step(info.name, info.nbytes)
                    continue
                w = q = s = b = arr = None  # the previous tensor goes before the next is read
                w = source.read_fresh(info.name)
                _check_finite(info.name, w, quantized=entry["quantized"])
                src_meta = {
                    "names": [info.name],
                    "dtype": info.dtype,
                    "sha256": source.checksum(info.name),
                }
                if entry["quantized"]:
                    if entry.get("transposed"):
                        raise ConversionError(
                            f"{info.name}: transposed expert layouts are not supported yet"
                        )
                    module = info.name.removesuffix(".weight")
                    if module in rounded:
                        q, s, b = (
                            a.astype(dtype) if a.dtype != mx.uint32 else a
                            for a in rounded.pop(module)
                        )
                    else:
                        q, s, b = quantize_rows(
                            w, dtype, entry["bits"], entry["group_size"], method.name, debias
                        )
                    mx.eval(q, s, b)
                    _check_parameters(info.name, s, b, dtype)
                    if info.name in experts:
                        target, index, count = experts[info.name]
                        group = pending.setdefault(target, [])
                        group.append((index, q, s, b, src_meta))
                        if len(group) == count:
                            layout.write_experts(
                                writer, target, pending.pop(target), entry, info.shape
                            )
                    else:
                        module = renamed.get(info.name, info.name).removesuffix(".weight")
                        writer.add_quantized(
                            module,
                            q,
                            s,
                            b,
                            bits=entry["bits"],
                            group_size=entry["group_size"],
                            shape=info.shape,
                            source=src_meta,
                            extra={"role": entry.get("role"), "error": entry.get("error")},
                        )
                else:
                    if info.name in experts:
                        raise ConversionError(
                            f"{info.name}: unquantized experts are not supported yet"
                        )
                    if info.name in floats:
                        w = mx.array(floats.pop(info.name))
                    if info.name in presanitize:
                        w = presanitize[info.name](w)
                    arr = w.astype(dtype) if mx.issubdtype(w.dtype, mx.floating) else w
                    mx.eval(arr)
                    if arr.dtype != w.dtype and not mx.all(mx.isfinite(arr)).item():
                        raise ConversionError(
                            f"{info.name}: holds values beyond the range of "
                            f"{str(dtype).removeprefix('mlx.core.')}, the bundle's dtype (the "
                            "source's config asks for it); they would be stored as Inf"
                        )
                    name = renamed.get(info.name, info.name)
                    writer.add_float(name, arr, source=src_meta)
                    if name.endswith(".weight") and len(info.shape) == 2:
                        float_modules.append(name.removesuffix(".weight"))
                meter.step(info.name, info.nbytes)
            if pending:
                raise ConversionError(f"incomplete expert groups: {', '.join(sorted(pending))}")
            config = dict(source.config)
            quant = quantization_config(writer.tensors, float_modules)
            config["quantization"] = quant
            config["quantization_config"] = quant
            config["torch_dtype"] = str(dtype).removeprefix("mlx.core.")
            w = q = s = b = arr = None
            trim_memory()  # the tokenizer build starts from the floor, not the loop's high water
            source.write_tokenizer(writer.tmp)
            license_file = license_path(source, manifest["source"])
            if license_file is not None:
                writer.add_file(license_file.name, license_file.read_bytes())
            writer.finish(config, manifest, card=lambda full: card.render(full, out.name))
    except KeyboardInterrupt:
        raise ConversionError(f"interrupted; nothing was written to {out}") from None
    except OSError as exc:
        raise ConversionError(
            f"{exc.strerror or exc} ({exc.filename or out}); nothing was written to {out}"
        ) from exc
    finally:
        meter.close()


# A quantized weight more than this many times the typical row's largest magnitude (the
# median over rows) is damage, not training: the largest trained outliers known ("super
# weights") sit within about 100x of their tensor's typical row peak. In its group such a
# value sets the scale so wide that every other weight of the group rounds to one code.
MAX_OUTLIER = 1e4
# float dtype -> (its bits' dtype in MLX and numpy, the magnitude mask, the first non-finite)
_IEEE_BITS = {
    "bfloat16": ("uint16", np.uint16, 0x7FFF, 0x7F80),
    "float16": ("uint16", np.uint16, 0x7FFF, 0x7C00),
    "float32": ("uint32", np.uint32, 0x7FFFFFFF, 0x7F800000),
}


def _check_finite(name: str, w, quantized: bool = False) -> None:
    """Refuse a NaN or Inf weight, naming the tensor and its first bad row: quantized it
    zeroes or poisons its group, and kept in float it silently breaks the model. A
    quantized weight also may not exceed MAX_OUTLIER x the median of its rows' peaks.

    One pass over the raw bits in blocks of rows (numpy integer reductions, ~10x MLX's
    CPU float ones here): with the sign bit cleared, IEEE bit patterns order as their
    magnitudes, so a row's largest pattern is its peak, and it is NaN or Inf exactly when
    it reaches the all-ones exponent."""
    import mlx.core as mx

    if not mx.issubdtype(w.dtype, mx.floating) or w.ndim == 0:
        return
    kind = str(w.dtype).removeprefix("mlx.core.")
    if kind not in _IEEE_BITS:  # float64: checked in float32, whose range it may exceed
        w, kind = w.astype(mx.float32), "float32"
    view, int_type, magnitude, inf = _IEEE_BITS[kind]
    view = getattr(mx, view)
    rows = w.reshape(-1, w.shape[-1])
    step = max(1, QUANT_BLOCK // rows.shape[-1])
    patterns = []
    for r0 in range(0, rows.shape[0], step):
        bits = np.asarray(rows[r0 : r0 + step].view(view))
        patterns.append(np.bitwise_and(bits, int_type(magnitude)).max(axis=-1))
    patterns = np.concatenate(patterns)
    finite = patterns < inf
    peak = np.array(mx.array(patterns).view(w.dtype).astype(mx.float32))
    if not finite.all():
        where = f"row {int(np.argmin(finite))}" if w.ndim > 1 else "its values"
        raise ConversionError(f"{name}: {where} holds NaN or Inf; the source model is damaged")
    if not quantized:
        return
    typical = float(np.median(peak))
    row = int(np.argmax(peak))
    if peak[row] > MAX_OUTLIER * typical:
        raise ConversionError(
            f"{name}: row {row} holds {peak[row]:.3g}, {peak[row] / max(typical, 1e-30):.3g}x "
            f"the typical row's largest value ({typical:.3g}); no trained weight is that far "
            "out (the source model is damaged), and it would zero the rest of its "
            "quantization group"
        )


def _check_parameters(name: str, scales, biases, dtype) -> None:
    """Refuse scales or biases that overflow the bundle's dtype (a float16 bundle of a
    tensor with very large values): the stored group would decode to Inf or NaN."""
    import mlx.core as mx

    finite = mx.isfinite(scales) & mx.isfinite(biases)
    if not mx.all(finite).item():
        rows = mx.all(finite.reshape(-1, finite.shape[-1]), axis=-1)
        row = int(mx.argmin(rows).item())
        raise ConversionError(
            f"{name}: row {row}: its quantization scale or bias overflows "
            f"{str(dtype).removeprefix('mlx.core.')}; the tensor's values are too large for "
            "the bundle's dtype"
        )
