"""The bit layout: round trips, and agreement with how MLX itself reads and writes codes."""

import mlx.core as mx
import numpy as np
import pytest

from jang.quant import QuantizationError, pack, unpack
from jang.quant.groups import to_groups
from jang.quant.packing import pack_groups

BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)


@pytest.mark.parametrize("bits", BITS)
def test_round_trip(bits):
    codes = np.random.randint(0, 1 << bits, (3, 5, 256)).astype(np.uint8)
    packed = pack(codes, bits)
    assert packed.dtype == np.uint32
    assert packed.shape == (3, 5, 256 * bits // 32)
    np.testing.assert_array_equal(unpack(packed, bits), codes)


@pytest.mark.parametrize("bits", BITS)
def test_little_endian_bitstream(bits):
    """Code k occupies bits [k*b, (k+1)*b) of the row, so 3/5/6-bit codes straddle words."""
    codes = np.random.randint(0, 1 << bits, (2, 64)).astype(np.uint8)
    packed = pack(codes, bits)
    stream = np.unpackbits(packed.astype("<u4").view(np.uint8), axis=-1, bitorder="little")
    weights = 1 << np.arange(bits)
    decoded = stream.reshape(2, 64, bits) @ weights
    np.testing.assert_array_equal(decoded, codes)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("group_size", GROUP_SIZES)
def test_mlx_reads_our_packing(bits, group_size):
    """mx.dequantize with scale 1 and bias 0 returns exactly the codes we packed."""
    codes = np.random.randint(0, 1 << bits, (4, 256)).astype(np.uint8)
    ones = mx.ones((4, 256 // group_size))
    deq = mx.dequantize(mx.array(pack(codes, bits)), ones, mx.zeros_like(ones), group_size, bits)
    np.testing.assert_array_equal(np.array(deq).astype(np.uint8), codes)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("group_size", GROUP_SIZES)
def test_unpack_mlx_output(bits, group_size):
    """Our unpack of mx.quantize's words gives the codes that reproduce mx.dequantize."""
    w = mx.random.normal((8, 384))
    wq, scales, biases = mx.quantize(w, group_size, bits)
    codes = unpack(np.array(wq), bits)
    assert codes.max() < (1 << bits)
    ours = (
        codes.reshape(8, -1, group_size) * np.array(scales)[..., None] + np.array(biases)[..., None]
    )
    ref = np.array(mx.dequantize(wq, scales, biases, group_size, bits))
    np.testing.assert_allclose(ours.reshape(8, -1), ref, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(pack(codes, bits), np.array(wq))


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("group_size", GROUP_SIZES)
def test_pack_groups_matches_pack(bits, group_size):
    codes = np.random.randint(0, 1 << bits, (6, 512)).astype(np.uint8)
    transposed = to_groups(codes.astype(np.float32), group_size)
    np.testing.assert_array_equal(pack_groups(transposed, bits, 6), pack(codes, bits))


def test_bad_input():
    with pytest.raises(QuantizationError, match="bits"):
        pack(np.zeros((1, 32), np.uint8), 7)
    with pytest.raises(QuantizationError, match="multiple of 32"):
        pack(np.zeros((1, 48), np.uint8), 4)
    with pytest.raises(QuantizationError, match="fit"):
        pack(np.full((1, 32), 16, np.uint8), 4)
    with pytest.raises(QuantizationError, match="uint32"):
        unpack(np.zeros((1, 4), np.int64), 4)
