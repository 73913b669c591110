"""Feature clusters: co-activation against correlated differences, on a store built by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from headwater.audit.audit import AuditConfig, run_audit
from headwater.audit.cards import Decision
from headwater.audit.clusters import (
    centroid_latents,
    coactivation_clusters,
    difference_clusters,
    joined_clusters,
    load_centroids,
    response_membership,
    save_centroids,
    topic_response_centroids,
)
from headwater.audit.features import FeatureStore
from headwater.audit.interventions import carriers, decision_differences, response_cluster

from audit_data import store_from


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


def test_joined_clusters_put_a_phrase_back_together_and_never_split_a_co_activation_cluster(tmp_path):
    """Latents 0 and 1 mark a phrase on the chosen side of pairs 0-29 (one co-activation cluster);
    latent 2 marks it too but is also a common word on both sides of pairs 30-99 (co-activation
    keeps it apart, its difference moves with theirs); latents 4 and 5 fire together on both sides
    of pairs 100-199 with independent amounts (one co-activation cluster whose differences do not
    correlate, so correlated differences alone split it); latent 3 never fires."""
    n = 200
    rng = np.random.default_rng(1)
    chosen, rejected = np.zeros((n, 6)), np.zeros((n, 6))
    for latent in (0, 1, 2):
        chosen[:30, latent] = 1.0 + rng.random(30)
    chosen[30:100, 2] = rejected[30:100, 2] = 0.5
    chosen[100:, 4:6], rejected[100:, 4:6] = 0.1 + rng.random((100, 2)), 0.1 + rng.random((100, 2))
    store = store_from(tmp_path, chosen, rejected)
    latents = [0, 1, 2, 3, 4, 5]
    co = coactivation_clusters(store, latents)
    assert [0, 1] in co and [2] in co and [4, 5] in co
    assert sorted(map(sorted, difference_clusters(store, latents))) == [[0, 1, 2], [3], [4], [5]]
    joined = joined_clusters(store, latents)
    assert sorted(map(sorted, joined)) == [[0, 1, 2], [3], [4, 5]]
    assert joined[0] == [0, 1, 2]  # largest first
    both = run_audit(store, AuditConfig(n_topics=1, clusters="joined", min_active=1, response_clusters=0))
    assert [0, 1, 2] in map(sorted, both.cluster_latents)


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


def answer_store(tmp_path, n: int = 120, seed: int = 0, shared: float = 0.0) -> FeatureStore:
    """Two prompt topics of 60 pairs. Topic 0: in pairs 0-44 the chosen response agrees (latent 6)
    in one of five wordings (latents 0-4) and the rejected one corrects (latent 7, wordings 8-9);
    in pairs 45-59 both sides correct. Topic 1 (pairs 60-119): both sides draw latents 9-11.
    Latent 12 is ``shared`` on every response (a format every answer has)."""
    rng = np.random.default_rng(seed)
    chosen, rejected = np.zeros((n, 13)), np.zeros((n, 13))
    chosen[:, 12] = rejected[:, 12] = shared
    half = n // 2
    for i in range(half):
        rejected[i, 7], rejected[i, 8 + i % 2] = 1.0 + 0.2 * rng.random(), 0.4
        if i < 45:
            chosen[i, 6], chosen[i, i % 5] = 1.0 + 0.2 * rng.random(), 0.4
        else:
            chosen[i, 7], chosen[i, 8 + (i + 1) % 2] = 1.0 + 0.2 * rng.random(), 0.4
    chosen[half:, 9:12], rejected[half:, 9:12] = rng.random((n - half, 3)), rng.random((n - half, 3))
    prompts = np.zeros((n, 4))
    prompts[:half, 0], prompts[half:, 1] = 1.0, 1.0
    prompts += 0.01 * rng.standard_normal((n, 4))
    return store_from(tmp_path, chosen, rejected, prompts=prompts)


def test_response_clusters_of_a_topic_separate_its_kinds_of_answer(tmp_path):
    store = answer_store(tmp_path)
    topics = np.array([0] * 60 + [1] * 60)
    centroids = topic_response_centroids(store, topics, 2)
    assert centroids.shape == (2, 2, 13)
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=2), 1.0, atol=1e-6)
    block = next(store.blocks())  # pairs 0-63
    chosen = response_membership(block.chosen, centroids[0], 13, "mean").argmax(dim=1).numpy()
    rejected = response_membership(block.rejected, centroids[0], 13, "mean").argmax(dim=1).numpy()
    agree = chosen[0]
    assert (chosen[:45] == agree).all() and (chosen[45:60] != agree).all() and (rejected[:60] != agree).all()
    # the latents that set the agreeing centroid apart: the agreement latent first
    assert centroid_latents(centroids[0])[agree][0] == 6
    # a response with no active latent belongs to no cluster
    from headwater.audit.features import PooledFeatures
    empty = PooledFeatures(torch.zeros(2, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0),
                           torch.zeros(0))
    assert response_membership(empty, centroids[0], 13, "mean").sum() == 0


def test_a_latent_every_response_carries_names_no_response_cluster(tmp_path):
    """Latent 12 is on every response at twice the others' weight: it is the largest entry of every
    centroid, but what sets the agreeing cluster apart is latent 6, the correcting one latent 7."""
    store = answer_store(tmp_path, shared=2.0)
    result = run_audit(store, AuditConfig(n_topics=2, response_clusters=2, min_active=1))
    topic = int(result.topics[0])
    named = result.response_latents[topic]
    assert sorted(lat[0] for lat in named) == [6, 7] and all(12 not in lat for lat in named)
    assert centroid_latents(np.zeros((2, 13))) == [[], []]  # absent clusters are named by nothing


def test_the_audit_ranks_a_topic_response_concept_and_it_acts_on_its_carriers(tmp_path):
    store = answer_store(tmp_path)
    result = run_audit(store, AuditConfig(n_topics=2, response_clusters=2, min_active=1))
    rows = result.response_concepts()
    top = rows[0]
    topic, cluster = response_cluster(top["concept"])
    assert top["kind"] == "response" and top["topic"] == topic == result.topics[0] and top["n_pairs"] == 60
    # membership difference: +1 in pairs 0-44, 0 in 45-59 (both correct): d = mean / sd exactly
    x = np.r_[np.ones(45), np.zeros(15)]
    assert abs(top["d"]) == pytest.approx(x.mean() / x.std(ddof=1), rel=1e-9)
    assert top["latents"] == result.response_latents[topic][cluster] and top["latents"][0] in (6, 7)
    sign = "suppress" if top["d"] > 0 else "amplify"
    decision = Decision(top["concept"], sign, tuple(top["latents"]))
    pair_topics = dict(zip(store.pair_ids, (int(t) for t in result.topics)))
    found = carriers([decision], store, topics=pair_topics, centroids=result.response_centroids)
    assert found.pair_ids == [f"p{i}" for i in range(45)] and found.per_concept == {top["concept"]: 45}
    ids, diffs, typical = decision_differences([decision], store, centroids=result.response_centroids)
    assert typical[0] == 1.0 and set(np.unique(diffs[:60, 0])) <= {-1.0, 0.0, 1.0}
    with pytest.raises(ValueError, match="response centroids are needed"):
        carriers([decision], store, topics=pair_topics)
    with pytest.raises(ValueError, match="no such response cluster"):
        carriers([Decision(f"t{topic}/r7", "suppress", (6,))], store, topics=pair_topics,
                 centroids=result.response_centroids)


def test_response_centroids_round_trip_and_bad_files_are_named(tmp_path):
    centroids = np.random.default_rng(0).random((3, 2, 5)).astype(np.float32)
    save_centroids(tmp_path / "c.safetensors", centroids)
    np.testing.assert_array_equal(load_centroids(tmp_path / "c.safetensors", 5), centroids)
    with pytest.raises(ValueError, match="expected"):
        load_centroids(tmp_path / "c.safetensors", 6)
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="no readable response centroids"):
        load_centroids(tmp_path / "bad.safetensors", 5)
    with pytest.raises(ValueError, match="response_clusters"):
        AuditConfig(response_clusters=-1)
