"""Groupings the audit reports on: feature clusters from co-activation, prompt topics.

- Feature clusters: for the latents of interest, how often two of them are active in the same
  response (the Ochiai coefficient |A∩B| / √(|A|·|B|) over responses); average-linkage
  agglomerative clustering cuts the graph where similarity falls under ``min_similarity``. Or,
  with ``difference_clusters``, how alike their chosen − rejected differences are over the pairs
  (Pearson correlation), cut the same way: latents taught by the same pairs group together even
  when one of them also fires elsewhere on both sides (a word of a fixed phrase that is common on
  its own), which splits co-activation clusters of one phrase into several.
- Prompt topics: spherical k-means (mini-batch, streamed part by part) on the prompts' mean
  activation at ℓ, labelled by the TF-IDF terms that set a topic's prompts apart.

Both stream a :class:`~headwater.audit.features.FeatureStore`; memory stays flat in the pairs
(the topic of each pair, one int per pair, is the only per-pair array).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from sklearn.cluster import AgglomerativeClustering, MiniBatchKMeans
from sklearn.feature_extraction.text import TfidfVectorizer

from headwater.audit.features import FeatureStore, PooledFeatures


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


def difference_clusters(store: FeatureStore, latents: Sequence[int], *, min_similarity: float = 0.5,
                        pooling: str = "mean") -> list[list[int]]:
    """Clusters of ``latents`` whose chosen − rejected pooled differences correlate over the pairs
    (Pearson, from streamed float64 sums), largest first (singletons too). A latent whose
    difference never varies correlates with nothing and stays alone."""
    latents = list(dict.fromkeys(int(v) for v in latents))
    if len(latents) < 2:
        return [latents] if latents else []
    index = torch.tensor(latents)
    m = len(latents)
    n, total, cross = 0, torch.zeros(m, dtype=torch.float64), torch.zeros((m, m), dtype=torch.float64)
    for block in store.blocks():
        diff = (_columns(block.chosen, index, store.d_sae, pooling)
                - _columns(block.rejected, index, store.d_sae, pooling)).double()
        n += diff.shape[0]
        total += diff.sum(dim=0)
        cross += diff.T @ diff
    if n < 2:
        return [[v] for v in latents]
    mean = total / n
    cov = (cross - n * mean[:, None] * mean[None, :]) / (n - 1)
    sd = cov.diag().clamp_min(0).sqrt()
    scale = sd[:, None] * sd[None, :]
    similarity = torch.where(scale > 0, cov / torch.where(scale > 0, scale, 1.0), 0.0).clamp(-1, 1).numpy()
    return _cut(latents, similarity, min_similarity)


def cluster_columns(features: PooledFeatures, clusters: Sequence[Sequence[int]], d_sae: int, pooling: str
                    ) -> torch.Tensor:
    """[rows, n_clusters] float32: each cluster's activation, the sum of its latents' pooled values."""
    return features.concept_columns(clusters, d_sae, pooling).float()


def _normalised(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(x.double(), dim=1).numpy()


def prompt_topics(store: FeatureStore, n_topics: int, *, seed: int = 0, batch: int = 1024) -> np.ndarray:
    """[n_pairs] int topic of each pair in store order (spherical mini-batch k-means, 3 passes)."""
    n = len(store)
    n_topics = max(1, min(n_topics, n))
    kmeans = MiniBatchKMeans(n_clusters=n_topics, random_state=seed, batch_size=batch, n_init=3)
    for _ in range(3):
        pending = []
        for block in store.blocks():
            pending.append(_normalised(block.prompt))
            if sum(p.shape[0] for p in pending) >= max(n_topics, batch):
                kmeans.partial_fit(np.concatenate(pending))
                pending = []
        if pending and (hasattr(kmeans, "cluster_centers_") or sum(p.shape[0] for p in pending) >= n_topics):
            kmeans.partial_fit(np.concatenate(pending))
    return np.concatenate([kmeans.predict(_normalised(b.prompt)) for b in store.blocks()]).astype(np.int64)


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


__all__ = ["cluster_columns", "coactivation_clusters", "prompt_topics", "topic_labels"]
