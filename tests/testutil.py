"""Helpers shared by tests (import as `from testutil import ...`)."""

import json

import mlx.core as mx
import numpy as np


def bits_of(a: mx.array) -> np.ndarray:
    """Raw bit patterns of a float array, for bit-exact comparisons."""
    view = {mx.float32: mx.uint32, mx.float16: mx.uint16, mx.bfloat16: mx.uint16}[a.dtype]
    return np.array(a.view(view))


def bundle_bytes(path):
    """Every shard's bytes, and the manifest less the planner's timings and the tuning's
    seconds (the second plan of a model comes from the error cache, faster)."""
    manifest = json.loads((path / "jang.json").read_text())
    manifest["plan"].pop("timing")
    manifest["plan"]["solver"].pop("seconds")
    if manifest.get("tune"):
        manifest["tune"].pop("seconds")
        manifest["tune"].pop("layers_resumed", None)
    shards = {f.name: f.read_bytes() for f in sorted(path.glob("*.safetensors"))}
    return shards, manifest
