"""Convert a model (HF dir, safetensors, GGUF) into a bundle, one tensor at a time.

Flow: source -> plan -> quantize each tensor -> bundle writer. Tensors are read,
quantized and written one at a time (experts of one MoE projection are stacked
once all of them have been quantized), so peak memory stays near the largest
tensor, not the model. The bundle appears at OUT only when complete.

Two options hold the whole model instead: ``method="gptq"`` (calibrated rounding,
layer by layer through the float model) and ``tune=True`` (after rounding, the group
scales and biases of every matrix are trained together against the float model,
`jang.quant.tune`); both finish all the rounding before the first tensor is written.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jang import __version__
from jang.arch import ArchError, detect, require_supported
from jang.bundle import BundleWriter, quantization_config
from jang.mlx_view import mlx_model, mlx_view
from jang.source import ModelSource, mlx_buffer, open_source, trim_memory

METHODS = ("rtn", "clip", "gptq")
QUANT_BLOCK = 1 << 20  # weights quantized per call (bounds the quantizers' temporaries)
DEFAULT_METHOD = "clip"

# per-expert source names -> (switch_mlp name) for the MoE families mlx-lm stacks
_EXPERT = re.compile(r"^(?P<prefix>.+)\.experts\.(?P<e>\d+)\.(?P<proj>[a-z0-9_]+)\.weight$")
_EXPERT_PROJ = {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}
# families whose mlx-lm model names the stacked projections otherwise (its sanitize renames)
_EXPERT_PROJ_BY_TYPE = {"nemotron_h": {"up_proj": "fc1", "down_proj": "fc2"}}


class ConversionError(RuntimeError):
    """A conversion failed; nothing was written to the output path."""


def emit_event(event: str, **fields: Any) -> None:
    """One line of `--json-progress` output on stdout: {"event": event, **fields}."""
    print(json.dumps({"event": event, **fields}), flush=True)


@dataclass
class Progress:
    """Progress reporting: a tqdm bar, JSON lines for scripts, or nothing."""

    total_bytes: int
    mode: str = "bar"  # "bar" | "json" | "quiet"
    _bar: Any = None
    _done: int = 0
    _count: int = 0
    _start: float = field(default_factory=time.perf_counter)

    def __post_init__(self):
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total_bytes, unit="B", unit_scale=True, desc="convert", file=sys.stderr
            )

    def step(self, name: str, nbytes: int) -> None:
        self._done += nbytes
        self._count += 1
        if self._bar is not None:
            self._bar.set_postfix_str(f"{self._count} tensors", refresh=False)
            self._bar.update(nbytes)
        elif self.mode == "json":
            elapsed = time.perf_counter() - self._start
            rate = self._done / elapsed if elapsed > 0 else 0.0
            eta = (self.total_bytes - self._done) / rate if rate > 0 else None
            emit_event(
                "tensor",
                name=name,
                done_tensors=self._count,
                done_bytes=self._done,
                total_bytes=self.total_bytes,
                mb_per_s=round(rate / 1e6, 2),
                eta_s=None if eta is None else round(eta, 1),
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@dataclass
class ConversionReport:
    out: Path
    seconds: float
    plan_seconds: float
    bytes_written: int
    bpw_all_in: float
    bpw_codes: float
    tensors: int


def _output_dtype(source: ModelSource):
    """Float dtype for scales, biases and unquantized tensors: the source's 16-bit type,
    bf16 where the source is fp32/GGUF (fp16 can overflow on real weights)."""
    import mlx.core as mx

    declared = str(source.config.get("torch_dtype") or source.config.get("dtype") or "")
    return mx.float16 if "float16" in declared and "bfloat16" not in declared else mx.bfloat16


def _quantize(w, bits: int, group_size: int, method: str, debias: bool = False):
    """One tensor -> (codes, scales, biases) in MLX's affine layout; `debias` rescales each
    output row to undo the shrinkage of MSE-optimal rounding (`jang.quant.debias`)."""
    import mlx.core as mx

    if method == "rtn":
        q, s, b = mx.quantize(w, group_size=group_size, bits=bits)
    else:
        from jang import quant

        q, s, b = quant.quantize_tensor(w, bits, group_size, method=method)
    if debias:
        from jang.quant.debias import debias_rows

        s, b = debias_rows(w, q, s, b, bits, group_size)
    return q, s, b


def _quantize_blocks(w, dtype, bits: int, group_size: int, method: str, debias: bool):
    """`_quantize(w.astype(dtype), ...)` a block of rows at a time, written into
    preallocated outputs: the quantizers' per-call temporaries (float32 scales, packed
    codes, their MLX copies) stay block-sized and `w` is never cast whole. Rows are
    independent in MLX's affine layout, so the result is the same as one call."""
    import mlx.core as mx

    cols = w.shape[-1]
    rows = w.size // cols
    step = max(1, QUANT_BLOCK // cols)
    if rows <= step:
        return _quantize(w.astype(dtype), bits, group_size, method, debias)
    w2 = w.reshape(rows, cols)
    outs = views = None
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        parts = _quantize(w2[r0:r1].astype(dtype), bits, group_size, method, debias)
        mx.eval(*parts)
        if outs is None:
            outs, views = zip(
                *(mlx_buffer((rows, p.shape[-1]), p.dtype) for p in parts), strict=True
            )
        for view, part in zip(views, parts, strict=True):
            uint = {2: mx.uint16, 4: mx.uint32}[part.dtype.size]
            view[r0:r1] = np.array(part.view(uint), copy=False)
        del parts
    lead = w.shape[:-1]
    return tuple(o.reshape(*lead, o.shape[-1]) for o in outs)


def convert(src: str | Path, out: str | Path, *, force: bool = False, **options: Any):
    """Convert `src` into a bundle at `out` (see `convert_claimed` for the options), holding
    OUT for the whole conversion: an OUT that is or holds the source, or (with `force`)
    anything but a jang bundle or an empty directory, is refused before any work, and a
    second conversion into the same OUT fails at once (`jang.bundle.claim_output`)."""
    from jang.bundle import claim_output

    with claim_output(out, force, [src]):
        return convert_claimed(src, out, force=force, **options)


def convert_claimed(
    src: str | Path,
    out: str | Path,
    *,
    profile: str | None = None,
    bits: float | None = None,
    method: str = DEFAULT_METHOD,
    calib: str | Path | None = None,
    force: bool = False,
    plan: dict[str, Any] | None = None,
    n_samples: int = 128,
    seq_len: int = 512,
    debias: bool | None = None,
    tune: bool = False,
    tune_epochs: int = 2,
    tune_samples: int = 32,
    tune_lr: float = 1e-3,
    tune_norms: bool = False,
    progress: str = "bar",
    log: Callable[[str], None] | None = None,
) -> ConversionReport:
    """Convert `src` into a bundle at `out` (see module docstring).

    With `tune`, every quantized matrix is rounded first (by `method`), then the group
    scales and biases of all of them are tuned together against the float model on
    `tune_samples` calibration windows (`jang.quant.tune`) before anything is written;
    `tune_norms` tunes the normalization gains as well.
    """
    import mlx.core as mx

    from jang import plan as planner

    if method not in METHODS:
        raise ConversionError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    say = log or (lambda msg: None)
    if tune:  # checked before any work: rounding and GPTQ can take minutes
        if tune_epochs < 1 or tune_samples < 1 or not tune_lr > 0:
            raise ConversionError(
                f"--tune needs positive epochs, samples and learning rate, got "
                f"{tune_epochs}, {tune_samples}, {tune_lr}"
            )
        from jang.quant import tune as tuning

        tuning._torch()
    if debias is None:
        debias = method == "clip"
    t0 = time.perf_counter()
    source = open_source(src)
    _refuse_early(source.config, [i.name for i in source.tensors()], method, tune)
    source = mlx_view(source)
    infos = source.tensors()
    if plan is None:
        plan = planner.make_plan(
            source.config,
            [(i.name, i.shape) for i in infos],
            source.read_fresh,
            profile=profile,
            bits=bits,
            cache=planner.default_cache_path(),
            source=str(src),
        )
    plan_seconds = time.perf_counter() - t0
    say(
        f"plan: {plan['totals']['bpw_all_in']:.3f} bpw all-in, "
        f"{plan['totals']['bpw_codes']:.3f} codes-only ({plan_seconds:.1f} s)"
    )
    dtype = _output_dtype(source)
    entries = plan["tensors"]
    dropped, renamed = _sanitized_names(source)
    precomputed = (
        _gptq_quantize(source, plan, renamed, calib, n_samples, seq_len, say)
        if method == "gptq"
        else {}
    )
    tune_report = None
    tuned_floats: dict[str, Any] = {}
    if tune:
        if not precomputed:
            precomputed = _quantize_all(source, plan, dtype, method, debias, say)
        precomputed, tuned_floats, tune_report = _tune(
            source,
            plan,
            precomputed,
            calib,
            tune_samples,
            seq_len,
            tune_epochs,
            tune_lr,
            say,
            progress,
            norms=tune_norms,
        )
    missing = [i.name for i in infos if i.name not in entries]
    if missing:
        raise ConversionError(
            f"the plan has no entry for {missing[0]} (plan made for another model?)"
        )
    experts = _expert_groups(infos, entries, source.config.get("model_type"))
    presanitize = _presanitized(source, experts)
    pending: dict[str, list[tuple[int, Any, Any, Any]]] = {}
    float_modules: list[str] = []
    meter = Progress(sum(i.nbytes for i in infos), progress)
    try:
        with BundleWriter(Path(out), force=force) as writer:
            for info in infos:
                entry = entries[info.name]
                if info.name in dropped:
                    meter.step(info.name, info.nbytes)
                    continue
                w = q = s = b = arr = None  # the previous tensor goes before the next is read
                w = source.read_fresh(info.name)
                _check_finite(info.name, w)
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
                    if module in precomputed:
                        q, s, b = (
                            a.astype(dtype) if a.dtype != mx.uint32 else a
                            for a in precomputed.pop(module)
                        )
                    else:
                        q, s, b = _quantize_blocks(
                            w, dtype, entry["bits"], entry["group_size"], method, debias
                        )
                    mx.eval(q, s, b)
                    if info.name in experts:
                        target, index, count = experts[info.name]
                        group = pending.setdefault(target, [])
                        group.append((index, q, s, b, src_meta))
                        if len(group) == count:
                            _write_experts(writer, target, pending.pop(target), entry, info.shape)
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
                    if info.name in tuned_floats:
                        w = mx.array(tuned_floats.pop(info.name))
                    if info.name in presanitize:
                        w = presanitize[info.name](w)
                    arr = w.astype(dtype) if mx.issubdtype(w.dtype, mx.floating) else w
                    mx.eval(arr)
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
            manifest = {
                "jang_version": __version__,
                "method": method,
                "debias": debias,
                "calibration": str(calib) if calib else None,
                "tune": tune_report.to_json() if tune_report else None,
                "source": {
                    "path": str(src),
                    "parameters": source.num_parameters,
                    "format": type(source).__name__,
                },
                "plan": {k: v for k, v in plan.items() if k != "tensors"},
                "summary": dict(plan["totals"]),
            }
            writer.finish(config, manifest)
    except KeyboardInterrupt:
        raise ConversionError(f"interrupted; nothing was written to {out}") from None
    except OSError as exc:
        raise ConversionError(
            f"{exc.strerror or exc} ({exc.filename or out}); nothing was written to {out}"
        ) from exc
    finally:
        meter.close()
    seconds = time.perf_counter() - t0
    total = sum(f.stat().st_size for f in Path(out).glob("*.safetensors"))
    return ConversionReport(
        out=Path(out),
        seconds=seconds,
        plan_seconds=plan_seconds,
        bytes_written=total,
        bpw_all_in=plan["totals"]["bpw_all_in"],
        bpw_codes=plan["totals"]["bpw_codes"],
        tensors=len(infos),
    )


def _check_finite(name: str, w) -> None:
    """Refuse a NaN or Inf weight, naming the tensor and its first bad row: quantized it
    zeroes or poisons its group, and kept in float it silently breaks the model."""
    import mlx.core as mx

    if not mx.issubdtype(w.dtype, mx.floating) or w.ndim == 0:
        return
    finite = mx.isfinite(w)
    if mx.all(finite).item():
        return
    rows = mx.all(finite.reshape(-1, w.shape[-1]), axis=-1)
    row = int(mx.argmin(rows).item())
    where = f"row {row}" if w.ndim > 1 else "its values"
    raise ConversionError(f"{name}: {where} holds NaN or Inf; the source model is damaged")


def _refuse_early(config: dict[str, Any], names: list[str], method: str, tune: bool) -> None:
    """Every refusal that does not need the weights, before any work: a family jang does
    not convert, and the paths GPTQ and tuning do not handle yet."""
    try:
        require_supported(config)
        arch = detect(config, names)
    except ArchError as exc:
        raise ConversionError(str(exc)) from None
    if arch.moe and method == "gptq":
        raise ConversionError("--method gptq does not handle MoE experts yet; use clip")
    if arch.moe and tune:
        raise ConversionError("--tune does not handle MoE experts yet")


def _source_tokenizer(source: ModelSource):
    """The source's tokenizer, as mlx-lm loads it."""
    import tempfile

    from mlx_lm.tokenizer_utils import load as load_tokenizer

    with tempfile.TemporaryDirectory() as tok_dir:
        source.write_tokenizer(Path(tok_dir))
        return load_tokenizer(Path(tok_dir))


def _gptq_quantize(
    source, plan, renamed: dict[str, str], calib, n_samples: int, seq_len: int, say
) -> dict[str, Any]:
    """GPTQ of every planned matrix, layer by layer over calibration text propagated
    through the already-quantized model (see `jang.quant.gptq_model`); `renamed` maps
    source names to the model's own (`_sanitized_names`)."""
    import mlx.core as mx

    from jang import quant

    entries = plan["tensors"]
    model = mlx_model(source.config)
    weights = {i.name: source.read(i.name).astype(mx.float32) for i in source.tensors()}
    weights = model.sanitize(weights) if hasattr(model, "sanitize") else weights
    model.load_weights(list(weights.items()), strict=True)
    del weights
    tokenizer = _source_tokenizer(source)
    tokens = quant.calibration_tokens(tokenizer, calib, n_samples=n_samples, seq_len=seq_len)
    # source module -> the model's own module path (a VLM's text tower is renamed)
    path_of = {
        name.removesuffix(".weight"): renamed.get(name, name).removesuffix(".weight")
        for name, e in entries.items()
        if e["quantized"]
    }
    targets = {
        path_of[name.removesuffix(".weight")]: (e["bits"], e["group_size"])
        for name, e in entries.items()
        if e["quantized"]
    }
    modules = dict(model.named_modules())
    missing = [m for m in targets if m not in modules]
    if missing:
        raise ConversionError(f"--method gptq: the model has no module {missing[0]}")
    say(f"gptq: {tokens.shape[0]} samples x {tokens.shape[1]} tokens of calibration text")
    results = quant.gptq_model(model, targets, tokens, replace=False, progress=say)
    return {source_name: results[path] for source_name, path in path_of.items()}


def _quantize_all(source, plan, dtype, method: str, debias: bool, say) -> dict[str, Any]:
    """{module: (wq, scales, biases)} of every planned matrix, rounded by `method`."""
    import mlx.core as mx

    out = {}
    for info in source.tensors():
        entry = plan["tensors"][info.name]
        if not entry["quantized"]:
            continue
        parts = _quantize_blocks(
            source.read_fresh(info.name),
            dtype,
            entry["bits"],
            entry["group_size"],
            method,
            debias,
        )
        mx.eval(*parts)
        out[info.name.removesuffix(".weight")] = parts
    say(f"{method}: {len(out)} matrices rounded; tuning their scales and biases next")
    return out


def tuning_windows(tokenizer, config: dict[str, Any], calib, n_samples: int, seq_len: int):
    """(n_samples, seq_len) int windows of the calibration text for tuning, BOS first for
    models that expect one."""
    from jang import quant
    from jang.evaluate import bos_id

    bos = bos_id(tokenizer, config)
    body = seq_len - (bos is not None)
    tokens = np.array(quant.calibration_tokens(tokenizer, calib, n_samples=n_samples, seq_len=body))
    if bos is not None:
        tokens = np.concatenate([np.full((len(tokens), 1), bos, tokens.dtype), tokens], axis=1)
    return tokens


def _tune(
    source, plan, quantized, calib, n_samples, seq_len, epochs, lr, say, mode, *, norms
) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """`jang.quant.tune` of `quantized` against the float source, with a progress bar."""
    import copy

    from jang import reference
    from jang.quant import tune

    tokens = tuning_windows(_source_tokenizer(source), source.config, calib, n_samples, seq_len)
    float_tensors, _ = reference.source_tensors_of(source)
    # the causal LM that holds the text (a VLM's text tower), and source name -> its name
    lm_config, lm_name = reference.causal_lm_view(source.config, list(float_tensors))
    source_name = {v: k for k, v in lm_name.items()}
    teacher = reference.load_tensors(
        reference.build_model(lm_config),
        {lm_name[n]: a for n, a in float_tensors.items() if n in lm_name},
        lm_config,
    )
    del float_tensors
    student = copy.deepcopy(teacher)

    def lm_module(module: str) -> str:
        return lm_name[f"{module}.weight"].removesuffix(".weight")

    bits_groups = {
        lm_module(name.removesuffix(".weight")): (e["bits"], e["group_size"])
        for name, e in plan["tensors"].items()
        if e["quantized"]
    }
    quantized = {lm_module(module): parts for module, parts in quantized.items()}
    say(
        f"tune: {epochs} epochs over {len(tokens)} windows x {tokens.shape[1]} tokens "
        f"(lr {lr:g}, on {reference.device()})"
    )
    bar = None
    if mode == "bar":
        from tqdm import tqdm

        bar = tqdm(total=epochs * len(tokens), desc="tune", unit="step", file=sys.stderr)

    def report(step: int, steps: int, kl: float) -> None:
        if bar is not None:
            bar.set_postfix_str(f"KL {kl:.3f}", refresh=False)
            bar.update(1)
        elif mode == "json":
            emit_event("tune", step=step, steps=steps, kl=round(kl, 5))

    try:
        tuned, floats, result = tune.tune_scales(
            teacher,
            student,
            quantized,
            bits_groups,
            tokens,
            epochs=epochs,
            lr=lr,
            train_norms=norms,
            progress=report,
        )
    finally:
        if bar is not None:
            bar.close()
    say(
        f"tune: training KL {result.kl_first_epoch:.3f} (first epoch) -> "
        f"{result.kl_last_epoch:.3f} (last), {result.seconds:.0f} s"
    )
    missing = [name for name in floats if name not in source_name]
    if missing:
        raise ConversionError(f"tune: tuned tensor {missing[0]} is not in the source")
    tuned = {
        source_name[f"{module}.weight"].removesuffix(".weight"): parts
        for module, parts in tuned.items()
    }
    return tuned, {source_name[n]: a for n, a in floats.items()}, result


def _expert_groups(infos, entries, model_type: str | None) -> dict[str, tuple[str, int, int]]:
    """Per-expert tensor name -> (stacked module path, expert index, expert count)."""
    names = {**_EXPERT_PROJ, **_EXPERT_PROJ_BY_TYPE.get(model_type or "", {})}
    found: dict[str, list[tuple[int, str]]] = {}
    for info in infos:
        m = _EXPERT.match(info.name)
        if not m:
            continue
        proj = names.get(m["proj"], m["proj"])
        target = f"{m['prefix']}.switch_mlp.{proj}"
        found.setdefault(target, []).append((int(m["e"]), info.name))
    groups = {}
    for target, members in found.items():
        indices = sorted(e for e, _ in members)
        if indices != list(range(len(indices))):
            raise ConversionError(f"{target}: experts {indices[:8]}... are not numbered 0..E-1")
        for e, name in members:
            groups[name] = (target, e, len(members))
    return groups


def _write_experts(writer: BundleWriter, target: str, group, entry, shape) -> None:
    import mlx.core as mx

    group.sort(key=lambda g: g[0])
    q = mx.stack([g[1] for g in group])
    s = mx.stack([g[2] for g in group])
    b = mx.stack([g[3] for g in group])
    mx.eval(q, s, b)
    writer.add_quantized(
        target,
        q,
        s,
        b,
        bits=entry["bits"],
        group_size=entry["group_size"],
        shape=(len(group), *shape),
        source={
            "names": [m["names"][0] for *_, m in group],
            "dtype": group[0][4]["dtype"],
            "sha256": [m["sha256"] for *_, m in group],
        },
        extra={"role": entry.get("role"), "error": entry.get("error")},
    )


def _sanitized_names(source: ModelSource) -> tuple[set[str], dict[str, str]]:
    """(dropped, renamed): the source tensors the mlx-lm model discards on load (a tied
    lm_head, rotary buffers, a VLM's vision tower) and those it only renames (a VLM's
    ``model.language_model.*`` -> ``language_model.model.*``), found by running its
    `sanitize` on lazy placeholders (no memory): a renamed tensor is the same array object
    under a new name. The bundle stores the model's own names, so that mlx-lm's
    per-module quantization entries name its modules; sanitize leaves such names as they are.
    """
    import mlx.core as mx

    model = mlx_model(source.config)
    if not hasattr(model, "sanitize"):
        return set(), {}
    placeholders = {
        i.name: mx.zeros(i.shape, dtype=mx.bfloat16)
        for i in source.tensors()
        if not _EXPERT.match(i.name)
    }
    name_of = {id(a): name for name, a in placeholders.items()}
    kept = model.sanitize(dict(placeholders))
    # a new array under a source name (a conv weight moved to MLX's layout) is redone by
    # the same sanitize when the bundle loads; a new array under a new name is not
    made = sorted(n for n, a in kept.items() if id(a) not in name_of and n not in placeholders)
    if made:
        raise ConversionError(
            f"mlx-lm's {source.config.get('model_type')} loader transforms tensors jang cannot "
            f"stream yet: {', '.join(made[:5])}"
        )
    renamed = {
        name_of[id(a)]: new for new, a in kept.items() if id(a) in name_of and name_of[id(a)] != new
    }
    survivors = {name_of.get(id(a), n) for n, a in kept.items()}
    return set(placeholders) - survivors, renamed


def _presanitized(source: ModelSource, experts: dict[str, tuple[str, int, int]]):
    """{source name: fn(w) -> the value to store} for tensors that mlx-lm's sanitize rewrites
    in place (same name, new value) when it loads the source but not when it loads the
    bundle: Qwen3-Next's sanitize converts conv1d layouts and 1+w norms only while it sees
    per-expert tensors, which the bundle holds stacked, so the bundle must hold those tensors
    already sanitized (as mlx_lm.convert writes them). Found by running sanitize on lazy
    placeholders of both key sets (no memory). Also checks that every stacked expert target
    is a module of the model."""
    import mlx.core as mx

    model = mlx_model(source.config)
    modules = {name for name, _ in model.named_modules()}
    absent = sorted({target for target, _, _ in experts.values()} - modules)
    if absent:
        raise ConversionError(
            f"mlx-lm's {source.config.get('model_type')} model has no module {absent[0]} "
            "for the stacked experts (its sanitize names them otherwise)"
        )
    if not experts or not hasattr(model, "sanitize"):
        return {}
    src = {i.name: mx.zeros(i.shape, dtype=mx.bfloat16) for i in source.tensors()}
    bundle = {n: a for n, a in src.items() if n not in experts}
    for name, (target, _, count) in experts.items():
        bundle.setdefault(f"{target}.weight", mx.zeros((count, *src[name].shape), mx.bfloat16))
    as_source = model.sanitize(dict(src))
    as_bundle = model.sanitize(dict(bundle))
    out = {}
    for name, a in src.items():
        if name in experts or name not in as_source or as_source[name] is a:
            continue  # stacked, dropped, or left alone on the source path
        if name in as_bundle and as_bundle[name] is not bundle[name]:
            continue  # redone by the same sanitize when the bundle loads
        out[name] = lambda w, name=name: model.sanitize({**src, name: w.astype(mx.float32)})[name]
    return out
