"""Groupings the audit reports on: feature clusters from co-activation, prompt topics.

- Feature clusters: for the latents of interest, how often two of them are active in the same
  response (the Ochiai coefficient |A∩B| / √(|A|·|B|) over responses); average-linkage
  agglomerative clustering cuts the graph where similarity falls under ``min_similarity``. Or,
  with ``difference_clusters``, how alike their chosen − rejected differences are over the pairs
  (Pearson correlation), cut the same way: latents taught by the same pairs group together even
  when one of them also fires elsewhere on both sides (a word of a fixed phrase that is common on
  its own), which splits co-activation clusters of one phrase into several.
  Or, with ``joined_clusters``, co-activation clusters first, then those whose summed differences
  correlate joined into one: a co-activation cluster is never split, and the pieces of one phrase
  are put back together.
- Prompt topics: spherical k-means (mini-batch, streamed part by part) on the prompts' mean
  activation at ℓ, labelled by the TF-IDF terms that set a topic's prompts apart.
- Response clusters, per prompt topic: k-means on the unit pooled feature vectors of the topic's
  responses (a bounded seeded sample), chosen and rejected alike (method.md §6's "clusters of
  responses by spherical k-means on their feature vectors"). A response belongs to the cluster
  of its nearest centroid. A kind of response that no single latent or latent cluster marks (a
  deferential agreement worded ten ways, say) can still be one response cluster, because its
  responses are near each other as a whole; within one kind of prompt, a few clusters separate
  the kinds of answer the data contrasts.

All stream a :class:`~headwater.audit.features.FeatureStore`; memory stays flat in the pairs
(the topic of each pair, one int per pair, is the only per-pair array).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from scipy import sparse
from sklearn.cluster import AgglomerativeClustering, KMeans, MiniBatchKMeans
from sklearn.feature_extraction.text import TfidfVectorizer

from headwater.audit.features import FeatureStore, PooledFeatures
from headwater.engine import atomic


def _columns(features: PooledFeatures, latents: torch.Tensor, d_sae: int, pooling: str) -> torch.Tensor:
    """[rows, len(latents)] pooled values of the chosen latents."""
    return features.dense(d_sae, pooling)[:, latents]


def coactivation_clusters(store: FeatureStore, latents: Sequence[int], *, min_similarity: float = 0.5
                          ) -> list[list[int]]:
    """Clusters of ``latents`` that fire in the same responses, largest first (singletons too)."""
    latents = list(dict.fromkeys(int(v) for v in latents))
    if len(latents) < 2:
        return [latents] if latents else []
    index = torch.tensor(latents)
    gram = torch.zeros((len(latents), len(latents)), dtype=torch.float64)
    for block in store.blocks():
        for side in (block.chosen, block.rejected):
            active = (_columns(side, index, store.d_sae, "max") > 0).double()
            gram += active.T @ active
    counts = gram.diag().clamp_min(1)
    similarity = (gram / torch.sqrt(counts[:, None] * counts[None, :])).numpy()
    return _cut(latents, similarity, min_similarity)


def _cut(latents: list[int], similarity: np.ndarray, min_similarity: float) -> list[list[int]]:
    """Average-linkage clusters of ``latents`` under a [m, m] similarity, largest first."""
    np.fill_diagonal(similarity, 1.0)
    labels = AgglomerativeClustering(
        n_clusters=None, metric="precomputed", linkage="average", distance_threshold=1.0 - min_similarity,
    ).fit_predict(1.0 - similarity)
    clusters: dict[int, list[int]] = {}
    for latent, label in zip(latents, labels):
        clusters.setdefault(int(label), []).append(latent)
    return sorted(clusters.values(), key=lambda c: (-len(c), c[0]))


def _difference_correlation(store: FeatureStore, columns: Callable[[PooledFeatures], torch.Tensor], m: int
                            ) -> np.ndarray | None:
    """[m, m] Pearson correlation over the pairs of the chosen − rejected differences of ``m``
    columns (``columns`` maps a side's pooled features to [rows, m]), from streamed float64 sums;
    a column whose difference never varies correlates with nothing. None with fewer than 2 pairs."""
    n, total, cross = 0, torch.zeros(m, dtype=torch.float64), torch.zeros((m, m), dtype=torch.float64)
    for block in store.blocks():
        diff = (columns(block.chosen) - columns(block.rejected)).double()
        n += diff.shape[0]
        total += diff.sum(dim=0)
        cross += diff.T @ diff
    if n < 2:
        return None
    mean = total / n
    cov = (cross - n * mean[:, None] * mean[None, :]) / (n - 1)
    sd = cov.diag().clamp_min(0).sqrt()
    scale = sd[:, None] * sd[None, :]
    return torch.where(scale > 0, cov / torch.where(scale > 0, scale, 1.0), 0.0).clamp(-1, 1).numpy()


def difference_clusters(store: FeatureStore, latents: Sequence[int], *, min_similarity: float = 0.5,
                        pooling: str = "mean") -> list[list[int]]:
    """Clusters of ``latents`` whose chosen − rejected pooled differences correlate over the pairs
    (Pearson, from streamed float64 sums), largest first (singletons too). A latent whose
    difference never varies correlates with nothing and stays alone."""
    latents = list(dict.fromkeys(int(v) for v in latents))
    if len(latents) < 2:
        return [latents] if latents else []
    index = torch.tensor(latents)
    similarity = _difference_correlation(store, lambda side: _columns(side, index, store.d_sae, pooling), len(latents))
    if similarity is None:
        return [[v] for v in latents]
    return _cut(latents, similarity, min_similarity)


def joined_clusters(store: FeatureStore, latents: Sequence[int], *, min_similarity: float = 0.5,
                    pooling: str = "mean") -> list[list[int]]:
    """Co-activation clusters, then those whose chosen − rejected differences (each cluster's
    summed pooled activation) correlate over the pairs joined into one (average linkage, cut at
    ``min_similarity``), largest first.

    Why: the pieces of one fixed phrase ("Hope" / "this helps" / "ps!") are latents of different
    tokens, some of which also fire elsewhere, so co-activation alone keeps them apart; but the
    same pairs teach all of them, so their differences move together. Unlike
    :func:`difference_clusters`, a co-activation cluster is never split, only joined.
    """
    clusters = coactivation_clusters(store, latents, min_similarity=min_similarity)
    if len(clusters) < 2:
        return clusters
    similarity = _difference_correlation(store, lambda side: cluster_columns(side, clusters, store.d_sae, pooling),
                                         len(clusters))
    if similarity is None:
        return clusters
    groups = _cut(list(range(len(clusters))), similarity, min_similarity)
    order = {lat: k for k, lat in enumerate(dict.fromkeys(int(v) for v in latents))}  # the input's order (by |d|)
    joined = [sorted((lat for g in group for lat in clusters[g]), key=order.__getitem__) for group in groups]
    return sorted(joined, key=lambda c: (-len(c), c[0]))


def cluster_columns(features: PooledFeatures, clusters: Sequence[Sequence[int]], d_sae: int, pooling: str
                    ) -> torch.Tensor:
    """[rows, n_clusters] float32: each cluster's activation, the sum of its latents' pooled values."""
    return features.concept_columns(clusters, d_sae, pooling).float()


def _normalised(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(x.double(), dim=1).numpy()


def _spherical_kmeans(rows: Callable[[], Iterator[np.ndarray]], k: int, *, seed: int, batch: int) -> MiniBatchKMeans:
    """Mini-batch k-means over unit rows, 3 streamed passes; ``rows()`` yields [r, d] blocks anew
    each pass (already normalised)."""
    kmeans = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=batch, n_init=3)
    for _ in range(3):
        pending = []
        for block in rows():
            pending.append(block)
            if sum(p.shape[0] for p in pending) >= max(k, batch):
                kmeans.partial_fit(np.concatenate(pending))
                pending = []
        if pending and (hasattr(kmeans, "cluster_centers_") or sum(p.shape[0] for p in pending) >= k):
            kmeans.partial_fit(np.concatenate(pending))
    return kmeans


def prompt_topics(store: FeatureStore, n_topics: int, *, seed: int = 0, batch: int = 1024) -> np.ndarray:
    """[n_pairs] int topic of each pair in store order (spherical mini-batch k-means, 3 passes)."""
    n_topics = max(1, min(n_topics, len(store)))
    kmeans = _spherical_kmeans(lambda: (_normalised(b.prompt) for b in store.blocks()), n_topics, seed=seed,
                               batch=batch)
    return np.concatenate([kmeans.predict(_normalised(b.prompt)) for b in store.blocks()]).astype(np.int64)


def _sparse_rows(features: PooledFeatures, d_sae: int, pooling: str) -> sparse.csr_matrix:
    """[rows, d_sae] float64 CSR of pooled features, each row scaled to unit length (a response with
    no active latent stays zero)."""
    values = {"mean": features.mean, "max": features.max}[pooling].double().numpy()
    matrix = sparse.csr_matrix((values, features.indices.numpy(), features.indptr.numpy()),
                               shape=(features.rows, d_sae))
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
    return sparse.diags(np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0)) @ matrix


def topic_response_centroids(store: FeatureStore, topics: np.ndarray, k: int, *, pooling: str = "mean",
                             seed: int = 0, sample: int = 8192, n_init: int = 4) -> np.ndarray:
    """[n_topics, k, d_sae] float32 unit centroids of each prompt topic's responses (chosen and
    rejected alike); a topic with fewer than k responses that have an active latent gets that many,
    the rest of its rows zero (never a response's nearest).

    Per topic, k-means (``n_init`` seeded restarts, the best kept) on the unit pooled feature
    vectors of at most ``sample`` of its responses (a seeded uniform sample of its pairs, both
    sides); with fewer, all of them. On unit vectors the nearest centroid by distance is the
    nearest by cosine, so this is spherical k-means up to the centroids' length, which is then
    normalised. One pass over the store per topic; memory: one part, one topic's sparse sample and
    the centroids, flat in the pairs.
    """
    n_topics = int(topics.max()) + 1 if topics.size else 0
    rng = np.random.default_rng(seed)
    out = np.zeros((n_topics, k, store.d_sae), dtype=np.float32)
    for t in range(n_topics):
        rows = np.flatnonzero(topics == t)
        if rows.size > sample // 2:
            rows = np.sort(rng.choice(rows, sample // 2, replace=False))
        wanted = np.zeros(topics.size, dtype=bool)
        wanted[rows] = True
        parts, start = [], 0
        for block in store.blocks():
            stop = start + block.positions.numel()
            inside = np.flatnonzero(wanted[start:stop])
            if inside.size:  # only the sampled rows become a sparse matrix
                mine = torch.from_numpy(inside)
                parts += [_sparse_rows(block.chosen.select(mine), store.d_sae, pooling),
                          _sparse_rows(block.rejected.select(mine), store.d_sae, pooling)]
            start = stop
        if not parts:
            continue
        x = sparse.vstack(parts).tocsr()
        x = x[np.flatnonzero(x.getnnz(axis=1) > 0)]
        m = min(k, x.shape[0])
        if m < 1:
            continue
        centres = _normalised(torch.from_numpy(np.asarray(
            KMeans(n_clusters=m, n_init=n_init, random_state=seed).fit(x).cluster_centers_))).astype(np.float32)
        for j in range(1, m):  # fewer distinct responses than clusters: k-means repeats a centre
            if any(np.allclose(centres[j], centres[i], atol=1e-6) for i in range(j)):
                centres[j] = 0.0
        out[t, :m] = centres
    return out


def topic_memberships(features: PooledFeatures, centroids: np.ndarray, clusters: Sequence[tuple[int, int]], d_sae: int,
                      pooling: str) -> np.ndarray:
    """[rows, len(clusters)] float64 membership (1 or 0) of each response in each (topic, cluster)
    response cluster, read with that topic's centroids (``centroids`` [n_topics, k, d_sae]); each
    topic's memberships are computed once, however many of its clusters are asked for."""
    out = np.zeros((features.rows, len(clusters)))
    by_topic: dict[int, list[int]] = {}
    for column, (topic, _) in enumerate(clusters):
        by_topic.setdefault(topic, []).append(column)
    for topic, columns in by_topic.items():
        member = response_membership(features, centroids[topic], d_sae, pooling).double().numpy()
        out[:, columns] = member[:, [clusters[c][1] for c in columns]]
    return out


def response_membership(features: PooledFeatures, centroids: np.ndarray, d_sae: int, pooling: str) -> torch.Tensor:
    """[rows, k] float32 one-hot: the response cluster of each response (its nearest centroid by
    cosine, among ``centroids`` [k, d_sae] that are not zero); a response with no active latent
    belongs to none (a zero row)."""
    centres = np.asarray(centroids, dtype=np.float64)
    out = torch.zeros((features.rows, centres.shape[0]), dtype=torch.float32)
    real = np.abs(centres).sum(axis=1) > 0
    if not real.any() or features.rows == 0:
        return out
    x = _sparse_rows(features, d_sae, pooling)  # sparse: never a dense [rows, d_sae] matrix
    scores = np.where(real, np.asarray(x @ centres.T), -math.inf)
    rows = np.flatnonzero(x.getnnz(axis=1) > 0)
    out[torch.from_numpy(rows), torch.from_numpy(scores[rows].argmax(axis=1))] = 1.0
    return out


def centroid_latents(centroids: np.ndarray, *, mass: float = 0.5, most: int = 16) -> list[list[int]]:
    """Per centroid of one topic ([k, d_sae]; zero rows are absent clusters), the latents that set
    it apart: the fewest, largest first, whose squared contrast weights reach ``mass`` of their
    total (at most ``most``). The contrast is the centroid minus the mean of the topic's other
    centroids, clipped at 0, so a latent every response of the topic carries (its format, its
    vocabulary) names no cluster. They name a response cluster in cards and in the feedback file,
    and give its directions for a residual edit. A topic's only cluster is named by its own
    weights."""
    centroids = np.asarray(centroids, dtype=np.float64)
    real = np.flatnonzero(np.abs(centroids).sum(axis=1) > 0)
    out: list[list[int]] = [[] for _ in range(centroids.shape[0])]
    for j in real:
        others = real[real != j]
        weights = centroids[j] - (centroids[others].mean(axis=0) if others.size else 0.0)
        weights = np.clip(weights, 0, None) ** 2
        total = weights.sum()
        if total <= 0:
            continue
        order = np.argsort(-weights, kind="stable")
        count = int(np.searchsorted(np.cumsum(weights[order]), mass * total) + 1)
        out[j] = [int(v) for v in order[:min(count, most)]]
    return out


RESPONSE_CENTROIDS = "response_clusters.safetensors"  # beside audit.json


def save_centroids(path: str | os.PathLike[str], centroids: np.ndarray) -> Path:
    """Write response centroids [n_topics, k, d_sae] atomically (safetensors)."""
    return atomic.write_bytes(path, save({"centroids": torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32))}))


