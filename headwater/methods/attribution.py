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

from headwater.data import iter_jsonl
from headwater.engine import atomic
from headwater.engine.store import fingerprint_ids
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
        """Write a table (pair_id, score, rank, method) as ``.parquet`` or ``.jsonl``, by extension,
        atomically. The Parquet file also records the row count and the ids' fingerprint, which
        :meth:`load` checks."""
        path = Path(path)
        if path.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            n = len(self.pair_ids)
            table = pa.table(
                {
                    "pair_id": pa.array(self.pair_ids, pa.string()),
                    "score": pa.array(self.scores, pa.float32()),
                    "rank": pa.array(np.arange(1, n + 1), pa.int64()),
                    "method": pa.array([self.method] * n, pa.string()),
                }
            )
            meta = {"headwater.method": self.method, "headwater.n_pairs": str(n),
                    "headwater.ids_fingerprint": fingerprint_ids(self.pair_ids)}
            with atomic.atomic_path(path) as tmp:
                pq.write_table(table.replace_schema_metadata(meta), tmp)
        elif path.suffix == ".jsonl":
            atomic.write_text(path, "".join(json.dumps({**row, "method": self.method}) + "\n" for row in self.rows()))
        else:
            raise ValueError(f"rankings are written as .parquet or .jsonl, not {path.suffix!r} ({path})")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Ranking:
        """A ranking written by :meth:`save` (or any table with ``pair_id`` and ``score``).

        Raises:
            FileNotFoundError: no such file.
            ValueError: an unreadable file, a missing column, a bad JSONL line (naming the line),
                a repeated pair id, or a Parquet file whose rows do not match its recorded count
                and fingerprint.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"rankings file {path} does not exist")
        if path.suffix == ".parquet":
            ids, scores, method = _read_parquet_ranking(path)
        elif path.suffix == ".jsonl":
            ids, scores, method = _read_jsonl_ranking(path)
        else:
            raise ValueError(f"rankings are read from .parquet or .jsonl, not {path.suffix!r} ({path})")
        seen: dict[str, int] = {}
        for i, pid in enumerate(ids):
            if pid in seen:
                raise ValueError(f"{path}: pair id {pid!r} is ranked twice (rows {seen[pid] + 1} and {i + 1})")
            seen[pid] = i
        return cls.from_scores(ids, scores, method)


def _read_parquet_ranking(path: Path) -> tuple[list[str], np.ndarray, str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise ValueError(f"{path} is not a readable Parquet file ({err})") from None
    missing = [c for c in ("pair_id", "score") if c not in table.column_names]
    if missing:
        raise ValueError(f"{path} has no {missing} column(s) (columns: {table.column_names}); a ranking needs "
                         "pair_id and score")
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    ids = [str(x) for x in table.column("pair_id").to_pylist()]
    try:
        scores = np.asarray(table.column("score").to_numpy(zero_copy_only=False), np.float32)
    except (pa.ArrowException, TypeError, ValueError) as err:
        raise ValueError(f"{path}: the score column is not numeric ({err})") from None
    expected_n = meta.get("headwater.n_pairs")
    if expected_n is not None and (int(expected_n) != len(ids)
                                   or meta.get("headwater.ids_fingerprint") != fingerprint_ids(ids)):
        raise ValueError(f"{path} holds {len(ids)} rows that do not match the {expected_n} pairs it was written "
                         "with; the file is damaged")
    return ids, scores, meta.get("headwater.method", "activation")


def _read_jsonl_ranking(path: Path) -> tuple[list[str], np.ndarray, str]:
    ids, scores, method = [], [], None
    for number, row in iter_jsonl(path):
        if not isinstance(row, dict) or "pair_id" not in row or "score" not in row:
            raise ValueError(f"{path}:{number}: expected an object with 'pair_id' and 'score'")
        score = row["score"]
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise ValueError(f"{path}:{number}: 'score' must be a number, got {score!r}")
        ids.append(str(row["pair_id"]))
        scores.append(score)
        method = method or row.get("method")
    return ids, np.asarray(scores, np.float32), method or "activation"


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
    if planted.isdisjoint(ranking.pair_ids):
        raise ValueError(f"none of the {len(planted)} planted ids is a ranked pair (e.g. {sorted(planted)[:3]}); "
                         "were they taken from another dataset?")
    n = len(planted) if n is None else n
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    hits = sum(pid in planted for pid in ranking.pair_ids[:n])
    labels = np.array([pid in planted for pid in ranking.pair_ids])
    auroc = float(roc_auc_score(labels, ranking.scores)) if 0 < labels.sum() < len(labels) else float("nan")
    return AttributionMetrics(n, hits / n, hits / len(planted), auroc)
