"""Source-level attribution: shares, lift, exact hypergeometric p-values, and the drop."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import hypergeom

from headwater.data.dataset import PreferenceDataset
from headwater.data.pairs import make_pair
from headwater.methods.interventions import drop_source
from headwater.methods.sources import attach_sources, format_sources, rank_sources, sources_to_drop


def _ranking(seed: int = 0):
    """300 pairs from sources a-f; the top 40 are mostly from 'bad'."""
    rng = np.random.default_rng(seed)
    ids = [f"p{i}" for i in range(300)]
    sources = {p: str(rng.choice(["a", "b", "c", "d", "e"])) for p in ids}
    for p in ids[:40]:
        if rng.random() < 0.8:
            sources[p] = "bad"
    for p in ids[200:210]:
        sources[p] = "bad"
    return ids, sources


def test_shares_lift_and_exact_p_values():
    ids, sources = _ranking()
    shares = rank_sources(ids, sources, top=40)
    first = shares[0]
    assert first.source == "bad"
    n_bad = sum(v == "bad" for v in sources.values())
    top_bad = sum(sources[p] == "bad" for p in ids[:40])
    assert (first.n_pairs, first.n_top) == (n_bad, top_bad)
    assert first.share_of_top == pytest.approx(top_bad / 40)
    assert first.lift == pytest.approx((top_bad / 40) / (n_bad / 300))
    assert first.p == pytest.approx(hypergeom.sf(top_bad - 1, 300, n_bad, 40))
    assert first.top_ci_low < first.share_of_top < first.top_ci_high
    assert first.q >= first.p and first.q < 1e-6
    assert sum(s.n_pairs for s in shares) == 300 and sum(s.n_top for s in shares) == 40
    assert [s.lift for s in shares] == sorted((s.lift for s in shares), reverse=True)
    assert "bad" in format_sources(shares, 40)


def test_sources_to_drop_takes_only_significant_over_represented_ones():
    ids, sources = _ranking()
    shares = rank_sources(ids, sources, top=40)
    assert sources_to_drop(shares, max_sources=4) == ["bad"]
    # a random ranking: nothing stands out
    rng = np.random.default_rng(1)
    shuffled = list(rng.permutation(ids))
    assert sources_to_drop(rank_sources(shuffled, sources, top=40), max_sources=4) == []
    with pytest.raises(ValueError, match="max_sources"):
        sources_to_drop(shares, max_sources=0)


def test_bad_input_is_refused():
    ids, sources = _ranking()
    with pytest.raises(ValueError, match="top must be between"):
        rank_sources(ids, sources, top=0)
    with pytest.raises(ValueError, match="top must be between"):
        rank_sources(ids, sources, top=301)
    del sources["p7"]
    with pytest.raises(ValueError, match="1 ranked pairs have no source"):
        rank_sources(ids, sources, top=10)


def test_attached_sources_feed_drop_source():
    pairs = [make_pair(f"q{i}", f"good {i}", f"bad {i}") for i in range(6)]
    dataset = PreferenceDataset(pairs, source="test")
    names = {p.pair_id: ("x" if i % 3 == 0 else "y") for i, p in enumerate(pairs)}
    tagged = attach_sources(dataset, names)
    assert [p.metadata["source"] for p in tagged] == [names[p.pair_id] for p in pairs]
    kept, manifest = drop_source(tagged, ["x"])
    assert len(kept) == 4 and sorted(manifest["changed_pair_ids"]) == sorted(p.pair_id for p in pairs[::3])
    with pytest.raises(ValueError, match="have no source"):
        attach_sources(dataset, {})
