"""Progress of long work on the terminal: a tqdm bar with time left, JSON lines for scripts
(``--json-progress``), or nothing."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any


def emit_event(event: str, **fields: Any) -> None:
    """One line of `--json-progress` output on stdout: {"event": event, **fields}."""
    print(json.dumps({"event": event, **fields}), flush=True)


@dataclass
class Progress:
    """Progress reporting: a tqdm bar, JSON lines for scripts, or nothing."""

    total_bytes: int
    mode: str = "bar"  # "bar" | "json" | "quiet"
    _bar: Any = None
    _done: int = 0
    _count: int = 0
    _start: float = field(default_factory=time.perf_counter)

    def __post_init__(self):
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total_bytes, unit="B", unit_scale=True, desc="convert", file=sys.stderr
            )

    def step(self, name: str, nbytes: int) -> None:
        self._done += nbytes
        self._count += 1
        if self._bar is not None:
            self._bar.set_postfix_str(f"{self._count} tensors", refresh=False)
            self._bar.update(nbytes)
        elif self.mode == "json":
            elapsed = time.perf_counter() - self._start
            rate = self._done / elapsed if elapsed > 0 else 0.0
            eta = (self.total_bytes - self._done) / rate if rate > 0 else None
            emit_event(
                "tensor",
                name=name,
                done_tensors=self._count,
                done_bytes=self._done,
                total_bytes=self.total_bytes,
                mb_per_s=round(rate / 1e6, 2),
                eta_s=None if eta is None else round(eta, 1),
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
