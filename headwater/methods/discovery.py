"""Unsupervised discovery of behaviours and the pairs behind them (method.md §3).

Inputs: behaviour change vectors v_b = ā(p, r1; M0) − ā(p, r0; M0), one per (test prompt, M1
sample, M0 sample), and the datapoint vectors v_d of every preference pair. Nobody says which
behaviours exist: the clusters are found from the similarity matrix S[b, d] = cos(v_b, v_d).

The algorithm (deterministic; no random state):

1. **Drop near-zero behaviour vectors.** Where M1 answered like M0 the two activations cancel and
   v_b is (near) zero; a vector whose norm is below ``min_relative_norm`` times the 90th
   percentile of all norms is set aside (``Discovery.near_zero``) and joins no cluster.
2. **Sparse S.** Each row of S keeps only its ``top_k`` largest entries, found by the exact
   streaming top-k kernel :func:`headwater.kernels.cosine_topk` (the full [B, N] matrix never
   exists), clipped at 0: a behaviour vector is described by *which* pairs it points at, and how strongly.
3. **Cluster the behaviour vectors by the overlap of their top-k pair sets.** The affinity of
   two behaviour vectors is the cosine between their sparse S rows (1 when they point at the same
   pairs with the same weights, 0 when their top-k sets are disjoint). Agglomerative clustering
   with average linkage on the distance 1 − affinity, cut at ``distance_threshold``, groups the
   vectors; the number of clusters is not given. This is co-clustering in effect: a cluster is a
   set of test-prompt generations that all point at one set of pairs, i.e. one block of S.
   Behaviour vectors that merely differ by sampling noise point at scattered pairs, land in
   small clusters, and clusters under ``min_cluster_size`` members are discarded as noise.
4. **Rank the pairs of each cluster.** First by their mean cosine with the cluster's members:
   the mean of cosines equals the cosine with the mean of the members' unit vectors times that
   mean's norm, so one more blockwise pass with one query per cluster scores every pair exactly.
   That single query direction is not enough on its own: the pairs behind one behaviour come in
   several wordings, the members' mean points at the wordings M1 happened to produce, and pairs
   of *other* behaviours that share a generic direction with the cluster (their chosen answer is
   the kind of answer M1 gives more than M0) outrank the pairs whose wording differs. So the
   default ranking (``ranking="diffusion"``) spreads the relevance over the pairs' own geometry,
   manifold ranking (Zhou, Weston, Gretton, Bousquet & Schölkopf 2004): the ``seed_pairs``
   best pairs by mean cosine seed the cluster with their (non-negative) mean cosines y; over the
   symmetric ``graph_neighbors``-nearest-neighbour graph of the datapoint vectors (cosine
   weights, W = max(W, Wᵀ), G = D^-1/2 W D^-1/2) the relevance f = (1 − α)(I − αG)⁻¹ y is solved
   by conjugate gradients, α = ``diffusion`` (0.95: about 1/(1 − α) = 20 steps of spreading;
   nearer 1 the relevance drains into any dense, high-degree group of pairs, such as a tight
   family of another behaviour). Pairs that are near the seeds through chains of
   similar pairs (the other wordings of the same behaviour: they share the chosen or the
   rejected wording) gain; pairs that merely share a direction with the members' mean but not
   a neighbourhood with the seeds do not. Pairs the diffusion does not reach (f = 0) follow by
   mean cosine. The graph costs one more all-pairs top-k pass over the datapoint vectors
   (O(N²·d), through :func:`headwater.kernels.cosine_topk`); ``ranking="mean_cosine"`` keeps the
   plain mean-cosine order.
5. **Describe each cluster** (a card): its test prompts, representative generations (the members
   most typical of the cluster, M0 versus M1), the top pairs with scores, and the words that
   distinguish the top pairs' chosen from their rejected responses: the log-odds ratio with an
   informative Dirichlet prior (Monroe, Colaresi & Quinn 2008), as a z-score
   (:mod:`headwater.methods.cards`).

The behaviour change vectors and their generations come from
:func:`headwater.methods.behaviors.sample_behavior_vectors`.

Clusters are ordered by size, largest first.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from headwater.data import PreferencePair, Text
from headwater.engine import atomic
from headwater.kernels import cosine_similarity_blocks, cosine_topk
from headwater.methods.cards import distinguishing_words
from headwater.methods.judges import Judge


RANKINGS = ("diffusion", "mean_cosine")


@dataclass(frozen=True)
class DiscoveryConfig:
    """Settings of the clustering stage.

    Attributes:
        top_k: entries kept per row of S (pairs a behaviour vector is described by).
        distance_threshold: agglomerative cut on 1 − affinity (average linkage); lower makes
            more, tighter clusters.
        min_cluster_size: smaller clusters are noise and are discarded.
        min_relative_norm: a behaviour vector below this fraction of the 90th-percentile norm is
            near zero (M1 answered like M0) and joins no cluster.
        top_pairs: pairs listed per cluster.
        ranking: ``"diffusion"`` (mean cosine, then manifold ranking over the pairs'
            nearest-neighbour graph; step 4) or ``"mean_cosine"`` (mean cosine only).
        seed_pairs: best pairs by mean cosine that seed each cluster's diffusion.
        graph_neighbors: neighbours per pair in the datapoint graph.
        diffusion: α of the manifold ranking, in (0, 1); near 1 spreads the relevance further.
        n_examples: representative generations per cluster.
        n_words: distinguishing words per side.
    """

    top_k: int = 50
    distance_threshold: float = 0.9
    min_cluster_size: int = 3
    min_relative_norm: float = 0.05
    top_pairs: int = 50
    ranking: str = "diffusion"
    seed_pairs: int = 50
    graph_neighbors: int = 20
    diffusion: float = 0.95
    n_examples: int = 3
    n_words: int = 10

    def __post_init__(self) -> None:
        for name in ("top_k", "min_cluster_size", "top_pairs", "seed_pairs", "graph_neighbors"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 < self.distance_threshold <= 2.0:
            raise ValueError(f"distance_threshold must be in (0, 2], got {self.distance_threshold}")
        if not 0.0 <= self.min_relative_norm < 1.0:
            raise ValueError(f"min_relative_norm must be in [0, 1), got {self.min_relative_norm}")
        if self.ranking not in RANKINGS:
            raise ValueError(f"ranking must be one of {RANKINGS}, got {self.ranking!r}")
        if not 0.0 < self.diffusion < 1.0:
            raise ValueError(f"diffusion must be in (0, 1), got {self.diffusion}")


@dataclass
class Cluster:
    """One discovered behaviour.

    Attributes:
        cluster_id: 0 for the largest cluster, 1 for the next, ...
        members: indices of its behaviour vectors (into the input rows).
        prompts: distinct test prompts of its members, in first-seen order.
        examples: representative generations ``{"prompt", "m0", "m1"}`` (most typical first).
        top_pairs: ``(pair_id, score)``, best first. With ``ranking="diffusion"`` the score is
            the pair's diffusion relevance divided by the cluster's best pair's (1.0 for the best,
            0.0 for pairs the diffusion does not reach); with ``"mean_cosine"`` it is the mean
            cosine with the members.
        words_chosen: ``(word, z)`` over-represented in the top pairs' chosen responses.
        words_rejected: ``(word, z)`` over-represented in their rejected responses.
        coherence: mean affinity between members (1 = identical top-k profiles).
        judged: with a judge, ``{"judge", "m0", "m1"}``: the share of the members' M0 and M1
            responses the judge says exhibit its behaviour (which cluster is the judged behaviour).
    """

    cluster_id: int
    members: list[int]
    prompts: list[Text]
    examples: list[dict[str, Text]]
    top_pairs: list[tuple[str, float]]
    words_chosen: list[tuple[str, float]] = field(default_factory=list)
    words_rejected: list[tuple[str, float]] = field(default_factory=list)
    coherence: float = 0.0
    judged: dict[str, Any] | None = None

    @property
    def size(self) -> int:
        return len(self.members)


@dataclass
class Discovery:
    """The outcome of :func:`discover`.

    Attributes:
        clusters: kept clusters, largest first.
        labels: [B] int64, the cluster id of each behaviour vector; −1 for near-zero vectors and
            for members of discarded (too small) clusters.
        near_zero: indices of the behaviour vectors dropped as near zero.
        config: the settings used.
    """

    clusters: list[Cluster]
    labels: np.ndarray
    near_zero: list[int]
    config: DiscoveryConfig

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "labels": [int(x) for x in self.labels],
            "near_zero": list(self.near_zero),
            "clusters": [{**asdict(c), "size": c.size} for c in self.clusters],
        }

    def save(self, path: str | Path) -> Path:
        """Write the clusters (cards included) as JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(path, json.dumps(atomic.json_safe(self.to_dict()), indent=1, ensure_ascii=False))
        return path


