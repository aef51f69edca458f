"""Shared plumbing for the group quantizers: parameter checks, dtype rounding, and the
chunked walk over a weight tensor.

Inside this package a block of groups is held *transposed*: an array ``X`` of shape
``(group_size, n_groups)`` whose column ``g`` is group ``g``. Per-group scalars are then
rows of length ``n_groups``, every broadcast is contiguous, and the per-group reductions
run down axis 0, which numpy vectorizes (a reduction along a short last axis does not).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import mlx.core as mx
import numpy as np

from jang.errors import QuantizationError
from jang.formats import BITS, GROUP_SIZES

FLOAT_DTYPES = (mx.float32, mx.float16, mx.bfloat16)

# Elements per block handed to the numpy kernels: small enough that a block and its
# temporaries stay in the CPU cache, large enough that per-call overhead is noise.
BLOCK_ELEMENTS = 1 << 16
# Elements per slab copied out of MLX at a time (bounds the transient memory).
SLAB_ELEMENTS = 1 << 22


def check_params(bits: int, group_size: int) -> None:
    """Reject widths and group sizes outside MLX's affine mode."""
    if bits not in BITS:
        raise QuantizationError(f"bits must be one of {BITS}, got {bits!r}")
    if group_size not in GROUP_SIZES:
        raise QuantizationError(f"group_size must be one of {GROUP_SIZES}, got {group_size!r}")


def check_weight(w: mx.array, group_size: int) -> tuple[int, int]:
    """Validate a weight for group quantization; return it as (rows, columns).

    Leading dimensions (stacked experts) fold into rows, as in ``mx.quantize``.
    """
    if not isinstance(w, mx.array):
        raise QuantizationError(f"weight must be an mx.array, got {type(w).__name__}")
    if w.dtype not in FLOAT_DTYPES:
        raise QuantizationError(f"weight dtype must be float32, float16 or bfloat16, got {w.dtype}")
    if w.ndim < 2:
        raise QuantizationError(f"weight must have at least 2 dimensions, got shape {w.shape}")
    if w.size == 0:
        raise QuantizationError(f"weight is empty (shape {w.shape})")
    cols = w.shape[-1]
    if cols % group_size:
        raise QuantizationError(
            f"last dimension {cols} of shape {w.shape} is not divisible by group size "
            f"{group_size}; use a group size that divides it or leave the tensor unquantized"
        )
    return w.size // cols, cols


def check_importance(importance, cols: int) -> np.ndarray | None:
    """Per-input-channel importance as a float32 vector, or None for uniform weighting."""
    if importance is None:
        return None
    h = np.asarray(
        importance.astype(mx.float32) if isinstance(importance, mx.array) else importance
    )
    h = h.astype(np.float32).reshape(-1)
    if h.size != cols:
        raise QuantizationError(f"importance has {h.size} entries, the weight has {cols} columns")
    if not np.all(np.isfinite(h)) or np.any(h < 0):
        raise QuantizationError("importance must be finite and non-negative")
    return h


def rounder(dtype: mx.Dtype) -> Callable[[np.ndarray], np.ndarray]:
    """Function mapping float32 values to the nearest value of `dtype` (kept in float32).

    Scales and biases are stored in the weight's dtype; the quantizers measure and choose
    with the stored values, so they round first. Round-to-nearest-even, as MLX converts.
    """
    if dtype == mx.float32:
        return lambda a: a
    if dtype == mx.float16:
        return lambda a: a.astype(np.float16).astype(np.float32)

    def to_bf16(a: np.ndarray) -> np.ndarray:
        u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
        u = (u + (np.uint32(0x7FFF) + ((u >> 16) & 1))) & np.uint32(0xFFFF0000)
        return u.view(np.float32)

    return to_bf16


def to_mlx(a: np.ndarray, dtype: mx.Dtype) -> mx.array:
    """float32 numpy array (already representable in `dtype`) to an MLX array of `dtype`."""
    return mx.array(a).astype(dtype)


def to_numpy32(a: mx.array) -> np.ndarray:
    """An MLX float array as a float32 numpy array (bfloat16 widened bit-exactly)."""
    if a.dtype == mx.bfloat16:
        u = np.array(a.view(mx.uint16)).astype(np.uint32) << 16
        return u.view(np.float32)
    return np.array(a).astype(np.float32, copy=False)


def iter_blocks(w2d: mx.array) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (first_row, float32 rows) blocks of about BLOCK_ELEMENTS covering `w2d`.

    Slabs of SLAB_ELEMENTS are copied out of MLX one at a time, so the transient memory
    stays a few slabs whatever the tensor size.
    """
    rows, cols = w2d.shape
    block_rows = max(1, BLOCK_ELEMENTS // cols)
    slab_rows = max(block_rows, SLAB_ELEMENTS // cols // block_rows * block_rows)
    for s0 in range(0, rows, slab_rows):
        slab = to_numpy32(w2d[s0 : s0 + slab_rows])
        for b0 in range(0, slab.shape[0], block_rows):
            yield s0 + b0, slab[b0 : b0 + block_rows]


def to_groups(x: np.ndarray, group_size: int) -> np.ndarray:
    """Rows (r, cols) to the transposed group layout (group_size, r * cols / group_size)."""
    return np.ascontiguousarray(x.reshape(-1, group_size).T)


def importance_groups(h: np.ndarray | None, rows: int, group_size: int) -> np.ndarray | None:
    """Importance vector tiled to match `to_groups` of `rows` rows."""
    if h is None:
        return None
    return np.ascontiguousarray(np.tile(h.reshape(-1, group_size).T, (1, rows)))


def check_finite(scale: np.ndarray, bias: np.ndarray, first_row: int, groups_per_row: int) -> None:
    """Raise if a group's stored scale or bias is not finite.

    NaN/Inf weights propagate into the group's min/max and so into its parameters; a
    finite tensor whose range overflows float32 (or the storage dtype) lands here too.
    """
    bad = ~(np.isfinite(scale) & np.isfinite(bias))
    if bad.any():
        g = int(np.argmax(bad))
        raise QuantizationError(
            f"row {first_row + g // groups_per_row} of the weight has NaN/Inf values or a "
            "range too wide for its dtype; refusing to quantize"
        )
