"""GPTQ for one linear layer (Frantar et al. 2022), output in MLX's plain affine layout.

Columns are quantized one at a time and each one's rounding error is spread over the
columns not yet quantized, through the inverse Hessian ``H = 2 X^T X / n`` of the layer's
inputs, which minimizes the layer's output error ``||X W^T - X Q^T||``. As in the
reference code: dead inputs (zero diagonal) get a unit diagonal; damping starts at 1% of
the mean diagonal (raised tenfold until the Cholesky factorization succeeds); updates
are lazy in blocks of 128 columns; act-order processes columns by decreasing Hessian
diagonal. Groups stay *static*, the contiguous input channels MLX expects, so the
output is ordinary ``(wq, scales, biases)`` with no index array. A group's scale and bias
are chosen when its first column comes up, from the group's current (already updated)
weights: MLX's min/max grid (``params="rtn"``) or the clip search weighted by the
Hessian diagonal (``params="clip"``, default).

The arithmetic runs on numpy (BLAS) when MLX's default device is the CPU, whose Linux
build ships reference BLAS, and on MLX otherwise (Metal / CUDA); ``backend`` overrides.
"""

from __future__ import annotations

import logging

import mlx.core as mx
import numpy as np

from jang.quant import groups as G
from jang.quant.clip import clip_block
from jang.quant.packing import pack
from jang.quant.rtn import rtn_block

log = logging.getLogger(__name__)

# Largest input dimension whose Hessian is factorized in float64 (above it, float32 as in
# the reference code, to bound memory at 4 bytes per Hessian entry).
FLOAT64_FACTOR_MAX = 8192
MAX_DAMP = 10.0


def default_backend() -> str:
    """'numpy' on the CPU device, 'mlx' on a GPU."""
    return "numpy" if mx.default_device() == mx.cpu else "mlx"


class Hessian:
    """Running ``2 X^T X / n`` of a layer's inputs, accumulated in float32."""

    def __init__(self, dim: int, backend: str | None = None):
        self.dim = dim
        self.backend = backend or default_backend()
        self.count = 0
        self._xtx = None
        self._prepared: dict = {}

    def add(self, x: mx.array | np.ndarray) -> None:
        """Add a batch of inputs (..., dim); every leading position is one sample."""
        if x.shape[-1] != self.dim:
            raise G.QuantizationError(f"input has {x.shape[-1]} features, expected {self.dim}")
        if self.backend == "numpy":
            a = _numpy32(x).reshape(-1, self.dim)
            xtx = a.T @ a
        else:
            a = mx.array(x).astype(mx.float32).reshape(-1, self.dim)
            xtx = a.T @ a
        self._xtx = xtx if self._xtx is None else self._xtx + xtx
        self.count += a.shape[0]
        self._prepared.clear()
        if self.backend == "mlx":
            mx.eval(self._xtx)

    def matrix(self) -> np.ndarray:
        """The Hessian as a float32 numpy array."""
        if self._xtx is None:
            raise G.QuantizationError("no calibration inputs were seen for this layer")
        xtx = self._xtx if self.backend == "numpy" else np.array(self._xtx)
        return xtx * np.float32(2.0 / self.count)

    def prepared(self, damp: float, act_order: bool):
        """`_prepare` of this Hessian, computed once for all layers that share the input."""
        key = (damp, act_order)
        if key not in self._prepared:
            self._prepared[key] = _prepare(self.matrix(), damp, act_order)
        return self._prepared[key]


def _numpy32(x) -> np.ndarray:
    if isinstance(x, mx.array):
        return G.to_numpy32(x)
    return np.asarray(x, dtype=np.float32)


def _lower_inverse(m: np.ndarray) -> np.ndarray:
    """Inverse of a lower-triangular matrix by 2x2 blocks, so the work is in matmuls."""
    n = m.shape[0]
    if n <= 128:
        return np.linalg.inv(m)
    k = n // 2
    a, d = _lower_inverse(m[:k, :k]), _lower_inverse(m[k:, k:])
    out = np.zeros_like(m)
    out[:k, :k], out[k:, k:] = a, d
    out[k:, :k] = -(d @ m[k:, :k]) @ a
    return out


