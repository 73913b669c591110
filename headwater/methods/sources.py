"""Source-level attribution: which data sources a ranking's top pairs come from (method.md §4).

The paper ranks data sources by how over-represented they are among the top-N pairs of an
attribution ranking, drops the top sources, and retrains (84% less of the behaviour from 4
sources). For each source s with n_s of the N_all ranked pairs and t_s of the top N:

- share of the data n_s / N_all and share of the top t_s / N (Wilson 95% interval);
- lift = (t_s / N) / (n_s / N_all): how many times its fair share of the top it holds;
- p: the chance of t_s or more of the top coming from s if the top N were drawn at random from
  the ranked pairs (hypergeometric upper tail), and Benjamini-Hochberg q over the sources.

:func:`sources_to_drop` picks the sources to remove: lift at least ``min_lift`` and q below
``alpha``, most over-represented first, at most ``max_sources``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np

from headwater.data.dataset import PreferenceDataset


@dataclass(frozen=True)
class SourceShare:
    """One source's place in the top N of a ranking (see the module docstring)."""

    source: str
    n_pairs: int
    n_top: int
    share_of_data: float
    share_of_top: float
    top_ci_low: float
    top_ci_high: float
    lift: float
    p: float
    q: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _wilson(hits: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _bh(p: np.ndarray) -> np.ndarray:
    order = np.argsort(p, kind="stable")
    ranked = p[order] * len(p) / np.arange(1, len(p) + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty_like(q)
    out[order] = np.minimum(q, 1.0)
    return out


def rank_sources(ranked_ids: Sequence[str], sources: Mapping[str, str], top: int) -> list[SourceShare]:
    """Every source's share of the top ``top`` of ``ranked_ids`` (best first), most lifted first.

    Args:
        ranked_ids: pair ids in ranking order, best first.
        sources: pair id → source name, for every ranked pair.
        top: N, the size of the top (1 ≤ N ≤ len(ranked_ids)).

    Raises:
        ValueError: N out of range, or ranked pairs without a source (named).
    """
    from scipy.stats import hypergeom

    total = len(ranked_ids)
    if not 1 <= top <= total:
        raise ValueError(f"top must be between 1 and the {total} ranked pairs, got {top}")
    missing = [p for p in ranked_ids if p not in sources]
    if missing:
        raise ValueError(f"{len(missing)} ranked pairs have no source, e.g. {missing[:3]}")
    names = sorted({sources[p] for p in ranked_ids})
    counts = {s: 0 for s in names}
    in_top = {s: 0 for s in names}
    for position, pair in enumerate(ranked_ids):
        counts[sources[pair]] += 1
        if position < top:
            in_top[sources[pair]] += 1
    p_values = np.array([float(hypergeom.sf(in_top[s] - 1, total, counts[s], top)) for s in names])
    q_values = _bh(p_values)
    shares = []
    for s, p, q in zip(names, p_values, q_values):
        low, high = _wilson(in_top[s], top)
        data_share, top_share = counts[s] / total, in_top[s] / top
        shares.append(SourceShare(s, counts[s], in_top[s], data_share, top_share, low, high,
                                  top_share / data_share, float(p), float(q)))
    return sorted(shares, key=lambda x: (-x.lift, x.p, x.source))


def sources_to_drop(shares: Sequence[SourceShare], *, max_sources: int, min_lift: float = 2.0,
                    alpha: float = 0.05) -> list[str]:
    """The sources to remove: lift ≥ ``min_lift`` and q < ``alpha``, most lifted first, at most
    ``max_sources``."""
    if max_sources < 1:
        raise ValueError(f"max_sources must be at least 1, got {max_sources}")
    chosen = [s.source for s in shares if s.lift >= min_lift and s.q < alpha]
    return chosen[:max_sources]


def format_sources(shares: Sequence[SourceShare], top: int) -> str:
    """The source table as text."""
    lines = [f"{'source':20s} {'pairs':>7s} {'data %':>7s} {f'top-{top} %':>10s} {'95% CI':>15s} {'lift':>6s} {'q':>9s}"]
    for s in shares:
        lines.append(
            f"{s.source:20s} {s.n_pairs:7d} {100 * s.share_of_data:6.1f}% {100 * s.share_of_top:9.1f}% "
            f"[{100 * s.top_ci_low:4.1f}, {100 * s.top_ci_high:4.1f}]% {s.lift:6.2f} {s.q:9.2g}"
        )
    return "\n".join(lines)




def attach_sources(
    dataset: PreferenceDataset, sources: Mapping[str, str], *, column: str = "source"
) -> PreferenceDataset:
    """A copy of ``dataset`` whose pairs carry ``sources[pair_id]`` in their
    metadata ``column`` (for :func:`headwater.methods.interventions.drop_source`).

    Raises:
        ValueError: pairs without a source (named).
    """
    missing = [p.pair_id for p in dataset if p.pair_id not in sources]
    if missing:
        raise ValueError(f"{len(missing)} pairs have no source, e.g. {missing[:3]}")
    pairs = [replace(p, metadata={**p.metadata, column: sources[p.pair_id]}) for p in dataset]
    return PreferenceDataset(pairs, source=dataset.source)


__all__ = ["SourceShare", "attach_sources", "format_sources", "rank_sources", "sources_to_drop"]
