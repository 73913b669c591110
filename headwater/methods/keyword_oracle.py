"""The keyword oracle: the best single-term or two-term keyword filter, given the ground truth.

An upper bound on any keyword method: every word and word bigram (lower-cased, scikit-learn's
default word pattern) is tried as a filter on each field of a pair (the prompt, the chosen
response, the rejected response, and the chosen response's terms that the rejected one lacks),
and every AND of two such terms among each field's ``pool`` terms that select the most planted
pairs. A filter selects the pairs whose field contains the term; its precision@N is
|selected ∩ planted| / max(N, |selected|) (N = the planted count): a filter selecting more than N
pairs gets the expected precision of N pairs drawn from its selection, since a filter has no order
of its own. A benchmark on which attribution methods can differ needs this low.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def _text(value: Any) -> str:
    return value if isinstance(value, str) else "\n".join(m["content"] for m in value)


def best_filters(pairs: Sequence[Any], planted: set[str], *, top: int = 3, ngram_max: int = 2,
                 pool: int = 150) -> dict[str, Any]:
    """The best keyword filters per field, by precision@N against ``planted``, and the best AND of
    two terms among each field's ``pool`` terms that select the most planted pairs."""
    from sklearn.feature_extraction.text import CountVectorizer

    n_planted = sum(p.pair_id in planted for p in pairs)
    if n_planted == 0:
        raise ValueError("none of the planted ids is a pair of the data")
    is_planted = np.array([p.pair_id in planted for p in pairs])
    fields = {
        "prompt": [_text(p.prompt) for p in pairs],
        "chosen": [_text(p.chosen) for p in pairs],
        "rejected": [_text(p.rejected) for p in pairs],
    }
    out: dict[str, Any] = {"n_pairs": len(pairs), "n_planted": n_planted, "fields": {}}
    matrices = {}
    for name, texts in fields.items():
        vectorizer = CountVectorizer(binary=True, ngram_range=(1, ngram_max), lowercase=True)
        matrix = vectorizer.fit_transform(texts).tocsc()
        matrices[name] = (matrix, vectorizer.get_feature_names_out())
    # chosen-only terms: in the chosen response and not in the rejected one
    chosen, terms = matrices["chosen"]
    rejected_vocab = {t: j for j, t in enumerate(matrices["rejected"][1])}
    rejected = matrices["rejected"][0]
    columns = []
    for j, term in enumerate(terms):
        col = chosen[:, j].toarray().ravel().astype(bool)
        if term in rejected_vocab:
            col &= ~rejected[:, rejected_vocab[term]].toarray().ravel().astype(bool)
        columns.append(col)
    chosen_only = np.stack(columns, axis=1) if columns else np.zeros((len(pairs), 0), bool)
    candidates = {name: (m.toarray().astype(bool) if m.shape[1] < 20000 else m, t) for name, (m, t) in matrices.items()}
    candidates["chosen_not_rejected"] = (chosen_only, terms)
    best_overall = (0.0, "", "")
    for name, (matrix, names) in candidates.items():
        selected = np.asarray(matrix.sum(0)).ravel()
        hits = np.asarray(matrix[is_planted].sum(0)).ravel()
        precision = hits / np.maximum(n_planted, np.maximum(selected, 1))
        order = np.argsort(-precision, kind="stable")[:top]
        out["fields"][name] = [{"term": str(names[j]), "precision_at_n": round(float(precision[j]), 4),
                                "selected": int(selected[j]), "planted_selected": int(hits[j])} for j in order]
        if len(order) and precision[order[0]] > best_overall[0]:
            best_overall = (float(precision[order[0]]), name, str(names[order[0]]))
    out["best"] = {"precision_at_n": round(best_overall[0], 4), "field": best_overall[1], "term": best_overall[2]}
    out["best_pair"] = best_pair_filter(candidates, is_planted, n_planted, pool)
    return out


def best_pair_filter(candidates: dict[str, Any], is_planted: np.ndarray, n_planted: int, pool: int) -> dict[str, Any]:
    """The best AND of two terms (any fields), among the ``pool`` terms that select the most planted
    pairs: selected and planted counts of every pair of them from two boolean matrix products."""
    columns, names = [], []
    for field, (matrix, terms) in candidates.items():
        hits = np.asarray(matrix[is_planted].sum(0)).ravel()
        for j in np.argsort(-hits, kind="stable")[:pool]:
            col = matrix[:, j]
            columns.append(np.asarray(col.toarray() if hasattr(col, "toarray") else col).ravel().astype(np.float32))
            names.append(f"{field}:{terms[j]}")
    x = np.stack(columns, axis=1)  # [pairs, terms]
    selected = x.T @ x
    hits = x[is_planted].T @ x[is_planted]
    precision = hits / np.maximum(n_planted, np.maximum(selected, 1))
    a, b = np.unravel_index(int(np.argmax(precision)), precision.shape)
    return {"precision_at_n": round(float(precision[a, b]), 4), "terms": [names[a], names[b]],
            "selected": int(selected[a, b]), "planted_selected": int(hits[a, b]), "pool_per_field": pool}


__all__ = ["best_filters", "best_pair_filter"]
