"""Exact multiple-choice knapsack: pick one option per item, minimise cost, bytes <= budget.

Each item (a tensor, or all experts of one projection in one layer) has options (bits, group
size) with an exact size in bytes and a cost (prior-weighted squared error). The solver

1. drops dominated options (no smaller and no better option exists: Pareto front);
2. solves the Lagrangian relaxation exactly by sweeping the breakpoints of the lower convex
   hulls (what a bisection on the multiplier converges to, without iterations); this gives
   the LP lower bound and a greedy solution;
3. runs a dynamic program over the budget in units of the gcd of all option size
   differences. For matrices whose dimensions are multiples of 32 that gcd is large (a whole
   number of ``rows*cols/32`` bytes), so the DP is exact for dense models of any size: its
   answer is optimal, hence monotone in the budget. When the table would exceed
   ``max_cells`` the unit is coarsened (independently of the budget, sizes rounded up so the
   answer stays feasible) and both the DP and greedy answers are repaired with single-item
   upgrades on the exact bytes; the better one is returned and ``exact`` is False;
4. is deterministic: ties go to the smaller option and the lower item index.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce
from itertools import pairwise

import numpy as np


class Infeasible(ValueError):
    """The budget is below the smallest possible total (message gives it)."""

    def __init__(self, message: str, min_bytes: int):
        super().__init__(message)
        self.min_bytes = min_bytes


@dataclass(frozen=True)
class Solution:
    choice: tuple[int, ...]  # option index per item (into the caller's lists)
    bytes: int
    cost: float
    lower_bound: float  # LP (Lagrangian) bound: no solution within the budget costs less
    exact: bool  # proven optimal
    method: str


def pareto(sizes: Sequence[int], costs: Sequence[float]) -> list[int]:
    """Indices of the non-dominated options, by increasing size (and decreasing cost)."""
    order = sorted(range(len(sizes)), key=lambda j: (sizes[j], costs[j], j))
    front: list[int] = []
    for j in order:
        if not front or costs[j] < costs[front[-1]]:
            if front and sizes[j] == sizes[front[-1]]:
                continue
            front.append(j)
    return front


def _hull(s: list[int], c: list[float]) -> list[int]:
    """Positions (into a Pareto front) on its lower convex hull."""
    hull: list[int] = []
    for k in range(len(s)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # drop b if it is on or above the segment a -> k
            if (c[b] - c[a]) * (s[k] - s[a]) >= (c[k] - c[a]) * (s[b] - s[a]):
                hull.pop()
            else:
                break
        hull.append(k)
    return hull


def _greedy(s: list[list[int]], c: list[list[float]], slack: int) -> tuple[list[int], float]:
    """Lagrangian sweep: (greedy hull positions, LP lower bound on the cost)."""
    pos = [0] * len(s)
    segments = []
    for i in range(len(s)):
        h = _hull(s[i], c[i])
        for a, b in pairwise(h):
            eff = (c[i][a] - c[i][b]) / (s[i][b] - s[i][a])
            segments.append((-eff, i, a, b))
    segments.sort()
    cost = sum(ci[0] for ci in c)
    bound = None
    blocked: set[int] = set()
    for _, i, a, b in segments:
        if i in blocked or pos[i] != a:
            continue
        ds, dc = s[i][b] - s[i][a], c[i][a] - c[i][b]
        if ds <= slack:
            slack -= ds
            cost -= dc
            pos[i] = b
        else:
            if bound is None:
                bound = cost - dc * slack / ds
            blocked.add(i)
    return pos, cost if bound is None else bound


def _improve(s: list[list[int]], c: list[list[float]], pos: list[int], slack: int) -> list[int]:
    """Apply the best single-item change that fits and lowers the cost, until none does."""
    pos = list(pos)
    while True:
        best = (0.0, -1, -1)
        for i in range(len(s)):
            cur_s, cur_c = s[i][pos[i]], c[i][pos[i]]
            for k in range(pos[i] + 1, len(s[i])):
                if s[i][k] - cur_s > slack:
                    break
                gain = cur_c - c[i][k]
                if gain > best[0]:
                    best = (gain, i, k)
        if best[1] < 0:
            return pos
        _, i, k = best
        slack -= s[i][k] - s[i][pos[i]]
        pos[i] = k


def _dp(
    s: list[list[int]], c: list[list[float]], slack: int, unit: int, max_units: int
) -> list[int]:
    """Min-cost positions with sum(ceil(extra/unit)) <= slack // unit (extra over the minimum)."""
    w = [[-(-(sk - si[0]) // unit) for sk in si] for si in s]
    units = int(min(slack // unit, sum(wi[-1] for wi in w), max_units))
    dp = np.zeros(units + 1)
    choices: list[np.ndarray | None] = []
    for wi, ci in zip(w, c, strict=True):
        if len(wi) == 1:
            dp = dp + ci[0]
            choices.append(None)
            continue
        table = np.full((len(wi), units + 1), np.inf)
        for k, (wk, ck) in enumerate(zip(wi, ci, strict=True)):
            if wk <= units:
                table[k, wk:] = dp[: units + 1 - wk] + ck
        arg = table.argmin(axis=0).astype(np.uint8)
        dp = table[arg, np.arange(units + 1)]
        choices.append(arg)
    pos = [0] * len(s)
    u = units
    for i in range(len(s) - 1, -1, -1):
        arg = choices[i]
        if arg is not None:
            pos[i] = int(arg[u])
            u -= w[i][pos[i]]
    return pos


def solve(
    sizes: Sequence[Sequence[int]],
    costs: Sequence[Sequence[float]],
    budget: int,
    *,
    max_cells: int = 40_000_000,
) -> Solution:
    """Choose one option per item minimising total cost with total size <= budget."""
    if len(sizes) != len(costs) or any(
        len(a) != len(b) or not a for a, b in zip(sizes, costs, strict=True)
    ):
        raise ValueError("every item needs at least one option, sizes and costs alike")
    fronts = [
        pareto(list(map(int, si)), list(map(float, ci)))
        for si, ci in zip(sizes, costs, strict=True)
    ]
    s = [[int(sizes[i][j]) for j in f] for i, f in enumerate(fronts)]
    c = [[float(costs[i][j]) for j in f] for i, f in enumerate(fronts)]
    min_total = sum(si[0] for si in s)
    if min_total > budget:
        raise Infeasible(
            f"budget {budget} bytes is below the smallest plan ({min_total} bytes)", min_total
        )

    def result(pos: list[int], bound: float, exact: bool, method: str) -> Solution:
        total = sum(si[p] for si, p in zip(s, pos, strict=True))
        cost = sum(ci[p] for ci, p in zip(c, pos, strict=True))
        assert total <= budget
        return Solution(
            tuple(f[p] for f, p in zip(fronts, pos, strict=True)),
            total,
            cost,
            min(bound, cost),
            exact,
            method,
        )

    if sum(si[-1] for si in s) <= budget:
        return result([len(si) - 1 for si in s], -math.inf, True, "all-best")
    slack = budget - min_total
    greedy_pos, bound = _greedy(s, c, slack)
    extras = [sk - si[0] for si in s for sk in si[1:]]
    unit = reduce(math.gcd, extras, 0) or 1
    active = sum(len(si) > 1 for si in s)
    max_units = max(1, max_cells // max(active, 1))
    span = sum(si[-1] - si[0] for si in s)
    exact = min(slack, span) // unit <= max_units
    if not exact:  # coarsen, independently of the budget
        unit = unit * -(-span // (unit * max_units))
    dp_pos = _dp(s, c, slack, unit, max_units)
    if exact:
        return result(dp_pos, bound, True, "dp-exact")
    used = lambda pos: sum(si[p] for si, p in zip(s, pos, strict=True))  # noqa: E731
    candidates = [
        _improve(s, c, dp_pos, budget - used(dp_pos)),
        _improve(s, c, greedy_pos, budget - used(greedy_pos)),
    ]
    costs_ = [sum(ci[p] for ci, p in zip(c, pos, strict=True)) for pos in candidates]
    best = 0 if costs_[0] <= costs_[1] else 1
    return result(candidates[best], bound, False, ("dp-approx", "greedy")[best] + "+repair")
