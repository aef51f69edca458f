"""The plain-text report of a plan (`jang plan`'s output): roles, layers, totals."""

from __future__ import annotations

import math
from typing import Any

from jang.plan.profiles import from_request
from jang.plan.tiers import TIERS
from jang.tables import text_table

_SHORT = {
    "embedding": "emb",
    "lm_head": "head",
    "attn_q": "q",
    "attn_k": "k",
    "attn_v": "v",
    "attn_o": "o",
    "attn_qkv": "qkv",
    "mla_q_a": "qa",
    "mla_q_b": "qb",
    "mla_kv_a": "kva",
    "mla_kv_b": "kvb",
    "router": "rt",
    "shared_expert_gate": "sg",
    "shared_expert": "sh",
    "expert_gate": "eg",
    "expert_up": "eu",
    "expert_down": "ed",
    "expert_gate_up": "egu",
    "mlp_gate": "g",
    "mlp_up": "u",
    "mlp_down": "d",
    "mlp_gate_up": "gu",
    "ssm_in": "si",
    "ssm_out": "so",
    "ssm_x": "sx",
    "ssm_dt": "sdt",
    "linattn_in": "li",
    "linattn_out": "lo",
    "other": "?",
}


def _bits_label(entry: dict[str, Any]) -> str:
    return f"{entry['bits']}/{entry['group_size']}" if entry["quantized"] else "16"


def summarize(plan: dict[str, Any], by_layer: bool = True) -> str:
    """Plain-text summary: header, per-role table, per-layer table, totals, warnings."""
    m, tot, req = plan["model"], plan["totals"], plan["request"]
    lines = [
        f"model   {m.get('source') or '-'}  ({m['model_type']}, {m['family']}, "
        f"{m['num_layers']} layers"
        + (f", {m['num_experts']} experts" if m["num_experts"] else "")
        + (", tied embedding" if m["tie_word_embeddings"] else "")
        + (", VLM text tower" if m["vlm"] else "")
        + ")",
        f"request {from_request(req).describe()}",
        "",
    ]
    quant = [(n, e) for n, e in plan["tensors"].items() if "reason" not in e]
    roles: dict[str, list[dict[str, Any]]] = {}
    for _, e in quant:
        roles.setdefault(e["role"], []).append(e)
    rows = []
    for role, es in sorted(roles.items(), key=lambda kv: (TIERS.index(kv[1][0]["tier"]), kv[0])):
        numel = [math.prod(e["shape"]) for e in es]
        params = sum(numel)
        mix: dict[str, int] = {}
        for e, n in zip(es, numel, strict=True):
            mix[_bits_label(e)] = mix.get(_bits_label(e), 0) + n
        bits_str = " ".join(
            f"{k}:{100 * v / params:.0f}%" if len(mix) > 1 else k
            for k, v in sorted(mix.items(), key=lambda kv: -kv[1])
        )
        errs = [
            (e["error"], n) for e, n in zip(es, numel, strict=True) if e.get("error") is not None
        ]
        err = sum(x * n for x, n in errs) / sum(n for _, n in errs) if errs else None
        rows.append(
            [
                role,
                es[0]["tier"],
                len(es),
                f"{params / 1e6:.2f}M",
                bits_str,
                f"{8 * sum(e['bytes'] for e in es) / params:.3f}",
                "-" if err is None else f"{err:.4f}",
            ]
        )
    lines += text_table(["role", "tier", "n", "params", "bits/gs", "bpw", "rel.err"], rows)
    if by_layer:
        layers: dict[int, list[dict[str, Any]]] = {}
        for _, e in quant:
            if e["layer"] is not None:
                layers.setdefault(e["layer"], []).append(e)
        lrows = []
        for layer in sorted(layers):
            es = layers[layer]
            params = sum(math.prod(e["shape"]) for e in es)
            seen: dict[str, str] = {}
            for e in es:
                seen.setdefault(_SHORT.get(e["role"], e["role"]), _bits_label(e))
            lrows.append(
                [
                    layer,
                    f"{params / 1e6:.2f}M",
                    f"{8 * sum(e['bytes'] for e in es) / params:.3f}",
                    " ".join(f"{k}{v}" for k, v in seen.items()),
                ]
            )
        lines += ["", *text_table(["layer", "params", "bpw", "bits/gs by role"], lrows)]
    lines += [
        "",
        f"planned {tot['params'] / 1e6:.2f}M weights: {tot['bytes'] / 2**20:.2f} MiB, "
        f"{tot['bpw_all_in']:.3f} bpw all-in, {tot['bpw_codes']:.3f} bpw codes only"
        + (f" (budget {plan['budget']['bits_all_in']:g})" if plan.get("budget") else ""),
        f"left unquantized (norms, biases, ...): {tot['other_params'] / 1e6:.3f}M weights"
        + (f"; vision tower {tot['vision_params'] / 1e6:.1f}M" if tot["vision_params"] else ""),
    ]
    if tot.get("objective") is not None:
        lines.append(f"objective sum(alpha*err^2) = {tot['objective']:.5g}")
    if plan.get("solver"):
        s = plan["solver"]
        gap = s["objective"] - s["lower_bound"]
        lines.append(
            f"solver {s['method']} ({'optimal' if s['exact'] else f'gap <= {gap:.3g}'}), "
            f"{s['seconds']:.3f} s"
        )
    if plan.get("timing"):
        lines.append(
            f"time: {plan['timing']['total_s']:.2f} s (measuring {plan['timing']['measure_s']:.2f} s)"
        )
    for w in plan.get("warnings", []):
        lines.append(f"warning: {w}")
    return "\n".join(lines)
