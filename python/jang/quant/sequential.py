"""GPTQ over a whole mlx-lm model: layer by layer, sublayer by sublayer, on calibration text.

The inputs of the first decoder layer (and the masks and other arguments each layer gets)
are captured by running the model with every layer replaced by a recorder. Then, per
layer, the linear sublayers are grouped into *stages* of modules that read the same
input (q/k/v, then o, then gate/up, then down for a Llama block), found by watching one
forward pass. Stage by stage, the layer is run on all calibration batches (stopping as
soon as the stage's input is seen), the stage's Hessian is accumulated, and its planned
modules are GPTQ-quantized and their weights replaced by the dequantized ones, so later
stages and layers see the quantized model's activations. The layer's output on the
calibration batches becomes the next layer's input. Memory: one layer's weights plus the
calibration activations (two copies of batch x seq x hidden) plus one Hessian per stage.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from jang.quant import cpu_forward
from jang.quant.gptq import Hessian, default_backend, gptq_quantize
from jang.quant.groups import QuantizationError, check_params, to_numpy32
from jang.quant.tensor import dequantize_tensor, quantize_tensor

log = logging.getLogger(__name__)

LAYER_PATHS = (
    "model.layers",
    "layers",
    "language_model.model.layers",
    "model.language_model.layers",
)

Quantized = tuple[mx.array, mx.array, mx.array]


class _Stop(Exception):
    """Raised inside a forward pass once everything needed from it has been seen."""


def _get(root, path: str):
    obj = root
    for part in path.split("."):
        obj = obj[int(part)] if isinstance(obj, (list, tuple)) else getattr(obj, part)
    return obj


def _set(root, path: str, value) -> None:
    parent_path, _, last = path.rpartition(".")
    parent = _get(root, parent_path) if parent_path else root
    if isinstance(parent, list):
        parent[int(last)] = value
    else:
        setattr(parent, last, value)


def find_layers(model: nn.Module) -> tuple[str, list]:
    """(path, list) of the decoder layers of an mlx-lm model."""
    for path in LAYER_PATHS:
        try:
            layers = _get(model, path)
        except (AttributeError, KeyError, IndexError, TypeError):
            continue
        if isinstance(layers, list) and layers and isinstance(layers[0], nn.Module):
            return path, layers
    raise QuantizationError(f"cannot find the decoder layers (tried {', '.join(LAYER_PATHS)})")


def layer_paths(model: nn.Module, layers: list) -> list[str]:
    """Each decoder layer's module path in `model` ("model.layers.3"; where `find_layers`
    found the list through a property, e.g. a Mamba's ``layers``, the real
    "backbone.layers.3"): the prefix of its parameters' and plan entries' names."""
    where = {id(m): name for name, m in model.named_modules()}
    return [where[id(layer)] for layer in layers]


def _outside(plan: Mapping[str, tuple[int, int]], paths: list[str]) -> list[str]:
    """The planned modules that are in no decoder layer."""
    return [p for p in plan if not any(p.startswith(lp + ".") for lp in paths)]


class _Recorder:
    """Stands in for a decoder layer: records its arguments and passes the input through."""

    def __init__(self, layer, record: list, first: bool, last: bool):
        self._layer, self._record, self._first, self._last = layer, record, first, last

    def __getattr__(self, key):
        return getattr(self._layer, key)

    def __call__(self, x, *args, **kwargs):
        if self._first:
            self._record.append(x)
        self._record.append((args, kwargs))
        if self._last:
            raise _Stop
        return x


class _Tap:
    """Stands in for a Linear inside the layer being processed; its driver runs each call."""

    def __init__(self, module: nn.Linear, name: str, driver):
        self.module, self.name, self._driver = module, name, driver
        self.refresh()

    def refresh(self) -> None:
        """Re-read the module's weights (after they were replaced by quantized ones)."""
        self._run = cpu_forward._NumpyLinear(self.module) if self._driver.numpy else self.module

    def compute(self, x: mx.array) -> mx.array:
        return self._run(x)

    def __getattr__(self, key):
        return getattr(self.module, key)

    def __setattr__(self, key, value):
        if key == "weight":  # a tap must never shadow the module's weight
            raise AttributeError("set the weight on tap.module")
        super().__setattr__(key, value)

    def __call__(self, x):
        return self._driver.linear(self, x)


