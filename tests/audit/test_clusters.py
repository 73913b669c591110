"""Feature clusters: co-activation against correlated differences, on a store built by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from headwater.audit.audit import AuditConfig, run_audit
from headwater.audit.clusters import coactivation_clusters, difference_clusters
from headwater.audit.features import FeatureStore
from headwater.engine import atomic


def store_from(tmp_path, chosen: np.ndarray, rejected: np.ndarray, part_rows: int = 64) -> FeatureStore:
    """A feature directory holding the given pooled values ([n, d_sae] per side), in parts."""
    n, d_sae = chosen.shape
    root = tmp_path / "features"
    root.mkdir()
    parts = []
    for k, start in enumerate(range(0, n, part_rows)):
        stop = min(n, start + part_rows)
        rows = np.empty((2 * (stop - start), d_sae))
        rows[0::2], rows[1::2] = chosen[start:stop], rejected[start:stop]
        dense = torch.tensor(rows, dtype=torch.float32)
        nz = dense.nonzero()
        counts = torch.bincount(nz[:, 0], minlength=dense.shape[0])
        name = f"part-{k:05d}.safetensors"
        save_file({"indptr": torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]),
                   "indices": nz[:, 1].to(torch.int32), "mean": dense[nz[:, 0], nz[:, 1]],
                   "max": dense[nz[:, 0], nz[:, 1]], "tokens": torch.full((dense.shape[0],), 5, dtype=torch.int32),
                   "positions": torch.arange(start, stop), "prompt": torch.randn(stop - start, 4)}, str(root / name))
        parts.append({"file": name, "start": start, "stop": stop, "rows": stop - start,
                      "sha256": atomic.sha256_file(root / name)})
    atomic.write_json(root / "features.json", {
        "format": "headwater-response-features", "format_version": 1, "layer": 1, "d_sae": d_sae, "d_in": 4,
        "parts": parts, "pair_ids": [f"p{i}" for i in range(n)], "skipped_pairs": [], "n_tokens": 10 * n,
        "dataset_fingerprint": "x", "n_pairs": n})
    return FeatureStore.open(root)


def phrase_store(tmp_path, n: int = 200, seed: int = 0) -> FeatureStore:
    """Latents 0 and 1 both mark a phrase on the chosen side of pairs 0-29; latent 1 is also a
    common word on both sides of every other pair; latent 2 is noise; latent 3 never differs."""
    rng = np.random.default_rng(seed)
    chosen, rejected = np.zeros((n, 4)), np.zeros((n, 4))
    chosen[:30, 0] = 1.0 + rng.random(30)
    chosen[:30, 1] = 1.0 + rng.random(30)
    chosen[30:, 1] = rejected[30:, 1] = 0.5
    chosen[:, 2], rejected[:, 2] = rng.random(n), rng.random(n)
    chosen[:, 3] = rejected[:, 3] = 0.3
    return store_from(tmp_path, chosen, rejected)


def test_difference_clusters_join_one_phrase_that_co_activation_splits(tmp_path):
    store = phrase_store(tmp_path)
    by_difference = difference_clusters(store, [0, 1, 2, 3])
    assert [0, 1] in by_difference and [2] in by_difference and [3] in by_difference
    # latent 1 is active in 30 + 2·170 responses, latent 0 in 30: Ochiai 30/√(30·370) ≈ 0.28 < 0.5
    assert [0] in coactivation_clusters(store, [0, 1, 2, 3]) and [1] not in by_difference


def test_difference_similarity_is_pearson_over_the_pairs(tmp_path):
    """Two latents whose differences correlate at exactly ρ = 0.6 join at a cut of 0.55 and not at 0.65."""
    n = 400
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal(n), rng.standard_normal(n)
    a, b = a - a.mean(), b - b.mean()
    b = b - a * (a @ b) / (a @ a)  # centred and orthogonal to a: corr(a, 0.6·â + 0.8·b̂) = 0.6
    x, y = a / np.linalg.norm(a), 0.6 * a / np.linalg.norm(a) + 0.8 * b / np.linalg.norm(b)
    assert np.corrcoef(x, y)[0, 1] == pytest.approx(0.6, abs=1e-9)
    # differences as chosen − rejected with non-negative sides (pooled activations are ≥ 0)
    chosen, rejected = np.zeros((n, 2)), np.zeros((n, 2))
    for col, diff in enumerate((x, y)):
        chosen[:, col], rejected[:, col] = np.clip(diff, 0, None) + 1.0, np.clip(-diff, 0, None) + 1.0
    store = store_from(tmp_path, chosen, rejected)
    assert difference_clusters(store, [0, 1], min_similarity=0.55) == [[0, 1]]
    assert sorted(difference_clusters(store, [0, 1], min_similarity=0.65)) == [[0], [1]]


def test_the_audit_uses_the_clustering_asked_for(tmp_path):
    store = phrase_store(tmp_path)
    both = run_audit(store, AuditConfig(n_topics=1, clusters="differences", min_active=1))
    assert sorted(map(sorted, both.cluster_latents)) == [[0, 1]]  # only significant latents are clustered
    with pytest.raises(ValueError, match="clusters must be one of"):
        AuditConfig(clusters="spectral")
