"""MLX's affine bit layout: pack b-bit codes into uint32 words and back.

Each row is one little-endian bitstream: code k occupies bits [k*b, (k+1)*b), so 3-, 5-
and 6-bit codes cross word boundaries. Eight codes always fill exactly b bytes, so both
directions work on groups of eight codes held in one uint64 (little-endian views make
the byte order explicit, whatever the host).
"""

from __future__ import annotations

import numpy as np

from jang.quant.groups import BITS, QuantizationError

_U64 = np.dtype("<u8")
_U32 = np.dtype("<u4")


def _check(bits: int) -> None:
    if bits not in BITS:
        raise QuantizationError(f"bits must be one of {BITS}, got {bits!r}")


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack integer codes (..., n) with 0 <= code < 2**bits into uint32 words (..., n*bits/32).

    `n` must be a multiple of 32 (every MLX group size is).
    """
    _check(bits)
    codes = np.ascontiguousarray(codes)
    n = codes.shape[-1]
    if n % 32:
        raise QuantizationError(f"the last dimension ({n}) must be a multiple of 32 to pack")
    lead = codes.shape[:-1]
    if codes.size and int(codes.max()) >> bits:
        raise QuantizationError(f"codes do not fit in {bits} bits")
    c = codes.reshape(-1, n // 8, 8)
    if bits == 8:
        out = c.astype(np.uint8)
    else:
        v = np.ascontiguousarray(c[..., 0], dtype=_U64)
        for k in range(1, 8):
            v |= c[..., k].astype(_U64) << np.uint64(k * bits)
        out = v.view(np.uint8).reshape(-1, n // 8, 8)[..., :bits]
    return np.ascontiguousarray(out).reshape(-1).view(_U32).astype(np.uint32).reshape(*lead, -1)


def unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    """Unpack uint32 words (..., m) into uint8 codes (..., m*32/bits); inverse of `pack`."""
    _check(bits)
    packed = np.asarray(packed)
    if packed.dtype != np.uint32:
        raise QuantizationError(f"packed weights must be uint32, got {packed.dtype}")
    m = packed.shape[-1]
    lead = packed.shape[:-1]
    by = np.ascontiguousarray(packed, dtype=_U32).view(np.uint8).reshape(-1, m * 4 // bits, bits)
    if bits == 8:
        return by.reshape(*lead, -1).copy()
    wide = np.zeros((*by.shape[:-1], 8), np.uint8)
    wide[..., :bits] = by
    v = wide.view(_U64)[..., 0]
    mask = np.uint64((1 << bits) - 1)
    out = np.empty((*by.shape[:-1], 8), np.uint8)
    for k in range(8):
        out[..., k] = (v >> np.uint64(k * bits)) & mask
    return out.reshape(*lead, -1)


def pack_groups(codes: np.ndarray, bits: int, rows: int) -> np.ndarray:
    """Pack codes held in the transposed group layout straight into rows of uint32 words.

    `codes` is (group_size, n_groups), column g holding group g's codes as exact small
    integers (float32 is fine); the groups run row-major over `rows` rows. Eight codes are
    combined down axis 0 (contiguous rows) into one uint64, those are transposed back to
    row order, and every 32 codes (four uint64) are cut into `bits` uint32 words.
    """
    _check(bits)
    gs, ng = codes.shape
    c = codes.reshape(gs // 2, 2, ng)
    pair = (c[:, 0] + c[:, 1] * np.float32(1 << bits)).astype(np.uint64)  # < 2**16: exact
    p = pair.reshape(gs // 8, 4, ng)
    octet = p[:, 0] | (p[:, 1] << np.uint64(2 * bits))
    octet |= p[:, 2] << np.uint64(4 * bits)
    octet |= p[:, 3] << np.uint64(6 * bits)
    o = np.ascontiguousarray(octet.T).reshape(rows, -1, 4)
    words = np.empty((rows, o.shape[1], bits), np.uint32)
    span = 8 * bits
    for j in range(bits):
        acc = None
        for k in range(4):
            off = span * k - 32 * j
            if off >= 32 or off + span <= 0:
                continue
            part = o[..., k] << np.uint64(off) if off >= 0 else o[..., k] >> np.uint64(-off)
            acc = part if acc is None else acc | part
        words[..., j] = acc  # the cast keeps the low 32 bits
    return words.reshape(rows, -1)