def inverse_cholesky(h: np.ndarray, damp: float = 0.01) -> tuple[np.ndarray, float]:
    """Upper-triangular U with ``U^T U = (H + d I)^-1``; returns (U, damping fraction used).

    ``d`` starts at ``damp`` times the mean diagonal and grows tenfold until the Cholesky
    factorization succeeds with no vanishing pivot; past MAX_DAMP the Hessian is reported
    as unusable. With P the reversal permutation and ``P H P = M M^T``, ``U = P M^-1 P``:
    one factorization and one triangular inverse (U is the upper Cholesky factor of H^-1).
    """
    if not np.all(np.isfinite(h)):
        raise G.QuantizationError("the Hessian has NaN/Inf entries (overflowing activations?)")
    work = np.float64 if h.shape[0] <= FLOAT64_FACTOR_MAX else np.float32
    rev = np.ascontiguousarray(h[::-1, ::-1], dtype=work)
    mean = float(np.mean(np.diag(rev))) or 1.0
    frac = damp
    while frac <= MAX_DAMP:
        try:
            lower = np.linalg.cholesky(rev + np.eye(h.shape[0], dtype=work) * work(frac * mean))
            pivots = np.diag(lower) ** 2
            if pivots.min() > 1e-10 * pivots.max():  # else numerically singular: damp more
                upper = np.ascontiguousarray(_lower_inverse(lower)[::-1, ::-1])
                if np.all(np.isfinite(upper)):
                    if frac != damp:
                        log.info("GPTQ: Hessian needed damping %.3g of its mean diagonal", frac)
                    return upper, frac
        except np.linalg.LinAlgError:
            pass
        frac *= 10
    raise G.QuantizationError("the Hessian is not positive definite even with heavy damping")


def _prepare(h: np.ndarray, damp: float, act_order: bool):
    """(diagonal, column order, U) for a Hessian: dead inputs fixed, act-order applied."""
    cols = h.shape[0]
    diag = np.diag(h).astype(np.float64)
    dead = diag <= 0
    if dead.any():
        idx = np.nonzero(dead)[0]
        h = h.copy()
        h[idx, :] = 0
        h[:, idx] = 0
        h[idx, idx] = 1  # dead inputs: keep the weight, round it plainly
        diag[idx] = 0
    perm = np.argsort(-diag, kind="stable") if act_order else np.arange(cols)
    upper, _ = inverse_cholesky(h[np.ix_(perm, perm)], damp)
    return diag, perm, upper


class _Ops:
    """The handful of array operations the column loop needs, on numpy or MLX."""

    def __init__(self, backend: str, dtype):
        self.mlx = backend == "mlx"
        if self.mlx and dtype != np.float32:
            raise G.QuantizationError("the MLX backend computes in float32 only")
        self.dtype = dtype

    def array(self, a: np.ndarray):
        a = np.ascontiguousarray(a, dtype=self.dtype)
        return mx.array(a) if self.mlx else a

    def numpy(self, a) -> np.ndarray:
        return np.array(a) if self.mlx else a

    def codes(self, col, scale, bias, n_bins: int):
        """Nearest codes of a column for its rows' stored (scale, bias), as RTN computes."""
        if self.mlx:
            return mx.clip(mx.round((col - bias) / scale), 0, n_bins)
        return np.clip(np.rint((col - bias) / scale), 0, n_bins)

    def cols(self, a, idx: np.ndarray):
        return a[:, mx.array(idx)] if self.mlx else a[:, idx]

    def outer(self, a, b):
        return mx.outer(a, b) if self.mlx else np.outer(a, b)

    def sync(self, *arrays) -> None:
        if self.mlx:
            mx.eval(*arrays)


