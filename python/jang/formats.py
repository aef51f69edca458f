"""The storage formats jang writes: code widths, group sizes and what a tensor costs in bytes.

One home for these facts. MLX's affine mode stores a matrix as b-bit codes packed into
uint32 rows plus one scale and one bias per group of inputs; jang writes scales and biases
in 16-bit floats, and a matrix left unquantized in 16-bit floats too. The same widths are
listed for the C++ kernels once, in ``JANG_FOR_EACH_BITS`` (csrc/jang/affine.h), and a test
checks that the two lists agree.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)
UNQUANTIZED = 16  # the "bits" of a matrix left in 16-bit floats
FLOAT_BYTES = 2  # a float weight, scale or bias as stored


def matrix_bytes(rows: int, cols: int, bits: int, group_size: int | None) -> int:
    """Bytes of one (rows, cols) matrix: codes + 16-bit scales and biases, or 16-bit floats."""
    if bits == UNQUANTIZED:
        return FLOAT_BYTES * rows * cols
    assert group_size and cols % group_size == 0 and (cols * bits) % 32 == 0
    return rows * cols * bits // 8 + 2 * FLOAT_BYTES * rows * (cols // group_size)


@dataclass
class SizeStats:
    """Bytes and bits per weight of a model's weight matrices, counted all-in.

    bpw is over the matrices (>= 2-D tensors: what a quantizer may quantize): quantized ones
    at their codes + scales + biases, float ones at 16 bits; vectors (norms, biases) are
    counted apart and left out, as every quantizer keeps them in float.
    """

    file_bytes: int = 0
    quant_params: int = 0
    quant_bytes: int = 0  # codes + scales + biases
    code_bits: int = 0
    float_matrix_params: int = 0  # unquantized matrices (>= 2-D), counted at 16 bits
    other_params: int = 0  # vectors (norms, biases): not in the bpw

    def add_quantized(self, params: int, bits: int, nbytes: int) -> None:
        self.quant_params += params
        self.code_bits += params * bits
        self.quant_bytes += nbytes

    def add_float(self, shape: tuple[int, ...]) -> None:
        n = math.prod(shape)
        if len(shape) >= 2:
            self.float_matrix_params += n
        else:
            self.other_params += n

    @property
    def matrix_params(self) -> int:
        return self.quant_params + self.float_matrix_params

    @property
    def bpw_all_in(self) -> float:
        float_bytes = FLOAT_BYTES * self.float_matrix_params
        return 8 * (self.quant_bytes + float_bytes) / max(self.matrix_params, 1)

    @property
    def bpw_codes(self) -> float:
        float_bits = UNQUANTIZED * self.float_matrix_params
        return (self.code_bits + float_bits) / max(self.matrix_params, 1)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "bpw_all_in": self.bpw_all_in, "bpw_codes": self.bpw_codes}
