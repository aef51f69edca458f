"""Block-wise tuning, one decoder layer in memory at a time: the default of `--tune`.

The float model is a transformers skeleton whose parameters live on torch's meta device
(`jang.torch_models.skeleton`); only the embedding (to make the first layer's inputs) and
then one decoder layer at a time are ever filled. Two streams of calibration activations
run through the layers: the float model's and the quantized model's. Per layer: the float
layer maps the float stream to its targets; the layer's planned matrices get their rounded
codes (from GPTQ, or rtn/clip on demand) as group-affine functions whose scales and biases
(and, with `--tune-norms`, the norm gains) are trained so that the quantized layer, fed
the quantized stream, reproduces those targets (`jang.quant.tune.tune_block`); the tuned
layer then carries the quantized stream on. Memory: one layer in float32 plus three
(windows x seq x hidden) float32 activations. Each finished layer goes to a checkpoint
beside OUT (`jang.convert.checkpoint`), which `--resume` continues from. Last, the output
head's scales and biases (and the final norm) are trained on the next-token KL from the
final hidden states; a tied head is the input embedding, whose tuned values the layers did
not see (measured to pay anyway: bench/RESULTS.md, "Block-wise tuning").
"""

from __future__ import annotations

import hashlib
import re
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from jang import __version__, torch_models
from jang.convert.calibrated import tuning_inputs
from jang.convert.checkpoint import Checkpoint, run_key
from jang.errors import ConversionError
from jang.progress import emit_event
from jang.quant import tune as tuning
from jang.quant.methods import Calibration, TuneOptions
from jang.quant.tensor import quantize_rows
from jang.source import ModelSource, trim_memory

Say = Callable[[str], None]
Parts = tuple[Any, Any, Any]


class RoundedOnDemand(Mapping):
    """{source module: (wq, scales, biases)} of a per-tensor method, each rounded when
    asked for (nothing is kept): what tuning starts from without holding the model."""

    def __init__(self, source: ModelSource, plan: dict[str, Any], dtype, method: str, debias):
        self._source, self._dtype, self._method, self._debias = source, dtype, method, debias
        self._entries = {
            name.removesuffix(".weight"): e for name, e in plan["tensors"].items() if e["quantized"]
        }

    def __getitem__(self, module: str) -> Parts:
        import mlx.core as mx

        entry = self._entries[module]
        parts = quantize_rows(
            self._source.read_fresh(f"{module}.weight"),
            self._dtype,
            entry["bits"],
            entry["group_size"],
            self._method,
            self._debias,
        )
        mx.eval(*parts)
        return parts

    def __contains__(self, module) -> bool:  # without rounding it (Mapping's would)
        return module in self._entries

    def __iter__(self):
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


class TunedResults(Mapping):
    """{source module: parts}: the tuned layers' from the checkpoint, the tuned head's,
    and the others as rounded."""

    def __init__(self, rounded: Mapping[str, Parts], saved: Checkpoint, head: dict[str, Parts]):
        self._rounded, self._saved, self._head = rounded, saved, head

    def __getitem__(self, module: str) -> Parts:
        if module in self._head:
            return self._head[module]
        if module in self._saved:
            return self._saved.load(module)
        return self._rounded[module]

    def pop(self, module: str) -> Parts:
        return self[module]

    def __contains__(self, module) -> bool:  # without reading it (Mapping's would)
        return module in self._head or module in self._rounded

    def __iter__(self):
        return iter(self._rounded)

    def __len__(self) -> int:
        return len(self._rounded)


class _Stop(Exception):
    pass


def _recorder(torch, record: list, first: bool, last: bool):
    """A stand-in for a decoder layer: records its input (the first layer's) and its
    other arguments, passes the input through, and ends the pass at the last layer."""

    class Recorder(torch.nn.Module):
        def forward(self, x, *args, **kwargs):
            if first:
                record.append(x.detach())
            record.append((args, kwargs))
            if last:
                raise _Stop
            return x

    return Recorder()


