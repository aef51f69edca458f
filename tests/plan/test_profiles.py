"""Named profiles: the public tool's tuples, budgets, and fixed-tier plans with floors."""

import pytest

from jang.plan import make_plan, profiles
from plan_fixtures import load

ISSUE_TUPLES = {
    "JANG_1L": (8, 8, 2),
    "JANG_2S": (6, 4, 2),
    "JANG_2M": (8, 4, 2),
    "JANG_2L": (8, 6, 2),
    "JANG_3S": (6, 3, 3),
    "JANG_3M": (8, 3, 3),
    "JANG_3L": (8, 4, 3),
    "JANG_4S": (6, 4, 4),
    "JANG_4M": (8, 4, 4),
    "JANG_4L": (8, 6, 4),
    "JANG_6M": (8, 6, 6),
}


@pytest.mark.parametrize(("name", "tiers"), sorted(ISSUE_TUPLES.items()))
def test_tier_tuples(name, tiers):
    p = profiles.get(name)
    assert p.tiers == tiers and p.kind == "tiers" and p.bits is None
    assert profiles.get(name.lower().replace("jang_", "")).tiers == tiers


def test_no_extra_tier_profiles():
    assert profiles.TIER_PROFILES == ISSUE_TUPLES


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_budget_profiles_match_uniform_g64_size(n):
    p = profiles.get(f"JANG_{n}K")
    assert p.kind == "budget" and p.tiers is None
    assert p.bits == pytest.approx(n + 0.5)
    assert p.bits == profiles.budget_bits(n, 64)


def test_numeric_targets():
    assert profiles.get(bits=2.5).bits == 2.5
    assert profiles.get("3.25").bits == 3.25
    with pytest.raises(profiles.ProfileError, match="outside"):
        profiles.get(bits=1.5)
    with pytest.raises(profiles.ProfileError, match="exactly one"):
        profiles.get("JANG_4M", 4.0)
    with pytest.raises(profiles.ProfileError, match="JANG_3M"):
        profiles.get("JANG_9Q")


@pytest.mark.parametrize("name", sorted(ISSUE_TUPLES))
def test_fixed_plan_gives_tier_bits(name):
    config, tensors = load("llama")
    plan = make_plan(config, tensors, profile=name)
    crit, imp, comp = ISSUE_TUPLES[name]
    want = {"CRITICAL": crit, "IMPORTANT": imp, "COMPRESS": comp}
    entries = [e for e in plan["tensors"].values() if "reason" not in e]
    assert entries
    for e in entries:
        assert e["bits"] == want[e["tier"]] and e["group_size"] == 64
        assert e["error"] is None  # no weights given
    tot = plan["totals"]
    assert tot["bytes"] == sum(e["bytes"] for e in entries)
    assert plan["budget"] is None and plan["solver"] is None


def test_fixed_plan_respects_floors():
    config, tensors = load("deepseek_v3")  # 256 experts, shared experts, routers
    plan = make_plan(config, tensors, profile="JANG_2S")
    t = plan["tensors"]
    for name, e in t.items():
        if e["role"] == "router":
            assert not e["quantized"], name
        if e["role"] == "shared_expert":
            assert e["bits"] >= 4, name
        if e["role"] == "expert_gate":
            assert e["bits"] >= 4 and e["group_size"] == 128, name
        if e["role"] == "expert_down":
            assert e["bits"] >= 3, name
        if e["role"] == "expert_up":
            assert e["bits"] == 2 and e["group_size"] == 128, name
        if e["role"] in ("attn_o", "mla_q_a"):
            assert e["group_size"] == 128  # >= 150 experts: the whole model at 128
    # experts of one projection and layer always share one decision
    downs = {
        (e["layer"], e["bits"], e["group_size"]) for e in t.values() if e["role"] == "expert_down"
    }
    assert len({layer for layer, _, _ in downs}) == len(downs)