def sparse_topk_similarity(behaviors: torch.Tensor, datapoints: Any, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest entries of each row of S = cos(behaviors, datapoints), streamed.

    Args:
        behaviors: [B, d] float behaviour vectors (non-zero rows).
        datapoints: [N, d] datapoint vectors: a tensor, a numpy array or memmap, or an iterable of
            ``(block, global_offset)`` as :func:`headwater.kernels.cosine_topk` takes.
        k: entries per row; fewer when N < k.

    Returns:
        ``(values [B, k'] float32, indices [B, k'] int64)``, each row sorted descending, equal
        values by lower index first (:func:`headwater.kernels.cosine_topk`, exact).
    """
    values, indices = cosine_topk(behaviors.to(torch.float32), datapoints, k)
    found = int((indices[0] >= 0).sum()) if indices.shape[0] else 0  # k' = min(k, N)
    return values[:, :found].cpu(), indices[:, :found].cpu()


def profile_affinity(values: torch.Tensor, indices: torch.Tensor, n_datapoints: int) -> np.ndarray:
    """[B, B] float64 cosine between the rows of the sparse, non-negative top-k S."""
    from scipy.sparse import csr_matrix

    b, k = values.shape
    data = values.clamp_min(0).double().numpy().ravel()
    rows = np.repeat(np.arange(b), k)
    sparse = csr_matrix((data, (rows, indices.numpy().ravel())), shape=(b, n_datapoints))
    norms = np.sqrt(np.asarray(sparse.multiply(sparse).sum(axis=1)).ravel())
    inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    gram = np.asarray((sparse @ sparse.T).todense()) * inv[:, None] * inv[None, :]
    return np.clip(gram, 0.0, 1.0)


def cluster_behavior_vectors(
    behaviors: torch.Tensor, datapoints: Any, n_datapoints: int, config: DiscoveryConfig = DiscoveryConfig()
) -> tuple[np.ndarray, list[int], np.ndarray]:
    """Steps 1–3 of the module docstring.

    Args:
        behaviors: [B, d] float behaviour change vectors.
        datapoints: [N, d] datapoint vectors (see :func:`sparse_topk_similarity`).
        n_datapoints: N.

    Returns:
        ``(labels [B] int64, near_zero indices, affinity [B', B'] float64 over the kept rows)``;
        labels are 0, 1, ... by decreasing cluster size (ties: first member first), −1 for
        dropped rows.
    """
    from sklearn.cluster import AgglomerativeClustering

    if behaviors.dim() != 2:
        raise ValueError(f"behaviour vectors must be [B, d], got shape {tuple(behaviors.shape)}")
    if not torch.isfinite(behaviors).all():
        bad = torch.nonzero(~torch.isfinite(behaviors).all(dim=1)).flatten().tolist()
        raise ValueError(f"behaviour vectors have non-finite rows {bad[:10]}")
    norms = behaviors.double().norm(dim=1)
    scale = float(torch.quantile(norms, 0.9)) if len(norms) else 0.0
    kept_mask = norms > config.min_relative_norm * scale if scale > 0 else torch.zeros_like(norms, dtype=torch.bool)
    kept = torch.nonzero(kept_mask).flatten().tolist()
    near_zero = torch.nonzero(~kept_mask).flatten().tolist()
    labels = np.full(behaviors.shape[0], -1, dtype=np.int64)
    if len(kept) < max(2, config.min_cluster_size):
        return labels, near_zero, np.zeros((len(kept), len(kept)))
    values, indices = sparse_topk_similarity(behaviors[kept], datapoints, config.top_k)
    affinity = profile_affinity(values, indices, n_datapoints)
    raw = AgglomerativeClustering(
        n_clusters=None, metric="precomputed", linkage="average", distance_threshold=config.distance_threshold
    ).fit_predict(1.0 - affinity)
    groups: dict[int, list[int]] = {}
    for row, g in enumerate(raw):
        groups.setdefault(int(g), []).append(row)
    ordered = sorted((m for m in groups.values() if len(m) >= config.min_cluster_size), key=lambda m: (-len(m), m[0]))
    for cid, rows in enumerate(ordered):
        labels[[kept[r] for r in rows]] = cid
    return labels, near_zero, affinity


def cluster_pair_scores(behaviors: torch.Tensor, labels: np.ndarray, datapoints: Any, n_datapoints: int) -> torch.Tensor:
    """[C, N] float32: mean cosine of every pair with each cluster's members (step 4).

    mean_i cos(b_i, d) = (mean_i b̂_i) · d̂, so each cluster is one query (its mean unit vector) and
    the cosine with it is scaled back by the query's norm.
    """
    n_clusters = int(labels.max()) + 1 if len(labels) else 0
    unit = torch.nn.functional.normalize(behaviors.to(torch.float32), dim=1)
    centroids = torch.stack([unit[torch.from_numpy(labels == c)].mean(0) for c in range(n_clusters)])
    scale = centroids.norm(dim=1, keepdim=True)
    scores = torch.zeros(n_clusters, n_datapoints, dtype=torch.float32)
    for block, offset in cosine_similarity_blocks(centroids, datapoints):
        scores[:, offset : offset + block.shape[1]] = block.cpu() * scale
    return scores


def _query_blocks(datapoints: Any, rows: int = 1024) -> Any:
    """Yield ``(block [n, d], global offset)`` with n <= ``rows`` over any datapoint source."""
    if isinstance(datapoints, (torch.Tensor, np.ndarray)):
        datapoints = [(datapoints, 0)]
    for block, offset in datapoints:
        for start in range(0, block.shape[0], rows):
            yield block[start : start + rows], int(offset) + start


def pair_graph(datapoints: Any, n_datapoints: int, k: int) -> Any:
    """The normalised nearest-neighbour graph of the datapoint vectors (step 4).

    Each pair is joined to its ``k`` most similar other pairs with weight max(cos, 0); the graph
    is made symmetric (W = max(W, Wᵀ)) and normalised, G = D^-1/2 W D^-1/2 (pairs without an
    edge keep a zero row).

    Args:
        datapoints: [N, d] datapoint vectors (see :func:`sparse_topk_similarity`).
        n_datapoints: N.
        k: neighbours per pair.

    Returns:
        G as a scipy CSR matrix [N, N] float64.
    """
    from scipy.sparse import csr_matrix, diags

    rows, cols, vals = [], [], []
    for block, offset in _query_blocks(datapoints):
        # k + 1: the pair itself is (one of) its own nearest neighbours.
        scores, index = cosine_topk(block, datapoints, k + 1)
        own = torch.arange(offset, offset + scores.shape[0])[:, None]
        valid = (index != own) & (index >= 0)
        valid &= valid.cumsum(dim=1) <= k
        r, c = torch.nonzero(valid, as_tuple=True)
        rows.append((own[:, 0][r]).numpy())
        cols.append(index[r, c].numpy())
        vals.append(scores[r, c].clamp_min(0).double().numpy())
    w = csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_datapoints, n_datapoints))
    w = w.maximum(w.T)
    degree = np.asarray(w.sum(axis=1)).ravel()
    inv = np.divide(1.0, np.sqrt(degree), out=np.zeros_like(degree), where=degree > 0)
    return (diags(inv) @ w @ diags(inv)).tocsr()


def manifold_rank(graph: Any, seeds: np.ndarray, alpha: float) -> np.ndarray:
    """Relevance f = (1 − α)(I − α·graph)⁻¹ y for each column y of ``seeds`` (Zhou et al. 2004).

    Args:
        graph: [N, N] symmetric normalised graph from :func:`pair_graph`.
        seeds: [N, C] non-negative float64 seed relevance, one column per cluster.
        alpha: in (0, 1).

    Returns:
        [N, C] float64 relevance. I − α·graph is symmetric positive definite (the graph's
        eigenvalues lie in [−1, 1]), so conjugate gradients solve it; pairs not connected to any
        seed get exactly 0.
    """
    from scipy.sparse import identity
    from scipy.sparse.linalg import cg

    system = identity(graph.shape[0], format="csr") - alpha * graph
    out = np.zeros_like(seeds, dtype=np.float64)
    for c in range(seeds.shape[1]):
        if not seeds[:, c].any():
            continue
        out[:, c], info = cg(system, seeds[:, c], rtol=1e-10, atol=0.0, maxiter=10 * graph.shape[0])
        if info != 0:
            raise RuntimeError(f"manifold ranking did not converge for column {c} (conjugate gradients: {info})")
    return (1.0 - alpha) * out


def rank_cluster_pairs(
    behaviors: torch.Tensor, labels: np.ndarray, datapoints: Any, n_datapoints: int,
    config: DiscoveryConfig = DiscoveryConfig(),
) -> tuple[np.ndarray, np.ndarray]:
    """Step 4: each cluster's best ``config.top_pairs`` pairs, with every pair's score.

    Returns:
        ``(order [C, min(top_pairs, N)] int64, scores [C, N] float64)``: ``order[c]`` lists pair
        indices best first (ties keep dataset order); ``scores[c, j]`` is pair j's score for
        cluster c (see :class:`Cluster` top_pairs).
    """
    mean = cluster_pair_scores(behaviors, labels, datapoints, n_datapoints).double().numpy()
    index = np.arange(n_datapoints)
    listed = min(config.top_pairs, n_datapoints)
    if config.ranking == "mean_cosine":
        return np.stack([np.lexsort((index, -row))[:listed] for row in mean]), mean
    keep = min(config.seed_pairs, n_datapoints)
    seeds = np.zeros((n_datapoints, mean.shape[0]))
    for c, row in enumerate(mean):
        best = np.lexsort((index, -row))[:keep]
        seeds[best, c] = np.clip(row[best], 0.0, None)
    relevance = manifold_rank(pair_graph(datapoints, n_datapoints, config.graph_neighbors), seeds, config.diffusion).T
    top = relevance.max(axis=1, keepdims=True)
    relevance = np.divide(relevance, top, out=np.zeros_like(relevance), where=top > 0)
    # Pairs the diffusion does not reach tie at 0 and follow by mean cosine.
    order = np.stack([np.lexsort((index, -m, -r))[:listed] for r, m in zip(relevance, mean)])
    return order, relevance


def discover(
    behaviors: torch.Tensor,
    pair_ids: Sequence[str],
    datapoints: Any,
    *,
    prompts: Sequence[Text] | None = None,
    m0_responses: Sequence[Text] | None = None,
    m1_responses: Sequence[Text] | None = None,
    pairs: Mapping[str, PreferencePair] | None = None,
    config: DiscoveryConfig = DiscoveryConfig(),
    judge: Judge | None = None,
) -> Discovery:
    """Cluster behaviour change vectors into discovered behaviours, each with its responsible pairs.

    Args:
        behaviors: [B, d] float behaviour change vectors v_b.
        pair_ids: the N pair ids, aligned with the rows of ``datapoints``.
        datapoints: [N, d] datapoint vectors v_d (tensor, numpy array/memmap, or a re-iterable
            collection of ``(block, global_offset)``: it is read several times).
        prompts, m0_responses, m1_responses: the B generations behind ``behaviors`` (for the
            cards); optional.
        pairs: pair id → pair, for the distinguishing words; optional.
        config: clustering settings.
        judge: labels every member's M0 and M1 response (needs ``prompts`` and both responses);
            each cluster then says how often its generations exhibit the judged behaviour.

    Returns:
        A :class:`Discovery`.
    """
    b = behaviors.shape[0] if behaviors.dim() == 2 else -1
    for name, seq in (("prompts", prompts), ("m0_responses", m0_responses), ("m1_responses", m1_responses)):
        if seq is not None and len(seq) != b:
            raise ValueError(f"{name} has {len(seq)} entries but there are {b} behaviour vectors")
    n = len(pair_ids)
    if not isinstance(datapoints, (torch.Tensor, np.ndarray)) and iter(datapoints) is datapoints:
        # S is read several times (top-k, cluster scores, pair graph): a one-shot iterator would be empty the second time.
        raise TypeError("datapoints must be re-iterable (a tensor, an array or a list of (block, offset)), not an iterator")
    if hasattr(datapoints, "shape") and datapoints.shape[0] != n:
        raise ValueError(f"{n} pair ids but datapoint vectors of shape {tuple(datapoints.shape)}")
    if judge is not None and (prompts is None or m0_responses is None or m1_responses is None):
        raise ValueError("a judge needs the generations: pass prompts, m0_responses and m1_responses")
    labels, near_zero, affinity = cluster_behavior_vectors(behaviors, datapoints, n, config)
    if labels.max(initial=-1) < 0:
        return Discovery([], labels, near_zero, config)
    ranked, scores = rank_cluster_pairs(behaviors, labels, datapoints, n, config)
    exhibits = {}
    if judge is not None:
        members = [i for i in range(len(labels)) if labels[i] >= 0]
        for side, responses in (("m0", m0_responses), ("m1", m1_responses)):
            flags = judge.score_batch([prompts[i] for i in members], [responses[i] for i in members])
            exhibits[side] = {i: f >= judge.threshold for i, f in zip(members, flags) if f == f}  # NaN: unscored
    kept = [i for i in range(len(labels)) if i not in set(near_zero)]
    row_of = {i: r for r, i in enumerate(kept)}
    clusters = []
    for cid in range(scores.shape[0]):
        members = np.nonzero(labels == cid)[0].tolist()
        rows = [row_of[i] for i in members]
        sub = affinity[np.ix_(rows, rows)]
        typical = [members[j] for j in np.argsort(-sub.mean(axis=1), kind="stable")]
        top = [(pair_ids[j], round(float(scores[cid, j]), 6)) for j in ranked[cid]]
        cluster = Cluster(
            cluster_id=cid,
            members=members,
            prompts=_distinct([prompts[i] for i in members]) if prompts is not None else [],
            examples=[
                {"prompt": prompts[i] if prompts is not None else "",
                 "m0": m0_responses[i] if m0_responses is not None else "",
                 "m1": m1_responses[i] if m1_responses is not None else ""}
                for i in typical[: config.n_examples]
            ],
            top_pairs=top,
            coherence=float(sub.mean()),
        )
        if judge is not None:
            scored = {side: [exhibits[side][i] for i in members if i in exhibits[side]] for side in ("m0", "m1")}
            cluster.judged = {"judge": judge.name, **{side: (sum(v) / len(v) if v else None) for side, v in scored.items()},
                              "unscored": sum(len(members) - len(v) for v in scored.values())}
        if pairs is not None:
            found = [pairs[p] for p, _ in top if p in pairs]
            cluster.words_chosen, cluster.words_rejected = distinguishing_words(
                [p.chosen for p in found], [p.rejected for p in found], n=config.n_words
            )
        clusters.append(cluster)
    return Discovery(clusters, labels, near_zero, config)


def _distinct(prompts: Sequence[Text]) -> list[Text]:
    """Distinct prompts in first-seen order (message lists compare by their JSON)."""
    seen: dict[str, Text] = {}
    for p in prompts:
        seen.setdefault(p if isinstance(p, str) else json.dumps(p, sort_keys=True), p)
    return list(seen.values())


__all__ = ["RANKINGS", "Cluster", "Discovery", "DiscoveryConfig", "cluster_behavior_vectors", "discover",
           "rank_cluster_pairs", "sparse_topk_similarity"]
