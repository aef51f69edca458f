"""jang.formats: the widths and group sizes Python uses are the ones the kernels were
compiled with (csrc/jang/affine.h lists them once, in JANG_FOR_EACH_BITS), and the byte
accounting is what a bundle stores."""

import math

import mlx.core as mx
import pytest

import jang
from jang import formats


def _rejection(bits: int, group_size: int) -> str:
    w = mx.zeros((4, 8), mx.uint32)
    s = mx.zeros((4, 2), mx.float16)
    with pytest.raises(ValueError) as info:
        jang.dequantize(w, s, s, bits, group_size)
    return str(info.value)


def test_kernel_widths_are_the_python_ones():
    listed = ", ".join(map(str, formats.BITS))
    assert f"bits must be one of {listed}; got 7" in _rejection(7, 64)


def test_kernel_group_sizes_are_the_python_ones():
    listed = ", ".join(map(str, formats.GROUP_SIZES))
    assert f"group_size must be one of {listed}; got 16" in _rejection(4, 16)


@pytest.mark.parametrize("bits", formats.BITS)
@pytest.mark.parametrize("group_size", formats.GROUP_SIZES)
def test_matrix_bytes_is_what_mlx_stores(bits, group_size):
    rows, cols = 8, 256
    w = mx.random.normal((rows, cols)).astype(mx.float16)
    q, s, b = mx.quantize(w, group_size=group_size, bits=bits)
    assert formats.matrix_bytes(rows, cols, bits, group_size) == q.nbytes + s.nbytes + b.nbytes


def test_size_stats_all_in():
    size = formats.SizeStats()
    size.add_quantized(params=1000, bits=4, nbytes=600)
    size.add_float((10, 50))  # a float matrix: 16 bits a weight
    size.add_float((64,))  # a vector: not in the bpw
    assert size.matrix_params == 1500 and size.other_params == 64
    assert math.isclose(size.bpw_all_in, 8 * (600 + 2 * 500) / 1500)
    assert math.isclose(size.bpw_codes, (4 * 1000 + 16 * 500) / 1500)
