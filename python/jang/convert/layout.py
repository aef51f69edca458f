"""Where each source tensor goes in the bundle that mlx-lm loads.

The bundle stores tensors under the mlx-lm model's own names, so that stock `mlx_lm.load`
and its per-module quantization entries find them. What the model's loader (`sanitize`)
does to a checkpoint is found by running it on lazy placeholders (no memory):

* dropped tensors (a tied lm_head, rotary buffers, a VLM's vision tower) and renamed
  ones (a VLM's ``model.language_model.*``) -> `sanitized_names`;
* per-expert tensors stacked into one ``switch_mlp`` projection -> `expert_groups`;
* tensors its sanitize rewrites only while it sees per-expert tensors -> `presanitized`.

`jang.mlx_view` handles the loaders that rewrite tensors in other ways.
"""

from __future__ import annotations

from jang.arch import EXPERT_WEIGHT
from jang.bundle import BundleWriter
from jang.errors import ConversionError
from jang.mlx_models import build_model
from jang.source import ModelSource

# per-expert projection names -> their switch_mlp names, for the MoE families mlx-lm stacks
_EXPERT_PROJ = {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}
# families whose mlx-lm model names the stacked projections otherwise (its sanitize renames)
_EXPERT_PROJ_BY_TYPE = {"nemotron_h": {"up_proj": "fc1", "down_proj": "fc2"}}


def expert_groups(infos, entries, model_type: str | None) -> dict[str, tuple[str, int, int]]:
    """Per-expert tensor name -> (stacked module path, expert index, expert count)."""
    names = {**_EXPERT_PROJ, **_EXPERT_PROJ_BY_TYPE.get(model_type or "", {})}
    found: dict[str, list[tuple[int, str]]] = {}
    for info in infos:
        m = EXPERT_WEIGHT.match(info.name)
        if not m:
            continue
        proj = names.get(m["proj"], m["proj"])
        target = f"{m['prefix']}.switch_mlp.{proj}"
        found.setdefault(target, []).append((int(m["e"]), info.name))
    groups = {}
    for target, members in found.items():
        indices = sorted(e for e, _ in members)
        if indices != list(range(len(indices))):
            raise ConversionError(f"{target}: experts {indices[:8]}... are not numbered 0..E-1")
        for e, name in members:
            groups[name] = (target, e, len(members))
    return groups


def write_experts(writer: BundleWriter, target: str, group, entry, shape) -> None:
    import mlx.core as mx

    group.sort(key=lambda g: g[0])
    q = mx.stack([g[1] for g in group])
    s = mx.stack([g[2] for g in group])
    b = mx.stack([g[3] for g in group])
    mx.eval(q, s, b)
    writer.add_quantized(
        target,
        q,
        s,
        b,
        bits=entry["bits"],
        group_size=entry["group_size"],
        shape=(len(group), *shape),
        source={
            "names": [m["names"][0] for *_, m in group],
            "dtype": group[0][4]["dtype"],
            "sha256": [m["sha256"] for *_, m in group],
        },
        extra={"role": entry.get("role"), "error": entry.get("error")},
    )


def sanitized_names(source: ModelSource) -> tuple[set[str], dict[str, str]]:
    """(dropped, renamed): the source tensors the mlx-lm model discards on load (a tied
    lm_head, rotary buffers, a VLM's vision tower) and those it only renames (a VLM's
    ``model.language_model.*`` -> ``language_model.model.*``), found by running its
    `sanitize` on lazy placeholders (no memory): a renamed tensor is the same array object
    under a new name. The bundle stores the model's own names, so that mlx-lm's
    per-module quantization entries name its modules; sanitize leaves such names as they are.
    """
    import mlx.core as mx

    model = build_model(source.config)
    if not hasattr(model, "sanitize"):
        return set(), {}
    placeholders = {
        i.name: mx.zeros(i.shape, dtype=mx.bfloat16)
        for i in source.tensors()
        if not EXPERT_WEIGHT.match(i.name)
    }
    name_of = {id(a): name for name, a in placeholders.items()}
    kept = model.sanitize(dict(placeholders))
    # a new array under a source name (a conv weight moved to MLX's layout) is redone by
    # the same sanitize when the bundle loads; a new array under a new name is not
    made = sorted(n for n, a in kept.items() if id(a) not in name_of and n not in placeholders)
    if made:
        raise ConversionError(
            f"mlx-lm's {source.config.get('model_type')} loader transforms tensors jang cannot "
            f"stream yet: {', '.join(made[:5])}"
        )
    renamed = {
        name_of[id(a)]: new for new, a in kept.items() if id(a) in name_of and name_of[id(a)] != new
    }
    survivors = {name_of.get(id(a), n) for n, a in kept.items()}
    return set(placeholders) - survivors, renamed


def presanitized(source: ModelSource, experts: dict[str, tuple[str, int, int]]):
    """{source name: fn(w) -> the value to store} for tensors that mlx-lm's sanitize rewrites
    in place (same name, new value) when it loads the source but not when it loads the
    bundle: Qwen3-Next's sanitize converts conv1d layouts and 1+w norms only while it sees
    per-expert tensors, which the bundle holds stacked, so the bundle must hold those tensors
    already sanitized (as mlx_lm.convert writes them). Found by running sanitize on lazy
    placeholders of both key sets (no memory). Also checks that every stacked expert target
    is a module of the model."""
    import mlx.core as mx

    model = build_model(source.config)
    modules = {name for name, _ in model.named_modules()}
    absent = sorted({target for target, _, _ in experts.values()} - modules)
    if absent:
        raise ConversionError(
            f"mlx-lm's {source.config.get('model_type')} model has no module {absent[0]} "
            "for the stacked experts (its sanitize names them otherwise)"
        )
    if not experts or not hasattr(model, "sanitize"):
        return {}
    src = {i.name: mx.zeros(i.shape, dtype=mx.bfloat16) for i in source.tensors()}
    bundle = {n: a for n, a in src.items() if n not in experts}
    for name, (target, _, count) in experts.items():
        bundle.setdefault(f"{target}.weight", mx.zeros((count, *src[name].shape), mx.bfloat16))
    as_source = model.sanitize(dict(src))
    as_bundle = model.sanitize(dict(bundle))
    out = {}
    for name, a in src.items():
        if name in experts or name not in as_source or as_source[name] is a:
            continue  # stacked, dropped, or left alone on the source path
        if name in as_bundle and as_bundle[name] is not bundle[name]:
            continue  # redone by the same sanitize when the bundle loads
        out[name] = lambda w, name=name: model.sanitize({**src, name: w.astype(mx.float32)})[name]
    return out
