"""Interventions from the feedback file (method.md §6, step 4).

A conditional concept (``f<latent> | '<word>'``) acts only on the pairs whose prompt has its word,
a topic concept (``t<topic>/c<cluster>``, ``t<topic>/r<cluster>``) only on the pairs of its prompt
topic. A response concept (``t<topic>/r<cluster>``) is read as membership of its response cluster
(1 or 0 per response, typical value 1), from the audit's saved centroids; its
directions for a residual edit are the decoder rows of the latents that set its centroid apart
from its topic's other clusters.

*Data*: the pairs that carry a concept (its pooled activation is higher on the chosen side by at
least ``margin`` × its typical active value, the mean of its non-zero pooled values; by default
one typical value) are filtered, switched or reweighted through the one
intervention path (:func:`headwater.methods.interventions.intervene`). For a concept marked
``suppress`` the carriers are the pairs whose chosen side has more of it; for ``amplify`` the
pairs whose rejected side has more (they teach against it).

*Feature*: the decoder directions of a concept's latents, for training with the concept projected
out of (suppress) or added to (amplify) the residual stream at ℓ, and per-pair margin offsets
γ·(a(chosen) − a(rejected)) for the reward-shaping variant (see :mod:`headwater.training.dpo`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from headwater.audit.cards import Decision
from headwater.audit.clusters import topic_memberships
from headwater.audit.features import FeatureStore
from headwater.audit.sae import SparseAutoencoder
from headwater.data import PreferenceDataset
from headwater.methods.attribution import Ranking
from headwater.methods.cards import words
from headwater.methods.interventions import Mode, intervene

ACTING = ("suppress", "amplify")
_CONDITION = re.compile(r"\|\s*'(.+)'\s*$")
_TOPIC = re.compile(r"t(\d+)/[cr]\d+")
_RESPONSE = re.compile(r"t(\d+)/r(\d+)")


def condition_word(concept: str) -> str | None:
    """The prompt word of a conditional concept's name (``f12 | 'expert'`` → ``expert``), else None."""
    found = _CONDITION.search(concept)
    return found.group(1) if found else None


def concept_topic(concept: str) -> int | None:
    """The prompt topic of a topic concept's name (``t3/c11``, ``t3/r5`` → 3), else None."""
    found = _TOPIC.fullmatch(concept.strip())
    return int(found.group(1)) if found else None


def response_cluster(concept: str) -> tuple[int, int] | None:
    """(topic, cluster) of a response concept's name (``t3/r1`` → (3, 1)), else None."""
    found = _RESPONSE.fullmatch(concept.strip())
    return (int(found.group(1)), int(found.group(2))) if found else None


def _in_scope(decision: Decision, ids: Sequence[str], prompts: dict[str, Any] | None,
              topics: dict[str, int] | None = None) -> np.ndarray:
    """[n] bool: the pairs a decision acts on (all; those whose prompt has its word, for a
    conditional concept; those of its prompt topic, for a topic concept)."""
    topic = concept_topic(decision.concept)
    if topic is not None:
        if topics is None:
            raise ValueError(f"{decision.concept} acts within prompt topic {topic}: the pairs' topics are needed "
                             "(audit.json's pair_topics; audits made before topic concepts lack them: run "
                             "`headwater audit run` again)")
        return np.array([topics.get(pid) == topic for pid in ids], dtype=bool)
    word = condition_word(decision.concept)
    if word is None:
        return np.ones(len(ids), dtype=bool)
    if prompts is None:
        raise ValueError(f"{decision.concept} is conditional on a prompt word: the prompts are needed")
    return np.array([word in words(prompts[pid]) for pid in ids], dtype=bool)


