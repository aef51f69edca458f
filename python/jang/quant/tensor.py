"""Whole-tensor entry points: quantize, dequantize and measure error, chunked.

A tensor is walked in cache-sized blocks of rows (see `groups.iter_blocks`), so memory
stays the input plus the (much smaller) output plus a few small slabs, whatever its size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import mlx.core as mx
import numpy as np

from jang.quant import groups as G
from jang.quant.clip import group_error
from jang.quant.methods import get_method
from jang.quant.packing import pack_groups, unpack

QUANT_BLOCK = 1 << 20  # weights rounded per call by `quantize_rows`


def _walk(
    w: mx.array, bits: int, group_size: int, method: str, importance
) -> Iterator[tuple[int, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (first_row, block, importance, codes, scale, bias), blocks in transposed layout."""
    G.check_params(bits, group_size)
    block_fn = get_method(method).block
    if block_fn is None:
        raise G.QuantizationError(f"{method} is not a per-tensor method; it needs the model")
    rows, cols = G.check_weight(w, group_size)
    h = G.check_importance(importance, cols)
    rnd = G.rounder(w.dtype)
    per_row = cols // group_size
    tiled: dict[int, np.ndarray | None] = {}
    for r0, xb in G.iter_blocks(w.reshape(rows, cols)):
        r = xb.shape[0]
        if r not in tiled:
            tiled[r] = G.importance_groups(h, r, group_size)
        x = G.to_groups(xb, group_size)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            codes, scale, bias = block_fn(x, bits, rnd, tiled[r])
        G.check_finite(scale, bias, r0, per_row)  # NaN/Inf weights end up here
        yield r0, x, tiled[r], codes, scale, bias


def quantize_tensor(
    w: mx.array,
    bits: int,
    group_size: int,
    method: str = "rtn",
    importance: mx.array | np.ndarray | None = None,
) -> tuple[mx.array, mx.array, mx.array]:
    """Quantize `w` (..., in) to MLX's affine layout: (wq uint32, scales, biases).

    ``method="rtn"`` is bit-identical to ``mx.quantize``; ``"clip"`` searches each group's
    range (weighted by `importance`, one non-negative value per input channel) and is never
    worse than RTN on any group. Scales and biases have w's dtype.
    """
    rows, cols = G.check_weight(w, group_size)
    per_row = cols // group_size
    wq = np.empty((rows, cols * bits // 32), np.uint32)
    scales = np.empty((rows, per_row), np.float32)
    biases = np.empty((rows, per_row), np.float32)
    for r0, _, _, codes, scale, bias in _walk(w, bits, group_size, method, importance):
        r = scale.size // per_row
        wq[r0 : r0 + r] = pack_groups(codes, bits, r)
        scales[r0 : r0 + r] = scale.reshape(r, per_row)
        biases[r0 : r0 + r] = bias.reshape(r, per_row)
    lead = w.shape[:-1]
    return (
        mx.array(wq).reshape(*lead, -1),
        G.to_mlx(scales, w.dtype).reshape(*lead, per_row),
        G.to_mlx(biases, w.dtype).reshape(*lead, per_row),
    )


def dequantize_tensor(
    wq: mx.array, scales: mx.array, biases: mx.array, bits: int, group_size: int
) -> mx.array:
    """``scale * q + bias`` in the scales' dtype, with the same operations as ``mx.dequantize``."""
    G.check_params(bits, group_size)
    codes = unpack(np.array(wq), bits)
    if codes.shape[:-1] != scales.shape[:-1] or codes.shape[-1] != scales.shape[-1] * group_size:
        raise G.QuantizationError(
            f"packed shape {wq.shape} does not match scales {scales.shape} at {bits} bits, "
            f"group size {group_size}"
        )
    q = mx.array(codes).astype(scales.dtype).reshape(*scales.shape, group_size)
    out = q * scales[..., None] + biases[..., None]
    return out.reshape(*codes.shape)


def relative_error(
    w: mx.array,
    bits: int,
    group_size: int,
    method: str = "rtn",
    importance: mx.array | np.ndarray | None = None,
) -> float:
    """Relative Frobenius error ||w - deq(quant(w))|| / ||w|| of the tensor as it would be stored.

    With `importance` (one value per input channel) both norms weigh column j by it. The
    dequantization uses the stored (dtype-rounded) scales and biases in float32. Computed
    block by block; nothing tensor-sized is allocated. 0.0 for an all-zero tensor.
    """
    num = den = 0.0
    for _, x, h, codes, scale, bias in _walk(w, bits, group_size, method, importance):
        tmp = np.empty_like(x)
        num += float(group_error(x, codes, scale, bias, h, tmp).sum())
        sq = np.square(x, out=tmp)
        if h is not None:
            sq *= h
        den += float(sq.sum(dtype=np.float64))
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return math.sqrt(num / den)


def quantize(w: mx.array, bits: int, group_size: int, method: str, debias: bool = False):
    """One tensor -> (codes, scales, biases) in MLX's affine layout by a per-tensor method
    (``rtn`` is ``mx.quantize`` itself); `debias` rescales each output row to undo the
    shrinkage of MSE-optimal rounding (`jang.quant.debias`)."""
    if method == "rtn":
        q, s, b = mx.quantize(w, group_size=group_size, bits=bits)
    else:
        q, s, b = quantize_tensor(w, bits, group_size, method=method)
    if debias:
        from jang.quant.debias import debias_rows

        s, b = debias_rows(w, q, s, b, bits, group_size)
    return q, s, b


def quantize_rows(w: mx.array, dtype, bits: int, group_size: int, method: str, debias: bool):
    """`quantize(w.astype(dtype), ...)` a block of rows at a time, written into preallocated
    outputs: the quantizers' per-call temporaries (float32 scales, packed codes, their MLX
    copies) stay block-sized and `w` is never cast whole. Rows are independent in MLX's
    affine layout, so the result is the same as one call."""
    from jang.source import mlx_buffer

    cols = w.shape[-1]
    rows = w.size // cols
    step = max(1, QUANT_BLOCK // cols)
    if rows <= step:
        return quantize(w.astype(dtype), bits, group_size, method, debias)
    w2 = w.reshape(rows, cols)
    outs = views = None
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        parts = quantize(w2[r0:r1].astype(dtype), bits, group_size, method, debias)
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