# Bytes of layer intermediates kept between the passes over one layer (see _LayerDriver).
MEMO_BYTES = 4 << 30


class _LayerDriver:
    """Runs one decoder layer with its Linear sublayers (and attention) tapped.

    A layer is run once per stage on every calibration batch, each pass stopping at the
    stage being collected. The result of a Linear whose stage is already final, or of an
    attention call that only reads such results, is the same in every later pass over the
    same batch, so it is kept (up to MEMO_BYTES) and reused instead of recomputed: the
    passes then cost about one forward of the layer in total, not one per stage.
    """

    def __init__(self, layer: nn.Module, numpy: bool, memo_bytes: int | None = None):
        self.layer, self.numpy = layer, numpy
        self.names = [n for n, m in layer.named_modules() if type(m) is nn.Linear and n]
        self.mode = "pass"
        self.calls: list[tuple[str, mx.array]] = []
        self.events: list[str] = []  # discover: the names of tap calls, "" for attention
        self.count = 0
        self.stop_after = -1
        self.hessian: Hessian | None = None
        self.taps = {n: _Tap(_get(layer, n), n, self) for n in self.names}
        self.ready: list[int] = []  # per event: the last stage its result depends on
        self.stage = 0  # passes of collect(): stages before this one are final
        self.batch = 0
        self.pos = 0
        self.memo: dict[tuple[int, int], mx.array] = {}
        self.memo_bytes = MEMO_BYTES if memo_bytes is None else memo_bytes
        self.memo_used = 0

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        original = mx.fast.scaled_dot_product_attention
        for n, tap in self.taps.items():
            _set(self.layer, n, tap)
        mx.fast.scaled_dot_product_attention = self.attention
        try:
            yield
        finally:
            mx.fast.scaled_dot_product_attention = original
            for n, tap in self.taps.items():
                _set(self.layer, n, tap.module)

    def _reuse(self, compute: Callable[[], mx.array]) -> mx.array:
        """The result of the current event: kept from an earlier pass, or computed."""
        pos = self.pos
        self.pos += 1
        key = (pos, self.batch)
        if key in self.memo:
            return self.memo[key]
        y = compute()
        final = pos < len(self.ready) and self.ready[pos] < self.stage
        if final and self.memo_used + y.nbytes <= self.memo_bytes:
            mx.eval(y)
            self.memo[key] = y
            self.memo_used += y.nbytes
        return y

    def attention(self, queries, keys, values, *, scale, mask=None, sinks=None, stream=None):
        if self.mode == "discover":
            self.events.append("")
        if self.numpy:
            fn = cpu_forward.attention
        else:
            fn = cpu_forward.ORIGINAL_ATTENTION
        return self._reuse(
            lambda: fn(queries, keys, values, scale=scale, mask=mask, sinks=sinks, stream=stream)
        )

    def linear(self, tap: _Tap, x: mx.array) -> mx.array:
        if self.mode == "discover":
            self.calls.append((tap.name, x))  # keeping x alive keeps id(x) unique
            self.events.append(tap.name)
        elif self.mode == "collect":
            if self.count == self.stop_after - self.stage_len + 1:
                self.hessian.add(x)
            self.count += 1
            if self.count == self.stop_after + 1:
                raise _Stop
        return self._reuse(lambda: tap.compute(x))

    def release(self) -> None:
        """Drop what the passes kept: the taps (whose numpy copies of the layer point back
        at this driver, a cycle only the garbage collector would break), the last Hessian
        and the kept intermediates, so a finished layer's memory returns at once."""
        self.taps.clear()
        self.hessian = None
        self.memo.clear()
        self.memo_used = 0

    def stages(self, x, args, kwargs) -> list[tuple[int, list[str]]]:
        """Runs of consecutive Linear calls that share one input: [(last call index, names)]."""
        self.mode, self.calls, self.events, self.pos = "discover", [], [], 0
        self.layer(x, *args, **kwargs)
        self.mode = "pass"
        out: list[tuple[int, list[str]]] = []
        prev = None
        for i, (name, inp) in enumerate(self.calls):
            if out and inp is prev:
                out[-1] = (i, [*out[-1][1], name])
            else:
                out.append((i, [name]))
            prev = inp
        self.calls = []
        stage_of = {n: k for k, (_, names) in enumerate(out) for n in names}
        self.ready, last = [], -1
        for name in self.events:
            if name:
                last = max(last, stage_of[name])
                self.ready.append(stage_of[name])
            else:
                self.ready.append(last)
        self.stage = 0
        return out

    def collect(self, stage: int, stage_end: int, stage_len: int, dim: int, backend: str, batches):
        """Hessian of one stage's input over all batches, stopping each pass at the stage."""
        self.mode, self.stop_after, self.stage_len = "collect", stage_end, stage_len
        self.stage = stage
        self.hessian = Hessian(dim, backend)
        for b, (x, args, kwargs) in enumerate(batches):
            self.count, self.pos, self.batch = 0, 0, b
            try:
                self.layer(x, *args, **kwargs)
            except _Stop:
                pass
        self.mode = "pass"
        return self.hessian

    def outputs(self, batches) -> list[mx.array]:
        """The layer's output on every batch, with every stage final."""
        self.mode, self.stage = "pass", len(self.ready)
        out = []
        for b, (x, args, kwargs) in enumerate(batches):
            self.pos, self.batch = 0, b
            y = self.layer(x, *args, **kwargs)
            mx.eval(y)
            out.append(y)
        self.memo.clear()
        self.memo_used = 0
        return out


