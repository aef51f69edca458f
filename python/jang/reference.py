"""The reference engine: any bundle dequantized into the Hugging Face model, run by torch.

MLX's CPU backend multiplies with reference BLAS, far too slow to evaluate real models on a
Linux box; torch's CPU kernels are fast. So evaluation dequantizes every quantized matrix of a
bundle (jang, mlx-lm/mlx-community, public JANG v2: all MLX affine) with ``mx.dequantize``
into float32, loads the result into the ``transformers`` model built from the source config,
and runs the forward pass in float32 (any accelerator torch sees, else CPU). The MLX runtime
(`jang.load`) must give the same logits; a test checks it on a tiny model.

torch and transformers are needed only here (the ``eval`` extra), never by the runtime.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

import numpy as np

from jang.evaluate import Engine, SizeStats

_DROP_KEYS = ("quantization", "quantization_config")


def device() -> str:
    """The torch device evaluation runs on: cuda or mps when present, else cpu."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def build_model(config: dict[str, Any]):
    """An empty float32 transformers causal LM for an HF-layout `config` dict."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from jang.source import normalize_config

    cfg = {k: v for k, v in normalize_config(config).items() if k not in _DROP_KEYS}
    model_type = cfg.pop("model_type")
    hf_config = AutoConfig.for_model(model_type, **cfg)
    return AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)


# VLM text towers with no causal-LM class of their own -> the family that runs them on text
# (Qwen2-VL's multimodal RoPE is plain RoPE when every position id is a text position)
_TEXT_TOWER_LM = {"qwen2_vl_text": "qwen2", "qwen2_5_vl_text": "qwen2"}
# a VLM container's text-tower prefixes -> the causal LM's
_TOWER_PREFIXES = (
    ("model.language_model.", "model."),
    ("language_model.model.", "model."),
    ("language_model.lm_head.", "lm_head."),
)


def causal_lm_view(
    config: dict[str, Any], names: list[str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The causal LM that holds a model's text: (its config, {source name: its name}).

    A plain causal LM maps to itself. A VLM container maps to its text tower, built as a
    causal LM of the tower's config, with the container's prefixes removed and the vision
    tower left out (what tuning needs: the text model, the same tensors)."""
    from jang.arch import is_vision, text_config

    if not isinstance(config.get("text_config"), dict):
        return config, {n: n for n in names}
    lm_config = {k: v for k, v in text_config(config).items() if k != "vision_config"}
    model_type = lm_config.get("model_type", "")
    lm_config["model_type"] = _TEXT_TOWER_LM.get(model_type, model_type)
    mapped = {}
    for name in names:
        if not is_vision(name):
            prefix = next((p for p in _TOWER_PREFIXES if name.startswith(p[0])), ("", ""))
            mapped[name] = prefix[1] + name.removeprefix(prefix[0])
    return lm_config, mapped


def _shapes(model) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def bundle_tensors(
    path: str | Path, shapes: dict[str, tuple[int, ...]]
) -> tuple[dict[str, np.ndarray], SizeStats]:
    """Float32 HF-named tensors of a bundle (quantized matrices dequantized) and its sizes.

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
    out: dict[str, np.ndarray] = {}
    for name, arr in stored.items():
        if name.endswith((".scales", ".biases")):
            continue
        base = name.removesuffix(".weight")
        scales = stored.get(f"{base}.scales")
        if scales is None or not name.endswith(".weight"):
            out[name] = np.array(arr.astype(mx.float32))
            size.add_float(tuple(arr.shape))
            continue
        if name not in shapes:
            raise KeyError(f"{path}: {name} has no place in the {len(shapes)}-tensor model")
        in_dims = shapes[name][-1]
        bits = arr.shape[-1] * 32 // in_dims
        group_size = in_dims // scales.shape[-1]
        biases = stored[f"{base}.biases"]
        # float32 scales: the dequantized weight is s * q + b exactly, not rounded to bf16
        w = mx.dequantize(
            arr,
            scales.astype(mx.float32),
            biases.astype(mx.float32),
            group_size=group_size,
            bits=bits,
        )
        out[name] = np.array(w.astype(mx.float32))
        nbytes = arr.nbytes + scales.nbytes + biases.nbytes
        size.add_quantized(int(np.prod(shapes[name])), bits, int(nbytes))
    return out, size


def source_tensors(src: str | Path) -> tuple[dict[str, np.ndarray], SizeStats]:
    """Float32 tensors of an unquantized source (HF dir, safetensors, GGUF) and its sizes
    (matrices counted at 16 bits, as the bf16 reference)."""
    from jang.source import open_source

    return source_tensors_of(open_source(src))


def source_tensors_of(source) -> tuple[dict[str, np.ndarray], SizeStats]:
    """`source_tensors` of an opened `jang.source.ModelSource`."""
    import mlx.core as mx

    size = SizeStats()
    out = {}
    for info in source.tensors():
        out[info.name] = np.array(source.read(info.name).astype(mx.float32))
        size.add_float(info.shape)
    size.file_bytes = 2 * (size.float_matrix_params + size.other_params)
    return out, size


def load_tensors(model, tensors: dict[str, np.ndarray], config: dict[str, Any]):
    """Load `tensors` into `model`; return it on the evaluation device, in eval mode.

    Every model parameter must be provided, except a tied output head.
    """
    import torch

    state = {}
    expected = model.state_dict()
    for name, arr in tensors.items():
        if name not in expected:
            if name.endswith("rotary_emb.inv_freq"):
                continue
            raise KeyError(f"tensor {name} has no place in {type(model).__name__}")
        if tuple(arr.shape) != tuple(expected[name].shape):
            raise ValueError(f"{name}: shape {arr.shape}, model expects {expected[name].shape}")
        state[name] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    missing = [k for k in expected if k not in state]
    tied = config.get("tie_word_embeddings", True)
    if missing and not (tied and missing == ["lm_head.weight"]):
        raise KeyError(f"missing tensors: {', '.join(missing[:5])}")
    model.load_state_dict(state, strict=False, assign=True)
    if tied and "lm_head.weight" in missing:
        model.tie_weights()
    model.to(device())
    model.eval()
    return model


def reference_model(path: str | Path, config: dict[str, Any] | None = None):
    """``(torch model, config, SizeStats)`` for a bundle dir (has quantized tensors) or a
    source; `config` overrides the bundle's (e.g. the source's, for a bundle that lacks one)."""
    import json

    path = Path(path)
    is_bundle = (
        path.is_dir() and (path / "config.json").is_file() and any(path.glob("model*.safetensors"))
    )
    if config is None:
        if is_bundle:
            config = json.loads((path / "config.json").read_text())
        else:
            from jang.source import open_source

            config = open_source(path).config
    model = build_model(config)
    if is_bundle:
        tensors, size = bundle_tensors(path, _shapes(model))
    else:
        tensors, size = source_tensors(path)
    return load_tensors(model, tensors, config), config, size


def torch_engine(model) -> Engine:
    """An engine over a transformers model: ids (T,) -> float32 logits (T, V) as numpy."""
    import torch

    dev = next(model.parameters()).device

    def run(ids: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.asarray(ids, dtype=np.int64))[None].to(dev)
            return model(input_ids=x, use_cache=False).logits[0].float().cpu().numpy()

    return run
