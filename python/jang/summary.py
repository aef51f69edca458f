"""Human-readable tables of a bundle: bits per role and per layer, sizes."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
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


@dataclass
class RoleSizes:
    """Parameters, bytes and widths of one role's tensors in a bundle."""

    params: int = 0
    nbytes: int = 0
    tensors: int = 0
    widths: set[str] = field(default_factory=set)  # "4b/g64", or the dtype of a float tensor


@dataclass
class BundleSizes:
    """What a bundle's bytes are made of, by role and by layer (from its manifest)."""

    roles: dict[str, RoleSizes]
    layers: dict[int, dict[str, str]]  # layer -> {module: bits}
    q_params: int = 0
    q_bytes: int = 0
    q_code_bits: int = 0
    f_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return self.q_bytes + self.f_bytes

    @property
    def bpw_all_in(self) -> float:
        """Bits per quantized weight, counting the quantized matrices' scales and biases."""
        return 8 * self.q_bytes / self.q_params

    @property
    def bpw_codes(self) -> float:
        return self.q_code_bits / self.q_params


def sizes(manifest: dict[str, Any]) -> BundleSizes:
    """Tally a manifest's tensors by role and layer."""
    out = BundleSizes(defaultdict(RoleSizes), defaultdict(dict))
    for key, entry in manifest["tensors"].items():
        role = out.roles[_role(key, entry)]
        n, b = _numel(entry), _nbytes(entry)
        role.params += n
        role.nbytes += b
        role.tensors += 1
        quantized = bool(entry.get("quantized"))
        role.widths.add(
            f"{entry['bits']}b/g{entry['group_size']}" if quantized else entry.get("dtype", "float")
        )
        if quantized:
            out.q_params += n
            out.q_bytes += b
            out.q_code_bits += n * entry["bits"]
            m = _LAYER.search(key + ".")
            if m:
                out.layers[int(m.group(1))][key.rsplit(".", 1)[-1]] = f"{entry['bits']}"
        else:
            out.f_bytes += b
    return out


def describe(path: Path, manifest: dict[str, Any], by_layer: bool = True) -> str:
    """Size, bits per weight and per-role / per-layer bit tables of a bundle."""
    t = sizes(manifest)
    lines = [
        f"bundle   {path}",
        f"source   {manifest.get('source', {}).get('path')}",
        f"method   {manifest.get('method')}   plan {manifest.get('plan', {}).get('request', {}).get('profile')}",
        f"size     {t.total_bytes / 1e6:.2f} MB ({t.q_bytes / 1e6:.2f} MB quantized, "
        f"{t.f_bytes / 1e6:.2f} MB float)",
    ]
    if t.q_params:
        lines.append(
            f"bpw      {t.bpw_all_in:.3f} quantized matrices all-in, {t.bpw_codes:.3f} codes "
            f"only, {8 * t.total_bytes / t.q_params:.3f} incl. float tensors"
        )
    rows = [
        [
            role,
            ", ".join(sorted(r.widths)),
            r.tensors,
            f"{r.params / 1e6:.2f}M",
            f"{r.nbytes / 1e6:.2f}",
        ]
        for role, r in sorted(t.roles.items(), key=lambda kv: -kv[1].nbytes)
    ]
    lines += ["", "\n".join(text_table(["role", "bits", "tensors", "params", "MB"], rows))]
    if by_layer and t.layers:
        cols = sorted({c for layer in t.layers.values() for c in layer})
        rows = [[i] + [t.layers[i].get(c, "-") for c in cols] for i in sorted(t.layers)]
        lines += ["", "bits per layer", "\n".join(text_table(["layer", *cols], rows))]
    elif t.layers:
        lines += ["", f"({len(t.layers)} layers: --layers prints the bits of each)"]
    return "\n".join(lines)
