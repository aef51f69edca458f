"""Tensor name -> role -> tier, and the per-role floors.

A role says what a tensor does (``attn_v``, ``expert_down``, ``ssm_dt``...), read from the
module names of an HF checkpoint rather than from raw substrings: the module that owns the
weight, its parent (``self_attn``, ``mlp``, ``mixer``, ``linear_attn``...), and whether it sits
under ``experts.N`` / ``switch_mlp`` / ``shared_expert(s)``. Roles map to the public JANG tiers
(CRITICAL / IMPORTANT / COMPRESS) used by the fixed profiles; the position of the layer (first
or last two) is a separate factor used by the solver's prior.

Floors are the rules proven by the public tool on large MoE models; the solver and the fixed
profiles both respect them (`bounds`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from jang.arch import EXPERT_PART, Arch, is_vision, layer_index
from jang.formats import GROUP_SIZES

CRITICAL, IMPORTANT, COMPRESS, NONE = "CRITICAL", "IMPORTANT", "COMPRESS", "-"
TIERS = (CRITICAL, IMPORTANT, COMPRESS)

# role -> tier. Roles with tier NONE are never quantized.
ROLE_TIER: dict[str, str] = {
    "embedding": IMPORTANT,
    "lm_head": IMPORTANT,
    "attn_q": CRITICAL,
    "attn_k": CRITICAL,
    "attn_v": CRITICAL,
    "attn_o": CRITICAL,
    "attn_qkv": CRITICAL,
    "mla_q_a": CRITICAL,
    "mla_q_b": CRITICAL,
    "mla_kv_a": CRITICAL,
    "mla_kv_b": CRITICAL,
    "router": CRITICAL,
    "shared_expert_gate": CRITICAL,
    "shared_expert": CRITICAL,
    "expert_gate": COMPRESS,
    "expert_up": COMPRESS,
    "expert_down": COMPRESS,
    "expert_gate_up": COMPRESS,
    "mlp_gate": COMPRESS,
    "mlp_up": COMPRESS,
    "mlp_down": COMPRESS,
    "mlp_gate_up": COMPRESS,
    "ssm_in": IMPORTANT,
    "ssm_out": IMPORTANT,
    "ssm_x": CRITICAL,
    "ssm_dt": CRITICAL,
    "linattn_in": CRITICAL,
    "linattn_out": CRITICAL,
    "other": IMPORTANT,  # an unrecognised matrix: quantized, conservatively
    "conv": NONE,
    "norm": NONE,
    "bias": NONE,
    "param": NONE,  # A_log, D, dt_bias, sinks, e_score_correction_bias, ...
    "vision": NONE,
}
ROLES = tuple(ROLE_TIER)
ROUTERS = ("router", "shared_expert_gate")
ROUTED = ("expert_gate", "expert_up", "expert_down", "expert_gate_up")
EDGE_LAYERS = 2  # first/last this many blocks count as "edge" layers

_ATTN = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_o"}
_ATTN_ALIASES = {
    "wq": "attn_q",
    "wk": "attn_k",
    "wv": "attn_v",
    "wo": "attn_o",
    "query": "attn_q",
    "key": "attn_k",
    "value": "attn_v",
    "qkv_proj": "attn_qkv",
    "query_key_value": "attn_qkv",
    "c_attn": "attn_qkv",
    "wqkv": "attn_qkv",
    "Wqkv": "attn_qkv",
}
_MLA = {
    "q_a_proj": "mla_q_a",
    "q_b_proj": "mla_q_b",
    "kv_a_proj_with_mqa": "mla_kv_a",
    "kv_b_proj": "mla_kv_b",
    # mlx-lm's DeepSeek-V3 holds kv_b_proj as its two halves (per-head MultiLinear)
    "embed_q": "mla_kv_b",
    "unembed_out": "mla_kv_b",
}
# MLP projection aliases -> gate/up/down/gate_up (mixtral w1/w3/w2, gpt-2 c_fc/c_proj, ...)
_MLP = {
    "gate_proj": "gate",
    "w1": "gate",
    "up_proj": "up",
    "w3": "up",
    "fc1": "up",
    "c_fc": "up",
    "dense_h_to_4h": "up",
    "down_proj": "down",
    "w2": "down",
    "fc2": "down",
    "c_proj": "down",
    "dense_4h_to_h": "down",
    "gate_up_proj": "gate_up",
}
_EMBED = {
    "embed_tokens",
    "wte",
    "wpe",
    "tok_embeddings",
    "word_embeddings",
    "embeddings",
    "embed_in",
}
_HEAD = {"lm_head", "embed_out"}
_ATTN_PARENTS = {"self_attn", "attn", "attention", "self_attention", "mixer"}
_MLP_PARENTS = {"mlp", "feed_forward", "ffn", "block_sparse_moe", "moe", "mixer"}
_SSM = {"in_proj": "ssm_in", "out_proj": "ssm_out", "x_proj": "ssm_x", "dt_proj": "ssm_dt"}


@dataclass(frozen=True)
class TensorRole:
    """A source tensor as the planner sees it."""

    name: str
    shape: tuple[int, ...]
    role: str
    tier: str
    layer: int | None = None
    edge: bool = False  # in the first or last EDGE_LAYERS blocks
    expert: int | None = None  # index in experts.N, None for stacked or non-expert
    group: str | None = None  # decision key shared by all experts of one projection
    rows: int = 0  # output features per matrix (0 for non-matrices)
    cols: int = 0  # input features: the quantization axis
    matrices: int = 1  # stacked experts count (E for (E, out, in))
    transposed: bool = False  # stored (in, out): the converter must transpose
    tied: bool = False  # embedding also used as the output head
    reason: str | None = None  # why it stays unquantized (None: quantizable)

    @property
    def quantizable(self) -> bool:
        return self.reason is None

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class Bounds:
    """Allowed candidates of one decision: bits >= min_bits, these group sizes, fp16 or not."""

    min_bits: int = 2
    max_bits: int = 8
    group_sizes: tuple[int, ...] = GROUP_SIZES
    allow_unquantized: bool = False
    why: tuple[str, ...] = field(default=())


@dataclass
class Classified:
    """All tensors of a model, classified, with the warnings raised on the way."""

    arch: Arch
    tensors: list[TensorRole]
    warnings: list[str]

    def quantizable(self) -> list[TensorRole]:
        return [t for t in self.tensors if t.quantizable]


def _parts(name: str) -> tuple[list[str], str]:
    """Module path parts and the parameter name (``weight`` for ``....q_proj.weight``)."""
    parts = name.split(".")
    return parts[:-1], parts[-1]


def role_of(name: str, shape: tuple[int, ...], arch: Arch) -> str:
    """The role of one tensor (``other`` when no rule knows its module)."""
    if is_vision(name):
        return "vision"
    modules, param = _parts(name)
    module = modules[-1] if modules else ""
    parent = modules[-2] if len(modules) >= 2 else ""
    if "norm" in module.lower() or module in ("ln_f", "ln_1", "ln_2"):
        return "norm"
    if param == "bias" or param.endswith("_bias"):
        return "bias"
    if module == "experts":  # gpt-oss: experts.gate_up_proj (E, ., .), MXFP4 *_blocks
        base = param.removesuffix("_blocks")
        return "expert_" + _MLP[base] if base in _MLP and len(shape) >= 3 else "param"
    if param != "weight" or len(shape) < 2:
        return "param"  # A_log, D, sinks, 1-D weights outside norms, ...
    if module == "conv1d" or len(shape) > 3:
        return "conv"
    if module in _HEAD:
        return "lm_head"
    if module in _EMBED:
        return "embedding"
    if module in ("gate", "router") and parent in _MLP_PARENTS:
        return "router"
    if module == "shared_expert_gate":
        return "shared_expert_gate"
    if any(m in ("shared_expert", "shared_experts", "shared_mlp") for m in modules):
        return "shared_expert" if module in _MLP else "other"
    if "experts" in modules or "switch_mlp" in modules:
        return "expert_" + _MLP[module] if module in _MLP else "other"
    if parent == "linear_attn":
        if module.startswith("in_proj"):
            return "linattn_in"
        if module == "out_proj":
            return "linattn_out"
    if parent in ("mixer", "mamba") and module in _SSM:
        return _SSM[module]
    if module in _MLA:
        return _MLA[module]
    if module in _ATTN:
        return _ATTN[module]
    attn_parent = parent in _ATTN_PARENTS and parent != "mixer"
    if module in ("out_proj", "c_proj", "dense") and attn_parent:
        return "attn_o"
    if module in _ATTN_ALIASES and module != "dense":
        return _ATTN_ALIASES[module]
    if module in _MLP:
        return "mlp_" + _MLP[module]
    return "other"


def _matrix_dims(name: str, shape: tuple[int, ...]) -> tuple[int, int, int, bool]:
    """(matrices, rows, cols, transposed) of a quantizable tensor in MLX's (out, in) layout."""
    modules, param = _parts(name)
    if len(shape) == 4 and param.endswith("_blocks"):  # MXFP4 (E, out, in/32, 16 bytes)
        return shape[0], shape[1], shape[2] * shape[3] * 2, False
    if len(shape) == 2:
        return 1, shape[0], shape[1], False
    # transformers' fused expert parameters (gpt-oss ``experts.gate_up_proj``) are used as
    # ``x @ W``, i.e. stored (E, in, out); ``....weight`` tensors are (E, out, in).
    if modules and modules[-1] == "experts" and param in _MLP:
        return shape[0], shape[-1], shape[-2], True
    return shape[0], shape[-2], shape[-1], False