def concept_differences(store: FeatureStore, concepts: Sequence[Sequence[int]], *, pooling: str = "mean"
                        ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(pair ids, [n, C] chosen − rejected pooled activation, [C] typical active value) per concept
    (the sum over its latents); the typical value is the mean of its non-zero pooled values."""
    ids, chosen, rejected = store.concept_sides(concepts, pooling)
    both = np.concatenate([chosen, rejected])
    active = (both > 0).sum(axis=0)
    typical = np.where(active > 0, np.clip(both, 0, None).sum(axis=0) / np.maximum(active, 1), 0.0)
    return ids, chosen - rejected, typical


def membership_sides(store: FeatureStore, clusters: Sequence[tuple[int, int]], centroids: np.ndarray, *,
                     pooling: str = "mean") -> tuple[list[str], np.ndarray, np.ndarray]:
    """(pair ids, chosen [n, C], rejected [n, C]) membership (1 or 0) of each pair's responses in
    the given (topic, cluster) response clusters, every pair read with that topic's centroids
    (``centroids`` [n_topics, k, d_sae]); a concept acts only within its topic (:func:`_in_scope`)."""
    chosen, rejected = [], []
    for block in store.blocks():
        chosen.append(topic_memberships(block.chosen, centroids, clusters, store.d_sae, pooling))
        rejected.append(topic_memberships(block.rejected, centroids, clusters, store.d_sae, pooling))
    empty = np.zeros((0, len(clusters)))
    return (store.pair_ids, np.concatenate(chosen) if chosen else empty,
            np.concatenate(rejected) if rejected else empty)


def membership_differences(store: FeatureStore, clusters: Sequence[tuple[int, int]], centroids: np.ndarray, *,
                           pooling: str = "mean") -> tuple[list[str], np.ndarray]:
    """(pair ids, [n, len(clusters)] chosen − rejected membership, each −1, 0 or 1); see
    :func:`membership_sides`."""
    ids, chosen, rejected = membership_sides(store, clusters, centroids, pooling=pooling)
    return ids, chosen - rejected


def decision_differences(decisions: Sequence[Decision], store: FeatureStore, *, pooling: str = "mean",
                         centroids: np.ndarray | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """:func:`concept_differences` of the decisions' concepts, with a response concept's column
    its membership difference (typical value 1); ``centroids`` are needed for those."""
    ids, diffs, typical = concept_differences(store, [d.latents for d in decisions], pooling=pooling)
    responses = [(k, response_cluster(d.concept)) for k, d in enumerate(decisions)]
    responses = [(k, r) for k, r in responses if r is not None]
    if responses:
        if centroids is None:
            raise ValueError(f"{decisions[responses[0][0]].concept} is a response concept: the audit's response "
                             "centroids are needed (audits made before response concepts lack them: run "
                             "`headwater audit run` again)")
        for k, (topic, cluster) in responses:
            if topic >= centroids.shape[0] or cluster >= centroids.shape[1] or not centroids[topic, cluster].any():
                raise ValueError(f"the feedback names {decisions[k].concept}; the audit has no such response cluster")
        _, members = membership_differences(store, [r for _, r in responses], centroids, pooling=pooling)
        for column, (k, _) in enumerate(responses):
            diffs[:, k], typical[k] = members[:, column], 1.0
    return ids, diffs, typical


@dataclass(frozen=True)
class Carriers:
    """The pairs an intervention changes, and why."""

    pair_ids: list[str]
    per_concept: dict[str, int]


def carriers(decisions: Sequence[Decision], store: FeatureStore, *, margin: float = 1.0,
             pooling: str = "mean", prompts: dict[str, Any] | None = None,
             topics: dict[str, int] | None = None, centroids: np.ndarray | None = None) -> Carriers:
    """Pairs that carry a suppressed concept on the chosen side, or an amplified one on the
    rejected side (difference beyond ``margin`` × the concept's typical active value; for a
    response concept, whatever the margin, the pairs whose chosen response alone is in the cluster,
    or for amplify the rejected one);
    for a conditional concept, among the pairs whose prompt (``prompts[pair_id]``) has its word;
    for a topic concept, among the pairs of its topic (``topics[pair_id]``)."""
    acting = [d for d in decisions if d.decision in ACTING]
    ids, diffs, typical = decision_differences(acting, store, pooling=pooling, centroids=centroids)
    chosen: set[int] = set()
    counts = {}
    for k, d in enumerate(acting):
        signed = diffs[:, k] if d.decision == "suppress" else -diffs[:, k]
        scope = _in_scope(d, ids, prompts, topics)
        # a response concept's difference is 1 exactly when the chosen response alone is in the cluster
        threshold = 0.0 if response_cluster(d.concept) is not None else margin * typical[k]
        hit = np.flatnonzero(scope & (signed > threshold)) if typical[k] > 0 else np.zeros(0, dtype=int)
        counts[d.concept] = int(hit.size)
        chosen.update(hit.tolist())
    return Carriers([ids[i] for i in sorted(chosen)], counts)


def data_intervention(dataset: PreferenceDataset, decisions: Sequence[Decision], store: FeatureStore, *,
                      mode: Mode = "filter", weight: float = 0.0, margin: float = 1.0, pooling: str = "mean",
                      topics: dict[str, int] | None = None, centroids: np.ndarray | None = None
                      ) -> tuple[PreferenceDataset, dict[str, Any]]:
    """Filter, switch or reweight the carriers of the acted-on concepts (see :func:`carriers`).

    Returns the changed dataset and the intervention manifest with the decisions and per-concept
    carrier counts added. Pairs of the dataset that the feature directory does not hold (skipped
    when encoding) are never changed.
    """
    prompts = {p.pair_id: p.prompt for p in dataset}
    found = carriers(decisions, store, margin=margin, pooling=pooling, prompts=prompts, topics=topics,
                     centroids=centroids)
    carrying = set(found.pair_ids)
    in_data = [p.pair_id for p in dataset]
    missing = carrying - set(in_data)
    if missing:
        raise ValueError(f"{len(missing)} carrier pairs are not in the dataset (features of other data?), "
                         f"e.g. {sorted(missing)[:3]}")
    scores = np.array([1.0 if pid in carrying else 0.0 for pid in in_data], dtype=np.float32)
    ranking = Ranking.from_scores(in_data, scores, method="concept-carriers")
    result, manifest = intervene(dataset, ranking, mode=mode, top=len(carrying), weight=weight)
    manifest.update(
        decisions=[{"concept": d.concept, "decision": d.decision, "latents": list(d.latents)} for d in decisions],
        carriers_per_concept=found.per_concept, margin=margin, pooling=pooling,
    )
    return result, manifest


def concept_directions(sae: SparseAutoencoder, latents: Sequence[int]) -> torch.Tensor:
    """[m, d_in] float32 unit decoder directions of a concept's latents."""
    rows = sae.W_dec.detach()[list(latents)].float()
    return torch.nn.functional.normalize(rows, dim=1)


def latent_deltas(store: FeatureStore, latents: Sequence[int], *, pooling: str = "mean") -> np.ndarray:
    """[m] float64 Δ of each latent: the mean over the pairs of its chosen − rejected pooled value
    (streamed part by part)."""
    index = torch.tensor([int(v) for v in latents], dtype=torch.long)
    total, n = torch.zeros(len(index), dtype=torch.float64), 0
    for block in store.blocks():
        chosen = block.chosen.dense(store.d_sae, pooling)[:, index]
        rejected = block.rejected.dense(store.d_sae, pooling)[:, index]
        total += (chosen - rejected).double().sum(dim=0)
        n += block.positions.numel()
    return (total / max(n, 1)).numpy()


def principal_directions(sae: SparseAutoencoder, latents: Sequence[int], weights: np.ndarray, *,
                         energy: float = 0.9) -> torch.Tensor:
    """[r, d_in] float32 orthonormal directions that hold most of a concept: the top right-singular
    vectors of its unit decoder rows, each scaled by its latent's weight (``weights`` [m] ≥ 0, the
    audit uses |Δ|, how far the data moves the latent), as many as hold ``energy`` of the scaled
    rows' squared mass.

    Why: a concept of 25-40 latents projected out row by row takes that many directions out of the
    residual stream, and latents the data barely moves (a "!" that fires everywhere) count as much
    as the ones that carry the concept. The weighted principal directions keep what the data
    teaches in fewer dimensions.
    """
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    if not latents:
        raise ValueError("a concept with no latents has no directions")
    w = torch.as_tensor(np.asarray(weights, dtype=np.float64))
    if w.shape != (len(latents),) or not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"weights must be {len(latents)} finite values ≥ 0")
    if not (w > 0).any():
        raise ValueError("every weight is zero: the data does not move this concept's latents")
    rows = concept_directions(sae, latents).double() * w[:, None]
    _, singular, vh = torch.linalg.svd(rows, full_matrices=False)
    mass = singular ** 2 / (singular ** 2).sum()
    r = int((torch.cumsum(mass, 0) < energy - 1e-12).sum()) + 1
    return vh[:min(r, vh.shape[0])].float()