def _capture(torch, model, layers, windows, device: str):
    """(first layer's inputs (n, seq, hidden), per layer: (args, kwargs)) of the windows;
    every window starts at position 0, so the arguments are the first window's for all."""
    originals = list(layers)
    records = [[] for _ in originals]
    try:
        for i in range(len(originals)):
            layers[i] = _recorder(torch, records[i], i == 0, i == len(originals) - 1)
        with torch.no_grad():
            for w in windows:
                try:
                    model(input_ids=torch.from_numpy(w)[None].to(device), use_cache=False)
                except _Stop:
                    pass
                else:
                    raise ConversionError("tune: the model never reached its last decoder layer")
    finally:
        for i, layer in enumerate(originals):
            layers[i] = layer
    hidden = torch.cat([x for x in records[0] if isinstance(x, torch.Tensor)])
    calls = [next(r for r in rec if isinstance(r, tuple)) for rec in records]
    return hidden.float(), calls


def _apply(torch, layer, call, xs):
    """The layer on every window of `xs`, without gradients."""
    args, kwargs = call
    with torch.no_grad():
        return torch.cat([_out(layer(xs[i : i + 1], *args, **kwargs)) for i in range(len(xs))])


def _out(y):
    return y[0] if isinstance(y, tuple) else y


def _head_model(torch, lm_config, weights: dict[str, np.ndarray], stream, tokens):
    """The causal LM reduced to what follows its layers: the embedding is a stub, every
    layer passes through except the first, which returns `stream`'s activations for the
    window being run (found by its tokens: equal windows have equal activations), and
    `weights` (the final norm, and ``lm_head.weight`` unless the head is to stay a shape on
    the meta device) are filled.
    Its logits are the full model's, with the family's own head logic (soft-capping)."""
    model = torch_models.skeleton(lm_config)
    _, layers = torch_models.decoder_layers(model)
    index = {row.tobytes(): i for i, row in enumerate(tokens)}
    current = [0]

    class Stub(torch.nn.Module):
        def forward(self, ids):
            current[0] = index[ids[0].cpu().numpy().tobytes()]
            return torch.zeros(*ids.shape, stream.shape[-1], device=stream.device)

    class Replay(torch.nn.Module):
        def __init__(self, first: bool):
            super().__init__()
            self.first = first

        def forward(self, x, *args, **kwargs):
            return stream[current[0]][None] if self.first else x

    model.set_input_embeddings(Stub())
    for i in range(len(layers)):
        layers[i] = Replay(i == 0)
    head = model.get_output_embeddings()
    head._parameters["weight"] = torch.nn.Parameter(
        torch.empty(head.weight.shape, device="meta"), requires_grad=False
    )
    torch_models.put(model, weights, stream.device)
    return model


def _tune_head(
    torch,
    lm_config,
    outside,
    embed_lm,
    float_tensors,
    planned,
    rounded,
    x_float,
    x_quant,
    tokens,
    options,
):
    """KL tuning of the output head's scales and biases (and the final norm's gain with
    `norms`) on the final hidden states: ({source module: parts}, {source name: gain},
    report), or nothing when the head is not quantized."""
    tied = "lm_head.weight" not in outside
    head_source = outside[embed_lm if tied else "lm_head.weight"].removesuffix(".weight")
    if head_source not in planned:
        return {}, {}, None
    rest = {
        lm: float_tensors[name]
        for lm, name in outside.items()
        if lm not in (embed_lm, "lm_head.weight")
    }
    head = {"lm_head.weight": float_tensors[outside[embed_lm if tied else "lm_head.weight"]]}
    teacher = _head_model(torch, lm_config, {**rest, **head}, x_float, tokens)
    student = _head_model(torch, lm_config, rest, x_quant, tokens)
    entry = planned[head_source]
    tuned, floats, report = tuning.tune_scales(
        teacher,
        student,
        {"lm_head": rounded[head_source]},
        {"lm_head": (entry["bits"], entry["group_size"])},
        tokens,
        epochs=options.epochs,
        lr=options.lr,
        train_norms=options.norms,
    )
    return {head_source: tuned["lm_head"]}, {outside[n]: a for n, a in floats.items()}, report


