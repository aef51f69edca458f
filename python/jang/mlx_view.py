"""A source seen with mlx-lm's tensor names and layouts, one small group at a time.

Some mlx-lm models rewrite checkpoint tensors on load (`Model.sanitize`): DeepSeek-V3 splits
MLA's ``kv_b_proj`` into ``embed_q`` / ``unembed_out``; gpt-oss de-interleaves its fused
expert ``gate_up_proj``. A bundle must hold what the model holds (mlx-lm's per-module
quantization entries name its modules, and quantizing ``kv_b_proj`` before the split would
round it twice on another axis), so such a source is converted through `MlxView`: the
planner, the quantizers and the writer see the sanitized tensors, each produced by running
the model's own `sanitize` on the smallest group of source tensors that gives exactly what
the whole-model sanitize gives. Memory stays near one group (the inputs plus one output).

Per-expert tensors (``experts.N.proj.weight``) pass through: the converter quantizes them
one at a time and stacks them itself.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from jang.arch import EXPERT_WEIGHT
from jang.mlx_models import build_model
from jang.source import ModelSource, SourceError, TensorInfo, open_source

_LAYER = re.compile(r"^(.*?\.layers\.\d+)\.")


def _fused_expert_weights(name: str, w):
    """transformers' fused expert parameters, used as ``x @ W`` (gpt-oss:
    ``experts.gate_up_proj`` (E, in, 2 x inter), ``experts.down_proj`` (E, inter, in)) ->
    the (E, out, in) ``.weight`` layout of the original checkpoint, which mlx-lm's
    sanitize reads (and de-interleaves)."""
    import mlx.core as mx

    if re.fullmatch(r".+\.experts\.(gate_up_proj|down_proj)", name) and w.ndim == 3:
        return [(f"{name}.weight", mx.swapaxes(w, -1, -2))]
    return [(name, w)]


# model_type -> a per-tensor rewrite of checkpoint layouts mlx-lm's sanitize does not read
ADAPTERS: dict[str, Callable[[str, Any], list[tuple[str, Any]]]] = {
    "gpt_oss": _fused_expert_weights,
}


@dataclass
class _Group:
    inputs: tuple[str, ...]  # source names
    outputs: dict[str, tuple[int, ...]]  # sanitized names -> shapes


class MlxView(ModelSource):
    """`source` with the tensors mlx-lm's model holds after `sanitize` (see module doc)."""

    def __init__(self, source: ModelSource, model, model_type: str, groups: list[_Group]):
        self.source, self.path, self.config = source, source.path, source.config
        self._model, self._type, self._groups = model, model_type, groups
        self._group_of: dict[str, _Group] = {}
        self._infos = {}
        by_name = {i.name: i for i in source.tensors()}
        for group in groups:
            dtype = by_name[group.inputs[0]].dtype
            for name, shape in group.outputs.items():
                self._group_of[name] = group
                nbytes = sum(by_name[n].nbytes for n in group.inputs) // len(group.outputs)
                self._infos[name] = TensorInfo(name, shape, dtype, nbytes)
        self._cache: tuple[_Group, dict[str, Any]] | None = None

    @property
    def num_parameters(self) -> int:
        return self.source.num_parameters

    def _sanitized(self, group: _Group) -> dict[str, Any]:
        if self._cache is None or self._cache[0] is not group:
            self._cache = None
            items = [(n, self.source.read_fresh(n)) for n in group.inputs]
            self._cache = (group, self._model.sanitize(_adapt(self._type, items)))
        return self._cache[1]

    def read(self, name: str):
        import mlx.core as mx

        group = self._group_of.get(name)
        if group is None:
            raise SourceError(f"{self.path}: no tensor named {name!r}")
        if group.inputs == (name,) and tuple(group.outputs) == (name,):
            return self.source.read(name)
        out = mx.contiguous(self._sanitized(group)[name])
        mx.eval(out)
        return out

    def read_fresh(self, name: str):
        return self.read(name)

    def raw_bytes(self, name: str) -> memoryview:
        return self.source.raw_bytes(name)

    def checksum(self, name: str) -> str:
        """sha256 of the stored bytes for an untouched tensor; for one made by sanitize, of
        its inputs' checksums and the rule (`mlx_lm sanitize`), which identifies it as well."""
        group = self._group_of[name]
        if group.inputs == (name,) and tuple(group.outputs) == (name,):
            return self.source.checksum(name)
        digest = hashlib.sha256(f"mlx_lm sanitize {self._type} {name}".encode())
        for n in group.inputs:
            digest.update(self.source.checksum(n).encode())
        return digest.hexdigest()

    def write_tokenizer(self, dest) -> list[str]:
        return self.source.write_tokenizer(dest)


