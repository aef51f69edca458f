"""Experiment: measured sensitivities as the planner's alphas (a negative result so far).

The planner minimises ``sum alpha * e**2`` (``e``: a matrix's relative weight error) with
priors by role for ``alpha`` (`jang.plan`). This script measures them instead, on a few
windows of the built-in calibration text, in one of two ways:

* ``isolated``: each decision's matrices RTN-quantized alone at a reference width, the rest
  of the model float; ``alpha = KL(float || perturbed) / e**2``. To second order KL grows as
  the square of a small perturbation and perturbations of different matrices add, so the
  objective would estimate the plan's KL.
* ``marginal``: around the prior plan at the target size (everything quantized), each
  decision restored to float alone; ``alpha = (KL(plan) - KL(plan, this one float)) / e**2``,
  which includes the interactions the isolated measurement misses.

Then it plans with those alphas (`make_plan(alphas=...)`), converts with RTN and prints the
plan; evaluate the bundle with ``jang eval OUT --ref SRC --windows 8``. Each measurement runs
only the layers from the decision's own layer on (the inputs of every layer are kept from one
pass), with the linear layers, attention and the head in numpy (`jang.quant.cpu_forward`).

    python bench/experiments/sensitivity_alphas.py smollm2 --bits 3.0 --mode isolated -o /tmp/s30i
    python bench/experiments/sensitivity_alphas.py smollm2 --bits 3.0 --mode marginal -o /tmp/s30m
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from jang.quant import cpu_forward
from jang.quant.groups import to_numpy32
from jang.quant.sequential import _get, find_layers

REFERENCE_WIDTH = (3, 64)  # (bits, group size) of the quantized-alone measurement
WINDOWS = 2
WINDOW_LENGTH = 256


class SensitivityError(ValueError):
    """A decision's matrices cannot be found in the model, or the model cannot be run."""


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


class _Identity:
    """Stands in for a decoder layer before the first one that must run."""

    def __init__(self, layer, value: mx.array | None = None):
        self._layer, self._value = layer, value

    def __getattr__(self, key):
        return getattr(self._layer, key)

    def __call__(self, x, *args, **kwargs):
        return x if self._value is None else self._value


class _Capture:
    """Stands in for a decoder layer: keeps its input, then runs it."""

    def __init__(self, layer, store: list):
        self._layer, self._store = layer, store

    def __getattr__(self, key):
        return getattr(self._layer, key)

    def __call__(self, x, *args, **kwargs):
        self._store.append(x)
        return self._layer(x, *args, **kwargs)


