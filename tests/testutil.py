"""Helpers shared by tests (import as `from testutil import ...`)."""

import mlx.core as mx
import numpy as np


def bits_of(a: mx.array) -> np.ndarray:
    """Raw bit patterns of a float array, for bit-exact comparisons."""
    view = {mx.float32: mx.uint32, mx.float16: mx.uint16, mx.bfloat16: mx.uint16}[a.dtype]
    return np.array(a.view(view))
