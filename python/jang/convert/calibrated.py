"""The conversion steps that need calibration text: GPTQ and tuning.

Both finish all their rounding before the first tensor is written, and return
{source module: (wq, scales, biases)} (plus, for tuning, the tuned float tensors) for the
writer to take instead of rounding those tensors itself. GPTQ streams: one decoder layer
in float memory at a time, each finished layer kept on disk (`jang.convert.checkpoint`),
from where the writer reads it. Tuning is block-wise by default (`jang.convert.tune_stream`);
`tuned` here is the end-to-end scope (``--tune-scope model``), which holds the whole model.
"""

from __future__ import annotations

import copy
import hashlib
import re
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jang import __version__, torch_models
from jang.convert.checkpoint import Checkpoint, run_key
from jang.errors import ConversionError
from jang.mlx_models import build_model, float_model
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


def _gptq_targets(plan: dict[str, Any], renamed: dict[str, str]):
    """(source module -> the model's module path, model path -> (bits, group size)) of
    every planned matrix (a VLM's text tower is renamed)."""
    path_of = {
        name.removesuffix(".weight"): renamed.get(name, name).removesuffix(".weight")
        for name, e in plan["tensors"].items()
        if e["quantized"]
    }
    targets = {
        path_of[name.removesuffix(".weight")]: (e["bits"], e["group_size"])
        for name, e in plan["tensors"].items()
        if e["quantized"]
    }
    return path_of, targets


def _tokens(source: ModelSource, calibration: Calibration):
    return calibration_tokens(
        source_tokenizer(source),
        calibration.text,
        n_samples=calibration.samples,
        seq_len=calibration.seq_len,
    )


def gptq_whole_model(
    source: ModelSource,
    plan: dict[str, Any],
    renamed: dict[str, str],
    calibration: Calibration,
    say: Say,
) -> dict[str, Any]:
    """GPTQ with the whole float model in memory (`jang.quant.gptq_model`): the reference
    the streamed path (`gptq_streamed`, the default) must match code for code."""
    from jang import quant

    path_of, targets = _gptq_targets(plan, renamed)
    model = float_model(source)
    modules = dict(model.named_modules())
    missing = [m for m in targets if m not in modules]
    if missing:
        raise ConversionError(f"--method gptq: the model has no module {missing[0]}")
    tokens = _tokens(source, calibration)
    results = quant.gptq_model(model, targets, tokens, replace=False, progress=say)
    return {source_name: results[path] for source_name, path in path_of.items()}


class StreamedResults(Mapping):
    """{source module: (wq, scales, biases)} of a streamed GPTQ: the layers' results are
    read from the checkpoint directory when the writer asks for them, one at a time."""

    def __init__(self, path_of: dict[str, str], outside: dict[str, Any], saved: Checkpoint):
        self._path_of, self._outside, self._saved = path_of, outside, saved

    def __getitem__(self, name: str):
        path = self._path_of[name]
        if path in self._outside:
            return self._outside[path]
        if path in self._saved:
            return self._saved.load(path)
        raise KeyError(name)

    def pop(self, name: str):
        return self[name]

    def __contains__(self, name) -> bool:  # without reading it (Mapping's would)
        return name in self._path_of

    def __iter__(self):
        return iter(self._path_of)

    def __len__(self) -> int:
        return len(self._path_of)


