"""Clip search: per-group range and least-squares scale/bias refit, never worse than RTN.

For each group the error to minimise is ``sum_j h_j (x_j - (s q_j + b))**2`` over codes
``q_j`` in [0, 2**bits - 1], with ``h_j`` the importance of input channel j (1 without
calibration, diag(X^T X) with it). Starting points are the group's [min, max] range and,
at 2 and 3 bits, that range shrunk toward zero (clipping the tails); the plain min/max
grid settles lower than MLX's edge-anchored RTN grid. From each start the search
alternates the two exact sub-problems: given the codes, (s, b) is a weighted
least-squares line fit (closed form); given (s, b), the nearest code is optimal element
by element. Both steps only lower the error, so a few rounds settle, and the range that
results is the clipped one. The best fit per group is rounded to the storage dtype, its
codes are reassigned for the rounded values, and its actual error is compared with RTN's
actual error: RTN's codes and parameters stay wherever the fit is not better by more than
float32 accounting noise (MARGIN), so no group ever gets worse.
"""

from __future__ import annotations

import numpy as np

from jang.quant.rtn import assign_codes, rtn_params

# Starting ranges: [min, max] scaled toward zero by these factors (1.0: the full range,
# with the bias at the minimum). Wider codes gain little from clipping the tails.
STARTS = {2: (1.0, 0.75), 3: (1.0, 0.85), 4: (1.0,), 5: (1.0,), 6: (1.0,), 8: (1.0,)}
# Refit/reassign rounds from each starting point.
ROUNDS = {2: 2, 3: 2, 4: 3, 5: 3, 6: 2, 8: 2}
# Relative improvement a fit needs to replace RTN: float32 error sums of one group are
# accurate to ~1e-5 (up to 8 bits), so this keeps "never worse" true in exact arithmetic.
MARGIN = 1e-4


def group_error(
    x: np.ndarray,
    codes: np.ndarray,
    scale: np.ndarray,
    bias: np.ndarray,
    h: np.ndarray | None = None,
    tmp: np.ndarray | None = None,
) -> np.ndarray:
    """Per-group (weighted) squared error of ``scale * codes + bias`` against a transposed x."""
    r = np.multiply(codes, scale, out=tmp)
    r += bias
    r -= x
    return _dot(r if h is None else r * h, r)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-group dot product down axis 0 (einsum fuses the product and the sum)."""
    return np.einsum("ij,ij->j", a, b)


def _nearest(x: np.ndarray, scale, bias, n_bins: int, out: np.ndarray) -> np.ndarray:
    """Nearest codes for (scale, bias), multiplying by the reciprocal (any code is valid
    for the stored values; exact ties do not matter)."""
    inv = (1.0 / scale).astype(np.float32)
    np.multiply(x, inv, out=out)
    out -= (bias * inv).astype(np.float32)
    np.rint(out, out=out)
    return np.clip(out, 0, n_bins, out=out)


class _Fit:
    """Closed-form weighted least-squares fit x ~ s q + b per group, with its residual."""

    def __init__(self, x: np.ndarray, h: np.ndarray | None):
        self.x, self.h = x, h
        self.tmp = np.empty_like(x)
        self.qh = None if h is None else np.empty_like(x)
        f64 = np.float64
        self.w = np.full(x.shape[1], x.shape[0], f64) if h is None else h.sum(0).astype(f64)
        hx = x if h is None else np.multiply(x, h, out=self.tmp)
        self.c = hx.sum(0).astype(f64)
        self.xx = _dot(hx, x).astype(f64)

    def __call__(self, q: np.ndarray, fallback_scale, fallback_bias):
        """(scale, bias, residual) of the best line for codes q; the fallback where the
        codes are all equal (no unique line)."""
        qh = q if self.h is None else np.multiply(q, self.h, out=self.qh)
        a = qh.sum(0).astype(np.float64)
        b = _dot(qh, q).astype(np.float64)
        d = _dot(qh, self.x).astype(np.float64)
        det = self.w * b - a * a
        ok = det > 1e-9 * self.w * b
        safe = np.where(ok, det, 1.0)
        s = np.where(ok, (self.w * d - a * self.c) / safe, fallback_scale)
        z = np.where(ok, (b * self.c - a * d) / safe, fallback_bias)
        resid = self.xx - 2 * s * d - 2 * z * self.c + s * s * b + 2 * s * z * a + z * z * self.w
        return s, z, resid


def clip_block(
    x: np.ndarray, bits: int, rnd, h: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes, stored scale and stored bias for a transposed block (group_size, n_groups).

    `rnd` rounds float32 to the storage dtype; `h` is the importance in the same layout.
    """
    n_bins = (1 << bits) - 1
    s0, b0, lo, hi = rtn_params(x, bits)
    q0 = assign_codes(x, s0, b0, bits)
    rs0, rb0 = rnd(s0), rnd(b0)
    fit = _Fit(x, h)
    e0 = group_error(x, q0, rs0, rb0, h, fit.tmp)

    best_e = np.full(x.shape[1], np.inf)
    best_s, best_b = rs0.astype(np.float64), rb0.astype(np.float64)
    q = np.empty_like(x)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for shrink in STARTS[bits]:
            z = lo * np.float32(shrink)
            s = (hi - lo) * np.float32(shrink / n_bins)
            s = np.where(s > 0, s, np.float32(1))
            _nearest(x, s, z, n_bins, q)
            for r in range(ROUNDS[bits]):
                s, z, e = fit(q, s, z)
                if r + 1 < ROUNDS[bits]:
                    _nearest(x, s, z, n_bins, q)
            better = e < best_e  # NaN never wins
            best_e = np.where(better, e, best_e)
            best_s = np.where(better, s, best_s)
            best_b = np.where(better, z, best_b)

        s1 = rnd(best_s.astype(np.float32))
        b1 = rnd(best_b.astype(np.float32))
        bad = ~(np.isfinite(s1) & np.isfinite(b1)) | (s1 == 0)
        s1 = np.where(bad, rs0, s1)
        b1 = np.where(bad, rb0, b1)
        q1 = _nearest(x, s1, b1, n_bins, q)
        e1 = group_error(x, q1, s1, b1, h, fit.tmp)
    win = e1 < e0 * (1 - MARGIN)
    np.copyto(q0, q1, where=win)
    return q0, np.where(win, s1, rs0), np.where(win, b1, rb0)
