"""The planner: per-tensor bits and group size under an exact byte budget.

For every quantizable decision (a matrix, or all experts of one projection in one layer) and
every candidate (bits in {2,3,4,5,6,8} x group size in {32,64,128}, plus "unquantized" where
a floor allows it) the planner knows the exact bytes (codes + fp16 scales + fp16 biases) and
measures the error ``e``: the relative Frobenius error ``||Q(W) - W||_F / ||W||_F`` of the real
RTN-quantized tensor (`measure_error`; optionally with input columns weighted by calibration
activation RMS, which makes ``e`` the relative *output* error). It then minimises
``sum alpha * e**2`` subject to ``sum bytes <= budget`` with `jang.solver`.

Priors (``alpha``, per decision, `prior`), and why:

* The unit is one residual write. A relative error ``e`` in a matrix becomes relative noise
  ``e**2`` (in power) on its output; chained matrices pass it on at about the same relative
  size (``up`` -> ``down``, ``v`` -> ``o``, ``in_proj`` -> ``out_proj``), so each matrix of a
  block adds about ``e**2`` of the block's output power to the residual stream. Hence
  ``alpha = 1`` *per matrix*, not per parameter: a small ``k_proj``/``v_proj`` counts as much
  as a large ``down_proj``, and the solver gives it bits when they are cheap (the same
  conclusion llama.cpp's k-quants reach for ``attn_v``), while big matrices are not
  starved: their error drives the objective just as much. This is what makes the plan beat
  both uniform quantization and fixed tiers: nothing is boosted by name; errors that are
  cheap to remove get removed first.
* ``q``/``k`` (and MLA's query path): 0.5. Their noise reaches the output only through the
  softmax over attention scores, which damps it; llama.cpp keeps them lowest for the same
  reason.
* Routed experts: 1 for the whole stacked projection. With top-k routing each token sees k
  experts whose outputs add with weights summing to one, so the relative output noise is the
  same ``e**2`` as one dense matrix; the solver sees that improving it costs E times more
  bytes and spends accordingly (this is why experts end up low, without a rule saying so).
* Output head (``lm_head``, or the embedding when tied -- its most sensitive use): ``L``
  (number of layers). Its noise lands on the logits directly, while one residual write is
  diluted among ~2L writes before the final norm; we take half of that ratio to allow for
  the growth of early errors through depth.
* An untied input embedding: 1 (one residual write, before the first norm).
* First/last two layers: x1.5 (moderate: attention sinks and massive activations form in the
  first layers, the last ones write straight into the head).
* Routers and shared-expert gates are floored at 8 bits or unquantized (`jang.tiers.bounds`),
  so their prior hardly matters (1).

These are priors, not measurements of the loss; `make_plan(priors=...)` and ``jang plan
--prior role=value`` override them.

Errors are measured on a deterministic, evenly strided subset of rows holding about
``sample`` weights (at least 32 rows; all rows when the tensor is smaller; ``sample=None``
measures exactly): 2**17 weights estimate the relative error within about 1% (measured on
SmolLM2: <= 0.8% at 147k weights, <= 2.5% at 74k), and keep the work per tensor independent of
its size, so a 70B model costs little more per layer than a 1B one. Results are cached in a JSON
file keyed by a hash of the measured rows, shape, dtype and candidate, so re-planning is
instant.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jang import profiles, solver
from jang.arch import Arch
from jang.tiers import TIERS, Bounds, Classified, TensorRole, bounds, classify

BITS = (2, 3, 4, 5, 6, 8)
UNQUANTIZED = 16  # "bits" of a planned matrix left in 16-bit floats
DEFAULT_SAMPLE = 1 << 17  # weights measured per decision
MIN_ROWS = 32
ERROR_METHOD = "rtn-affine-v1"
EDGE_WEIGHT = 1.5
QK_WEIGHT = 0.5
PRIORS: dict[str, float] = {
    "attn_q": QK_WEIGHT,
    "attn_k": QK_WEIGHT,
    "mla_q_a": QK_WEIGHT,
    "mla_q_b": QK_WEIGHT,
}  # every other role: 1, except the head (`head_weight`)
FORMAT = "jang.plan"
VERSION = 1

Reader = Callable[[str], Any]  # name -> mx.array


class PlanError(ValueError):
    """The request cannot be planned (message says why and what would work)."""


# ----------------------------------------------------------------- bytes ----


def matrix_bytes(rows: int, cols: int, bits: int, group_size: int | None) -> int:
    """Bytes of one (rows, cols) matrix: MLX codes + fp16 scales + fp16 biases (or fp16)."""
    if bits == UNQUANTIZED:
        return 2 * rows * cols
    assert group_size and cols % group_size == 0 and (cols * bits) % 32 == 0
    return rows * cols * bits // 8 + 4 * rows * (cols // group_size)


# --------------------------------------------------------------- decisions --


@dataclass
class Decision:
    """One choice of (bits, group size): a matrix, or all experts of one projection."""

    key: str
    members: list[TensorRole]
    bounds: Bounds
    alpha: float = 1.0
    options: list[tuple[int, int | None]] = field(default_factory=list)
    errors: list[float] | None = None

    @property
    def first(self) -> TensorRole:
        return self.members[0]

    @property
    def role(self) -> str:
        return self.first.role

    @property
    def matrices(self) -> int:
        return sum(t.matrices for t in self.members)

    @property
    def numel(self) -> int:
        return self.matrices * self.first.rows * self.first.cols

    def bytes(self, bits: int, group_size: int | None) -> int:
        return self.matrices * matrix_bytes(self.first.rows, self.first.cols, bits, group_size)


def head_weight(arch: Arch) -> float:
    return float(max(arch.num_layers, 1))


def prior(t: TensorRole, arch: Arch, priors: dict[str, float] | None = None) -> float:
    """alpha of a tensor: role weight x edge-layer weight (see the module docstring)."""
    table = {**PRIORS, "lm_head": head_weight(arch), **(priors or {})}
    role = "lm_head" if t.tied else t.role
    alpha = table.get(role, table.get("default", 1.0))
    edge = table.get("edge", EDGE_WEIGHT)
    return float(alpha * (edge if t.edge else 1.0))


def candidates(b: Bounds) -> list[tuple[int, int | None]]:
    """(bits, group size) options allowed by the bounds, smallest first."""
    opts: list[tuple[int, int | None]] = [
        (bits, g) for bits in BITS if b.min_bits <= bits <= b.max_bits for g in b.group_sizes
    ]
    if b.allow_unquantized or not opts:
        opts.append((UNQUANTIZED, None))
    return opts


def decisions(
    classified: Classified,
    priors: dict[str, float] | None = None,
    alphas: dict[str, float] | None = None,
) -> list[Decision]:
    """Group quantizable tensors into decisions (experts of one projection share one).

    `alphas` (decision key -> alpha, e.g. measured by bench/sensitivity_alphas.py) replace the
    priors of the decisions they name.
    """
    arch = classified.arch
    groups: dict[str, list[TensorRole]] = {}
    for t in classified.quantizable():
        groups.setdefault(t.group or t.name, []).append(t)
    out = []
    for key, members in groups.items():
        members.sort(key=lambda t: (t.expert is None, t.expert or 0))
        b = bounds(members[0], arch)
        alpha = prior(members[0], arch, priors)
        if alphas and key in alphas:
            alpha = float(alphas[key])
        d = Decision(key=key, members=members, bounds=b, alpha=alpha)
        d.options = candidates(b)
        out.append(d)
    return out


# ------------------------------------------------------------------ errors --


def _as_matrix(w: Any, t: TensorRole) -> Any:
    import mlx.core as mx

    if t.transposed:
        w = mx.swapaxes(w, -1, -2)
    return w.reshape(-1, w.shape[-1])


def _sample_rows(n: int, max_rows: int | None) -> np.ndarray | None:
    if max_rows is None or n <= max_rows:
        return None
    return np.unique(np.linspace(0, n - 1, max_rows).round().astype(np.int64))


def measure_error(w: Any, bits: int, group_size: int, col_scale: Any = None) -> float:
    """Relative Frobenius error of RTN quantization (as `mx.quantize`) of a 2-D float array.

    The one place that defines the planner's error; swap in `jang.quant` here. With
    `col_scale` (per-input-channel activation RMS) the error is ``||(Q(W)-W) D|| / ||W D||``.
    """
    num, den = _error_terms(w, [(bits, group_size)], col_scale)
    return math.sqrt(num[0] / den) if den > 0 else 0.0


def rtn_dequantize(w: Any, bits: int, group_size: int) -> Any:
    """``mx.dequantize(*mx.quantize(w))`` for MLX affine RTN, bit for bit, in plain ops.

    Written out so that the group min/max are shared by all bit widths of one group size
    (about 2x faster than calling `mx.quantize` per candidate); tests check it against
    `mx.quantize` bit for bit for float16, bfloat16 and float32.
    """
    import mlx.core as mx

    x = w.astype(mx.float32).reshape(*w.shape[:-1], -1, group_size)
    stats = _group_stats(x)
    return _rtn_groups(x, stats, bits, w.dtype).reshape(w.shape)


def _group_stats(x: Any) -> tuple[Any, Any, Any]:
    import mlx.core as mx

    wmax = x.max(-1, keepdims=True)
    wmin = x.min(-1, keepdims=True)
    mask = mx.abs(wmin) > mx.abs(wmax)
    return mask, mx.where(mask, wmin, wmax), wmax - wmin


def _rtn_groups(x: Any, stats: tuple[Any, Any, Any], bits: int, dtype: Any) -> Any:
    """MLX's affine RTN on grouped float32 values `x` (..., groups, gs); result in `dtype`."""
    import mlx.core as mx

    mask, edge, span = stats
    n_bins = float((1 << bits) - 1)
    scale = mx.maximum(span / n_bins, 1e-7)
    scale = mx.where(mask, scale, -scale)
    q0 = mx.round(edge / scale)
    nonzero = q0 != 0
    scale = mx.where(nonzero, edge / mx.where(nonzero, q0, 1.0), scale)
    bias = mx.where(nonzero, edge, 0.0)
    q = mx.clip(mx.round((x - bias) / scale), 0.0, n_bins)
    return scale.astype(dtype) * q.astype(dtype) + bias.astype(dtype)


