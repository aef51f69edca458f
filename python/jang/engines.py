"""Engines: a model behind one call, ``ids (T,) int -> logits (T, V) float32`` (numpy).

Every row of an evaluation runs on one engine kind, so the numbers compare:

* ``torch``: any bundle dequantized (``mx.dequantize``, float32) into the transformers
  model built from its config, run by torch in float32. MLX's CPU backend multiplies with
  reference BLAS, far too slow for real models on a Linux box; torch's CPU kernels are fast.
  jang bundles, mlx-lm/mlx-community and public JANG v2 bundles are all MLX affine, so one
  path reads them all;
* ``mlx``: the bundle through the MLX runtime (`jang.load`, kernels off), or the source as
  an mlx-lm float32 model. A test checks that both engines give the same logits on a tiny
  model.
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jang import torch_models
from jang.formats import SizeStats

Engine = Callable[[np.ndarray], np.ndarray]


def mlx_engine(model, float32: bool = True) -> Engine:
    """An engine over an mlx-lm model (e.g. from ``jang.load(path, kernels=False)``).

    `float32` casts the float parameters (scales, biases, norms, unquantized weights; codes
    stay) to float32 first, so the forward pass is the same float32 one as the torch engine's.
    """
    import mlx.core as mx

    if float32:
        model.set_dtype(mx.float32)

    def run(ids: np.ndarray) -> np.ndarray:
        logits = model(mx.array(np.asarray(ids, dtype=np.int32))[None])[0]
        return np.array(logits.astype(mx.float32))

    return run


def mlx_source_model(src: str | Path):
    """The unquantized source (HF dir, safetensors, GGUF) as an mlx-lm model in float32."""
    from jang.mlx_models import float_model
    from jang.source import open_source

    return float_model(open_source(src))


def _shapes(model) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def bundle_tensors(
    path: str | Path, shapes: dict[str, tuple[int, ...]]
) -> tuple[Mapping[str, np.ndarray], SizeStats]:
    """Float32 HF-named tensors of a bundle (quantized matrices dequantized, each when it
    is asked for) and its sizes.

    Bits and group size of each quantized matrix follow from the stored shapes and the
    model's expected input width (exact: the packed width and scale count fix both).
    """
    import mlx.core as mx

    files = sorted(glob.glob(str(Path(path) / "model*.safetensors")))
    if not files:
        raise FileNotFoundError(f"{path}: no model*.safetensors")
    stored: dict[str, Any] = {}
    size = SizeStats()
    for f in files:
        stored.update(mx.load(f))
        size.file_bytes += Path(f).stat().st_size
    out: dict[str, Callable[[], np.ndarray]] = {}

    def as_float(arr) -> Callable[[], np.ndarray]:
        return lambda: np.array(arr.astype(mx.float32))

    def dequantized(arr, scales, biases, group_size: int, bits: int) -> Callable[[], np.ndarray]:
        # float32 scales: the dequantized weight is s * q + b exactly, not rounded to bf16
        return lambda: np.array(
            mx.dequantize(
                arr,
                scales.astype(mx.float32),
                biases.astype(mx.float32),
                group_size=group_size,
                bits=bits,
            ).astype(mx.float32)
        )

    for name, arr in stored.items():
        if name.endswith((".scales", ".biases")):
            continue
        base = name.removesuffix(".weight")
        scales = stored.get(f"{base}.scales")
        if scales is None or not name.endswith(".weight"):
            out[name] = as_float(arr)
            size.add_float(tuple(arr.shape))
            continue
        if name not in shapes:
            raise KeyError(f"{path}: {name} has no place in the {len(shapes)}-tensor model")
        in_dims = shapes[name][-1]
        bits = arr.shape[-1] * 32 // in_dims
        group_size = in_dims // scales.shape[-1]
        biases = stored[f"{base}.biases"]
        out[name] = dequantized(arr, scales, biases, group_size, bits)
        nbytes = arr.nbytes + scales.nbytes + biases.nbytes
        size.add_quantized(int(np.prod(shapes[name])), bits, int(nbytes))
    return torch_models.LazyTensors(out), size


def source_tensors(src: str | Path) -> tuple[dict[str, np.ndarray], SizeStats]:
    """Float32 tensors of an unquantized source (HF dir, safetensors, GGUF) and its sizes
    (matrices counted at 16 bits, as the bf16 reference)."""
    from jang.source import open_source

    return torch_models.source_tensors_of(open_source(src))


def _is_bundle(path: Path) -> bool:
    return (
        path.is_dir() and (path / "config.json").is_file() and any(path.glob("model*.safetensors"))
    )


def model_config(path: str | Path) -> dict[str, Any]:
    """The config of a bundle directory or a source, without reading any weight."""
    import json

    path = Path(path)
    if _is_bundle(path):
        return json.loads((path / "config.json").read_text())
    from jang.source import open_source

    return open_source(path).config


def reference_model(path: str | Path, config: dict[str, Any] | None = None):
    """``(torch model, config, SizeStats)`` for a bundle dir (has quantized tensors) or a
    source; `config` overrides the bundle's (e.g. the source's, for a bundle that lacks one)."""
    path = Path(path)
    is_bundle = _is_bundle(path)
    if config is None:
        config = model_config(path)
    model = torch_models.build_model(config)
    if is_bundle:
        tensors, size = bundle_tensors(path, _shapes(model))
    else:
        tensors, size = source_tensors(path)
    return torch_models.load_tensors(model, tensors, config), config, size


def torch_engine(model) -> Engine:
    """An engine over a transformers model: ids (T,) -> float32 logits (T, V) as numpy."""
    import torch

    dev = next(model.parameters()).device

    def run(ids: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.asarray(ids, dtype=np.int64))[None].to(dev)
            return model(input_ids=x, use_cache=False).logits[0].float().cpu().numpy()

    return run


def load_engine(path: str | Path, engine: str = "torch", config: dict[str, Any] | None = None):
    """``(engine, config, SizeStats | None)`` for a bundle or source on the named engine."""
    if engine == "torch":
        model, config, size = reference_model(path, config)
        return torch_engine(model), config, size
    if engine != "mlx":
        raise ValueError(f"unknown engine {engine!r}; choose torch or mlx")
    p = Path(path)
    if p.is_dir() and any(p.glob("model*.safetensors")):
        from jang.runtime import load_model

        model, config, _ = load_model(p, kernels=False)
    else:
        from jang.source import open_source

        model, config = mlx_source_model(p), open_source(p).config
    return mlx_engine(model), config, None


def load_tokenizer(path: str | Path, ref: str | Path | None = None):
    """The tokenizer of a bundle directory (or of the source `ref` when it has none)."""
    import tempfile

    from transformers import AutoTokenizer

    p = Path(path)
    if p.is_dir() and any((p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return AutoTokenizer.from_pretrained(str(p))
    if ref is None:
        raise FileNotFoundError(f"{path}: no tokenizer files")
    from jang.source import open_source

    tmp = Path(tempfile.mkdtemp(prefix="jang-tok-"))
    open_source(ref).write_tokenizer(tmp)
    return AutoTokenizer.from_pretrained(str(tmp))
