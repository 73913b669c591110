"""The concept audit of a preference dataset from its stored SAE features (method.md §6, step 2).

Passes over a :class:`~headwater.audit.features.FeatureStore`, one part in memory at a time:

1. per-latent paired statistics (Δ, d, z, 95% CI, p, BH q, side badge, split-half sign);
2. prompt topics (spherical k-means on the prompts' activations);
3. contested latents (preferred on some prompts, dispreferred on others) and the prompt word that
   splits them, tested on the other split half (:mod:`headwater.audit.contested`);
4. feature clusters of the significant latents (co-activation clusters, joined where their
   chosen − rejected differences correlate; :mod:`headwater.audit.clusters`);
5. per-cluster statistics, and per prompt topic × cluster;
6. response clusters within each prompt topic (spherical k-means on the pooled feature vectors of
   the topic's responses): per cluster, over the topic's pairs, the paired difference of
   membership (1 if the chosen response is in it, −1 if the rejected one is, 0 if both or neither).

The result names every concept (``f<latent>``, ``c<cluster>``, ``t<topic>/c<cluster>``,
``f<latent> | '<word>'``, ``t<topic>/r<cluster>``) and is
written as ``audit.json``; cards and the feedback file build on it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from headwater.audit.contested import Contest, contest_rows, contested_concepts
from headwater.audit.clusters import (
    centroid_latents,
    cluster_columns,
    coactivation_clusters,
    difference_clusters,
    joined_clusters,
    prompt_topics,
    response_membership,
    topic_labels,
    topic_response_centroids,
)
from headwater.audit.features import FeatureStore, PooledFeatures
from headwater.audit.statistics import ConceptStatistics, PairedMoments, concatenate, finish, split_half
from headwater.engine import atomic

POOLINGS = ("mean", "max")
CLUSTERINGS = ("coactivation", "differences", "joined")


@dataclass(frozen=True)
class AuditConfig:
    """How the audit is computed.

    Attributes:
        pooling: per-response pooling of the latents, ``"mean"`` or ``"max"`` over its tokens.
        alpha: the false-discovery rate for "significant" (BH q < alpha, halves agreeing).
        min_active: responses a concept must be active in to be tested.
        min_rate: the share of responses on a side for the side badge to count it.
        max_cluster_latents: significant latents (by |d|) that enter the feature clusters.
        clusters: ``"joined"`` (the default: co-activation clusters, then those whose
            differences correlate joined, so the pieces of one phrase make one concept),
            ``"coactivation"`` (latents active in the same responses, the paper's reading aid
            alone) or ``"differences"`` (latents whose chosen − rejected differences correlate
            over the pairs); see :mod:`headwater.audit.clusters`. bench/RESULTS.md compares them.
        min_similarity: similarity (Ochiai, and Pearson for ``"differences"`` and the joining)
            under which clusters are cut apart.
        n_topics: prompt topics.
        response_clusters: response clusters per prompt topic (k of its k-means; 0: none).
        seed: split halves, topics and response clusters.
    """

    pooling: str = "mean"
    alpha: float = 0.05
    min_active: int = 5
    min_rate: float = 0.05
    max_cluster_latents: int = 200
    clusters: str = "joined"
    min_similarity: float = 0.5
    n_topics: int = 8
    response_clusters: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.clusters not in CLUSTERINGS:
            raise ValueError(f"clusters must be one of {CLUSTERINGS}, got {self.clusters!r}")
        if self.response_clusters < 0:
            raise ValueError(f"response_clusters must be ≥ 0, got {self.response_clusters}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")


@dataclass
class AuditResult:
    """What the audit found. ``features``, ``clusters``, ``topic_clusters`` and ``responses`` hold
    statistics; ``cluster_latents[k]`` the latents of cluster k; ``topics`` [n_pairs] each pair's
    topic; ``response_centroids`` [n_topics, k, d_sae] float32 the unit centroids of each topic's
    response clusters and ``response_latents[t][j]`` the latents that carry centroid j of topic t
    (:func:`centroid_latents`)."""

    config: AuditConfig
    features: ConceptStatistics
    clusters: ConceptStatistics
    cluster_latents: list[list[int]]
    topics: np.ndarray
    topic_names: dict[int, str]
    topic_clusters: ConceptStatistics | None
    store_manifest: dict[str, Any] = field(default_factory=dict)
    conditional: ConceptStatistics | None = None
    contests: list[Contest] = field(default_factory=list)
    responses: ConceptStatistics | None = None
    response_centroids: np.ndarray | None = None
    response_latents: list[list[list[int]]] = field(default_factory=list)

    def significant_features(self) -> list[int]:
        return [int(i) for i in self.features.significant(self.config.alpha)]

    def concepts(self, top: int = 20) -> list[dict[str, Any]]:
        """The top significant concepts by |d|: clusters of several latents (with their latents) and
        latents in no such cluster."""
        out = []
        for i in self.clusters.significant(self.config.alpha):
            if len(self.cluster_latents[int(i)]) > 1:  # a singleton cluster is its latent, listed below
                out.append({**self.clusters.row(int(i)), "kind": "cluster", "latents": self.cluster_latents[int(i)]})
        in_clusters = {lat for c in self.cluster_latents if len(c) > 1 for lat in c}
        for i in self.significant_features():
            if i not in in_clusters:
                out.append({**self.features.row(i), "kind": "latent", "latents": [i]})
        out.sort(key=lambda row: -abs(row["d"]))
        return out[:top]

    def conditional_concepts(self, top: int = 20) -> list[dict[str, Any]]:
        """The top significant conditional concepts by |d| (a latent within the prompts that have a
        word; tested on the split half the word was not chosen on)."""
        if self.conditional is None:
            return []
        rows = contest_rows(self.conditional, self.contests)
        keep = self.conditional.significant(self.config.alpha)[:top]
        return [{**rows[int(i)], "kind": "conditional", "latents": [rows[int(i)]["latent"]]} for i in keep]

    def _per_topic(self, stats: ConceptStatistics | None, top: int, kind: str,
                   latents: Callable[[int, int], list[int]]) -> list[dict[str, Any]]:
        """The top significant rows of a per-topic family (``t<topic>/<c|r><k>``) by |d|, with
        their topic, its label and ``latents(topic, k)``."""
        if stats is None:
            return []
        out = []
        for i in stats.significant(self.config.alpha)[:top]:
            row = stats.row(int(i))
            topic, k = (int(part[1:]) for part in str(row["concept"]).split("/"))
            out.append({**row, "kind": kind, "topic": topic, "topic_label": self.topic_names.get(topic, ""),
                        **({"response_cluster": k} if kind == "response" else {}), "latents": latents(topic, k)})
        return out

    def topic_concepts(self, top: int = 20) -> list[dict[str, Any]]:
        """The top significant topic concepts by |d|: a feature cluster within one prompt
        topic (``t<topic>/c<cluster>``), its statistics over that topic's pairs only."""
        return self._per_topic(self.topic_clusters, top, "topic", lambda _topic, k: self.cluster_latents[k])

    def response_concepts(self, top: int = 20) -> list[dict[str, Any]]:
        """The top significant response concepts by |d|: a response cluster of one prompt topic
        (``t<topic>/r<k>``), its statistics over that topic's pairs; all topics one family for the
        q-values."""
        return self._per_topic(self.responses, top, "response", lambda topic, k: self.response_latents[topic][k])

    def to_json(self, top: int = 50) -> dict[str, Any]:
        significant = self.significant_features()
        topic_rows = []
        if self.topic_clusters is not None:
            topic_rows = [self.topic_clusters.row(int(i)) for i in self.topic_clusters.significant(self.config.alpha)]
        counts = np.bincount(self.topics, minlength=len(self.topic_names)) if self.topics.size else []
        return {
            "config": self.config.__dict__, "n_pairs": self.features.n,
            "n_latents_tested": int(np.isfinite(self.features.p).sum()), "n_latents_significant": len(significant),
            "concepts": self.concepts(top),
            "latents": [self.features.row(i) for i in significant[:top]],
            "clusters": [{**self.clusters.row(k), "latents": c} for k, c in enumerate(self.cluster_latents)],
            "topics": [{"topic": t, "label": name, "pairs": int(counts[t])} for t, name in self.topic_names.items()],
            "topic_clusters": topic_rows[:top],
            "topic_concepts": self.topic_concepts(top),
            # each encoded pair's topic, in feature-directory order (topic concepts act within it)
            "pair_topics": [int(t) for t in self.topics],
            "conditional_concepts": self.conditional_concepts(top),
            "response_concepts": self.response_concepts(top),
            "response_clusters": {"k": self.config.response_clusters, "latents": self.response_latents},
            "conditional": contest_rows(self.conditional, self.contests),
            "features": {k: self.store_manifest.get(k) for k in ("layer", "d_sae", "sae_fingerprint",
                                                                 "dataset_fingerprint", "n_pairs", "n_tokens")},
        }

    def save(self, path: str | os.PathLike[str], top: int = 50) -> Path:
        return atomic.write_json(path, self.to_json(top))