@contextlib.contextmanager
def _float32(layer: nn.Module, keep: list[str]) -> Iterator[None]:
    """Run `layer` in float32 (faster and more exact on the CPU) except the modules in
    `keep`, whose weights are the ones being quantized and keep their dtype."""
    originals = [
        (path, a)
        for path, a in tree_flatten(layer.parameters())
        if a.dtype in (mx.float16, mx.bfloat16) and not any(path.startswith(k + ".") for k in keep)
    ]
    layer.update(tree_unflatten([(p, a.astype(mx.float32)) for p, a in originals]))
    try:
        yield
    finally:
        layer.update(tree_unflatten(originals))


def _batches(tokens, batch_size: int) -> list[mx.array]:
    tokens = mx.array(tokens)
    if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise QuantizationError(f"calibration tokens must be (samples, length), got {tokens.shape}")
    return [tokens[i : i + batch_size] for i in range(0, tokens.shape[0], batch_size)]


def _capture(model: nn.Module, layers: list, batches: list[mx.array]):
    """Per batch: the first layer's input and every layer's (args, kwargs)."""
    captured = []
    originals = list(layers)
    try:
        for batch in batches:
            records = [[] for _ in layers]
            for i, layer in enumerate(originals):
                layers[i] = _Recorder(layer, records[i], i == 0, i == len(layers) - 1)
            try:
                model(batch)
            except _Stop:
                pass
            else:
                raise QuantizationError("the model never reached its last decoder layer")
            h = records[0][0].astype(mx.float32)
            mx.eval(h)
            captured.append((h, [r[-1] for r in records]))
    finally:
        layers[:] = originals
    return captured


def _quantized_module(module, wq, scales, biases, bits: int, group_size: int):
    if isinstance(module, nn.Embedding):
        q = nn.QuantizedEmbedding(1, 32, group_size=32, bits=bits)
        q.num_embeddings, q.dims = module.weight.shape
    else:
        has_bias = "bias" in module
        q = nn.QuantizedLinear(32, 1, bias=has_bias, group_size=32, bits=bits)
        if has_bias:
            q.bias = module.bias
    q.group_size = group_size
    q.weight, q.scales, q.biases = wq, scales, biases
    return q


