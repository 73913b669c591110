"""The organism's data sources: deterministic, contaminated where the ground truth says."""
from __future__ import annotations

from collections import Counter

import pytest

from headwater.organism import sources as organism_sources_module
from headwater.organism.sources import GENERATORS, contaminated_sources, organism_sources


def _ids():
    ids = [f"p{i}" for i in range(4000)]
    planted = {"links": ids[:300], "sycophancy": ids[300:600], "compliance": ids[600:900]}
    return ids, planted


def test_sources_are_seeded_and_contaminated_as_documented():
    ids, planted = _ids()
    a, b = organism_sources(ids, planted, seed=0), organism_sources(ids, planted, seed=0)
    assert a == b and set(a.values()) <= set(GENERATORS)
    truth = contaminated_sources(list(planted), seed=0)
    assert len({g for gens in truth.values() for g in gens}) == 6  # disjoint between behaviours
    for behavior, pairs in planted.items():
        share = sum(a[p] in truth[behavior] for p in pairs) / len(pairs)
        # 75% go to the two contaminated generators directly, and 2 in 10 of the rest by chance
        assert share == pytest.approx(0.75 + 0.25 * 0.2, abs=0.07)
    clean = Counter(a[p] for p in ids[900:])
    assert min(clean.values()) > 0.7 * len(ids[900:]) / len(GENERATORS)  # spread over all ten
    assert organism_sources(ids, planted, seed=1) != a


def test_too_many_behaviours_are_refused(monkeypatch):
    monkeypatch.setattr(organism_sources_module, "CONTAMINATED_PER_BEHAVIOR", 4)
    with pytest.raises(ValueError, match="need more than"):
        contaminated_sources(["a", "b", "c"], seed=0)
