"""Markdown for people: the tables and numbers of leaderboard.md, the model card and compare.md."""

from __future__ import annotations

import math


def number(value, digits: int = 4) -> str:
    """A float to `digits` decimals, "n/a" for a missing or undefined one; anything else as text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def short(value) -> str:
    """A table cell: floats to 4 significant digits, nothing for None."""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return "" if value is None else str(value)


def interval(bounds, digits: int = 4) -> str:
    """[low, high], or "n/a" where either end is missing or undefined."""
    if not bounds or any(v is None or (isinstance(v, float) and math.isnan(v)) for v in bounds):
        return "n/a"
    return f"[{bounds[0]:.{digits}f}, {bounds[1]:.{digits}f}]"


def table(header: list[str], rows: list[list]) -> list[str]:
    """A Markdown table, as lines."""
    lines = ["| " + " | ".join(str(c) for c in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines
