"""The planner end to end on fixture architectures with random weights (no files)."""

import json
import math
from itertools import pairwise

import mlx.core as mx
import numpy as np
import pytest

from jang import formats as F
from jang import plan as P
from jang.arch import detect
from jang.plan import decision as D
from jang.plan import errors as E
from jang.plan import report
from plan_fixtures import FakeWeights, load


@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16, mx.float32])
def test_rtn_is_bit_exact_with_mx_quantize(dtype):
    w = mx.random.normal((12, 256), key=mx.random.key(5)) * 0.05
    w = mx.concatenate(
        [
            w,
            mx.zeros((1, 256)),  # all-zero groups
            mx.full((1, 256), 0.37),  # constant groups
            mx.where(mx.arange(256) % 64 == 3, 40.0, 0.01).reshape(1, 256),  # outliers
            -mx.abs(w[:1]),  # one-signed groups
        ]
    ).astype(dtype)
    for bits in F.BITS:
        for g in (32, 64, 128):
            ref = mx.dequantize(*mx.quantize(w, group_size=g, bits=bits), group_size=g, bits=bits)
            mine = E.rtn_dequantize(w, bits, g)
            assert mine.dtype == ref.dtype
            assert mx.array_equal(mine, ref).item(), (bits, g)


def test_measure_error_is_relative_frobenius():
    w = (mx.random.normal((64, 128), key=mx.random.key(1)) * 0.02).astype(mx.bfloat16)
    dq = mx.dequantize(*mx.quantize(w, group_size=64, bits=3), group_size=64, bits=3)
    wf, df = np.array(w.astype(mx.float32)), np.array(dq.astype(mx.float32))
    want = np.linalg.norm(df - wf) / np.linalg.norm(wf)
    assert E.measure_error(w, 3, 64) == pytest.approx(want, rel=1e-5)
    errs = [E.measure_error(w, b, 64) for b in F.BITS]
    assert all(a > b for a, b in pairwise(errs))
    # chunking does not change the answer
    nums, den = E._error_terms(w, [(3, 64)], chunk=128 * 5)
    assert math.sqrt(nums[0] / den) == pytest.approx(want, rel=1e-5)


def test_activation_weighting_changes_the_error():
    w = (mx.random.normal((32, 128), key=mx.random.key(2)) * 0.02).astype(mx.bfloat16)
    flat = E.measure_error(w, 3, 64)
    assert E.measure_error(w, 3, 64, col_scale=np.ones(128)) == pytest.approx(flat, rel=1e-6)
    skew = np.where(np.arange(128) < 8, 10.0, 0.1)
    assert E.measure_error(w, 3, 64, col_scale=skew) != pytest.approx(flat, rel=1e-3)


def test_bytes_are_exact():
    assert F.matrix_bytes(576, 1536, 4, 64) == 576 * 1536 // 2 + 576 * 24 * 4
    assert F.matrix_bytes(10, 64, 3, 32) == 10 * 64 * 3 // 8 + 10 * 2 * 4
    assert F.matrix_bytes(10, 64, F.UNQUANTIZED, None) == 10 * 64 * 2


def plan_of(fixture, tmp_path=None, heavy=None, **kw):
    config, tensors = load(fixture)
    read = FakeWeights(tensors, heavy)
    cache = None if tmp_path is None else tmp_path / "errors.json"
    return P.make_plan(config, tensors, read, cache=cache, **kw), read, tensors


def test_budget_plan_schema_and_totals(tmp_path):
    plan, _, tensors = plan_of("llama", tmp_path, bits=3.5)
    json.dumps(plan)  # plain JSON
    assert plan["format"] == "jang.plan" and plan["version"] == 1
    assert set(plan["tensors"]) == {n for n, _ in tensors}
    quant = [e for e in plan["tensors"].values() if "reason" not in e]
    tot = plan["totals"]
    assert tot["bytes"] == sum(e["bytes"] for e in quant)
    assert tot["params"] == sum(math.prod(e["shape"]) for e in quant)
    assert tot["bytes"] <= plan["budget"]["bytes"]
    assert tot["bpw_all_in"] <= 3.5 and 3.5 - tot["bpw_all_in"] < 0.05
    assert tot["bpw_codes"] < tot["bpw_all_in"]
    assert plan["solver"]["exact"]
    assert tot["objective"] == pytest.approx(plan["solver"]["objective"])
    for e in quant:
        assert e["bits"] in F.BITS and e["group_size"] in (32, 64, 128)
        assert e["bytes"] == F.matrix_bytes(*e["shape"], e["bits"], e["group_size"])
        assert 0 < e["error"] < 1
    norms = [e for e in plan["tensors"].values() if e["role"] == "norm"]
    assert norms and all(not e["quantized"] and e["reason"] for e in norms)


def test_measured_error_drives_bits(tmp_path):
    """Heavy-tailed tensors (larger RTN error at equal bits) get more bits than their twins."""
    plan, _, _ = plan_of("llama", tmp_path, heavy={"mlp.down_proj": 2.0}, bits=4.0)
    t = plan["tensors"]
    down = [e["bits"] for n, e in t.items() if e["role"] == "mlp_down"]
    up = [e["bits"] for n, e in t.items() if e["role"] == "mlp_up"]
    assert sum(down) > sum(up)


def test_more_budget_never_raises_the_objective(tmp_path):
    last = math.inf
    for bits in (2.5, 3.0, 3.5, 4.5, 6.0):
        plan, _, _ = plan_of("qwen3_moe", tmp_path, bits=bits)
        assert plan["totals"]["objective"] <= last
        last = plan["totals"]["objective"]


def test_cache_makes_replanning_free(tmp_path, monkeypatch):
    first, _, _ = plan_of("llama", tmp_path, bits=3.0)
    assert (tmp_path / "errors.json").is_file()

    def boom(*a, **k):
        raise AssertionError("errors were measured again")

    monkeypatch.setattr(E, "_error_terms", boom)
    again, _, _ = plan_of("llama", tmp_path, bits=3.0)
    assert again["tensors"] == first["tensors"]


def test_experts_of_a_projection_share_bits(tmp_path):
    plan, _, _ = plan_of("qwen3_moe", tmp_path, bits=3.0)
    by_group = {}
    for e in plan["tensors"].values():
        if "group" in e:
            by_group.setdefault(e["group"], set()).add((e["bits"], e["group_size"], e["error"]))
    assert len(by_group) == 4 * 3
    assert all(len(v) == 1 for v in by_group.values())


def test_routers_and_floors_in_a_budget_plan(tmp_path):
    plan, _, _ = plan_of("qwen2_moe", tmp_path, bits=3.0)
    for name, e in plan["tensors"].items():
        if e["role"] in ("router", "shared_expert_gate"):
            assert not e["quantized"] or e["bits"] == 8, name
        if e["role"] == "shared_expert":
            assert e["bits"] >= 4, name


def test_fixed_profile_measures_only_its_choice(tmp_path):
    plan, _, _ = plan_of("mixtral", tmp_path, profile="JANG_3M")
    quant = [e for e in plan["tensors"].values() if e["quantized"]]
    assert all(e["error"] is not None and e["error"] > 0 for e in quant)
    assert plan["totals"]["objective"] > 0


def test_infeasible_target_says_what_would_work(tmp_path):
    with pytest.raises(P.PlanError, match="smallest plan is"):
        plan_of("qwen2_moe", tmp_path, bits=2.0)
    config, tensors = load("llama")
    with pytest.raises(P.PlanError, match="needs the weights"):
        P.make_plan(config, tensors, profile="JANG_3K")


def test_vision_tower_is_left_alone(tmp_path):
    plan, _, _ = plan_of("gemma3_vlm", tmp_path, bits=4.5)
    vision = [e for n, e in plan["tensors"].items() if e["role"] == "vision"]
    assert vision and all(not e["quantized"] for e in vision)
    assert plan["totals"]["vision_params"] == sum(math.prod(e["shape"]) for e in vision)


def test_transposed_experts_are_measured_in_mlx_layout(tmp_path):
    plan, _, _ = plan_of("gpt_oss", tmp_path, bits=4.5)
    gu = plan["tensors"]["model.layers.0.mlp.experts.gate_up_proj"]
    assert gu["transposed"] and gu["quantized"]
    assert gu["bytes"] == 4 * F.matrix_bytes(384, 256, gu["bits"], gu["group_size"])


def test_tied_embedding_gets_the_head_prior():
    config, tensors = load("qwen2")
    plan = P.make_plan(config, tensors, profile="JANG_4M")
    emb = plan["tensors"]["model.embed_tokens.weight"]
    arch = detect(config, [n for n, _ in tensors])
    assert emb["tied"] and emb["alpha"] == D.head_weight(arch) == arch.num_layers
    q = plan["tensors"]["model.layers.0.self_attn.q_proj.weight"]
    v = plan["tensors"]["model.layers.2.self_attn.v_proj.weight"]
    assert q["alpha"] == D.QK_WEIGHT * D.EDGE_WEIGHT and v["alpha"] == D.EDGE_WEIGHT


def test_summary_lists_roles_and_layers(tmp_path):
    plan, _, _ = plan_of("jamba", tmp_path, bits=4.0)
    text = report.summarize(plan)
    for word in ("ssm_in", "expert_down", "attn_v", "bpw all-in", "layer", "solver dp-exact"):
        assert word in text
    assert "warning" not in text