def load_centroids(path: str | os.PathLike[str], d_sae: int) -> np.ndarray:
    """Response centroids written by :func:`save_centroids`, checked against ``d_sae``."""
    try:
        centroids = load(Path(path).read_bytes())["centroids"].numpy()
    except (OSError, SafetensorError, KeyError) as err:
        raise ValueError(f"{path} holds no readable response centroids: {err}") from None
    if centroids.ndim != 3 or centroids.shape[2] != d_sae:
        raise ValueError(f"{path}: centroids of shape {tuple(centroids.shape)}, expected [topics, k, {d_sae}]")
    return centroids


def topic_labels(prompts: Sequence[str], topics: np.ndarray, *, terms: int = 4, sample: int = 20_000,
                 seed: int = 0) -> dict[int, str]:
    """A label per topic: the TF-IDF terms most above the average in its prompts."""
    rng = np.random.default_rng(seed)
    rows = np.arange(len(prompts)) if len(prompts) <= sample else rng.choice(len(prompts), sample, replace=False)
    vectorizer = TfidfVectorizer(stop_words="english", max_features=20_000, token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z]+\b")
    try:
        matrix = vectorizer.fit_transform([prompts[i] for i in rows])
    except ValueError:  # no word in any prompt
        return {int(t): f"topic {t}" for t in np.unique(topics)}
    vocabulary = np.array(vectorizer.get_feature_names_out())
    overall = np.asarray(matrix.mean(axis=0)).ravel()
    labels = {}
    for topic in np.unique(topics):
        members = np.flatnonzero(topics[rows] == topic)
        if members.size == 0:
            labels[int(topic)] = f"topic {topic}"
            continue
        lift = np.asarray(matrix[members].mean(axis=0)).ravel() - overall
        labels[int(topic)] = ", ".join(vocabulary[np.argsort(-lift)[:terms]])
    return labels


__all__ = ["RESPONSE_CENTROIDS", "centroid_latents", "cluster_columns", "coactivation_clusters", "difference_clusters", "load_centroids",
           "prompt_topics", "topic_memberships", "topic_response_centroids", "response_membership", "save_centroids", "topic_labels"]
