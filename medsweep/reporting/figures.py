"""What the report's plots share: matplotlib set up for files only, how a PNG is saved, and the
Figure record the page shows (a plot module draws, saves and returns Figures; page.py lays them out).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib

# Files only: no display on a cluster node. Set before pyplot is imported, which is why the plot
# modules take `plt` from here.
matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

DPI = 120


@dataclass
class Figure:
    name: str  # the PNG's stem and the page's anchor
    title: str
    caption: str


def wrap(label: str, width: int = 14) -> str:
    return "\n".join(textwrap.wrap(label, width)) or label


def save(fig, out_dir: Path, name: str) -> None:
    fig.savefig(out_dir / f"{name}.png", dpi=DPI, bbox_inches="tight", facecolor="white")
    plt.close(fig)


__all__ = ["DPI", "Figure", "plt", "save", "wrap"]
