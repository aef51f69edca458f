"""numpy (BLAS) versions of the two heavy operations of a decoder layer, for the CPU.

MLX's Linux CPU build links the reference BLAS: on the 2-core machine of bench/RESULTS.md
an fp32 (8192x576)@(576x1536) matmul runs at ~2.3 GFLOP/s in MLX and ~150 GFLOP/s in
numpy, and one layer's attention over 128x512 calibration tokens takes minutes. While the
calibration passes run on the CPU, the GPTQ driver sends linear layers and attention here;
everything else in the layer (norms, RoPE, activations) stays MLX.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import mlx.core as mx
import numpy as np

from jang.quant.groups import to_numpy32


def linear(x: mx.array, weight: np.ndarray, bias: np.ndarray | None) -> mx.array:
    """``x @ weight.T + bias`` with float32 numpy weights; the result has x's dtype."""
    a = to_numpy32(x)
    y = a.reshape(-1, a.shape[-1]) @ weight.T
    if bias is not None:
        y += bias
    return mx.array(y.reshape(*x.shape[:-1], weight.shape[0])).astype(x.dtype)


def _mask_bias(mask, q_len: int, k_len: int) -> np.ndarray | None:
    """An additive float32 mask broadcastable to (batch, heads, q_len, k_len)."""
    if mask is None:
        return None
    if isinstance(mask, str):
        if mask != "causal":
            raise ValueError(f"unsupported attention mask {mask!r}")
        future = np.triu(np.ones((q_len, k_len), bool), k=k_len - q_len + 1)
        return np.where(future, np.float32(-np.inf), np.float32(0))
    if mask.dtype == mx.bool_:
        return np.where(np.array(mask), np.float32(0), np.float32(-np.inf))
    return to_numpy32(mask)


QUERY_BLOCK = 64  # query rows per step: a block's scores stay in the L2 cache


def attention(queries, keys, values, *, scale: float, mask=None, sinks=None, stream=None):
    """``mx.fast.scaled_dot_product_attention`` computed with numpy.

    One sequence and one block of queries at a time; with a causal mask, a block reads
    only the keys up to its last query, so the masked half is never computed.
    """
    if sinks is not None or stream is not None:
        return ORIGINAL_ATTENTION(
            queries, keys, values, scale=scale, mask=mask, sinks=sinks, stream=stream
        )
    b, hq, lq, d = queries.shape
    hk, lk = keys.shape[1], keys.shape[2]
    rep = hq // hk
    q = (to_numpy32(queries) * np.float32(scale)).reshape(b, hk, rep, lq, d)
    k = to_numpy32(keys)
    v = to_numpy32(values)
    causal = isinstance(mask, str) and mask == "causal" and lk >= lq
    bias = None if causal else _mask_bias(mask, lq, lk)
    if bias is not None:
        bias = np.broadcast_to(bias, (b, hq, lq, lk)).reshape(b, hk, rep, lq, lk)
    out = np.empty((b, hk, rep, lq, v.shape[-1]), np.float32)
    offset = lk - lq  # causal: query i sees keys [0, i + offset]
    for i in range(b):
        for a in range(0, lq, QUERY_BLOCK):
            e = min(a + QUERY_BLOCK, lq)
            n = e - a
            end = min(lk, e + offset) if causal else lk
            s = q[i, :, :, a:e].reshape(hk, rep * n, d) @ k[i, :, :end].transpose(0, 2, 1)
            s = s.reshape(hk, rep, n, end)
            if causal:
                first = a + offset + 1  # first key hidden from query a
                if first < end:
                    s[..., first:] += _causal_tail(n, end - first)
            elif bias is not None:
                s += bias[i, :, :, a:e, :end]
            s -= s.max(axis=-1, keepdims=True)
            np.exp(s, out=s)
            s /= s.sum(axis=-1, keepdims=True)
            out[i, :, :, a:e] = (s.reshape(hk, rep * n, end) @ v[i, :, :end]).reshape(
                hk, rep, n, -1
            )
    return mx.array(out.reshape(b, hq, lq, -1)).astype(queries.dtype)


def _causal_tail(rows: int, cols: int) -> np.ndarray:
    """Additive mask of a query block's tail keys: row r hides columns c >= r."""
    hidden = np.arange(cols)[None, :] >= np.arange(rows)[:, None]
    return np.where(hidden, np.float32(-np.inf), np.float32(0))


ORIGINAL_ATTENTION = mx.fast.scaled_dot_product_attention


@contextlib.contextmanager
def numpy_attention() -> Iterator[None]:
    """Route ``mx.fast.scaled_dot_product_attention`` through `attention` inside the block."""
    mx.fast.scaled_dot_product_attention = attention
    try:
        yield
    finally:
        mx.fast.scaled_dot_product_attention = ORIGINAL_ATTENTION


class _NumpyLinear:
    """Stands in for an nn.Linear: the same product through numpy (attributes delegate)."""

    def __init__(self, module):
        self.module = module
        self._w = to_numpy32(module.weight)
        self._b = to_numpy32(module.bias) if "bias" in module else None

    def __getattr__(self, key):
        return getattr(self.module, key)

    def __call__(self, x):
        return linear(x, self._w, self._b)


@contextlib.contextmanager
def numpy_model(model) -> Iterator[None]:
    """Run `model`'s nn.Linear layers and attention through numpy inside the block.

    For CPU forward passes of float models (evaluation, calibration statistics); the
    weights are read once on entry, so change them before entering.
    """
    import mlx.nn as nn

    swapped = []
    for name, m in model.named_modules():
        if type(m) is nn.Linear and name:
            parent_name, _, leaf = name.rpartition(".")
            parent = model if not parent_name else _lookup(model, parent_name)
            swapped.append((parent, leaf, m))
    try:
        for parent, leaf, m in swapped:
            _assign(parent, leaf, _NumpyLinear(m))
        with numpy_attention():
            yield
    finally:
        for parent, leaf, m in swapped:
            _assign(parent, leaf, m)


def _lookup(root, path: str):
    for part in path.split("."):
        root = root[int(part)] if isinstance(root, list) else getattr(root, part)
    return root


def _assign(parent, leaf: str, value) -> None:
    if isinstance(parent, list):
        parent[int(leaf)] = value
    else:
        setattr(parent, leaf, value)
