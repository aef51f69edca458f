"""Calibration text for GPTQ and activation statistics: from a file or a built-in sample.

The built-in sample (``calib_default.txt``, a few KB of varied original prose, a recipe,
dialogue, some code and numbers) lets calibration run with no data at hand; it is small,
so many windows overlap. Real conversions should pass a larger text file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import mlx.core as mx
import numpy as np

from jang.quant.groups import QuantizationError

DEFAULT_TEXT = Path(__file__).with_name("calib_default.txt")


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...


def load_text(path: str | Path | None = None) -> str:
    """The text of `path` (UTF-8), a prepared dataset by name (`jang.evaluate.TEXT_DATASETS`;
    a file of that name wins), several of those joined by ``+`` (``boolq+lambada``: the
    texts one after the other, so windows are drawn from all), or the built-in sample when
    `path` is None."""
    from jang.evaluate import TEXT_DATASETS
    from jang.evaluate import load_text as dataset_text

    if path is not None and "+" in str(path) and not Path(path).exists():
        return "\n\n".join(load_text(part) for part in str(path).split("+"))
    if path is not None and str(path) in TEXT_DATASETS and not Path(path).exists():
        try:
            return dataset_text(dataset=str(path))
        except FileNotFoundError as e:
            raise QuantizationError(f"calibration text {path!r}: {e}") from None
    p = DEFAULT_TEXT if path is None else Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise QuantizationError(f"cannot read calibration text {p}: {e.strerror}") from None
    if not text.strip():
        raise QuantizationError(f"calibration text {p} is empty")
    return text


def calibration_tokens(
    tokenizer: Tokenizer,
    path: str | Path | None = None,
    *,
    text: str | None = None,
    n_samples: int = 128,
    seq_len: int = 512,
    seed: int = 0,
) -> mx.array:
    """`n_samples` windows of `seq_len` tokens, as an int32 array (n_samples, seq_len).

    The text is `text` if given, else the file `path`, else the built-in sample. When it
    holds at least `n_samples` whole windows, distinct non-overlapping windows are drawn at
    random (`seed`); otherwise the windows start at evenly spaced offsets and overlap, and
    a text shorter than one window is repeated to fill it.
    """
    if n_samples < 1 or seq_len < 1:
        raise QuantizationError(
            f"n_samples and seq_len must be positive, got {n_samples}, {seq_len}"
        )
    if text is None:
        text = load_text(path)
    ids = np.asarray(tokenizer.encode(text), dtype=np.int32)
    if ids.size == 0:
        raise QuantizationError("the calibration text encodes to no tokens")
    if ids.size < seq_len:
        ids = np.tile(ids, -(-seq_len // ids.size))
    whole = ids.size // seq_len
    if whole >= n_samples:
        pick = np.sort(np.random.default_rng(seed).permutation(whole)[:n_samples])
        starts = pick * seq_len
    else:
        starts = np.linspace(0, ids.size - seq_len, n_samples).round().astype(np.int64)
    windows = np.stack([ids[s : s + seq_len] for s in starts])
    return mx.array(windows)
