"""The multiple-choice knapsack solver: optimality, budget, monotonicity, determinism."""

from collections.abc import Sequence
from itertools import product

import numpy as np
import pytest

from jang.plan import solver
from jang.plan.decision import decisions
from jang.plan.tiers import classify
from plan_fixtures import load


def brute_force(
    sizes: Sequence[Sequence[int]], costs: Sequence[Sequence[float]], budget: int
) -> tuple[float, tuple[int, ...]] | None:
    """Optimal (cost, choice) by enumeration, on tiny instances; None if infeasible."""
    best = None
    for choice in product(*(range(len(si)) for si in sizes)):
        total = sum(sizes[i][j] for i, j in enumerate(choice))
        if total <= budget:
            cost = sum(costs[i][j] for i, j in enumerate(choice))
            if best is None or cost < best[0]:
                best = (cost, choice)
    return best


def random_instance(rng, n_max=5, k_max=4, size_max=40):
    n = int(rng.integers(1, n_max + 1))
    sizes = [
        [int(x) for x in rng.integers(1, size_max, int(rng.integers(1, k_max + 1)))]
        for _ in range(n)
    ]
    costs = [[float(x) for x in rng.random(len(s))] for s in sizes]
    return sizes, costs


def test_optimal_against_brute_force():
    rng = np.random.default_rng(1)
    checked = 0
    for _ in range(300):
        sizes, costs = random_instance(rng)
        lo, hi = sum(min(s) for s in sizes), sum(max(s) for s in sizes)
        budget = int(rng.integers(lo - 2, hi + 3))
        best = brute_force(sizes, costs, budget)
        if best is None:
            with pytest.raises(solver.Infeasible):
                solver.solve(sizes, costs, budget)
            continue
        sol = solver.solve(sizes, costs, budget)
        assert sol.exact
        assert sol.bytes <= budget
        assert sol.cost == pytest.approx(best[0], abs=1e-12)
        assert sol.lower_bound <= best[0] + 1e-12
        assert sum(sizes[i][j] for i, j in enumerate(sol.choice)) == sol.bytes
        checked += 1
    assert checked > 250


def test_coarse_mode_is_feasible_and_bounded():
    rng = np.random.default_rng(2)
    for _ in range(50):
        sizes = [[int(x) for x in rng.integers(1, 1000, 4)] for _ in range(6)]
        costs = [[float(x) for x in rng.random(4)] for _ in range(6)]
        lo, hi = sum(min(s) for s in sizes), sum(max(s) for s in sizes)
        budget = int(rng.integers(lo, hi))
        sol = solver.solve(sizes, costs, budget, max_cells=60)
        best = brute_force(sizes, costs, budget)
        assert sol.bytes <= budget
        assert sol.lower_bound - 1e-12 <= best[0] <= sol.cost + 1e-12
        if not sol.exact:
            assert sol.method.endswith("+repair")


def test_monotone_in_budget():
    rng = np.random.default_rng(3)
    for _ in range(20):
        sizes, costs = random_instance(rng, n_max=6, k_max=5, size_max=60)
        lo = sum(min(s) for s in sizes)
        last = np.inf
        for budget in range(lo, sum(max(s) for s in sizes) + 2):
            cost = solver.solve(sizes, costs, budget).cost
            assert cost <= last + 1e-12
            last = cost


def smollm_like():
    """SmolLM2-135M's shapes (30 layers, d=576, tied 49152 embedding) with synthetic errors."""
    config, _ = load("llama")
    config = {**config, "num_hidden_layers": 30, "tie_word_embeddings": True}
    d, f, kv = 576, 1536, 192
    names = [("model.embed_tokens.weight", (49152, d))]
    for i in range(30):
        p = f"model.layers.{i}"
        names += [
            (f"{p}.self_attn.q_proj.weight", (d, d)),
            (f"{p}.self_attn.k_proj.weight", (kv, d)),
            (f"{p}.self_attn.v_proj.weight", (kv, d)),
            (f"{p}.self_attn.o_proj.weight", (d, d)),
            (f"{p}.mlp.gate_proj.weight", (f, d)),
            (f"{p}.mlp.up_proj.weight", (f, d)),
            (f"{p}.mlp.down_proj.weight", (d, f)),
        ]
    ds = decisions(classify(config, names))
    rng = np.random.default_rng(4)
    sizes, costs = [], []
    for dec in ds:
        scale = rng.uniform(0.8, 1.3)
        sizes.append([dec.bytes(b, g) for b, g in dec.options])
        costs.append(
            [
                dec.alpha * (scale * 0.4 * 2.0 ** -(b - 2) * (g or 1) ** 0.1) ** 2
                for b, g in dec.options
            ]
        )
    return ds, sizes, costs, sum(dec.numel for dec in ds)


@pytest.mark.parametrize("bpw", [2.5, 3.0, 3.5, 4.25, 4.5, 6.0])
def test_budget_met_within_a_hundredth_of_a_bit(bpw):
    _, sizes, costs, params = smollm_like()
    budget = int(bpw * params / 8)
    sol = solver.solve(sizes, costs, budget)
    assert sol.exact and sol.method == "dp-exact"
    used_bpw = 8 * sol.bytes / params
    assert used_bpw <= bpw
    assert bpw - used_bpw <= 0.01


def test_monotone_on_a_real_shape():
    _, sizes, costs, params = smollm_like()
    last = np.inf
    for bpw in np.arange(2.5, 5.0, 0.125):
        sol = solver.solve(sizes, costs, int(bpw * params / 8))
        assert sol.cost <= last
        last = sol.cost


def test_deterministic_and_tie_breaks_to_smaller():
    _, sizes, costs, params = smollm_like()
    a = solver.solve(sizes, costs, int(3.5 * params / 8))
    b = solver.solve(sizes, costs, int(3.5 * params / 8))
    assert a == b
    tie = solver.solve([[10, 20]], [[1.0, 1.0]], 100)
    assert tie.choice == (0,)


def test_infeasible_reports_the_minimum():
    with pytest.raises(solver.Infeasible) as exc:
        solver.solve([[5, 9], [7]], [[1.0, 0.5], [0.0]], 11)
    assert exc.value.min_bytes == 12


def test_pareto_drops_dominated():
    assert solver.pareto([4, 2, 3, 5], [0.5, 1.0, 1.0, 0.6]) == [1, 0]
