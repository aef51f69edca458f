"""The quality-per-size plot: KL(P_ref || P_quant) per token against bits per weight all-in.

One home for the figure `jang eval --plot` draws for a user's bundles and `bench/compare.py`
draws for the comparison with the other quantizers (needs matplotlib: the eval extra).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Series:
    """Points (bpw all-in, KL, name) drawn as one line (or as named points)."""

    label: str
    points: list[tuple[float, float, str]] = field(default_factory=list)
    style: str = "-o"  # matplotlib format; a marker alone ("D") draws unjoined points
    named: bool = False  # write each point's name beside it


def kl_vs_bpw(series: Sequence[Series], title: str, dest: Path | str) -> Path:
    """Draw the series on a log-KL axis and save the figure to `dest` (PNG, SVG, PDF)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for s in series:
        pts = sorted(s.points)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], s.style, label=s.label, markersize=5)
        if s.named:
            for x, y, name in pts:
                ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight (all-in: codes + scales + biases + float matrices)")
    ax.set_ylabel("KL(P_ref || P_quant) per token")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(dest, dpi=110)
    plt.close(fig)
    return Path(dest)
