"""Model-family detection from an HF ``config.json`` and the tensor names.

The planner needs a few facts that name rules alone cannot give: the family (dense, MoE,
hybrid attention+SSM, pure SSM, linear attention), the text tower's config for VLMs, the layer
count (for first/last-layer position), the routed/shared expert counts (for the floors), MLA,
and whether the embedding doubles as the output head. `detect` reads them from the config and
cross-checks them against the tensor names; an unknown ``model_type`` still works (family
inferred from the names) and says so in ``Arch.warnings``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from jang.errors import ArchError

DENSE, MOE, HYBRID, SSM, LINEAR_ATTENTION = "dense", "moe", "hybrid", "ssm", "linear_attention"

# model_type (of the text tower) -> family. Anything else goes through the generic rules.
KNOWN_FAMILIES: dict[str, str] = {
    **dict.fromkeys(
        (
            "llama",
            "qwen2",
            "qwen3",
            "mistral",
            "gemma",
            "gemma2",
            "gemma3",
            "gemma3_text",
            "phi3",
            "smollm3",
            "olmo2",
            "granite",
            "starcoder2",
            "qwen2_vl",  # flat VLM configs: the text tower is the top level
            "qwen2_5_vl",
        ),
        DENSE,
    ),
    **dict.fromkeys(
        ("mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3", "gpt_oss", "olmoe"),
        MOE,
    ),
    "jamba": HYBRID,
    "nemotron_h": HYBRID,
    "mamba": SSM,
    "mamba2": SSM,
    "qwen3_next": LINEAR_ATTENTION,
}

# model_types mlx-lm builds but jang cannot convert yet, with the reason (the conformance
# matrix, tests/conformance, found each one); refused before any work.
UNSUPPORTED: dict[str, str] = {
    "jamba": "mlx-lm 0.32.2 renormalizes Jamba's top-2 expert weights where the reference "
    "model does not, so every Jamba bundle would run a different model",
}

# Top-level model_types of VLM containers whose text tower lives in ``text_config``.
VLM_CONTAINERS = {"gemma3", "llava", "mistral3", "qwen2_vl", "qwen2_5_vl"}

# one routed expert's part of a tensor name (".experts.<e>.") and a per-expert weight,
# <prefix>.experts.<e>.<proj>.weight: the layout mlx-lm stacks into switch_mlp
EXPERT_PART = re.compile(r"\.experts\.(\d+)\.")
EXPERT_WEIGHT = re.compile(r"^(?P<prefix>.+)\.experts\.(?P<e>\d+)\.(?P<proj>[a-z0-9_]+)\.weight$")
_LAYER_RE = re.compile(r"\.(?:layers|h|blocks|block)\.(\d+)\.")
_VISION_PARTS = (
    "vision_tower",
    "vision_model",
    "visual",
    "multi_modal_projector",
    "mm_projector",
    "vision_embed",
    "image_newline",
    "audio_tower",
    "embed_vision",
    "embed_audio",
)


@dataclass(frozen=True)
class Arch:
    """What the planner needs to know about a model."""

    model_type: str  # of the text tower (e.g. "gemma3_text" inside a gemma3 VLM)
    family: str  # dense | moe | hybrid | ssm | linear_attention
    known: bool  # model_type has a family entry (else generic roles)
    num_layers: int
    hidden_size: int | None = None
    num_experts: int = 0  # routed experts per MoE layer
    experts_per_token: int = 0
    num_shared_experts: int = 0
    tie_word_embeddings: bool = False
    mla: bool = False  # DeepSeek multi-head latent attention
    vlm: bool = False
    container_type: str | None = None  # top-level model_type of a VLM
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def moe(self) -> bool:
        return self.num_experts > 0

    def to_json(self) -> dict[str, Any]:
        return {
            "model_type": self.model_type,
            "family": self.family,
            "known": self.known,
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "num_experts": self.num_experts,
            "experts_per_token": self.experts_per_token,
            "num_shared_experts": self.num_shared_experts,
            "tie_word_embeddings": self.tie_word_embeddings,
            "mla": self.mla,
            "vlm": self.vlm,
            "container_type": self.container_type,
        }


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The text tower's config: ``text_config`` merged over the top level for VLMs."""
    text = config.get("text_config") or config.get("llm_config")
    if isinstance(text, dict):
        merged = {k: v for k, v in config.items() if k not in ("text_config", "vision_config")}
        merged.update(text)
        if "model_type" not in text:
            merged["model_type"] = config.get("model_type", "")
        return merged
    return dict(config)


def layer_index(name: str) -> int | None:
    """Block index of a tensor name (``model.layers.7.mlp...`` -> 7), None outside blocks."""
    m = _LAYER_RE.search("." + name)
    return int(m.group(1)) if m else None


def is_vision(name: str) -> bool:
    """True for tensors of a vision/audio tower or projector (left unquantized)."""
    return any(part in _VISION_PARTS for part in name.split("."))