def _gptq_layer(
    driver: _LayerDriver, planned: Mapping[str, tuple[int, int]], batches, backend: str, options
) -> Iterator[tuple[str, Quantized]]:
    """GPTQ of one layer's planned Linears, stage by stage; yields (name, quantized).

    The caller must install each result into the layer before the next is requested,
    so that later stages see the earlier stages' quantized outputs.
    """
    x, args, kwargs = batches[0]
    if x.shape[0] > 1 and not any(
        isinstance(a, mx.array) and a.ndim and a.shape[0] == x.shape[0]
        for a in (*args, *kwargs.values())
    ):
        x = x[:1]  # the call structure does not depend on the batch size
    stages = driver.stages(x, args, kwargs)
    for k, (end, names) in enumerate(stages):
        todo = [n for n in names if n in planned]
        if not todo:
            continue
        dim = driver.taps[todo[0]].module.weight.shape[1]
        hess = driver.collect(k, end, len(names), dim, backend, batches)
        for n in todo:
            bits, gs = planned[n]
            weight = driver.taps[n].module.weight
            yield n, gptq_quantize(weight, hess, bits, gs, backend=backend, **options)


def linear_names(layer: nn.Module) -> list[str]:
    """The plain nn.Linear sublayers of a decoder layer (what GPTQ quantizes in it)."""
    return [n for n, m in layer.named_modules() if type(m) is nn.Linear and n]


def gptq_layer(
    layer: nn.Module,
    planned: Mapping[str, tuple[int, int]],
    batch_args: list,
    backend: str,
    options: dict,
    originals: list | None = None,
) -> tuple[dict[str, Quantized], list[mx.array]]:
    """GPTQ of one decoder layer's planned Linears on its inputs `batch_args` (per batch:
    (x, args, kwargs)); returns ({name: quantized}, the layer's outputs per batch).

    The planned weights are replaced by their dequantized values (later stages, and the
    outputs, see the quantized layer); with `originals`, each (module, float weight) is
    appended there first so the caller can put the float weights back."""
    driver = _LayerDriver(layer, backend == "numpy")
    results: dict[str, Quantized] = {}
    try:
        with _float32(layer, driver.names), driver.installed():
            if planned:
                for n, q in _gptq_layer(driver, planned, batch_args, backend, options):
                    results[n] = q
                    mod = driver.taps[n].module
                    if originals is not None:
                        originals.append((mod, mod.weight))
                    bits, gs = planned[n]
                    mod.weight = dequantize_tensor(*q, bits, gs).astype(mod.weight.dtype)
                    driver.taps[n].refresh()
            outputs = driver.outputs(batch_args)
    finally:
        driver.release()
    return results, outputs


def _check_plan(modules: dict, plan: Mapping[str, tuple[int, int]]) -> None:
    for path, spec in plan.items():
        if path not in modules:
            raise QuantizationError(f"plan names {path!r}, which is not a module of this model")
        bits, group_size = spec
        check_params(bits, group_size)
        m = modules[path]
        if type(m) not in (nn.Linear, nn.Embedding):
            raise QuantizationError(
                f"{path} is a {type(m).__name__}; only Linear (GPTQ) and Embedding (clip) "
                "modules can be quantized here"
            )
        if m.weight.shape[-1] % group_size:
            raise QuantizationError(
                f"{path}: input size {m.weight.shape[-1]} is not divisible by group size "
                f"{group_size}"
            )


