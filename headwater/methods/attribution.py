"""Rank preference pairs by how well their datapoint vector aligns with a behaviour.

score(d) = cos(v, v_d) for one behaviour or probing vector v, or max over a bank of vectors
(method.md §2). Pairs are ranked highest score first; ties keep dataset order. The top N are
the pairs attributed to the behaviour.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from headwater.kernels import cosine_similarity_blocks


def cosine_scores(datapoints: Any, behaviors: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """Score of each datapoint: its best cosine over the behaviour vectors.

    Args:
        datapoints: [N, d] datapoint vectors (any float dtype): a tensor, a numpy array or memmap,
            or an iterable of ``(block [n_b, d], global_offset)`` such as
            :meth:`headwater.engine.store.VectorStore.blocks` (streamed, never held whole).
        behaviors: [d] one vector, or [S, d] a bank.
        n: N, required for an iterable of blocks.

    Returns:
        [N] float32 scores in [-1, 1]; a zero vector scores 0. The [S, N] similarity matrix is
        computed one tile of datapoints at a time and reduced to its column maximum right away.
    """
    if behaviors.dim() == 1:
        behaviors = behaviors[None]
    shape = getattr(datapoints, "shape", None)
    if shape is not None:
        if len(shape) != 2 or behaviors.dim() != 2 or shape[1] != behaviors.shape[1]:
            raise ValueError(
                f"datapoints must be [N, d] and behaviors [d] or [S, d] with the same d, got "
                f"{tuple(shape)} and {tuple(behaviors.shape)}"
            )
        n = shape[0]
    elif n is None:
        raise ValueError("cosine_scores needs n (the number of datapoints) for an iterable of blocks")
    scores = torch.full((n,), float("nan"), dtype=torch.float32)
    for block, offset in cosine_similarity_blocks(behaviors.to(torch.float32), datapoints):  # [S, b]
        scores[offset : offset + block.shape[1]] = block.amax(dim=0).cpu()
    if torch.isnan(scores).any():
        raise ValueError(f"the datapoint blocks cover {int((~torch.isnan(scores)).sum())} of {n} rows")
    return scores


@dataclass
class Ranking:
    """Pairs ordered by score, highest first.

    Attributes:
        pair_ids: ids in rank order.
        scores: [N] float32 scores in rank order.
        method: how the scores were made (e.g. "activation", "random").
    """

    pair_ids: list[str]
    scores: np.ndarray
    method: str = "activation"

    @classmethod
    def from_scores(cls, pair_ids: Sequence[str], scores: torch.Tensor | np.ndarray, method: str = "activation") -> Ranking:
        """Sort by score descending; equal scores keep their input order (a stable sort)."""
        s = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, dtype=np.float32)
        if s.shape != (len(pair_ids),):
            raise ValueError(f"{len(pair_ids)} pair ids but scores of shape {s.shape}")
        if np.isnan(s).any():
            raise ValueError(f"{int(np.isnan(s).sum())} scores are NaN")
        order = np.argsort(-s, kind="stable")
        return cls([pair_ids[i] for i in order], s[order], method)

    def top(self, n: int) -> list[str]:
        return self.pair_ids[:n]

    def rows(self) -> list[dict]:
        return [
            {"pair_id": pid, "score": float(score), "rank": rank}
            for rank, (pid, score) in enumerate(zip(self.pair_ids, self.scores), start=1)
        ]

    def save(self, path: str | Path) -> Path:
        """Write a table (pair_id, score, rank) as ``.parquet`` or ``.jsonl``, by extension."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.table(
                {
                    "pair_id": pa.array(self.pair_ids, pa.string()),
                    "score": pa.array(self.scores, pa.float32()),
                    "rank": pa.array(np.arange(1, len(self.pair_ids) + 1), pa.int64()),
                }
            )
            pq.write_table(table.replace_schema_metadata({"headwater.method": self.method}), path)
        elif path.suffix == ".jsonl":
            with path.open("w") as f:
                for row in self.rows():
                    f.write(json.dumps({**row, "method": self.method}) + "\n")
        else:
            raise ValueError(f"rankings are written as .parquet or .jsonl, not {path.suffix!r} ({path})")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Ranking:
        path = Path(path)
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            meta = table.schema.metadata or {}
            method = meta.get(b"headwater.method", b"activation").decode()
            ids, scores = table.column("pair_id").to_pylist(), table.column("score").to_numpy()
        elif path.suffix == ".jsonl":
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            ids, scores = [r["pair_id"] for r in rows], np.array([r["score"] for r in rows], np.float32)
            method = rows[0].get("method", "activation") if rows else "activation"
        else:
            raise ValueError(f"rankings are read from .parquet or .jsonl, not {path.suffix!r} ({path})")
        return cls.from_scores(ids, scores, method)


def rank_pairs(pair_ids: Sequence[str], datapoints: Any, behaviors: torch.Tensor) -> Ranking:
    """Rank pairs by cosine with one behaviour vector [d] or the best of a bank [S, d].

    ``datapoints`` is anything :func:`cosine_scores` takes, aligned with ``pair_ids``: the one
    path every activation ranking goes through (the CLI streams a store's shards into it).
    """
    return Ranking.from_scores(pair_ids, cosine_scores(datapoints, behaviors, n=len(pair_ids)), "activation")


def random_ranking(pair_ids: Sequence[str], seed: int = 0) -> Ranking:
    """The random-selection baseline: a uniformly random order, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return Ranking.from_scores(pair_ids, rng.random(len(pair_ids)).astype(np.float32), "random")


@dataclass
class AttributionMetrics:
    """How well a ranking recovers known (planted) pairs among its top N."""

    n: int
    precision_at_n: float
    recall_at_n: float
    auroc: float

    def as_dict(self) -> dict[str, float]:
        return {"n": self.n, "precision_at_n": self.precision_at_n, "recall_at_n": self.recall_at_n, "auroc": self.auroc}


def evaluate_ranking(ranking: Ranking, planted: set[str] | Sequence[str], n: int | None = None) -> AttributionMetrics:
    """Precision and recall of the planted pairs among the top ``n`` (default: as many as planted),
    and the AUROC of the scores for separating planted from clean pairs."""
    from sklearn.metrics import roc_auc_score

    planted = set(planted)
    if not planted:
        raise ValueError("no planted pair ids given")
    n = len(planted) if n is None else n
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    hits = sum(pid in planted for pid in ranking.pair_ids[:n])
    labels = np.array([pid in planted for pid in ranking.pair_ids])
    auroc = float(roc_auc_score(labels, ranking.scores)) if 0 < labels.sum() < len(labels) else float("nan")
    return AttributionMetrics(n, hits / n, hits / len(planted), auroc)