def _adapt(model_type: str, items: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    adapter = ADAPTERS.get(model_type)
    if adapter is None:
        return dict(items)
    out: dict[str, Any] = {}
    for name, w in items:
        out.update(adapter(name, w))
    return out


def _shapes(model, model_type: str, infos: list[TensorInfo]) -> dict[str, tuple[int, ...]]:
    """sanitize's output names and shapes for lazy placeholders of `infos` (no memory)."""
    import mlx.core as mx

    items = [(i.name, mx.zeros(i.shape, dtype=mx.bfloat16)) for i in infos]
    return {k: tuple(v.shape) for k, v in model.sanitize(_adapt(model_type, items)).items()}


def _partition(infos: list[TensorInfo], level: str) -> list[list[TensorInfo]]:
    key = {
        "tensor": lambda n: n,
        "module": lambda n: n.rsplit(".", 1)[0],
        "layer": lambda n: m[1] if (m := _LAYER.match(n)) else "",
    }[level]
    groups: dict[str, list[TensorInfo]] = {}
    for info in infos:
        groups.setdefault(key(info.name), []).append(info)
    return list(groups.values())


def mlx_view(source: ModelSource) -> ModelSource:
    """`source` itself when mlx-lm's sanitize only keeps, renames or drops its tensors
    (the converter handles those); else an `MlxView` of the rewritten tensors."""
    from mlx.utils import tree_flatten

    model_type = str(source.config.get("model_type"))
    model = build_model(source.config)
    if not hasattr(model, "sanitize"):
        return source
    infos = [i for i in source.tensors() if not EXPERT_WEIGHT.match(i.name)]
    full = _shapes(model, model_type, infos)
    sources = {i.name: tuple(i.shape) for i in infos}
    made = [k for k in full if k not in sources]
    if model_type not in ADAPTERS and (not made or _pure_renames(model, infos)):
        return source
    params = {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}
    wrong = [k for k in made if params.get(k) != full[k]]
    if wrong:
        raise SourceError(
            f"mlx-lm's {model_type} loader makes {wrong[0]} {list(full[wrong[0]])} from this "
            f"checkpoint, which its model does not hold ({params.get(wrong[0])}): jang cannot "
            "convert this layout"
        )
    for level in ("tensor", "module", "layer"):
        groups = _groups_at(model, model_type, infos, level)
        if groups is not None and _union(groups) == full:
            again = _shapes(
                model, model_type, [TensorInfo(k, s, "BF16", 0) for k, s in full.items()]
            )
            if again != full:
                raise SourceError(f"mlx-lm's {model_type} sanitize changes its own output")
            experts = [i for i in source.tensors() if EXPERT_WEIGHT.match(i.name)]
            groups += [_Group((i.name,), {i.name: tuple(i.shape)}) for i in experts]
            return MlxView(source, model, model_type, groups)
    raise SourceError(f"mlx-lm's {model_type} sanitize cannot be applied one layer at a time")


def _pure_renames(model, infos: list[TensorInfo]) -> bool:
    """True when sanitize hands back the very arrays it got (renames and drops only)."""
    import mlx.core as mx

    items = {i.name: mx.zeros(i.shape, dtype=mx.bfloat16) for i in infos}
    given = {id(a) for a in items.values()}
    return all(id(a) in given for a in model.sanitize(dict(items)).values())


def _groups_at(model, model_type: str, infos, level: str) -> list[_Group] | None:
    groups = []
    for part in _partition(infos, level):
        try:
            outputs = _shapes(model, model_type, part)
        except (KeyError, ValueError, IndexError):  # sanitize needs more of the model
            return None
        if outputs:
            groups.append(_Group(tuple(i.name for i in part), outputs))
    return groups


def _union(groups: list[_Group]) -> dict[str, tuple[int, ...]] | None:
    seen: dict[str, tuple[int, ...]] = {}
    for group in groups:
        for name, shape in group.outputs.items():
            if name in seen:
                return None
            seen[name] = shape
    return seen


def open_for_mlx(path) -> ModelSource:
    """`open_source(path)` as mlx-lm's model will hold it (`mlx_view`), after refusing a
    family jang does not convert (`jang.arch.require_supported`)."""
    from jang.arch import require_supported

    source = open_source(path)
    require_supported(source.config)
    return mlx_view(source)
