"""Text generation from a bundle, streamed, with prompt and decode speed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import IO, Any


def generate(
    bundle: str | Path,
    prompt: str,
    *,
    max_tokens: int = 64,
    temp: float = 0.0,
    top_p: float = 1.0,
    chat: bool = False,
    kernels: bool = True,
    stream: IO[str] | None = None,
) -> dict[str, Any]:
    """Generate from `prompt`; write text to `stream` as it comes; return the speeds."""
    from mlx_lm.generate import stream_generate
    from mlx_lm.sample_utils import make_sampler

    from jang.runtime import load

    t0 = time.perf_counter()
    model, tokenizer = load(bundle, kernels=kernels)
    load_s = time.perf_counter() - t0
    if chat and getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
    text, last = [], None
    for response in stream_generate(
        model,
        tokenizer,
        prompt,
        max_tokens=max_tokens,
        sampler=make_sampler(temp=temp, top_p=top_p),
    ):
        text.append(response.text)
        if stream is not None:
            stream.write(response.text)
            stream.flush()
        last = response
    return {
        "text": "".join(text),
        "load_s": load_s,
        "prompt_tokens": last.prompt_tokens if last else 0,
        "prompt_tps": last.prompt_tps if last else 0.0,
        "generated_tokens": last.generation_tokens if last else 0,
        "generation_tps": last.generation_tps if last else 0.0,
        "peak_memory_gb": last.peak_memory if last else 0.0,
    }