def _latent_statistics(store: FeatureStore, config: AuditConfig, halves: np.ndarray
                       ) -> tuple[ConceptStatistics, np.ndarray]:
    """Every latent's statistics, and the dataset position of each stored pair (store order)."""
    moments = PairedMoments(store.d_sae)
    positions, offset = [], 0
    for block in store.blocks():
        rows = block.positions.numel()
        moments.add(block.chosen.dense(store.d_sae, config.pooling), block.rejected.dense(store.d_sae, config.pooling),
                    halves[offset:offset + rows], block.positions)
        positions.append(block.positions.numpy())
        offset += rows
    stats = finish(moments, [f"f{i}" for i in range(store.d_sae)], min_active=config.min_active,
                   min_rate=config.min_rate)
    return stats, np.concatenate(positions)


def _grouped_statistics(store: FeatureStore, config: AuditConfig, halves: np.ndarray, c: int,
                        columns: Callable[[PooledFeatures], torch.Tensor], prefix: str, topics: np.ndarray,
                        n_topics: int) -> tuple[ConceptStatistics, ConceptStatistics | None]:
    """Statistics of c grouped concepts (``columns`` maps a side's pooled features to [rows, c]
    activations) over all pairs (``<prefix><k>``) and per prompt topic (``t<t>/<prefix><k>``)."""
    overall = PairedMoments(c)
    by_topic = {t: PairedMoments(c) for t in range(n_topics)} if n_topics > 1 else {}
    offset = 0
    for block in store.blocks():
        rows = block.positions.numel()
        chosen, rejected = columns(block.chosen), columns(block.rejected)
        half = halves[offset:offset + rows]
        overall.add(chosen, rejected, half, block.positions)
        topic = topics[offset:offset + rows]
        for t, moments in by_topic.items():
            mask = topic == t
            if mask.any():
                rows_t = torch.from_numpy(np.flatnonzero(mask))
                moments.add(chosen[rows_t], rejected[rows_t], half[mask], block.positions[rows_t])
        offset += rows
    options = {"min_active": config.min_active, "min_rate": config.min_rate}
    stats = finish(overall, [f"{prefix}{k}" for k in range(c)], **options)
    per_topic = [finish(m, [f"t{t}/{prefix}{k}" for k in range(c)], **options) for t, m in by_topic.items() if m.n >= 2]
    return stats, concatenate(per_topic) if per_topic else None