def _error_terms(
    w: Any, opts: Sequence[tuple[int, int]], col_scale: Any = None, chunk: int = 1 << 22
) -> tuple[list[float], float]:
    """Squared error per option and squared norm, over row chunks of <= `chunk` elements."""
    import mlx.core as mx

    rows, cols = w.shape
    step = max(1, chunk // max(cols, 1))
    nums = [0.0] * len(opts)
    den = 0.0
    scale = None if col_scale is None else mx.array(col_scale, dtype=mx.float32)
    sizes = sorted({g for _, g in opts})
    for r0 in range(0, rows, step):
        xw = w[r0 : r0 + step]
        xf = xw.astype(mx.float32)
        ref = xf if scale is None else xf * scale
        outs = [mx.sum(ref * ref)]
        sums = {}
        for g in sizes:
            x = xf.reshape(xf.shape[0], -1, g)
            stats = _group_stats(x)
            for bits in sorted({b for b, gg in opts if gg == g}):
                d = _rtn_groups(x, stats, bits, w.dtype).astype(mx.float32) - x
                if scale is not None:
                    d = d * scale.reshape(-1, g)
                sums[(bits, g)] = mx.sum(d * d)
        outs += [sums[o] for o in opts]
        mx.eval(*outs)
        den += float(outs[0].item())
        for k in range(len(opts)):
            nums[k] += float(outs[k + 1].item())
    return nums, den


class ErrorCache:
    """JSON cache of measured errors: {key: {"bits/gs": error}}, written atomically."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.data: dict[str, dict[str, float]] = {}
        self.dirty = False
        if self.path and self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self.data = {}

    def get(self, key: str) -> dict[str, float]:
        return self.data.get(key, {})

    def put(self, key: str, values: dict[str, float]) -> None:
        self.data.setdefault(key, {}).update(values)
        self.dirty = True

    def save(self) -> None:
        if not (self.path and self.dirty):
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.data, sort_keys=True))
        tmp.replace(self.path)
        self.dirty = False


def default_cache_path() -> Path:
    root = os.environ.get("JANG_DATA") or Path.home() / ".cache" / "jang"
    return Path(root) / "plan-errors.json"


def _opt_key(bits: int, g: int | None) -> str:
    return f"{bits}/{g}"


def _rows_of(d: Decision, read: Reader, dtype: str | None, sample: int | None) -> Any:
    """The measured rows of a decision: strided sample over all its members' rows."""
    import mlx.core as mx

    per = None
    if sample is not None:
        rows = max(MIN_ROWS, -(-sample // d.first.cols))
        per = max(1, -(-rows // len(d.members)))
    parts = []
    for t in d.members:
        w = _as_matrix(read(t.name), t)
        if w.dtype not in (mx.float16, mx.bfloat16, mx.float32):
            w = w.astype(mx.float32)
        if w.dtype == mx.float32 and dtype in ("float16", "bfloat16"):
            w = w.astype(getattr(mx, dtype))
        idx = _sample_rows(w.shape[0], per)
        parts.append(w if idx is None else w[mx.array(idx)])
    return parts[0] if len(parts) == 1 else mx.concatenate(parts, axis=0)


def _digest(w: Any, col_scale: Any) -> str:
    import mlx.core as mx

    view = {mx.float16: mx.uint16, mx.bfloat16: mx.uint16, mx.float32: mx.uint32}[w.dtype]
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{ERROR_METHOD}|{w.shape}|{w.dtype}".encode())
    h.update(np.asarray(w.view(view)).tobytes())
    if col_scale is not None:
        h.update(np.asarray(col_scale, dtype=np.float32).tobytes())
    return h.hexdigest()


def measure_decisions(
    ds: Sequence[Decision],
    read: Reader,
    *,
    options: Callable[[Decision], Sequence[tuple[int, int | None]]] | None = None,
    cache: ErrorCache | None = None,
    sample: int | None = DEFAULT_SAMPLE,
    dtype: str | None = None,
    act_stats: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Fill ``d.errors`` (aligned with ``d.options``; 0 for unquantized) for each decision."""
    for n, d in enumerate(ds):
        opts = list(options(d) if options else d.options)
        col = None
        if act_stats is not None:
            col = act_stats.get(d.key, act_stats.get(d.first.name))
            if col is not None:
                col = np.sqrt(np.maximum(np.asarray(col, dtype=np.float64), 0.0))
        w = _rows_of(d, read, dtype, sample)
        key = _digest(w, col)
        known = cache.get(key) if cache else {}
        todo = [(b, g) for b, g in opts if b != UNQUANTIZED and _opt_key(b, g) not in known]
        if todo:
            nums, den = _error_terms(w, todo, col)
            fresh = {
                _opt_key(b, g): (math.sqrt(num / den) if den > 0 else 0.0)
                for (b, g), num in zip(todo, nums, strict=True)
            }
            known = {**known, **fresh}
            if cache:
                cache.put(key, fresh)
        errs = {o: (0.0 if o[0] == UNQUANTIZED else known[_opt_key(*o)]) for o in opts}
        d.errors = [errs.get(o, math.nan) for o in d.options]
        if progress:
            progress(n + 1, len(ds))


# -------------------------------------------------------------------- plan --


def _fixed_option(d: Decision, p: profiles.Profile, arch: Arch) -> tuple[int, int | None]:
    """A tier profile's choice for one decision: tier bits at the default group size, floors."""
    b = d.bounds
    if b.allow_unquantized:  # routers: keep them exact, they are tiny
        return (UNQUANTIZED, None)
    bits = min(max(p.tier_bits(d.first.tier), b.min_bits), b.max_bits)
    default = (
        profiles.LARGE_MOE_GROUP_SIZE
        if arch.num_experts >= profiles.LARGE_MOE_EXPERTS
        else profiles.DEFAULT_GROUP_SIZE
    )
    if not b.group_sizes:
        return (UNQUANTIZED, None)
    g = min(b.group_sizes, key=lambda s: (abs(math.log2(s / default)), -s))
    return (bits, g)


def make_plan(
    config: dict[str, Any],
    tensors: Iterable[tuple[str, Sequence[int]]],
    read: Reader | None = None,
    *,
    profile: str | None = None,
    bits: float | None = None,
    priors: dict[str, float] | None = None,
    alphas: dict[str, float] | None = None,
    cache: ErrorCache | str | Path | None = None,
    sample: int | None = DEFAULT_SAMPLE,
    act_stats: dict[str, Any] | None = None,
    source: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Plan a model: `config` (config.json), (name, shape) pairs, and `read(name)`.

    Exactly one of `profile` (a JANG profile name) or `bits` (all-in bits per weight). Tier
    profiles need no `read` (errors are then omitted); budgets need it. Returns the plan JSON
    (see `plan_schema_doc` in the README of this module: `summarize` prints it).
    """
    t0 = time.perf_counter()
    prof = profiles.get(profile, bits)
    tensors = [(n, tuple(int(d) for d in s)) for n, s in tensors]
    classified = classify(config, tensors)
    arch = classified.arch
    warnings = list(classified.warnings)
    ds = decisions(classified, priors, alphas)
    if not ds:
        raise PlanError("no quantizable matrices found (are these the tensors of a causal LM?)")
    if isinstance(cache, (str, Path)):
        cache = ErrorCache(cache)
    dtype = str(config.get("torch_dtype") or "bfloat16").replace("torch.", "")
    params = sum(d.numel for d in ds)
    solver_info: dict[str, Any] = {}
    t_measure = 0.0
    if prof.tiers:
        chosen = [_fixed_option(d, prof, arch) for d in ds]
        if read is not None:
            t1 = time.perf_counter()
            pick = dict(zip((d.key for d in ds), chosen, strict=True))
            measure_decisions(
                ds,
                read,
                options=lambda d: [pick[d.key]],
                cache=cache,
                sample=sample,
                dtype=dtype,
                act_stats=act_stats,
                progress=progress,
            )
            t_measure = time.perf_counter() - t1
        budget_bytes = None
    else:
        if read is None:
            raise PlanError(f"{prof.name} is a budget: planning it needs the weights (read)")
        budget_bytes = int(prof.bits * params // 8)
        t1 = time.perf_counter()
        measure_decisions(
            ds,
            read,
            cache=cache,
            sample=sample,
            dtype=dtype,
            act_stats=act_stats,
            progress=progress,
        )
        t_measure = time.perf_counter() - t1
        sizes = [[d.bytes(b, g) for b, g in d.options] for d in ds]
        costs = [[d.alpha * e * e for e in d.errors] for d in ds]
        t2 = time.perf_counter()
        largest = sum(max(s) for s in sizes)
        if budget_bytes > largest:  # the budget would be silently capped at the widest plan
            raise PlanError(
                f"{prof.bits:g} bits per weight (all-in) is above the largest plan for this "
                f"model ({8 * largest / params:.3f} bpw: every matrix at 8 bits, group 32); "
                "ask for that or less"
            )
        try:
            sol = solver.solve(sizes, costs, budget_bytes)
        except solver.Infeasible as exc:
            lo = 8 * exc.min_bytes / params
            hi = 8 * sum(max(s) for s in sizes) / params
            raise PlanError(
                f"{prof.bits:g} bits per weight (all-in) is below what the floors allow for "
                f"this model: the smallest plan is {lo:.3f} bpw (largest {hi:.3f})"
            ) from None
        chosen = [d.options[j] for d, j in zip(ds, sol.choice, strict=True)]
        solver_info = {
            "method": sol.method,
            "exact": sol.exact,
            "objective": sol.cost,
            "lower_bound": sol.lower_bound,
            "seconds": round(time.perf_counter() - t2, 4),
        }
    if cache:
        cache.save()
    plan = _assemble(classified, ds, chosen, prof, budget_bytes, params, priors, sample)
    plan["solver"] = solver_info or None
    plan["model"]["source"] = source
    plan["error"]["activation_weighted"] = act_stats is not None
    plan["warnings"] = warnings
    plan["timing"] = {
        "measure_s": round(t_measure, 3),
        "total_s": round(time.perf_counter() - t0, 3),
    }
    return plan


def _assemble(
    classified: Classified,
    ds: list[Decision],
    chosen: list[tuple[int, int | None]],
    prof: profiles.Profile,
    budget_bytes: int | None,
    params: int,
    priors: dict[str, float] | None,
    sample: int | None,
) -> dict[str, Any]:
    arch = classified.arch
    entries: dict[str, dict[str, Any]] = {}
    total_bytes = code_bytes = objective = 0
    have_errors = all(d.errors is not None for d in ds)
    tally: dict[tuple[int, int | None], int] = {}
    for d, (bits, g) in zip(ds, chosen, strict=True):
        err = d.errors[d.options.index((bits, g))] if d.errors is not None else None
        per = matrix_bytes(d.first.rows, d.first.cols, bits, g)
        total_bytes += d.matrices * per
        code_bytes += d.numel * bits // 8
        if err is not None:
            objective += d.alpha * err * err
        if bits != UNQUANTIZED:
            tally[(bits, g)] = tally.get((bits, g), 0) + d.numel
        for t in d.members:
            entry: dict[str, Any] = {
                "role": t.role,
                "tier": t.tier,
                "layer": t.layer,
                "shape": list(t.shape),
                "quantized": bits != UNQUANTIZED,
                "bits": bits if bits != UNQUANTIZED else None,
                "group_size": g,
                "bytes": t.matrices * per,
                "error": None if err is None else round(err, 6),
                "alpha": round(d.alpha, 4),
            }
            if t.group:
                entry["group"] = t.group
            if t.transposed:
                entry["transposed"] = True
            if t.tied:
                entry["tied"] = True
            if d.bounds.why:
                entry["floors"] = list(d.bounds.why)
            entries[t.name] = entry
    other_params = other_bytes = vision_params = 0
    for t in classified.tensors:
        if t.quantizable:
            continue
        entries[t.name] = {
            "role": t.role,
            "tier": t.tier,
            "layer": t.layer,
            "shape": list(t.shape),
            "quantized": False,
            "bits": None,
            "group_size": None,
            "bytes": 2 * t.numel,
            "reason": t.reason,
        }
        if t.role == "vision":
            vision_params += t.numel
        else:
            other_params += t.numel
            other_bytes += 2 * t.numel
    default = max(tally.items(), key=lambda kv: (kv[1], kv[0][0]))[0] if tally else (4, 64)
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": {"source": None, **arch.to_json()},
        "request": {
            "profile": prof.name,
            "kind": prof.kind,
            "tiers": list(prof.tiers) if prof.tiers else None,
            "bits": prof.bits,
        },
        "budget": None
        if budget_bytes is None
        else {"bits_all_in": prof.bits, "bytes": budget_bytes},
        "priors": {
            **PRIORS,
            "lm_head": head_weight(arch),
            "edge": EDGE_WEIGHT,
            "default": 1.0,
            **(priors or {}),
            "edge_layers": 2,
        },
        "error": {"method": ERROR_METHOD, "sample": sample},
        "default": {"bits": default[0], "group_size": default[1]},
        "totals": {
            "params": params,
            "bytes": total_bytes,
            "code_bytes": code_bytes,
            "bpw_codes": round(8 * code_bytes / params, 4),
            "bpw_all_in": round(8 * total_bytes / params, 4),
            "objective": objective if have_errors else None,
            "other_params": other_params,
            "other_bytes": other_bytes,
            "vision_params": vision_params,
            "model_bytes": total_bytes + other_bytes,
        },
        "tensors": entries,
    }


# ----------------------------------------------------------------- summary --

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


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    cells = [list(map(str, header))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    fmt = lambda r: "  ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
    )
    return [fmt(cells[0]), fmt(["-" * w for w in widths])] + [fmt(r) for r in cells[1:]]


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
        f"request {req['profile']}"
        + (
            f" tiers {tuple(req['tiers'])}"
            if req["tiers"]
            else f" budget {req['bits']:g} bpw all-in"
        ),
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
    lines += _table(["role", "tier", "n", "params", "bits/gs", "bpw", "rel.err"], rows)
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
        lines += ["", *_table(["layer", "params", "bpw", "bits/gs by role"], lrows)]
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


def plan_source(path: str | Path, **kwargs: Any) -> dict[str, Any]:
    """`make_plan` on a model on disk (HF dir, safetensors, GGUF) through `jang.source`."""
    from jang.mlx_view import open_for_mlx

    src = open_for_mlx(path)
    infos = src.tensors()
    return make_plan(
        src.config,
        [(i.name, i.shape) for i in infos],
        src.read_fresh,
        source=str(path),
        **kwargs,
    )
