"""Human-readable tables of a bundle: bits per role and per layer, sizes."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from jang.tables import text_table

_LAYER = re.compile(r"\.layers\.(\d+)\.")


def _role(key: str, entry: dict[str, Any]) -> str:
    if entry.get("role"):
        return entry["role"]
    return key.rsplit(".", 1)[-1] if entry.get("quantized") else "float"


def _nbytes(entry: dict[str, Any]) -> int:
    return sum(r.get("nbytes", 0) for r in entry.get("arrays", {}).values())


def _numel(entry: dict[str, Any]) -> int:
    n = 1
    for d in entry.get("shape", []):
        n *= d
    return n


def describe(path: Path, manifest: dict[str, Any], by_layer: bool = True) -> str:
    """Size, bits per weight and per-role / per-layer bit tables of a bundle."""
    tensors = manifest["tensors"]
    roles: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # params, bytes, tensors
    role_bits: dict[str, set[str]] = defaultdict(set)
    layers: dict[int, dict[str, str]] = defaultdict(dict)
    q_params = q_bytes = q_code_bits = f_bytes = 0
    for key, entry in tensors.items():
        role = _role(key, entry)
        n, b = _numel(entry), _nbytes(entry)
        roles[role][0] += n
        roles[role][1] += b
        roles[role][2] += 1
        label = (
            f"{entry['bits']}b/g{entry['group_size']}"
            if entry.get("quantized")
            else entry.get("dtype", "float")
        )
        role_bits[role].add(label)
        if entry.get("quantized"):
            q_params += n
            q_bytes += b
            q_code_bits += n * entry["bits"]
            m = _LAYER.search(key + ".")
            if m:
                layers[int(m.group(1))][key.rsplit(".", 1)[-1]] = f"{entry['bits']}"
        else:
            f_bytes += b
    total = q_bytes + f_bytes
    lines = [
        f"bundle   {path}",
        f"source   {manifest.get('source', {}).get('path')}",
        f"method   {manifest.get('method')}   plan {manifest.get('plan', {}).get('request', {}).get('profile')}",
        f"size     {total / 1e6:.2f} MB ({q_bytes / 1e6:.2f} MB quantized, {f_bytes / 1e6:.2f} MB float)",
    ]
    if q_params:
        all_in = 8 * (q_bytes + f_bytes) / q_params
        lines.append(
            f"bpw      {8 * q_bytes / q_params:.3f} quantized matrices all-in, "
            f"{q_code_bits / q_params:.3f} codes only, {all_in:.3f} incl. float tensors"
        )
    rows = [
        [role, ", ".join(sorted(role_bits[role])), v[2], f"{v[0] / 1e6:.2f}M", f"{v[1] / 1e6:.2f}"]
        for role, v in sorted(roles.items(), key=lambda kv: -kv[1][1])
    ]
    lines += ["", "\n".join(text_table(["role", "bits", "tensors", "params", "MB"], rows))]
    if by_layer and layers:
        cols = sorted({c for layer in layers.values() for c in layer})
        rows = [[i] + [layers[i].get(c, "-") for c in cols] for i in sorted(layers)]
        lines += ["", "bits per layer", "\n".join(text_table(["layer", *cols], rows))]
    return "\n".join(lines)
