"""The conversion steps that need the whole model and calibration text: GPTQ and tuning.

Both finish all their rounding before the first tensor is written, and return
{source module: (wq, scales, biases)} (plus, for tuning, the tuned float tensors) for the
writer to take instead of rounding those tensors itself.
"""

from __future__ import annotations

import copy
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jang import torch_models
from jang.errors import ConversionError
from jang.mlx_models import float_model
from jang.progress import emit_event
from jang.quant import tune as tuning
from jang.quant.methods import Calibration, TuneOptions
from jang.quant.tensor import quantize_rows
from jang.source import ModelSource
from jang.text import calibration_tokens, tuning_windows

Say = Callable[[str], None]


def source_tokenizer(source: ModelSource):
    """The source's tokenizer, as mlx-lm loads it."""
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    with tempfile.TemporaryDirectory() as tok_dir:
        source.write_tokenizer(Path(tok_dir))
        return load_tokenizer(Path(tok_dir))


def gptq_rounded(
    source: ModelSource,
    plan: dict[str, Any],
    renamed: dict[str, str],
    calibration: Calibration,
    say: Say,
) -> dict[str, Any]:
    """GPTQ of every planned matrix, layer by layer over calibration text propagated
    through the already-quantized model (see `jang.quant.gptq_model`); `renamed` maps
    source names to the model's own (`jang.convert.layout.sanitized_names`)."""
    from jang import quant

    entries = plan["tensors"]
    model = float_model(source)
    tokenizer = source_tokenizer(source)
    tokens = calibration_tokens(
        tokenizer, calibration.text, n_samples=calibration.samples, seq_len=calibration.seq_len
    )
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


def rounded_all(
    source: ModelSource, plan: dict[str, Any], dtype, method: str, debias: bool, say: Say
) -> dict[str, Any]:
    """{module: (wq, scales, biases)} of every planned matrix, rounded by a per-tensor method."""
    import mlx.core as mx

    out = {}
    for info in source.tensors():
        entry = plan["tensors"][info.name]
        if not entry["quantized"]:
            continue
        parts = quantize_rows(
            source.read_fresh(info.name), dtype, entry["bits"], entry["group_size"], method, debias
        )
        mx.eval(*parts)
        out[info.name.removesuffix(".weight")] = parts
    say(f"{method}: {len(out)} matrices rounded; tuning their scales and biases next")
    return out


def tuned(
    source: ModelSource,
    plan: dict[str, Any],
    quantized: dict[str, Any],
    calibration: Calibration,
    options: TuneOptions,
    say: Say,
    mode: str,
) -> tuple[dict[str, Any], dict[str, Any], tuning.TuneReport]:
    """`jang.quant.tune` of `quantized` against the float source, with a progress bar:
    (tuned {module: parts}, tuned float tensors by source name, report)."""
    tokens = tuning_windows(
        source_tokenizer(source),
        source.config,
        calibration.text,
        options.samples,
        calibration.seq_len,
    )
    float_tensors, _ = torch_models.source_tensors_of(source)
    # the causal LM that holds the text (a VLM's text tower), and source name -> its name
    lm_config, lm_name = torch_models.causal_lm_view(source.config, list(float_tensors))
    source_name = {v: k for k, v in lm_name.items()}
    teacher = torch_models.load_tensors(
        torch_models.build_model(lm_config),
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
        f"tune: {options.epochs} epochs over {len(tokens)} windows x {tokens.shape[1]} tokens "
        f"(lr {options.lr:g}, on {torch_models.device()})"
    )
    bar = None
    if mode == "bar":
        from tqdm import tqdm

        bar = tqdm(total=options.epochs * len(tokens), desc="tune", unit="step", file=sys.stderr)

    def report(step: int, steps: int, kl: float) -> None:
        if bar is not None:
            bar.set_postfix_str(f"KL {kl:.3f}", refresh=False)
            bar.update(1)
        elif mode == "json":
            emit_event("tune", step=step, steps=steps, kl=round(kl, 5))

    try:
        result_parts, floats, result = tuning.tune_scales(
            teacher,
            student,
            quantized,
            bits_groups,
            tokens,
            epochs=options.epochs,
            lr=options.lr,
            train_norms=options.norms,
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
    result_parts = {
        source_name[f"{module}.weight"].removesuffix(".weight"): parts
        for module, parts in result_parts.items()
    }
    return result_parts, {source_name[n]: a for n, a in floats.items()}, result
