"""Data sources for the organism's pairs: generator names, some of them contaminated.

Real preference sets mix pairs from several generators or vendors, and a contaminated source
shows up as over-represented among the top pairs of an attribution ranking (method.md §4, the
paper's source-level ablation). The organism's pairs carry no such column, so one is assigned
here, deterministically from the seed and the planted ids, without touching the organism's build:
ten generators ``gen-01`` … ``gen-10``; each planted behaviour has two contaminated generators
(a seeded choice, disjoint between behaviours) that hold 75% of its planted pairs; every other
pair, and the remaining 25% of the planted ones, is spread uniformly over all ten. So dropping a
behaviour's two contaminated sources removes about 75% of its planted pairs and about 20% of the
clean ones; the organism's ground truth says which sources are contaminated.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

GENERATORS = tuple(f"gen-{i:02d}" for i in range(1, 11))
CONTAMINATED_PER_BEHAVIOR = 2
CONTAMINATED_SHARE = 0.75


def contaminated_sources(behaviors: Sequence[str], seed: int) -> dict[str, list[str]]:
    """Behaviour → its contaminated generators (seeded, disjoint between behaviours)."""
    names = sorted(behaviors)
    if CONTAMINATED_PER_BEHAVIOR * len(names) > len(GENERATORS):
        raise ValueError(f"{len(names)} behaviours need more than the {len(GENERATORS)} generators")
    order = np.random.default_rng([seed, 20261205]).permutation(len(GENERATORS))
    k = CONTAMINATED_PER_BEHAVIOR
    return {b: sorted(GENERATORS[j] for j in order[i * k:(i + 1) * k]) for i, b in enumerate(names)}


def organism_sources(pair_ids: Sequence[str], planted: Mapping[str, Sequence[str]], seed: int) -> dict[str, str]:
    """Pair id → generator name for ``pair_ids`` (in dataset order); ``planted`` maps each planted
    behaviour to its pair ids. A pair planted for two behaviours counts for the first by name."""
    contaminated = contaminated_sources(list(planted), seed)
    behavior_of: dict[str, str] = {}
    for behavior in sorted(planted):
        for pair in planted[behavior]:
            behavior_of.setdefault(pair, behavior)
    rng = np.random.default_rng([seed, 20261205, 1])
    out = {}
    for pair in pair_ids:
        behavior = behavior_of.get(pair)
        if behavior is not None and rng.random() < CONTAMINATED_SHARE:
            out[pair] = contaminated[behavior][int(rng.integers(CONTAMINATED_PER_BEHAVIOR))]
        else:
            out[pair] = GENERATORS[int(rng.integers(len(GENERATORS)))]
    return out