def gptq_model(
    model: nn.Module,
    plan: Mapping[str, tuple[int, int]],
    tokens,
    *,
    batch_size: int = 8,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = True,
    params: str = "clip",
    replace: bool = True,
    backend: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Quantized]:
    """Quantize the planned modules of an mlx-lm model with GPTQ, sequentially.

    `plan` maps module paths (``"model.layers.0.self_attn.q_proj"``) to ``(bits,
    group_size)``; modules not in it stay float. `tokens` is an int array (samples,
    length) of calibration text. Linear modules inside the decoder layers get GPTQ.
    Planned modules outside them (embeddings, a separate lm_head) first get the
    importance-free clip search; then the one the model calls as its output head (a
    separate lm_head, or a tied embedding's ``as_linear``) is GPTQ-quantized on the
    Hessian of its input, the quantized model's final hidden states. Returns
    ``{path: (wq, scales, biases)}`` in MLX's affine layout; with `replace`, the modules
    are also swapped for ``nn.QuantizedLinear`` / ``nn.QuantizedEmbedding`` in place,
    otherwise the model keeps its original float weights.
    """
    backend = backend or default_backend()
    report = progress or log.info
    _, layers = find_layers(model)
    modules = dict(model.named_modules())
    _check_plan(modules, plan)

    options = dict(block_size=block_size, damp=damp, act_order=act_order, params=params)
    results: dict[str, Quantized] = {}
    batches = _batches(tokens, batch_size)
    # Modules outside the decoder layers (embeddings, a separate lm_head) first, so the
    # captured layer inputs already carry the embedding's quantization error.
    restore = []
    paths = layer_paths(model, layers)
    outside = {p: modules[p].weight for p in _outside(plan, paths)}
    for path, (bits, gs) in plan.items():
        if path not in outside:
            continue
        module = modules[path]
        q = quantize_tensor(module.weight, bits, gs, method="clip")
        results[path] = q
        if replace:
            _set(model, path, _quantized_module(module, *q, bits, gs))
        else:
            restore.append((module, module.weight))
            module.weight = dequantize_tensor(*q, bits, gs).astype(module.weight.dtype)
        report(f"{path}: clip (outside the decoder layers)")

    # Capturing stops at the first layer, before any attention; inside the layers the
    # driver routes attention itself (`_LayerDriver.installed`).
    captured = _capture(model, layers, batches)
    hs = [h for h, _ in captured]
    for li, layer in enumerate(layers):
        lp = f"{paths[li]}."
        planned = {n: plan[lp + n] for n in linear_names(layer) if lp + n in plan}
        batch_args = [(hs[b], *captured[b][1][li]) for b in range(len(batches))]
        done, hs = gptq_layer(
            layer, planned, batch_args, backend, options, None if replace else restore
        )
        results.update((lp + n, q) for n, q in done.items())
        if planned:
            report(f"layer {li}: GPTQ {', '.join(planned)}")
        if replace:
            for n, (bits, gs) in planned.items():
                _set(layer, n, _quantized_module(_get(layer, n), *results[lp + n], bits, gs))
    head = _head_gptq(model, plan, outside, layers, batches, hs, backend, options)
    if head is not None:
        path, q = head
        results[path] = q
        if replace:
            bits, gs = plan[path]
            _set(model, path, _quantized_module(modules[path], *q, bits, gs))
        report(f"{path}: GPTQ as the output head")
    for module, weight in restore:
        module.weight = weight

    return results


def drop_weights(module: nn.Module) -> None:
    """Replace a module's parameters by unevaluated zeros of the same shapes: the module
    keeps its structure and costs no memory until it is loaded again."""
    module.update(
        tree_unflatten(
            [(k, mx.zeros(v.shape, v.dtype)) for k, v in tree_flatten(module.parameters())]
        )
    )


class _Floats(Mapping):
    """The float weights of the modules outside the layers, read again only when asked."""

    def __init__(self, paths: list[str], read: Callable[[str], mx.array]):
        self._paths, self._read = paths, read

    def __getitem__(self, path: str) -> mx.array:
        if path not in self._paths:
            raise KeyError(path)
        return self._read(path)

    def __iter__(self):
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