class Probe:
    """A float model and calibration tokens, ready to measure one perturbation at a time.

    Linear layers, attention and the head run in numpy while the probe is open (`open`);
    `kl(path, weight)` swaps one module's weight, runs the model from that module's layer
    on, and returns the mean KL to the float model's output.
    """

    def __init__(self, model: nn.Module, tokens: mx.array):
        self.model = model
        self.tokens = tokens
        self.layer_path, self.layers = find_layers(model)
        self._head_weight: np.ndarray | None = None
        self._embed = None
        self.inputs: list[mx.array] = []
        self.ref_p: np.ndarray | None = None
        self.ref_negent: np.ndarray | None = None

    # ---------------------------------------------------------------- set-up --
    @contextlib.contextmanager
    def open(self) -> Iterator[Probe]:
        """Run in numpy; keep the float model's output distribution and layer inputs."""
        with cpu_forward.numpy_model(self.model), self._numpy_head():
            logits = self._capture()
            logp = _log_softmax(logits)
            del logits
            self.ref_p = np.exp(logp)
            self.ref_negent = (self.ref_p * logp).sum(axis=-1)
            del logp
            try:
                yield self
            finally:
                self.inputs, self.ref_p, self.ref_negent = [], None, None

    @contextlib.contextmanager
    def base(self, weights: dict[str, mx.array]) -> Iterator[float]:
        """Measure around an operating point: every module in `weights` takes its weight
        (e.g. a quantized plan) and the layer inputs are those of that model. Yields its
        KL to the float model; `kl` then perturbs this model instead of the float one."""
        assert self.ref_p is not None, "use inside `with probe.open():`"
        restore = [self._swap(path, w) for path, w in weights.items()]
        float_inputs = self.inputs
        try:
            yield self._kl_of(self._capture())
        finally:
            self.inputs = float_inputs
            for undo in reversed(restore):
                undo()

    def _capture(self) -> np.ndarray:
        """Logits of the whole model; records the input of every layer in `inputs`."""
        store: list[mx.array] = []
        originals = list(self.layers)
        try:
            for i, layer in enumerate(originals):
                self.layers[i] = _Capture(layer, store)
            logits = self._logits()
        finally:
            self.layers[:] = originals
        mx.eval(*store)
        self.inputs = store
        return logits

    def _kl_of(self, logits: np.ndarray) -> float:
        cross = (self.ref_p * _log_softmax(logits)).sum(axis=-1)
        return float(np.mean(self.ref_negent - cross))

    @contextlib.contextmanager
    def _numpy_head(self) -> Iterator[None]:
        """A tied head (`embed_tokens.as_linear`) through numpy; an untied one is a Linear."""
        embed = getattr(getattr(self.model, "model", self.model), "embed_tokens", None)
        if embed is None or not isinstance(embed, nn.Embedding):
            yield
            return
        self._embed = embed
        self._head_weight = to_numpy32(embed.weight)

        def as_linear(x: mx.array) -> mx.array:
            a = to_numpy32(x)
            y = a.reshape(-1, a.shape[-1]) @ self._head_weight.T
            return mx.array(y.reshape(*x.shape[:-1], -1))

        object.__setattr__(embed, "as_linear", as_linear)
        try:
            yield
        finally:
            del embed.__dict__["as_linear"]
            self._embed = None

    def _logits(self) -> np.ndarray:
        out = self.model(self.tokens)
        return np.asarray(out.astype(mx.float32)).reshape(-1, out.shape[-1])

    # ----------------------------------------------------------- measurement --
    def layer_of(self, path: str) -> int | None:
        prefix = self.layer_path + "."
        if not path.startswith(prefix):
            return None
        return int(path[len(prefix) :].split(".", 1)[0])

    def kl(self, perturbed: dict[str, mx.array]) -> float:
        """Mean per-token KL(float || model with `perturbed` module weights)."""
        assert self.ref_p is not None, "use inside `with probe.open():`"
        layers = [self.layer_of(p) for p in perturbed]
        start = 0 if any(x is None for x in layers) else min(layers)
        restore = [self._swap(path, w) for path, w in perturbed.items()]
        originals = list(self.layers)
        try:
            if start > 0:
                self.layers[0] = _Identity(originals[0], self.inputs[start])
                for i in range(1, start):
                    self.layers[i] = _Identity(originals[i])
            logits = self._logits()
        finally:
            self.layers[:] = originals
            for undo in reversed(restore):
                undo()
        return self._kl_of(logits)

    def _swap(self, path: str, weight: mx.array) -> Callable[[], None]:
        """Set module `path`'s weight (numpy copy too, where it runs in numpy); undo fn."""
        module = _get(self.model, path)
        if isinstance(module, cpu_forward._NumpyLinear):
            old = module._w
            module._w = to_numpy32(weight)

            def undo() -> None:
                module._w = old

            return undo
        if module is self._embed:
            old_w, old_head = module.weight, self._head_weight
            module.weight = weight
            self._head_weight = to_numpy32(weight)

            def undo() -> None:
                module.weight = old_w
                self._head_weight = old_head

            return undo
        if isinstance(module, nn.Module) and "weight" in module:
            old_w = module.weight
            module.weight = weight

            def undo() -> None:
                module.weight = old_w

            return undo
        raise SensitivityError(f"{path}: not a module with a weight in this model")


def rtn(w: mx.array, bits: int, group_size: int) -> mx.array:
    """RTN round trip (as `mx.quantize`) in float32."""
    w32 = w.astype(mx.float32)
    q, s, b = mx.quantize(w32, group_size=group_size, bits=bits)
    return mx.dequantize(q, s, b, group_size=group_size, bits=bits)


def relative_error(w: mx.array, wq: mx.array) -> float:
    w32 = w.astype(mx.float32)
    num = mx.sum(mx.square(wq - w32)).item()
    den = mx.sum(mx.square(w32)).item()
    return math.sqrt(num / den) if den > 0 else 0.0


def measure_isolated(
    model: nn.Module,
    tokens: mx.array,
    groups: dict[str, Sequence[str]],
    width: tuple[int, int] = REFERENCE_WIDTH,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, dict[str, float]]:
    """{decision key: {"kl", "error", "alpha"}} for `groups` (key -> module paths).

    The module paths of one decision are quantized together (all experts of one projection).
    """
    bits, gs = width
    out: dict[str, dict[str, float]] = {}
    probe = Probe(model, tokens)
    with probe.open():
        for n, (key, paths) in enumerate(groups.items()):
            perturbed, num, den = {}, 0.0, 0.0
            for path in paths:
                w = _get(model, path)
                w = w.module.weight if isinstance(w, cpu_forward._NumpyLinear) else w.weight
                wq = rtn(w, bits, gs)
                e = relative_error(w, wq)
                sq = mx.sum(mx.square(w.astype(mx.float32))).item()
                num, den = num + e * e * sq, den + sq
                perturbed[path] = wq.astype(w.dtype)
            kl = probe.kl(perturbed)
            err = math.sqrt(num / den) if den > 0 else 0.0
            out[key] = {"kl": kl, "error": err, "alpha": kl / (err * err) if err > 0 else 0.0}
            if progress:
                progress(n + 1, len(groups))
    return out


