"""Bundles of the public JANG tool (PyPI `jang`, import name `jang_tools`), format 2.x.

They are MLX affine tensors under Hugging Face names with per-module bits in
config.json's ``quantization`` dict, repeated in ``jang_config.json``'s
``tensor_quantization_manifest``. We read the per-module entries from the
manifest when present (else config.json), check the two agree, and refuse the
variants that are not plain affine (v1 bit streams, Hadamard-rotated weights,
codebook "mxtq" weights, 1-bit storage).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jang.bundle import BundleError


def module_quantization(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Per-module {module path: {bits, group_size, mode}} of a public JANG v2 bundle."""
    file = path / "jang_config.json"
    try:
        meta = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{file}: invalid JSON ({exc})") from None
    version = str(meta.get("format_version", ""))
    if meta.get("format") not in ("jang", None) or not version.startswith("2"):
        raise BundleError(
            f"{file}: format {meta.get('format')!r} version {version!r} is not supported "
            "(only JANG v2 affine bundles; convert v1 bundles with the public tool's upgrade)"
        )
    quant = meta.get("quantization", {})
    if quant.get("hadamard_rotation"):
        raise BundleError(f"{file}: Hadamard-rotated JANG bundles are not supported")
    if meta.get("weight_format") == "mxtq" or quant.get("weight_format") == "mxtq":
        raise BundleError(f"{file}: codebook (mxtq) JANG bundles are not supported")
    from_config = {
        k: v for k, v in (config.get("quantization") or {}).items() if isinstance(v, dict)
    }
    if any(v.get("storage_bits") == 1 for v in from_config.values()):
        raise BundleError(f"{file}: 1-bit JANG bundles are not supported")
    manifest = quant.get("tensor_quantization_manifest") or {}
    result = {}
    for module, entry in manifest.items():
        result[module] = {
            "bits": int(entry["bits"]),
            "group_size": int(entry["group_size"]),
            "mode": "affine",
        }
        c = from_config.get(module)
        if c and (c.get("bits"), c.get("group_size")) != (entry["bits"], entry["group_size"]):
            raise BundleError(
                f"{path}: {module} is {c.get('bits')}-bit g{c.get('group_size')} in config.json "
                f"but {entry['bits']}-bit g{entry['group_size']} in jang_config.json"
            )
    for module, c in from_config.items():
        result.setdefault(
            module,
            {"bits": c["bits"], "group_size": c["group_size"], "mode": c.get("mode", "affine")},
        )
    return result
