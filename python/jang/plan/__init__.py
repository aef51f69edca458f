"""The planner: per-tensor bits and group size under an exact byte budget.

For every quantizable decision (a matrix, or all experts of one projection in one layer) and
every candidate (bits in {2,3,4,5,6,8} x group size in {32,64,128}, plus "unquantized" where
a floor allows it) the planner knows the exact bytes (codes + fp16 scales + fp16 biases) and
measures the error ``e``: the relative Frobenius error ``||Q(W) - W||_F / ||W||_F`` of the real
RTN-quantized tensor (`measure_error`; optionally with input columns weighted by calibration
activation RMS, which makes ``e`` the relative *output* error). It then minimises
``sum alpha * e**2`` subject to ``sum bytes <= budget`` with `jang.plan.solver`.

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
* Routers and shared-expert gates are floored at 8 bits or unquantized (`jang.plan.tiers.bounds`),
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

import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from jang.arch import Arch
from jang.errors import PlanError
from jang.formats import UNQUANTIZED, matrix_bytes
from jang.plan import profiles, solver
from jang.plan.decision import EDGE_WEIGHT, PRIORS, Decision, decisions, head_weight
from jang.plan.errors import (
    DEFAULT_SAMPLE,
    ERROR_METHOD,
    ErrorCache,
    Reader,
    measure_decisions,
)
from jang.plan.tiers import Classified, classify

FORMAT = "jang.plan"
VERSION = 1


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