def gptq_streamed(
    source: ModelSource,
    plan: dict[str, Any],
    renamed: dict[str, str],
    calibration: Calibration,
    say: Say,
    saved: Checkpoint,
    resume: bool = False,
    mode: str = "quiet",
) -> StreamedResults:
    """GPTQ of every planned matrix with one decoder layer in float memory at a time
    (`jang.quant.gptq_stream`): the same codes as `gptq_whole_model`. Each finished layer
    goes to `saved` (the checkpoint `resume` continues from)."""
    import mlx.core as mx

    from jang import quant
    from jang.quant.sequential import find_layers, layer_paths

    path_of, targets = _gptq_targets(plan, renamed)
    model = build_model(source.config)  # its parameters stay unevaluated placeholders
    model.eval()
    modules = dict(model.named_modules())
    missing = [m for m in targets if m not in modules]
    if missing:
        raise ConversionError(f"--method gptq: the model has no module {missing[0]}")
    _, layers = find_layers(model)
    paths = layer_paths(model, layers)
    index_of = {path: i for i, path in enumerate(paths)}
    layer_of = re.compile(r"^(.*\.\d+)\.")
    by_layer: dict[int, list[str]] = {}
    outside_names = []
    for info in source.tensors():
        match = layer_of.match(renamed.get(info.name, info.name))
        index = index_of.get(match.group(1)) if match else None
        if index is None:
            outside_names.append(info.name)
        else:
            by_layer.setdefault(index, []).append(info.name)
    # Some mlx-lm sanitize() change the model they run on (Gemma 3 drops its lm_head when
    # the weights have none): the model gets that once, from placeholders of every tensor,
    # as `float_model`'s sanitize of all weights gives it; each read runs its own on a
    # fresh scratch model (its parameters are never evaluated: no memory).
    if hasattr(model, "sanitize"):
        model.sanitize({i.name: mx.zeros(i.shape, mx.bfloat16) for i in source.tensors()})

    def read(names: list[str]) -> dict[str, mx.array]:
        """Float32 weights under the model's names, as `float_model` loads them."""
        weights = {n: source.read(n).astype(mx.float32) for n in names}
        return (
            build_model(source.config).sanitize(weights) if hasattr(model, "sanitize") else weights
        )

    def load_layer(index: int, layer) -> None:
        prefix_i = f"{paths[index]}."
        weights = read(by_layer.get(index, []))
        layer.load_weights([(k.removeprefix(prefix_i), v) for k, v in weights.items()], strict=True)
        mx.eval(layer.parameters())

    def float_weight(path: str):
        weights = read([n for n in outside_names if renamed.get(n, n) == f"{path}.weight"])
        if f"{path}.weight" not in weights:
            raise ConversionError(f"--method gptq: no float weight for {path} in the source")
        w = weights[f"{path}.weight"]
        mx.eval(w)
        return w

    weights = read(outside_names)
    model.load_weights(list(weights.items()), strict=False)
    mx.eval(list(weights.values()))  # the layers' random-init placeholders stay unevaluated
    del weights
    tokens = _tokens(source, calibration)
    key = run_key(
        jang=__version__,
        targets=sorted(targets.items()),
        tokens=hashlib.sha256(np.array(tokens).tobytes()).hexdigest(),
        batches=tokens.shape,
    )
    start = saved.begin(key, resume)
    inputs = None
    if start:
        kept = saved.inputs()
        inputs = [kept[str(i)] for i in range(len(kept))]
    n_layers = len(layers)
    if start:
        say(f"gptq: resuming at layer {start} of {n_layers} from {saved.dir}")
    say(f"gptq: {tokens.shape[0]} samples x {tokens.shape[1]} tokens of calibration text")
    bar = _layer_bar(mode, n_layers, start)

    def finish_layer(index: int, results: dict[str, Any], outputs) -> None:
        saved.save_layer(
            index, results, {str(i): h for i, h in enumerate(outputs)}, last=index == n_layers - 1
        )

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.update(1)
        elif mode == "json":
            emit_event("gptq", layer=done, layers=total)
        else:
            say(f"gptq: layer {done}/{total}")

    try:
        outside = quant.gptq_stream(
            model,
            targets,
            tokens,
            load_layer=load_layer,
            finish_layer=finish_layer,
            float_weight=float_weight,
            start=start,
            inputs=inputs,
            progress=progress,
        )
    finally:
        if bar is not None:
            bar.close()
    return StreamedResults(path_of, outside, saved)


def _layer_bar(mode: str, total: int, start: int):
    """A per-layer progress bar with elapsed time and time left (terminal mode only)."""
    if mode != "bar":
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="gptq", unit="layer", file=sys.stderr)


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


def tuning_inputs(source: ModelSource, calibration: Calibration, options: TuneOptions):
    """What both tuning scopes start from: the (windows, seq_len) int64 tokens, the source's
    float tensors (made one at a time when asked for), and the causal LM that holds the
    text (a VLM's text tower): its config and {source name: its name}."""
    tokens = tuning_windows(
        source_tokenizer(source),
        source.config,
        calibration.text,
        options.samples,
        calibration.seq_len,
    ).astype(np.int64)
    float_tensors, _ = torch_models.source_tensors_of(source)
    lm_config, lm_name = torch_models.causal_lm_view(source.config, list(float_tensors))
    return tokens, float_tensors, lm_config, lm_name


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
    tokens, float_tensors, lm_config, lm_name = tuning_inputs(source, calibration, options)
    source_name = {v: k for k, v in lm_name.items()}
    teacher = torch_models.load_tensors(
        torch_models.build_model(lm_config),
        torch_models.renamed(float_tensors, lm_name),
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
