"""jang: mixed-precision, per-tensor low-bit quantization of LLMs for MLX.

The compiled primitives live in ``jang._ext``; they load on first use so that
``jang doctor`` can still report what is wrong when the extension cannot load.
"""

from jang._version import __version__

__all__ = [
    "__version__",
    "dequantize",
    "gather_qmm",
    "load",
    "moe_gate_up",
    "qmatmul",
]

_EXT_EXPORTS = {"dequantize", "qmatmul", "gather_qmm", "moe_gate_up"}


def load_extension():
    """Import and return ``jang._ext`` (after mlx.core, whose types it uses)."""
    import mlx.core  # noqa: F401

    from jang import _ext

    return _ext


def __getattr__(name: str):
    if name in _EXT_EXPORTS:
        return getattr(load_extension(), name)
    if name == "load":
        from jang.runtime import load

        return load
    raise AttributeError(f"module 'jang' has no attribute {name!r}")
