"""transformers models built from a source: the float reference that tuning trains against
and evaluation compares with (the counterpart of `jang.mlx_models`).

torch and transformers are needed only here and where these models are used (the ``eval``
extra), never by the runtime. Everything runs in float32 on the best device torch sees.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from jang.formats import SizeStats

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

    from jang.config import normalize_config

    cfg = {k: v for k, v in normalize_config(config).items() if k not in _DROP_KEYS}
    model_type = cfg.pop("model_type")
    hf_config = AutoConfig.for_model(model_type, **cfg)
    return AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Every parameter registered inside goes to torch's meta device (shapes, no memory);
    buffers (RoPE frequencies) stay real, computed as the model's own code does."""
    import torch

    register = torch.nn.Module.register_parameter

    def on_meta(module, name, param):
        if param is not None and param.device.type != "meta":
            param = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    torch.nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def skeleton(config: dict[str, Any]):
    """`build_model` with every parameter on the meta device: the structure of a model of
    any size, to be filled part by part (`put`) and emptied again (`release`)."""
    with _parameters_on_meta():
        model = build_model(config)
    model.eval()
    return model


def decoder_layers(model) -> tuple[str, Any]:
    """(path, ModuleList) of a transformers causal LM's decoder layers."""
    lists = [
        (name, m)
        for name, m in model.named_modules()
        if type(m).__name__ == "ModuleList" and name.endswith("layers") and len(m)
    ]
    if not lists:
        raise ValueError(f"{type(model).__name__} has no decoder layers")
    return max(lists, key=lambda item: len(item[1]))


def put(module, tensors: Mapping[str, np.ndarray], device: str) -> None:
    """Give `module` the parameters `tensors` (names relative to it), one at a time, as
    frozen float32 on `device`; each must match the shape of the parameter it replaces."""
    import torch

    for name, arr in tensors.items():
        if name.endswith("rotary_emb.inv_freq"):  # a buffer older checkpoints store
            continue
        owner_path, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_path) if owner_path else module
        old = owner._parameters.get(leaf)
        if old is None:
            raise KeyError(f"tensor {name} has no place in {type(module).__name__}")
        if tuple(old.shape) != tuple(arr.shape):
            raise ValueError(f"{name}: shape {arr.shape}, model expects {tuple(old.shape)}")
        data = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).to(device)
        owner._parameters[leaf] = torch.nn.Parameter(data, requires_grad=False)


def release(module) -> None:
    """Put every parameter of `module` back on the meta device: its memory returns."""
    import torch

    for owner in module.modules():
        for leaf, p in list(owner._parameters.items()):
            if p is not None and p.device.type != "meta":
                owner._parameters[leaf] = torch.nn.Parameter(p.to("meta"), requires_grad=False)


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


def source_tensors_of(source) -> tuple[dict[str, np.ndarray], SizeStats]:
    """`source_tensors` of an opened `jang.source.ModelSource`."""
    import mlx.core as mx

    def reader(name: str) -> Callable[[], np.ndarray]:
        return lambda: np.array(source.read(name).astype(mx.float32))

    size = SizeStats()
    makers = {}
    for info in source.tensors():
        makers[info.name] = reader(info.name)
        size.add_float(info.shape)
    size.file_bytes = 2 * (size.float_matrix_params + size.other_params)
    return LazyTensors(makers), size


class LazyTensors(Mapping):
    """{name: float32 array}, each made when asked for (read, or dequantized) and not kept:
    loading a model from it holds one tensor at a time beside the model."""

    def __init__(self, makers: dict[str, Callable[[], np.ndarray]]):
        self._makers = makers

    def __getitem__(self, name: str) -> np.ndarray:
        return self._makers[name]()

    def __iter__(self):
        return iter(self._makers)

    def __len__(self) -> int:
        return len(self._makers)


def renamed(tensors: Mapping[str, np.ndarray], names: dict[str, str]) -> LazyTensors:
    """`tensors` under new names (those in `names` only), still made one at a time."""
    return LazyTensors({new: (lambda old=old: tensors[old]) for old, new in names.items()})


def load_tensors(model, tensors: Mapping[str, np.ndarray], config: dict[str, Any]):
    """Load `tensors` into `model`; return it on the evaluation device, in eval mode.

    Every model parameter must be provided, except a tied output head. Each tensor is
    copied into its parameter and dropped, so a `LazyTensors` costs one tensor of memory.
    """
    import torch

    expected = model.state_dict()  # the parameters themselves, not copies
    loaded = set()
    with torch.no_grad():
        for name in tensors:
            if name not in expected:
                if name.endswith("rotary_emb.inv_freq"):
                    continue
                raise KeyError(f"tensor {name} has no place in {type(model).__name__}")
            arr = tensors[name]
            if tuple(arr.shape) != tuple(expected[name].shape):
                raise ValueError(f"{name}: shape {arr.shape}, model expects {expected[name].shape}")
            expected[name].copy_(torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)))
            loaded.add(name)
            del arr
    missing = [k for k in expected if k not in loaded]
    tied = config.get("tie_word_embeddings", True)
    if missing and not (tied and missing == ["lm_head.weight"]):
        raise KeyError(f"missing tensors: {', '.join(missing[:5])}")
    if tied and "lm_head.weight" in missing:
        model.tie_weights()
    model.to(device())
    model.eval()
    return model
