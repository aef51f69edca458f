"""Round-to-nearest with MLX's exact arithmetic, so the output equals ``mx.quantize``.

MLX (mlx/backend/cpu/quantized.cpp) works in float32 per group: the scale is
``max((max - min) / (2**b - 1), 1e-7)``, made negative unless ``|min| > |max|``; the bias
is the larger-magnitude edge and the scale is refit so that edge is exactly code
``q0 = rint(edge / scale)`` (when q0 is 0 the bias is 0 instead). Codes are
``clip(rint((w - bias) / scale), 0, 2**b - 1)``, computed with the float32 scale; scales and
biases are then stored in the weight's dtype. Every step below is the same float32
operation in the same order, so the result is bit-identical.
"""

from __future__ import annotations

import numpy as np

_EPS = np.float32(1e-7)


def rtn_params(x: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MLX's float32 (scale, bias) per group of a transposed block `x` (group_size, n_groups).

    Also returns the per-group (min, max), which callers reuse.
    """
    n_bins = np.float32((1 << bits) - 1)
    hi = x.max(axis=0)
    lo = x.min(axis=0)
    flip = np.abs(lo) > np.abs(hi)
    scale = np.maximum((hi - lo) / n_bins, _EPS)
    scale = np.where(flip, scale, -scale)
    edge = np.where(flip, lo, hi)
    with np.errstate(divide="ignore", invalid="ignore"):
        q0 = np.rint(edge / scale)
        nz = q0 != 0
        scale = np.where(nz, edge / np.where(nz, q0, np.float32(1)), scale)
    bias = np.where(nz, edge, np.float32(0))
    return scale, bias, lo, hi


def assign_codes(
    x: np.ndarray, scale: np.ndarray, bias: np.ndarray, bits: int, out: np.ndarray | None = None
) -> np.ndarray:
    """Nearest code of each element of a transposed block: clip(rint((x - bias) / scale)).

    Returned as float32 (exact small integers) in `out` if given.
    """
    out = np.subtract(x, bias, out=out)
    np.divide(out, scale, out=out)
    np.rint(out, out=out)
    return np.clip(out, 0, (1 << bits) - 1, out=out)


def rtn_block(
    x: np.ndarray, bits: int, rnd, importance: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes, stored scale and stored bias of a transposed block, as ``mx.quantize`` does.

    `rnd` rounds float32 to the storage dtype; `importance` is ignored (RTN does not weigh).
    """
    scale, bias, _, _ = rtn_params(x, bits)
    codes = assign_codes(x, scale, bias, bits)
    return codes, rnd(scale), rnd(bias)