def margin_offsets(decisions: Sequence[Decision], store: FeatureStore, dataset: PreferenceDataset, *,
                   strength: float = 1.0, pooling: str = "mean", topics: dict[str, int] | None = None,
                   centroids: np.ndarray | None = None) -> list[float]:
    """Per pair of ``dataset``: Σ over acted-on concepts of ±strength·(a(chosen) − a(rejected)) /
    typical value; + for suppress (the concept's share of the margin is granted, so DPO need not
    learn it), − for amplify. Pairs without features get 0."""
    acting = [d for d in decisions if d.decision in ACTING]
    ids, diffs, typical = decision_differences(acting, store, pooling=pooling, centroids=centroids)
    prompts = {p.pair_id: p.prompt for p in dataset}
    total = np.zeros(len(ids))
    for k, d in enumerate(acting):
        if typical[k] > 0:
            scope = _in_scope(d, ids, prompts, topics)
            total += scope * (1.0 if d.decision == "suppress" else -1.0) * strength * diffs[:, k] / typical[k]
    by_id = dict(zip(ids, total))
    return [float(by_id.get(p.pair_id, 0.0)) for p in dataset]


__all__ = ["ACTING", "Carriers", "carriers", "concept_topic", "condition_word", "concept_differences", "concept_directions", "latent_deltas", "principal_directions",
           "data_intervention", "decision_differences", "margin_offsets", "membership_differences", "membership_sides", "response_cluster"]
