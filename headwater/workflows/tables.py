"""Tables for people: numbers as text, one plain-text table formatter and the HTML one.

Every table headwater prints (the demo, the experiment, the real-model loop) and every table of
the HTML report is a header and rows of strings formatted here, so a rate reads the same
everywhere: a percentage with one decimal, an interval in brackets, a change with its sign.
"""
from __future__ import annotations

import html
from typing import Any, Sequence

import numpy as np


def pct(x: float | None) -> str:
    """A fraction as a percentage with one decimal ("n/a" for None or NaN)."""
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:.1f}%"


def ci_text(low: float | None, high: float | None) -> str:
    """An interval of fractions as "[a%, b%]"."""
    return f"[{pct(low)}, {pct(high)}]"


def rate_text(rate: float | None, low: float | None, high: float | None) -> str:
    """A rate with its interval, "12.5% [8.0%, 17.1%]"."""
    return f"{pct(rate)} {ci_text(low, high)}"


def signed(x: float | None, scale: float = 100.0, digits: int = 1) -> str:
    """``scale * x`` with its sign ("n/a" for None or NaN)."""
    return "n/a" if x is None or not np.isfinite(x) else f"{scale * x:+.{digits}f}"


def change_text(c: dict[str, Any], name: str, *, percent: bool = True) -> str:
    """A cell's change against the baseline with its interval, e.g. "+1.2 [-0.5, +3.0]" (points
    for rates, nats per token for the log-likelihood); empty for the baseline itself."""
    if f"{name}_change" not in c:
        return ""
    scale, digits = (100.0, 1) if percent else (1.0, 3)
    low, high = c[f"{name}_change_ci"]
    return f"{signed(c[f'{name}_change'], scale, digits)} [{signed(low, scale, digits)}, {signed(high, scale, digits)}]"


def text_table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, gap: int = 2) -> str:
    """A plain-text table: the first column left-aligned, the others right-aligned, every column
    as wide as its widest cell; cells are ``str()``-ed."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    width = max(len(r) for r in cells)
    cells = [r + [""] * (width - len(r)) for r in cells]
    widths = [max(len(r[j]) for r in cells) for j in range(width)]
    lines = []
    for r in cells:
        parts = [r[0].ljust(widths[0])] + [r[j].rjust(widths[j]) for j in range(1, width)]
        lines.append((" " * gap).join(parts).rstrip())
    return "\n".join(lines)


def html_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """The same table as HTML (cells escaped)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


__all__ = ["change_text", "ci_text", "html_table", "pct", "rate_text", "signed", "text_table"]