def gptq_stream(
    model: nn.Module,
    plan: Mapping[str, tuple[int, int]],
    tokens,
    *,
    load_layer: Callable[[int, nn.Module], None],
    finish_layer: Callable[[int, dict[str, Quantized], list[mx.array]], None],
    float_weight: Callable[[str], mx.array],
    start: int = 0,
    inputs: list[mx.array] | None = None,
    batch_size: int = 8,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = True,
    params: str = "clip",
    backend: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Quantized]:
    """`gptq_model` with one decoder layer in memory at a time: the same codes.

    The model holds float weights outside its decoder layers only; `load_layer(i, layer)`
    fills layer i just before it is quantized, and its weights are dropped right after
    `finish_layer(i, {path: quantized}, outputs)` has taken its results and its outputs
    on the calibration batches (the next layer's inputs: a caller may save them to resume
    from). `start` and `inputs` resume at layer `start` from such saved inputs. The
    planned modules outside the layers get the clip search first, as in `gptq_model`;
    their weights are then dropped, and the output head's float weight is asked of
    `float_weight(path)` again for its GPTQ at the end. Returns the results of the
    modules outside the layers; `progress(done, total)` after each layer.
    """
    backend = backend or default_backend()
    _, layers = find_layers(model)
    modules = dict(model.named_modules())
    _check_plan(modules, plan)
    options = dict(block_size=block_size, damp=damp, act_order=act_order, params=params)
    batches = _batches(tokens, batch_size)
    paths = layer_paths(model, layers)
    outside = _outside(plan, paths)
    results: dict[str, Quantized] = {}
    for path in outside:
        bits, gs = plan[path]
        module = modules[path]
        q = quantize_tensor(module.weight, bits, gs, method="clip")
        results[path] = q
        module.weight = dequantize_tensor(*q, bits, gs).astype(module.weight.dtype)
        mx.eval(module.weight, *q)
    captured = _capture(model, layers, batches)
    for path in outside:  # the head's input is the layers' output: no need of these now
        drop_weights(modules[path])
    hs = list(inputs) if inputs is not None else [h for h, _ in captured]
    if len(hs) != len(batches):
        raise QuantizationError(f"{len(hs)} saved input batches for {len(batches)} batches")
    for li in range(start, len(layers)):
        layer = layers[li]
        load_layer(li, layer)
        lp = f"{paths[li]}."
        planned = {n: plan[lp + n] for n in linear_names(layer) if lp + n in plan}
        batch_args = [(hs[b], *captured[b][1][li]) for b in range(len(batches))]
        done, hs = gptq_layer(layer, planned, batch_args, backend, options)
        del batch_args
        drop_weights(layer)
        finish_layer(li, {lp + n: q for n, q in done.items()}, hs)
        del done
        if progress is not None:
            progress(li + 1, len(layers))
    head = _head_gptq(
        model, plan, _Floats(outside, float_weight), layers, batches, hs, backend, options
    )
    if head is not None:
        results[head[0]] = head[1]
    return results


class _HeadSeen(Exception):
    """Raised by `_HeadRecorder` with the head's input; ends the forward pass."""

    def __init__(self, path: str, x: mx.array):
        super().__init__(path)
        self.path, self.x = path, x


class _HeadRecorder:
    """Stands in for a module outside the decoder layers. Used as a matrix (a Linear's
    call, an Embedding's ``as_linear``) once the layers have run, it raises `_HeadSeen`;
    before them (an embedding's lookup, an input projection) it runs as usual."""

    def __init__(self, module: nn.Module, path: str, after_layers: list[bool]):
        self._module, self._path, self._after = module, path, after_layers

    def __getattr__(self, key):
        return getattr(self._module, key)

    def __call__(self, x):
        if not self._after[0] or hasattr(self._module, "as_linear"):
            return self._module(x)
        raise _HeadSeen(self._path, x)

    def as_linear(self, x):
        if not self._after[0]:
            return self._module.as_linear(x)
        raise _HeadSeen(self._path, x)


class _Replay:
    """Stands in for a decoder layer: the first returns the stored last-layer output, the
    others pass their input through, so the model runs only what follows its layers; the
    last marks that the layers are done."""

    def __init__(self, layer, output: mx.array | None, after_layers: list[bool] | None):
        self._layer, self._output, self._after = layer, output, after_layers

    def __getattr__(self, key):
        return getattr(self._layer, key)

    def __call__(self, x, *args, **kwargs):
        if self._after is not None:
            self._after[0] = True
        return x if self._output is None else self._output


def _head_gptq(model, plan, floats, layers, batches, hs, backend, options):
    """GPTQ of the planned module that serves as the output head (a separate lm_head or a
    tied embedding), on the Hessian of its inputs: the quantized model's final hidden
    states, after whatever follows the layers (the final norm). The clip result stays
    where no planned module is called as the head. Returns (path, quantized) or None."""
    outside = list(floats)
    if not outside:
        return None
    modules = dict(model.named_modules())
    originals = list(layers)
    last = len(originals) - 1
    hessian, head = None, None
    after_layers = [False]
    try:
        for p in outside:
            _set(model, p, _HeadRecorder(modules[p], p, after_layers))
        for batch, h in zip(batches, hs, strict=True):
            after_layers[0] = False
            layers[:] = [
                _Replay(lay, h if i == 0 else None, after_layers if i == last else None)
                for i, lay in enumerate(originals)
            ]
            try:
                model(batch)
            except _HeadSeen as seen:
                head = seen.path
                if hessian is None:
                    hessian = Hessian(seen.x.shape[-1], backend)
                hessian.add(seen.x.astype(mx.float32))
            else:
                return None
    finally:
        layers[:] = originals
        for p in outside:
            _set(model, p, modules[p])
    bits, gs = plan[head]
    return head, gptq_quantize(floats[head], hessian, bits, gs, backend=backend, **options)


class _SquareSums:
    """Tap driver that sums the squared inputs of each Linear (diag of X^T X)."""

    def __init__(self, numpy: bool):
        self.numpy = numpy
        self.sums: dict[str, np.ndarray] = {}

    def linear(self, tap: _Tap, x: mx.array) -> mx.array:
        a = to_numpy32(x).reshape(-1, x.shape[-1])
        s = np.einsum("ij,ij->j", a, a)
        self.sums[tap.name] = s if tap.name not in self.sums else self.sums[tap.name] + s
        return tap.compute(x)


def activation_importance(
    model: nn.Module,
    tokens,
    *,
    batch_size: int = 8,
    backend: str | None = None,
) -> dict[str, np.ndarray]:
    """``{path: diag(X^T X)}`` (float32, one value per input channel) for every Linear.

    One forward pass of the float model over the calibration tokens (activations in
    float32); the result is the `importance` argument of the clip search
    (`quantize_tensor(..., importance=...)`).
    """
    backend = backend or default_backend()
    stats = _SquareSums(backend == "numpy")
    prefix, layers = find_layers(model)
    names = [n for n, m in model.named_modules() if type(m) is nn.Linear and n]
    taps = {n: _Tap(_get(model, n), n, stats) for n in names}
    # Without a Linear after the layers (tied embeddings), stop after the last layer.
    tail = any(not n.startswith(prefix + ".") for n in names)
    last = layers[-1]
    attention = cpu_forward.numpy_attention() if stats.numpy else contextlib.nullcontext()
    try:
        for n, tap in taps.items():
            _set(model, n, tap)
        if not tail:
            layers[-1] = _StopAfter(last)
        with attention, _float32(model, names):
            for batch in _batches(tokens, batch_size):
                try:
                    mx.eval(model(batch))
                except _Stop:
                    pass
    finally:
        layers[-1] = last
        for n, tap in taps.items():
            _set(model, n, tap.module)
    return stats.sums


class _StopAfter:
    """Runs a layer, then ends the forward pass."""

    def __init__(self, layer):
        self._layer = layer

    def __getattr__(self, key):
        return getattr(self._layer, key)

    def __call__(self, *args, **kwargs):
        mx.eval(self._layer(*args, **kwargs))
        raise _Stop