def _first(cfg: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        value = cfg.get(key)
        if value is not None:
            return value
    return default


def detect(config: dict[str, Any], names: Iterable[str] = ()) -> Arch:
    """Family, layer count, experts, MLA, tying and VLM-ness of a model."""
    if not isinstance(config, dict):
        raise ArchError("config must be a dict (the contents of config.json)")
    names = list(names)
    warnings: list[str] = []
    top_type = str(config.get("model_type") or "")
    has_text_config = isinstance(config.get("text_config") or config.get("llm_config"), dict)
    vision_names = [n for n in names if is_vision(n)]
    vlm = has_text_config or "vision_config" in config or bool(vision_names)
    cfg = text_config(config)
    model_type = str(cfg.get("model_type") or top_type)
    if not model_type:
        warnings.append("config.json has no model_type; using generic roles")

    text_names = [n for n in names if not is_vision(n)]
    layers_seen = {i for i in map(layer_index, text_names) if i is not None}
    num_layers = _first(cfg, "num_hidden_layers", "n_layer", "num_layers", "n_layers")
    pattern = _first(cfg, "layers_block_type", "layer_types")  # transformers 5 hybrids
    if num_layers is None and isinstance(pattern, list) and pattern:
        num_layers = len(pattern)
    if num_layers is None:
        if not layers_seen:
            raise ArchError("config.json has no num_hidden_layers and no tensor names show layers")
        num_layers = max(layers_seen) + 1
        warnings.append(f"num_hidden_layers missing; {num_layers} layers taken from tensor names")
    num_layers = int(num_layers)
    if layers_seen and max(layers_seen) >= num_layers:
        warnings.append(
            f"tensor names reach layer {max(layers_seen)} but config says "
            f"num_hidden_layers={num_layers}"
        )

    num_experts = int(
        _first(
            cfg,
            "num_local_experts",
            "num_experts",
            "n_routed_experts",
            "moe_num_experts",
            default=0,
        )
        or 0
    )
    top_k = int(
        _first(
            cfg,
            "num_experts_per_tok",
            "experts_per_token",
            "num_experts_per_token",
            "moe_top_k",
            default=0,
        )
        or 0
    )
    shared = int(_first(cfg, "n_shared_experts", "num_shared_experts", default=0) or 0)
    if not shared and (cfg.get("shared_expert_intermediate_size") or 0) > 0:
        shared = 1
    expert_names = [n for n in text_names if ".experts." in n or ".switch_mlp." in n]
    if expert_names and not num_experts:
        ids = {int(m.group(1)) for n in expert_names if (m := EXPERT_PART.search(n))}
        if ids:
            num_experts = max(ids) + 1
        warnings.append(
            "tensor names show routed experts but config.json gives no expert count"
            + (f"; using {num_experts} from the names" if ids else "")
        )

    mla = cfg.get("kv_lora_rank") is not None or any("kv_a_proj_with_mqa" in n for n in names)

    has_head = any(
        n.split(".")[-2:-1] == ["lm_head"] or n.endswith("lm_head.weight") for n in names
    )
    tie_cfg = _first(config, "tie_word_embeddings")
    if tie_cfg is None:
        tie_cfg = cfg.get("tie_word_embeddings")
    if tie_cfg is None:
        tied = not has_head if names else True  # transformers' default is True
    else:
        tied = bool(tie_cfg)
    if names and not tied and not has_head:
        warnings.append(
            "tie_word_embeddings is false but there is no lm_head tensor; treating the "
            "embedding as tied (it is used as the output head)"
        )
        tied = True

    ssm_names = any(
        re.search(r"\.(mixer|mamba)\.(A_log|in_proj|x_proj)", "." + n) for n in text_names
    )
    attn_names = any(
        re.search(r"\.(q_proj|qkv_proj|query_key_value|c_attn|Wqkv)\.", n) for n in text_names
    )
    linear_names = any(".linear_attn." in n for n in text_names)
    # transformers 5 names some text towers "<container>_text" (qwen2_vl_text)
    family = KNOWN_FAMILIES.get(model_type) or KNOWN_FAMILIES.get(model_type.removesuffix("_text"))
    known = family is not None
    if family is None:
        if linear_names:
            family = LINEAR_ATTENTION
        elif ssm_names and attn_names:
            family = HYBRID
        elif ssm_names:
            family = SSM
        elif num_experts:
            family = MOE
        else:
            family = DENSE
        warnings.append(
            f"unknown model_type {model_type!r}: generic roles by tensor name, "
            f"family inferred as {family}"
        )
    elif family == DENSE and num_experts:
        family = MOE

    return Arch(
        model_type=model_type,
        family=family,
        known=known,
        num_layers=num_layers,
        hidden_size=_first(cfg, "hidden_size", "d_model", "n_embd"),
        num_experts=num_experts,
        experts_per_token=top_k,
        num_shared_experts=shared,
        tie_word_embeddings=tied,
        mla=mla,
        vlm=vlm,
        container_type=top_type if vlm and top_type != model_type else None,
        warnings=tuple(warnings),
    )


def supported_families() -> list[str]:
    """The top-level model_types the conformance matrix passes: KNOWN_FAMILIES and the VLM
    containers, less UNSUPPORTED."""
    return sorted((set(KNOWN_FAMILIES) | VLM_CONTAINERS) - set(UNSUPPORTED))


def require_supported(config: dict[str, Any]) -> None:
    """Refuse, before any work, a model that mlx-lm cannot build or that jang cannot convert:
    one line naming the family and listing the supported ones (ArchError)."""
    from jang.mlx_models import model_classes

    model_type = str(text_config(config).get("model_type") or config.get("model_type") or "")
    top_type = str(config.get("model_type") or model_type)
    listed = ", ".join(supported_families())
    if model_type in UNSUPPORTED or top_type in UNSUPPORTED:
        reason = UNSUPPORTED.get(model_type) or UNSUPPORTED[top_type]
        raise ArchError(
            f"model family {top_type!r} is not supported yet ({reason}); supported: {listed}"
        )
    try:
        model_classes(config)
    except ValueError:
        raise ArchError(
            f"model family {top_type!r} is not supported: mlx-lm cannot build it; "
            f"supported: {listed}"
        ) from None