def _unquantized_reason(role: str, shape: tuple[int, ...], cols: int) -> str | None:
    if ROLE_TIER[role] == NONE:
        return {
            "norm": "norm",
            "bias": "bias",
            "param": "1-D or non-weight parameter",
            "vision": "vision/audio tower",
            "conv": "convolution",
        }[role]
    if len(shape) < 2:
        return "1-D"
    if role in ROUTERS:
        # under 0.1% of an MoE's weights and the most sensitive ones; several mlx-lm models
        # (DeepSeek, Nemotron-H) hold the router as a plain parameter that cannot be quantized
        return "router: kept in float"
    if not any(cols % g == 0 for g in GROUP_SIZES):
        return f"input dim {cols} is not divisible by any group size {GROUP_SIZES}"
    return None


def classify(
    config_or_arch: dict | Arch, tensors: Iterable[tuple[str, tuple[int, ...]]]
) -> Classified:
    """Roles, tiers, positions and decision groups of every tensor of a model.

    `tensors` are (HF name, HF shape) pairs. Matrices no rule recognises get role ``other``
    (quantized at the IMPORTANT tier) and are named in the warnings.
    """
    from jang.arch import detect

    tensors = [(n, tuple(int(d) for d in s)) for n, s in tensors]
    arch = (
        config_or_arch
        if isinstance(config_or_arch, Arch)
        else detect(config_or_arch, [n for n, _ in tensors])
    )
    warnings = list(arch.warnings)
    out: list[TensorRole] = []
    unmatched: list[str] = []
    last = arch.num_layers - 1
    for name, shape in tensors:
        role = role_of(name, shape, arch)
        if role == "other":
            unmatched.append(name)
        layer = layer_index(name)
        edge = layer is not None and (layer < EDGE_LAYERS or layer > last - EDGE_LAYERS)
        m = EXPERT_PART.search(name)
        expert = int(m.group(1)) if m else None
        group = name[: m.start()] + ".experts.*." + name[m.end() :] if m else None
        matrices = rows = cols = 0
        transposed = False
        if len(shape) >= 2 and ROLE_TIER[role] != NONE:
            matrices, rows, cols, transposed = _matrix_dims(name, shape)
        reason = _unquantized_reason(role, shape, cols)
        if role == "lm_head" and arch.tie_word_embeddings:
            reason = "tied to the embedding: mlx-lm drops lm_head.weight"
            warnings.append(f"{name} present but tie_word_embeddings is true; it is not planned")
        tied = role == "embedding" and arch.tie_word_embeddings
        if role in ROUTED and not arch.moe:
            warnings.append(f"{name}: expert tensor in a model with no expert count")
        if role == "router" and arch.num_experts and rows not in (0, arch.num_experts):
            warnings.append(f"{name}: router with {rows} outputs but {arch.num_experts} experts")
        out.append(
            TensorRole(
                name=name,
                shape=shape,
                role=role,
                tier=ROLE_TIER[role],
                layer=layer,
                edge=edge,
                expert=expert,
                group=group,
                rows=rows,
                cols=cols,
                matrices=max(matrices, 1),
                transposed=transposed,
                tied=tied,
                reason=reason,
            )
        )
    if unmatched:
        shown = ", ".join(unmatched[:8]) + (
            f" (+{len(unmatched) - 8} more)" if len(unmatched) > 8 else ""
        )
        warnings.append(
            f"{len(unmatched)} matrices match no role rule and are planned as 'other' "
            f"(IMPORTANT tier): {shown}"
        )
    _check_groups(out, arch, warnings)
    return Classified(arch=arch, tensors=out, warnings=warnings)