def measure_marginal(
    model: nn.Module,
    tokens: mx.array,
    entries: dict[str, dict],
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, dict[str, float]]:
    """{tensor: {"kl", "error", "alpha"}}: the KL removed by restoring one planned matrix of
    a plan (`entries`: the plan's quantized tensors) to float, over its error squared."""
    paths = {n: n.removesuffix(".weight") for n in entries}
    floats = {}
    for path in paths.values():
        m = _get(model, path)
        floats[path] = m.module.weight if isinstance(m, cpu_forward._NumpyLinear) else m.weight
    base, errors = {}, {}
    for name, e in entries.items():
        w = floats[paths[name]]
        base[paths[name]] = rtn(w, e["bits"], e["group_size"]).astype(w.dtype)
        errors[name] = relative_error(w, base[paths[name]])
    out: dict[str, dict[str, float]] = {}
    probe = Probe(model, tokens)
    with probe.open(), probe.base(base) as kl0:
        for n, name in enumerate(entries):
            gain = kl0 - probe.kl({paths[name]: floats[paths[name]]})
            err = errors[name]
            alpha = max(gain, 1e-6) / (err * err) if err > 0 else 0.0
            out[name] = {"kl": gain, "error": err, "alpha": alpha}
            if progress:
                progress(n + 1, len(entries))
    return out


def main() -> None:
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    from jang import convert, data
    from jang import plan as planner
    from jang.engines import mlx_source_model
    from jang.plan.decision import decisions
    from jang.plan.report import summarize
    from jang.plan.tiers import classify
    from jang.source import open_source
    from jang.text import calibration_tokens

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="smollm2, gemma3 or a source path")
    ap.add_argument("--bits", type=float, required=True, help="plan size, all-in bpw")
    ap.add_argument("--mode", choices=("isolated", "marginal"), default="isolated")
    ap.add_argument("--width", default="3,64", help="isolated: bits,group of the probe")
    ap.add_argument("--windows", type=int, default=WINDOWS)
    ap.add_argument("--length", type=int, default=WINDOW_LENGTH)
    ap.add_argument("-o", "--out", type=Path, required=True, help="bundle to write (RTN)")
    args = ap.parse_args()

    src = data.resolve_model(args.model)
    source = open_source(src)
    model = mlx_source_model(src)
    with tempfile.TemporaryDirectory() as d:
        source.write_tokenizer(Path(d))
        tok = load_tokenizer(Path(d))
    tokens = calibration_tokens(tok, None, n_samples=args.windows, seq_len=args.length)
    t0 = time.perf_counter()

    def tick(i: int, n: int) -> None:
        if i % 20 == 0 or i == n:
            print(f"  {i}/{n} decisions, {time.perf_counter() - t0:.0f} s", flush=True)

    if args.mode == "isolated":
        bits, gs = (int(x) for x in args.width.split(","))
        infos = [(i.name, i.shape) for i in source.tensors()]
        ds = decisions(classify(source.config, infos))
        groups = {d.key: [m.name.removesuffix(".weight") for m in d.members] for d in ds}
        result = measure_isolated(model, tokens, groups, (bits, gs), progress=tick)
    else:
        prior = planner.plan_source(src, bits=args.bits)
        entries = {n: e for n, e in prior["tensors"].items() if e["quantized"]}
        result = measure_marginal(model, tokens, entries, progress=tick)
    print(f"measured {len(result)} decisions in {time.perf_counter() - t0:.0f} s")
    print(f"sum of the measured KLs: {sum(r['kl'] for r in result.values()):.3f}")
    alphas = {k: r["alpha"] for k, r in result.items()}
    plan = planner.plan_source(src, bits=args.bits, alphas=alphas)
    print(summarize(plan, by_layer=False))
    convert.convert(src, args.out, plan=plan, method="rtn", force=True, progress="quiet")
    args.out.with_name(args.out.name + ".alphas.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}; evaluate: jang eval {args.out} --ref {src} --windows 8")


if __name__ == "__main__":
    main()
