"""Load a bundle into an mlx-lm model, zero-copy, with exact per-module bits.

Reads jang bundles (jang.json manifest), mlx-community quantized repos
(config.json ``quantization`` dict) and JANG v2 bundles of the public tool
(``jang_config.json``). Weights come from `jang._ext.load_mmap`: arrays that
view the mapped shards, so load time and resident memory do not grow with the
bundle size the way ``mx.load`` (which copies every byte) does.
"""

from __future__ import annotations

import glob
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jang.bundle import (
    MANIFEST,
    BundleError,
    read_manifest,
    validate,
)
from jang.config import normalize_config
from jang.mlx_models import build_model


@dataclass
class LoadStats:
    """What `load` did: timings and how many bytes were mapped vs copied."""

    seconds: float = 0.0
    shards: int = 0
    mapped_bytes: int = 0
    copied_tensors: int = 0
    format: str = ""
    kernels: bool = False


def _shard_files(path: Path, manifest: dict[str, Any] | None) -> list[Path]:
    if manifest is not None:
        files = [path / s["file"] for s in manifest.get("shards", [])]
    else:
        files = [Path(f) for f in sorted(glob.glob(str(path / "model*.safetensors")))]
    if not files:
        raise BundleError(f"{path}: no model*.safetensors weights")
    for f in files:
        if not f.is_file():
            raise BundleError(f"{f}: shard is missing")
    return files


def _module_quantization(
    config: dict[str, Any], manifest: dict[str, Any] | None, path: Path
) -> tuple[dict[str, Any], str]:
    """Per-module {path: {bits, group_size, mode} | False} and the bundle format name."""
    if manifest is not None:
        per_module: dict[str, Any] = {}
        for key, entry in manifest["tensors"].items():
            if entry.get("quantized"):
                per_module[key] = {
                    "bits": entry["bits"],
                    "group_size": entry["group_size"],
                    "mode": entry.get("mode", "affine"),
                }
        return per_module, "jang"
    public = path / "jang_config.json"
    if public.is_file():
        from jang import public_bundle

        return public_bundle.module_quantization(path, config), "jang-public"
    quant = config.get("quantization") or config.get("quantization_config")
    if not isinstance(quant, dict):
        return {}, "float"
    return {k: v for k, v in quant.items() if isinstance(v, dict) or v is False}, "mlx"


def load(
    path: str | Path,
    *,
    kernels: bool = True,
    verify: bool = False,
    return_stats: bool = False,
):
    """Load a bundle as ``(model, tokenizer)`` (plus `LoadStats` if `return_stats`).

    `kernels=False` keeps stock MLX quantized matmuls (for comparisons); with
    `kernels=True` jang's CPU kernels replace them where the extension has them. A jang
    bundle's config.json and shard headers are always checked against its manifest;
    `verify=True` also re-hashes every tensor against its recorded checksum (GB/s).
    """
    from mlx_lm.utils import load_tokenizer

    model, config, stats = load_model(path, kernels=kernels, verify=verify)
    start = time.perf_counter()
    path = Path(path).expanduser()
    try:
        tokenizer = load_tokenizer(path, eos_token_ids=config.get("eos_token_id"))
    except Exception as exc:  # tokenizers and transformers raise bare Exceptions
        names = [f for f in ("tokenizer.json", "tokenizer.model") if (path / f).is_file()]
        what = ", ".join(names) or "no tokenizer.json or tokenizer.model"
        raise BundleError(f"{path}: the tokenizer does not load ({what}): {exc}") from None
    stats.seconds += time.perf_counter() - start
    return (model, tokenizer, stats) if return_stats else (model, tokenizer)


def load_model(path: str | Path, *, kernels: bool = True, verify: bool = False):
    """The model alone: ``(model, config, LoadStats)`` (see `load`)."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.utils import load_config

    import jang

    start = time.perf_counter()
    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise BundleError(f"{path}: no config.json (not a model bundle)")
    try:
        config = load_config(path)
    except (ValueError, OSError) as exc:  # not JSON, not UTF-8, unreadable
        raise BundleError(f"{path / 'config.json'}: cannot be read ({exc})") from None
    if not isinstance(config, dict):
        raise BundleError(f"{path / 'config.json'}: not a JSON object")
    config = normalize_config(config)
    manifest = read_manifest(path) if (path / MANIFEST).is_file() else None
    if manifest is not None:  # every file and shard header against the manifest, before mapping
        _refuse(path, validate(path, checksums=verify, manifest=manifest))
    per_module, fmt = _module_quantization(config, manifest, path)
    default = config.get("quantization") if isinstance(config.get("quantization"), dict) else {}

    ext = jang.load_extension()
    stats = LoadStats(format=fmt)
    weights: dict[str, Any] = {}
    for shard in _shard_files(path, manifest):
        try:
            arrays, _, copied = ext.load_mmap(str(shard))
        except ValueError as exc:
            raise BundleError(str(exc).removeprefix("[jang.load_mmap] ")) from None
        weights.update(arrays)
        stats.shards += 1
        stats.mapped_bytes += shard.stat().st_size
        stats.copied_tensors += copied

    model = build_model(config)
    if hasattr(model, "sanitize"):
        weights = model.sanitize(weights)

    def predicate(module_path: str, module: nn.Module):
        if module_path in per_module:
            return per_module[module_path]
        if not hasattr(module, "to_quantized") or f"{module_path}.scales" not in weights:
            return False
        if manifest is not None:
            raise BundleError(f"{path}: {module_path} has scales but no manifest entry")
        return _infer_affine(module_path, module, weights)

    try:
        if per_module or any(k.endswith(".scales") for k in weights):
            nn.quantize(
                model,
                group_size=default.get("group_size", 64),
                bits=default.get("bits", 4),
                class_predicate=predicate,
            )
        model.load_weights(list(weights.items()), strict=True)
    except (ValueError, TypeError, KeyError, OverflowError) as exc:  # "does not fit"
        raise BundleError(
            f"{path / 'config.json'} does not describe the stored weights: {exc}"
        ) from None
    mx.eval(model.parameters())
    model.eval()
    if kernels:
        stats.kernels = _enable_kernels(model)
    stats.seconds = time.perf_counter() - start
    return model, config, stats


def _infer_affine(module_path: str, module, weights: dict[str, Any]) -> dict[str, Any]:
    """(bits, group_size) of an affine module from its stored shapes: exact, since the
    packed width and the scale count determine both (mlx-lm does the same)."""
    in_dims = module.weight.shape[-1]
    scales = weights[f"{module_path}.scales"]
    return {
        "group_size": in_dims // scales.shape[-1],
        "bits": weights[f"{module_path}.weight"].shape[-1] * 32 // in_dims,
        "mode": "affine",
    }


def _refuse(path: Path, problems: list[str]) -> None:
    """One BundleError for the first problem (and how many more there are)."""
    if problems:
        more = f" (and {len(problems) - 1} more: jang validate {path})" if len(problems) > 1 else ""
        raise BundleError(problems[0] + more)


def _enable_kernels(model) -> bool:
    """Route quantized layers through jang's kernels where this build has them."""
    try:
        from jang import kernels
    except ImportError:
        return False
    kernels.use_jang_kernels(model)
    return True
