"""Named profiles and bit budgets.

Fixed profiles are the public JANG tool's (CRITICAL, IMPORTANT, COMPRESS) tuples: every tensor
gets its tier's bits at the default group size, then the floors. Budget profiles ``JANG_nK``
and any numeric target (``--bits 2.5``) go through the solver.

Budgets are *all-in* bits per weight (codes + fp16 scales + biases, and 16 bits for a planned
matrix left unquantized) over the planned matrices: that is what a file size is made of, and
it lets group size compete with bit width. ``JANG_nK`` is "budget-neutral" as in the public
tool: the same size as MLX uniform n-bit at group size 64, i.e. ``n + 0.5`` bits per weight.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from jang.errors import ProfileError
from jang.plan.tiers import COMPRESS, CRITICAL, IMPORTANT

DEFAULT_GROUP_SIZE = 64
LARGE_MOE_GROUP_SIZE = 128  # >= 150 routed experts
LARGE_MOE_EXPERTS = 150

TIER_PROFILES: dict[str, tuple[int, int, int]] = {
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
BUDGET_PROFILES: dict[str, int] = {f"JANG_{n}K": n for n in (2, 3, 4, 5, 6)}
PROFILES = (*TIER_PROFILES, *BUDGET_PROFILES)


@dataclass(frozen=True)
class Profile:
    """A request: fixed tier bits, or an all-in bits-per-weight budget for the solver."""

    name: str
    tiers: tuple[int, int, int] | None = None  # (CRITICAL, IMPORTANT, COMPRESS) bits
    bits: float | None = None  # all-in bits per weight (budget)

    @property
    def kind(self) -> str:
        return "tiers" if self.tiers else "budget"

    def describe(self) -> str:
        """One line that says what the request means (tier names do not follow size)."""
        if self.tiers:
            critical, important, bulk = self.tiers
            return (
                f"{self.name}: fixed widths per tier, MLP/experts (most weights) {bulk}-bit, "
                f"important {important}-bit, critical {critical}-bit (the public JANG tool's "
                "names: they do not follow size)"
            )
        return (
            f"{self.name}: a {self.bits:.2f} bpw all-in budget, spent where the measured "
            "error drops most"
        )

    def tier_bits(self, tier: str) -> int:
        assert self.tiers is not None
        return self.tiers[(CRITICAL, IMPORTANT, COMPRESS).index(tier)]


def from_request(request: dict) -> Profile:
    """The Profile a plan's ``request`` record was made from."""
    tiers = request.get("tiers")
    return Profile(request["profile"], tuple(tiers) if tiers else None, request.get("bits"))


def budget_bits(n: int, group_size: int = DEFAULT_GROUP_SIZE) -> float:
    """All-in bits per weight of MLX uniform n-bit quantization at `group_size`."""
    return n + 32 / group_size


def get(name: str | None = None, bits: float | None = None) -> Profile:
    """A profile by name (case-insensitive, ``JANG_`` optional) or a numeric budget."""
    if (name is None) == (bits is None):
        raise ProfileError("give exactly one of a profile name or a bits target")
    if bits is not None:
        bits = float(bits)
        if not 2.0 <= bits <= 16.0:
            raise ProfileError(f"bits target {bits} outside [2, 16] bits per weight (all-in)")
        return Profile(name=f"{bits:g}bpw", bits=bits)
    key = name.strip().upper()
    if re.fullmatch(r"\d+(\.\d+)?", key):
        return get(bits=float(key))
    if not key.startswith("JANG_"):
        key = "JANG_" + key
    if key in TIER_PROFILES:
        return Profile(name=key, tiers=TIER_PROFILES[key])
    if key in BUDGET_PROFILES:
        return Profile(name=key, bits=budget_bits(BUDGET_PROFILES[key]))
    raise ProfileError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}, or a number")