def _check_groups(tensors: list[TensorRole], arch: Arch, warnings: list[str]) -> None:
    groups: dict[str, list[TensorRole]] = {}
    for t in tensors:
        if t.group and t.quantizable:
            groups.setdefault(t.group, []).append(t)
    for key, members in groups.items():
        shapes = {m.shape for m in members}
        if len(shapes) > 1:
            raise ValueError(f"experts of {key} differ in shape: {sorted(shapes)}")
        if arch.num_experts and len(members) != arch.num_experts:
            warnings.append(f"{key}: {len(members)} experts found, config says {arch.num_experts}")


def bounds(t: TensorRole, arch: Arch) -> Bounds:
    """The proven floors for one tensor (or expert group).

    * routers and shared-expert gates: unquantized or >= 8 bits;
    * shared experts: >= 4 bits;
    * >= 256 routed experts: expert gate (and fused gate_up) >= 4 bits, down >= 3 bits;
    * >= 150 routed experts: routed experts use group size 128 (scale memory);
    * group sizes that do not divide the input dim are never candidates.
    """
    why: list[str] = []
    min_bits, allow_fp = 2, False
    sizes = tuple(g for g in GROUP_SIZES if t.cols and t.cols % g == 0)
    if t.role in ROUTERS:
        min_bits, allow_fp = 8, True
        why.append("router: unquantized or >= 8 bits")
    elif t.role == "shared_expert":
        min_bits = 4
        why.append("shared expert >= 4 bits")
    elif t.role in ROUTED and arch.num_experts >= 256:
        if t.role in ("expert_gate", "expert_gate_up"):
            min_bits = 4
            why.append(">= 256 experts: routed gate >= 4 bits")
        elif t.role == "expert_down":
            min_bits = 3
            why.append(">= 256 experts: routed down >= 3 bits")
    if t.role in ROUTED and arch.num_experts >= 150 and 128 in sizes:
        sizes = (128,)
        why.append(">= 150 experts: group size 128")
    return Bounds(min_bits=min_bits, group_sizes=sizes, allow_unquantized=allow_fp, why=tuple(why))