def gptq_quantize(
    w: mx.array,
    hessian: np.ndarray | mx.array | Hessian,
    bits: int,
    group_size: int,
    *,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = True,
    params: str = "clip",
    backend: str | None = None,
    precision: str = "float32",
) -> tuple[mx.array, mx.array, mx.array]:
    """GPTQ-quantize a (out, in) weight given its inputs' Hessian (in, in).

    Returns MLX's (wq uint32, scales, biases) with scales/biases in w's dtype.
    ``precision="float64"`` runs the numpy column loop in float64 (for verification).
    """
    G.check_params(bits, group_size)
    rows, cols = G.check_weight(w, group_size)
    if w.ndim != 2:
        raise G.QuantizationError(f"GPTQ needs a 2-D weight, got shape {w.shape}")
    if params not in ("clip", "rtn"):
        raise G.QuantizationError(f"params must be 'clip' or 'rtn', got {params!r}")
    if block_size % group_size:
        raise G.QuantizationError("block_size must be a multiple of group_size")
    if isinstance(hessian, Hessian):
        if hessian.dim != cols:
            raise G.QuantizationError(f"Hessian of {hessian.dim} inputs, the weight has {cols}")
        diag, perm, upper = hessian.prepared(damp, act_order)
    else:
        h = _numpy32(hessian)
        if h.shape != (cols, cols):
            raise G.QuantizationError(f"Hessian shape {h.shape} does not match {cols} inputs")
        diag, perm, upper = _prepare(h, damp, act_order)
    backend = backend or default_backend()
    dtype = {"float32": np.float32, "float64": np.float64}[precision]
    ops = _Ops(backend, dtype)

    weights = G.to_numpy32(w).astype(dtype)
    if not np.all(np.isfinite(weights)):
        raise G.QuantizationError("weight has NaN or Inf values; refusing to quantize")
    inv_perm = np.argsort(perm)

    chooser = clip_block if params == "clip" else rtn_block
    rnd = G.rounder(w.dtype)
    n_bins = (1 << bits) - 1
    n_groups = cols // group_size
    scales = np.zeros((rows, n_groups), np.float32)
    biases = np.zeros((rows, n_groups), np.float32)
    done = np.zeros(n_groups, bool)

    W = ops.array(weights[:, perm])
    U = ops.array(upper)
    Q = np.empty((rows, cols), np.uint8)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2]
        U1 = U[i1:i2, i1:i2]
        E1 = ops.array(np.zeros((rows, i2 - i1)))
        Q1 = ops.array(np.zeros((rows, i2 - i1)))
        for i in range(i2 - i1):
            g = perm[i1 + i] // group_size
            if not done[g]:
                # The group's current weights: in-block columns are up to date, later ones
                # still owe this block's pending update.
                pos = inv_perm[g * group_size : (g + 1) * group_size]
                here = pos < i2
                current = np.empty((rows, group_size), np.float64)
                current[:, here] = ops.numpy(ops.cols(W1, pos[here] - i1))
                if not here.all():
                    later = pos[~here]
                    current[:, ~here] = ops.numpy(ops.cols(W, later))
                    if i:
                        current[:, ~here] -= ops.numpy(E1[:, :i]) @ ops.numpy(
                            ops.cols(U[i1 : i1 + i], later)
                        )
                imp = np.repeat(diag[g * group_size : (g + 1) * group_size, None], rows, axis=1)
                x = np.ascontiguousarray(current.T, dtype=np.float32)
                _, s, b = chooser(x, bits, rnd, imp.astype(np.float32))
                G.check_finite(s, b, 0, rows)
                scales[:, g], biases[:, g] = s, b
                done[g] = True
            s, b = ops.array(scales[:, g]), ops.array(biases[:, g])
            col = W1[:, i]
            q = ops.codes(col, s, b, n_bins)
            err = (col - (s * q + b)) / U1[i, i]
            W1[:, i:] -= ops.outer(err, U1[i, i:])
            E1[:, i] = err
            Q1[:, i] = q
            ops.sync(W1, E1, Q1)
        Q[:, i1:i2] = ops.numpy(Q1).astype(np.uint8)
        if i2 < cols:
            W[:, i2:] -= E1 @ U[i1:i2, i2:]
            ops.sync(W)

    codes = Q[:, inv_perm]
    return (
        mx.array(pack(codes, bits)),
        G.to_mlx(scales, w.dtype),
        G.to_mlx(biases, w.dtype),
    )