def _dequantized(parts: Parts, bits: int, group_size: int) -> np.ndarray:
    """The float32 weight of (wq, scales, biases)."""
    codes = tuning._codes(parts[0], parts[1], bits, group_size).astype(np.float32)
    s, b = tuning._float32(parts[1]), tuning._float32(parts[2])
    rows, groups = s.shape
    w = codes.reshape(rows, groups, -1) * s[..., None] + b[..., None]
    return w.reshape(rows, -1)


def tune_streamed(
    source: ModelSource,
    plan: dict[str, Any],
    rounded: Mapping[str, Parts],
    calibration: Calibration,
    options: TuneOptions,
    say: Say,
    mode: str,
    saved: Checkpoint,
    resume: bool = False,
    method: str = "",
    debias: bool | None = None,
) -> tuple[TunedResults, dict[str, np.ndarray], dict[str, Any]]:
    """Block-wise tuning of every decoder layer's planned matrices (module docstring):
    (parts by source module, tuned float tensors by source name, report)."""
    import mlx.core as mx
    import torch

    t0 = time.perf_counter()
    tokens, float_tensors, lm_config, lm_name = tuning_inputs(source, calibration, options)
    device = torch_models.device()
    model = torch_models.skeleton(lm_config)
    layers_path, layers = torch_models.decoder_layers(model)
    in_layer = re.compile(rf"^{re.escape(layers_path)}\.(\d+)\.(.+)$")
    by_layer: dict[int, dict[str, str]] = {}  # layer -> {name in the layer: source name}
    outside: dict[str, str] = {}
    for name, lm in lm_name.items():
        match = in_layer.match(lm)
        if match:
            by_layer.setdefault(int(match.group(1)), {})[match.group(2)] = name
        else:
            outside[lm] = name
    planned = {n.removesuffix(".weight"): e for n, e in plan["tensors"].items() if e["quantized"]}

    key = run_key(
        jang=__version__,
        kind="tune",
        plan=sorted((n, e["bits"], e["group_size"]) for n, e in planned.items()),
        method=method,
        debias=debias,
        source=str(getattr(source, "path", "")),
        options=repr(options),
        calibration=repr(calibration),
        tokens=hashlib.sha256(tokens.tobytes()).hexdigest(),
    )
    start = saved.begin(key, resume)
    n_layers = len(layers)
    if start:
        say(f"tune: resuming at layer {start} of {n_layers} from {saved.dir}")
        kept = saved.inputs()
        x_float = torch.from_numpy(np.array(kept["float"])).to(device)
        x_quant = torch.from_numpy(np.array(kept["quantized"])).to(device)
        del kept
    # the inputs of the first layer, float and quantized, and every layer's arguments
    head_names = {"lm_head.weight"}
    torch_models.put(
        model, {lm: float_tensors[n] for lm, n in outside.items() if lm not in head_names}, device
    )
    x, calls = _capture(torch, model, layers, tokens, device)
    embedding = model.get_input_embeddings().weight
    embed_lm = next(lm for lm in outside if model.get_parameter(lm) is embedding)
    if not start:
        x_float = x
        embed_source = outside[embed_lm].removesuffix(".weight")
        if embed_source in planned:
            entry = planned[embed_source]
            w = _dequantized(rounded[embed_source], entry["bits"], entry["group_size"])
            torch_models.put(model, {embed_lm: w}, device)
            x_quant, _ = _capture(torch, model, layers, tokens, device)
        else:
            x_quant = x.clone()
    del x
    torch_models.release(model)
    say(
        f"tune: block-wise, {options.epochs} epochs over {len(tokens)} windows x "
        f"{tokens.shape[1]} tokens per layer (lr {options.lr:g}, on {device})"
    )
    bar = None
    if mode == "bar":
        from tqdm import tqdm

        bar = tqdm(total=n_layers, initial=start, desc="tune", unit="layer", file=sys.stderr)
    errors = []
    try:
        for li in range(start, n_layers):
            layer = layers[li]
            names = by_layer.get(li, {})
            torch_models.put(layer, {n: float_tensors[s] for n, s in names.items()}, device)
            targets = _apply(torch, layer, calls[li], x_float)
            quantized, widths = {}, {}
            for n, s in names.items():
                module = s.removesuffix(".weight")
                if n.endswith(".weight") and module in planned:
                    inner = n.removesuffix(".weight")
                    quantized[inner] = rounded[module]
                    widths[inner] = (planned[module]["bits"], planned[module]["group_size"])
            tuned, floats = {}, {}
            if quantized:
                args, kwargs = calls[li]

                def run(block, xs, args=args, kwargs=kwargs):
                    return _out(block(xs, *args, **kwargs))

                tuned, floats, report = tuning.tune_block(
                    layer,
                    run,
                    quantized,
                    widths,
                    x_quant,
                    targets,
                    epochs=options.epochs,
                    lr=options.lr,
                    train_norms=options.norms,
                )
                errors.append((report.error_first_epoch, report.error_last_epoch))
            x_quant = _apply(torch, layer, calls[li], x_quant)
            x_float = targets
            del targets
            tuning.detach(layer)
            torch_models.release(layer)
            trim_memory()  # the layer's reads went through MLX's buffer cache
            saved.save_layer(
                li,
                {names[f"{n}.weight"].removesuffix(".weight"): p for n, p in tuned.items()},
                lambda xf=x_float, xq=x_quant: {
                    "float": mx.array(xf.cpu().numpy()),
                    "quantized": mx.array(xq.cpu().numpy()),
                },
                last=li == n_layers - 1,
                floats={names[n]: mx.array(a) for n, a in floats.items()},
                stats=dict(zip(("first", "last"), errors[-1], strict=True)) if quantized else None,
            )
            if bar is not None:
                last = f"error {errors[-1][1]:.4f}" if quantized else ""
                bar.set_postfix_str(last, refresh=False)
                bar.update(1)
            elif mode == "json":
                event = {"layer": li + 1, "layers": n_layers}
                if quantized:
                    event["error_first"], event["error_last"] = (round(e, 6) for e in errors[-1])
                emit_event("tune", **event)
            else:
                say(f"tune: layer {li + 1}/{n_layers}")
    finally:
        if bar is not None:
            bar.close()
    head, head_floats, head_report = _tune_head(
        torch, lm_config, outside, embed_lm, float_tensors, planned, rounded, x_float, x_quant,
        tokens, options,
    )  # fmt: skip
    floats = {n: np.array(a) for n, a in saved.floats().items()} | head_floats
    errors = [(st["first"], st["last"]) for st in saved.stats() if st]  # resumed layers too
    unknown = [n for n in floats if n not in lm_name]
    if unknown:
        raise ConversionError(f"tune: tuned tensor {unknown[0]} is not in the source")
    report = {
        "scope": "block",
        "windows": int(tokens.shape[0]),
        "seq_len": int(tokens.shape[1]),
        "epochs": options.epochs,
        "lr": options.lr,
        "steps_per_layer": options.epochs * int(tokens.shape[0]),
        "layers_resumed": start,
        "norms": len(floats),
        "error_first_epoch": float(np.mean([e[0] for e in errors])) if errors else None,
        "error_last_epoch": float(np.mean([e[1] for e in errors])) if errors else None,
        "head_kl_first_epoch": head_report.kl_first_epoch if head_report else None,
        "head_kl_last_epoch": head_report.kl_last_epoch if head_report else None,
        "seconds": time.perf_counter() - t0,
    }
    if errors:
        say(
            f"tune: mean layer output error {report['error_first_epoch']:.4f} (first epoch) -> "
            f"{report['error_last_epoch']:.4f} (last), {report['seconds']:.0f} s"
        )
    if head_report:
        say(
            f"tune: output head KL {head_report.kl_first_epoch:.3f} (first epoch) -> "
            f"{head_report.kl_last_epoch:.3f} (last)"
        )
    return TunedResults(rounded, saved, head), floats, report