def _response_statistics(store: FeatureStore, config: AuditConfig, halves: np.ndarray, centroids: np.ndarray,
                         topics: np.ndarray) -> ConceptStatistics | None:
    """Statistics of each topic's response clusters (``t<t>/r<j>``) over that topic's pairs, one
    family; None when no topic has two pairs."""
    n_topics, k = centroids.shape[:2]
    moments = [PairedMoments(k) for _ in range(n_topics)]
    offset = 0
    for block in store.blocks():
        rows = block.positions.numel()
        topic = topics[offset:offset + rows]
        for t in np.unique(topic):
            mine = torch.from_numpy(np.flatnonzero(topic == t))
            chosen = response_membership(block.chosen.select(mine), centroids[t], store.d_sae, config.pooling)
            rejected = response_membership(block.rejected.select(mine), centroids[t], store.d_sae, config.pooling)
            moments[t].add(chosen, rejected, halves[offset:offset + rows][topic == t], block.positions[mine])
        offset += rows
    options = {"min_active": config.min_active, "min_rate": config.min_rate}
    parts = [finish(m, [f"t{t}/r{j}" for j in range(k)], **options) for t, m in enumerate(moments) if m.n >= 2]
    return concatenate(parts) if parts else None


def run_audit(store: FeatureStore, config: AuditConfig = AuditConfig(), *, prompts: Sequence[str] | None = None,
              progress: Callable[[str], None] | None = None) -> AuditResult:
    """Every statistic of the audit from a feature directory (see the module docstring).

    ``prompts`` (the dataset's prompt texts, in dataset order) label the topics; without them
    topics are numbered.
    """
    if len(store) < 2:
        raise ValueError(f"the audit needs at least two encoded pairs, the feature directory has {len(store)}")
    say = progress or (lambda _message: None)
    halves = split_half(store.pair_ids, config.seed)
    say("latent statistics")
    latents, positions = _latent_statistics(store, config, halves)
    say("prompt topics")
    topics = prompt_topics(store, config.n_topics, seed=config.seed)
    n_topics = int(topics.max()) + 1
    conditional, contests = None, []
    if prompts is not None:
        texts = [_prompt_text(p) for p in prompts]
        names = topic_labels([texts[int(p)] for p in positions], topics, seed=config.seed)
        say("contested concepts")
        conditional, contests = contested_concepts(store, texts, halves, latents.typical, np.isfinite(latents.p),
                                                   pooling=config.pooling, min_active=config.min_active,
                                                   min_rate=config.min_rate)
    else:
        names = {t: f"topic {t}" for t in range(n_topics)}
    say("feature clusters")
    significant = latents.significant(config.alpha)[:config.max_cluster_latents]
    if config.clusters in ("differences", "joined"):
        grouping = difference_clusters if config.clusters == "differences" else joined_clusters
        clusters = grouping(store, significant.tolist(), min_similarity=config.min_similarity, pooling=config.pooling)
    else:
        clusters = coactivation_clusters(store, significant.tolist(), min_similarity=config.min_similarity)
    say("cluster statistics")
    if clusters:
        cluster_stats, topic_stats = _grouped_statistics(
            store, config, halves, len(clusters),
            lambda side: cluster_columns(side, clusters, store.d_sae, config.pooling), "c", topics, n_topics)
    else:
        cluster_stats, topic_stats = _empty_statistics(latents.n), None
    responses, centroids, carriers = None, None, []
    if config.response_clusters > 0:
        say("response clusters")
        centroids = topic_response_centroids(store, topics, config.response_clusters, pooling=config.pooling,
                                             seed=config.seed)
        carriers = [centroid_latents(per_topic) for per_topic in centroids]
        responses = _response_statistics(store, config, halves, centroids, topics)
    return AuditResult(config, latents, cluster_stats, clusters, topics, names, topic_stats, store.manifest,
                       conditional, contests, responses, centroids, carriers)


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):  # chat messages
        return " ".join(str(m.get("content", "")) for m in prompt if isinstance(m, dict))
    return str(prompt)


def _empty_statistics(n: int) -> ConceptStatistics:
    empty = np.zeros(0)
    return ConceptStatistics([], n, empty, empty, empty, empty, empty, empty, empty, empty, empty, empty, [],
                             np.zeros((2, 0)), np.zeros(0, dtype=bool), np.zeros((0, 0), dtype=np.int64),
                             np.zeros((0, 0), dtype=np.int64))


def load_audit(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A saved ``audit.json`` as a dict."""
    return json.loads(Path(path).read_text())


__all__ = ["AuditConfig", "AuditResult", "POOLINGS", "load_audit", "run_audit"]
