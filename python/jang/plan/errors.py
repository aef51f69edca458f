"""The planner's error measure: relative error of MLX's RTN, per candidate, cached.

The error of a decision at (bits, group size) is the relative Frobenius error of the real
RTN-quantized rows (``mx.quantize``'s arithmetic, written out so that one group min/max
serves every width), measured on a strided sample of rows and cached on disk by a hash of
those rows, so re-planning is instant.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jang.formats import UNQUANTIZED
from jang.plan.decision import Decision
from jang.plan.tiers import TensorRole

DEFAULT_SAMPLE = 1 << 17  # weights measured per decision
MIN_ROWS = 32
ERROR_METHOD = "rtn-affine-v1"

Reader = Callable[[str], Any]  # name -> mx.array


def _as_matrix(w: Any, t: TensorRole) -> Any:
    import mlx.core as mx

    if t.transposed:
        w = mx.swapaxes(w, -1, -2)
    return w.reshape(-1, w.shape[-1])


def _sample_rows(n: int, max_rows: int | None) -> np.ndarray | None:
    if max_rows is None or n <= max_rows:
        return None
    return np.unique(np.linspace(0, n - 1, max_rows).round().astype(np.int64))


def measure_error(w: Any, bits: int, group_size: int, col_scale: Any = None) -> float:
    """Relative Frobenius error of RTN quantization (as `mx.quantize`) of a 2-D float array.

    The one place that defines the planner's error; swap in `jang.quant` here. With
    `col_scale` (per-input-channel activation RMS) the error is ``||(Q(W)-W) D|| / ||W D||``.
    """
    num, den = _error_terms(w, [(bits, group_size)], col_scale)
    return math.sqrt(num[0] / den) if den > 0 else 0.0


def rtn_dequantize(w: Any, bits: int, group_size: int) -> Any:
    """``mx.dequantize(*mx.quantize(w))`` for MLX affine RTN, bit for bit, in plain ops.

    Written out so that the group min/max are shared by all bit widths of one group size
    (about 2x faster than calling `mx.quantize` per candidate); tests check it against
    `mx.quantize` bit for bit for float16, bfloat16 and float32.
    """
    import mlx.core as mx

    x = w.astype(mx.float32).reshape(*w.shape[:-1], -1, group_size)
    stats = _group_stats(x)
    return _rtn_groups(x, stats, bits, w.dtype).reshape(w.shape)


def _group_stats(x: Any) -> tuple[Any, Any, Any]:
    import mlx.core as mx

    wmax = x.max(-1, keepdims=True)
    wmin = x.min(-1, keepdims=True)
    mask = mx.abs(wmin) > mx.abs(wmax)
    return mask, mx.where(mask, wmin, wmax), wmax - wmin


def _rtn_groups(x: Any, stats: tuple[Any, Any, Any], bits: int, dtype: Any) -> Any:
    """MLX's affine RTN on grouped float32 values `x` (..., groups, gs); result in `dtype`."""
    import mlx.core as mx

    mask, edge, span = stats
    n_bins = float((1 << bits) - 1)
    scale = mx.maximum(span / n_bins, 1e-7)
    scale = mx.where(mask, scale, -scale)
    q0 = mx.round(edge / scale)
    nonzero = q0 != 0
    scale = mx.where(nonzero, edge / mx.where(nonzero, q0, 1.0), scale)
    bias = mx.where(nonzero, edge, 0.0)
    q = mx.clip(mx.round((x - bias) / scale), 0.0, n_bins)
    return scale.astype(dtype) * q.astype(dtype) + bias.astype(dtype)


