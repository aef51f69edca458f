"""Decisions: the units the planner chooses one (bits, group size) for, and their priors.

A decision is one matrix, or all experts of one projection in one layer; its prior
(``alpha``) weighs its error in the objective (the module docstring of `jang.plan` says why
each prior is what it is).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jang.arch import Arch
from jang.formats import BITS, UNQUANTIZED, matrix_bytes
from jang.plan.tiers import Bounds, Classified, TensorRole, bounds

EDGE_WEIGHT = 1.5
QK_WEIGHT = 0.5
PRIORS: dict[str, float] = {
    "attn_q": QK_WEIGHT,
    "attn_k": QK_WEIGHT,
    "mla_q_a": QK_WEIGHT,
    "mla_q_b": QK_WEIGHT,
}  # every other role: 1, except the head (`head_weight`)


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

    `alphas` (decision key -> alpha, e.g. measured by bench/experiments/sensitivity_alphas.py) replace the
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
