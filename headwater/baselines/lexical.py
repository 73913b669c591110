"""The lexical baseline: does attribution beat keyword search on this data?

Every pair becomes the TF-IDF vector of its chosen response minus that of its rejected response
(the lexical twin of the datapoint vector v_d); the probe is the mean TF-IDF of exhibiting minus
non-exhibiting responses, paired within a prompt exactly as the activation probe pairs them
(:func:`headwater.methods.vectors.pair_by_prompt`); pairs rank by cosine with the probe. The
vocabulary (words and word pairs, sublinear term frequency) is fitted on the pairs' responses and
the labelled responses together. Vectors stay sparse: memory grows with the words present, not
with N × vocabulary.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from headwater.data import PreferencePair, Text
from headwater.methods.attribution import Ranking
from headwater.methods.vectors import pair_by_prompt, prompt_key


def _text(value: Text) -> str:
    return value if isinstance(value, str) else "\n".join(m["content"] for m in value)


def lexical_ranking(
    pairs: Sequence[PreferencePair],
    prompts: Sequence[Text],
    responses: Sequence[Text],
    labels: Sequence[bool],
    *,
    ngram_range: tuple[int, int] = (1, 2),
    min_df: int = 1,
) -> Ranking:
    """Rank ``pairs`` by the cosine of their TF-IDF difference with the lexical probe.

    Args:
        pairs: the preference pairs.
        prompts, responses, labels: judged responses (the activation probe's inputs).
        ngram_range, min_df: the vocabulary (scikit-learn's ``TfidfVectorizer``).

    Returns:
        a :class:`Ranking` with ``method="lexical"``; a pair whose responses have no word in the
        vocabulary, or identical ones, scores 0.

    Raises:
        ValueError: no prompt has both an exhibiting and a non-exhibiting response.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize

    if not len(prompts) == len(responses) == len(labels):
        raise ValueError(f"prompts, responses, labels must align: {len(prompts)}, {len(responses)}, {len(labels)}")
    matched = pair_by_prompt([prompt_key(p) for p in prompts], labels)
    if not matched:
        raise ValueError("no prompt has both an exhibiting and a non-exhibiting response: no lexical probe")
    chosen = [_text(p.chosen) for p in pairs]
    rejected = [_text(p.rejected) for p in pairs]
    labelled = [_text(r) for r in responses]
    vectorizer = TfidfVectorizer(ngram_range=ngram_range, min_df=min_df, sublinear_tf=True)
    vectorizer.fit(chosen + rejected + labelled)
    differences = vectorizer.transform(chosen) - vectorizer.transform(rejected)  # [N, V] sparse
    acts = vectorizer.transform(labelled)
    probe = np.asarray(acts[[p for p, _ in matched]].mean(0) - acts[[n for _, n in matched]].mean(0)).ravel()
    norm = np.linalg.norm(probe)
    if norm == 0:
        scores = np.zeros(len(pairs), np.float32)
    else:
        scores = (normalize(differences) @ (probe / norm)).astype(np.float32)
    return Ranking.from_scores([p.pair_id for p in pairs], np.asarray(scores).ravel(), "lexical")


__all__ = ["lexical_ranking"]
