"""jang: mixed-precision, per-tensor low-bit quantization of LLMs for MLX.

The compiled primitives live in ``jang._ext``; they load on first use so that
``jang doctor`` can still report what is wrong when the extension cannot load.
"""

from jang._version import __version__

__all__ = ["__version__", "dequantize"]

_EXT_EXPORTS = {"dequantize"}


def load_extension():
    """Import and return ``jang._ext`` (after mlx.core, whose types it uses)."""
    import mlx.core  # noqa: F401

    from jang import _ext

    return _ext


def __getattr__(name: str):
    if name in _EXT_EXPORTS:
        return getattr(load_extension(), name)
    raise AttributeError(f"module 'jang' has no attribute {name!r}")