def _error_terms(
    w: Any, opts: Sequence[tuple[int, int]], col_scale: Any = None, chunk: int = 1 << 22
) -> tuple[list[float], float]:
    """Squared error per option and squared norm, over row chunks of <= `chunk` elements."""
    import mlx.core as mx

    rows, cols = w.shape
    step = max(1, chunk // max(cols, 1))
    nums = [0.0] * len(opts)
    den = 0.0
    scale = None if col_scale is None else mx.array(col_scale, dtype=mx.float32)
    sizes = sorted({g for _, g in opts})
    for r0 in range(0, rows, step):
        xw = w[r0 : r0 + step]
        xf = xw.astype(mx.float32)
        ref = xf if scale is None else xf * scale
        outs = [mx.sum(ref * ref)]
        sums = {}
        for g in sizes:
            x = xf.reshape(xf.shape[0], -1, g)
            stats = _group_stats(x)
            for bits in sorted({b for b, gg in opts if gg == g}):
                d = _rtn_groups(x, stats, bits, w.dtype).astype(mx.float32) - x
                if scale is not None:
                    d = d * scale.reshape(-1, g)
                sums[(bits, g)] = mx.sum(d * d)
        outs += [sums[o] for o in opts]
        mx.eval(*outs)
        den += float(outs[0].item())
        for k in range(len(opts)):
            nums[k] += float(outs[k + 1].item())
    return nums, den


class ErrorCache:
    """JSON cache of measured errors: {key: {"bits/gs": error}}, written atomically."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.data: dict[str, dict[str, float]] = {}
        self.dirty = False
        if self.path and self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self.data = {}

    def get(self, key: str) -> dict[str, float]:
        return self.data.get(key, {})

    def put(self, key: str, values: dict[str, float]) -> None:
        self.data.setdefault(key, {}).update(values)
        self.dirty = True

    def save(self) -> None:
        if not (self.path and self.dirty):
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.data, sort_keys=True))
        tmp.replace(self.path)
        self.dirty = False


def default_cache_path() -> Path:
    """The error cache in jang's data directory (`jang.data.cache_dir`)."""
    from jang.data import cache_dir

    return cache_dir() / "plan-errors.json"


def _opt_key(bits: int, g: int | None) -> str:
    return f"{bits}/{g}"


def _rows_of(d: Decision, read: Reader, dtype: str | None, sample: int | None) -> Any:
    """The measured rows of a decision: strided sample over all its members' rows."""
    import mlx.core as mx

    per = None
    if sample is not None:
        rows = max(MIN_ROWS, -(-sample // d.first.cols))
        per = max(1, -(-rows // len(d.members)))
    parts = []
    for t in d.members:
        w = _as_matrix(read(t.name), t)
        if w.dtype not in (mx.float16, mx.bfloat16, mx.float32):
            w = w.astype(mx.float32)
        if w.dtype == mx.float32 and dtype in ("float16", "bfloat16"):
            w = w.astype(getattr(mx, dtype))
        idx = _sample_rows(w.shape[0], per)
        parts.append(w if idx is None else w[mx.array(idx)])
    return parts[0] if len(parts) == 1 else mx.concatenate(parts, axis=0)


def _digest(w: Any, col_scale: Any) -> str:
    import mlx.core as mx

    view = {mx.float16: mx.uint16, mx.bfloat16: mx.uint16, mx.float32: mx.uint32}[w.dtype]
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{ERROR_METHOD}|{w.shape}|{w.dtype}".encode())
    h.update(np.asarray(w.view(view)).tobytes())
    if col_scale is not None:
        h.update(np.asarray(col_scale, dtype=np.float32).tobytes())
    return h.hexdigest()


def measure_decisions(
    ds: Sequence[Decision],
    read: Reader,
    *,
    options: Callable[[Decision], Sequence[tuple[int, int | None]]] | None = None,
    cache: ErrorCache | None = None,
    sample: int | None = DEFAULT_SAMPLE,
    dtype: str | None = None,
    act_stats: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Fill ``d.errors`` (aligned with ``d.options``; 0 for unquantized) for each decision."""
    for n, d in enumerate(ds):
        opts = list(options(d) if options else d.options)
        col = None
        if act_stats is not None:
            col = act_stats.get(d.key, act_stats.get(d.first.name))
            if col is not None:
                col = np.sqrt(np.maximum(np.asarray(col, dtype=np.float64), 0.0))
        w = _rows_of(d, read, dtype, sample)
        key = _digest(w, col)
        known = cache.get(key) if cache else {}
        todo = [(b, g) for b, g in opts if b != UNQUANTIZED and _opt_key(b, g) not in known]
        if todo:
            nums, den = _error_terms(w, todo, col)
            fresh = {
                _opt_key(b, g): (math.sqrt(num / den) if den > 0 else 0.0)
                for (b, g), num in zip(todo, nums, strict=True)
            }
            known = {**known, **fresh}
            if cache:
                cache.put(key, fresh)
        errs = {o: (0.0 if o[0] == UNQUANTIZED else known[_opt_key(*o)]) for o in opts}
        d.errors = [errs.get(o, math.nan) for o in d.options]
        if progress:
            progress(n + 1, len(ds))
