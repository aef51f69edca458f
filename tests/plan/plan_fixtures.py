"""Shared helpers for the planner tests: architecture fixtures and fake weight readers."""

import json
from pathlib import Path

import mlx.core as mx

FIXTURES = Path(__file__).parent / "fixtures"
FAMILY_FILES = sorted(p.stem for p in FIXTURES.glob("*.json"))


def load(name: str) -> tuple[dict, list[tuple[str, tuple[int, ...]]]]:
    doc = json.loads((FIXTURES / f"{name}.json").read_text())
    return doc["config"], [(n, tuple(s)) for n, s in doc["tensors"]]


class FakeWeights:
    """read(name) -> a deterministic random bf16 tensor of the right shape (per-name seed)."""

    def __init__(self, tensors, heavy_tails: dict[str, float] | None = None):
        self.shapes = dict(tensors)
        self.heavy = heavy_tails or {}
        self.reads = 0

    def __call__(self, name: str) -> mx.array:
        self.reads += 1
        seed = sum(i * ord(c) for i, c in enumerate(name, 1)) % (2**31)
        w = mx.random.normal(self.shapes[name], key=mx.random.key(seed)) * 0.02
        for part, power in self.heavy.items():
            if part in name:  # heavier tails: larger RTN error at equal bits
                tail = mx.random.normal(self.shapes[name], key=mx.random.key(seed + 1))
                w = w * mx.abs(tail) ** power
        return w.astype(mx.bfloat16)
