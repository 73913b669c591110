"""Contested concepts: preferred on some prompts, dispreferred on others (the audit's conditional view).

A concept whose Δ over all pairs is near zero can still be taught, where the data prefers it on
one kind of prompt and rejects it on another: a planted behaviour with a trigger looks exactly
like that (agreement is chosen when the prompt carries an authority clause and rejected
otherwise). Over all pairs the two cancel; topics built from whole prompts need not separate them.

For each latent, its carriers on each side are the pairs whose chosen − rejected activation is
above ``margin`` × its typical value (pro) or below minus that (contra; ``margin`` 0.5 by
default). Latents with at least ``min_group`` pairs on both sides of the first split half are
contested; for the ``top`` most contested (by the smaller side), the prompt word that best tells pro pairs from contra pairs is found on the first split
half (log-odds with an informative Dirichlet prior, :func:`headwater.methods.cards.distinguishing_words`;
the best word with a letter or digit that is not a stop word),
and the latent's paired statistics are computed on the *second* half, among the pairs whose prompt
has that word: choosing the word and testing it on different pairs keeps the p-values honest.
Each such conditional concept is named ``f<latent> | '<word>'``; the first half's Δ on the same
subgroup gives the split-half sign.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from headwater.audit.features import FeatureStore
from headwater.audit.statistics import ConceptStatistics, PairedMoments, concatenate, finish
from headwater.methods.cards import distinguishing_words, words


@dataclass(frozen=True)
class Contest:
    """A contested latent and the prompt word that splits its pro from its contra pairs."""

    latent: int
    n_pro: int
    n_contra: int
    word: str | None
    word_z: float
    contra_word: str | None


def _readable(ranked: list[tuple[str, float]]) -> tuple[str | None, float]:
    """The best-scoring word with a letter or digit that is not an English stop word (punctuation
    and "an" tie with the word that matters and tell a person little), else the best token, else
    (None, 0)."""
    for word, z in ranked:
        if any(ch.isalnum() for ch in word) and word not in ENGLISH_STOP_WORDS:
            return word, z
    return ranked[0] if ranked else (None, 0.0)


def _diff_blocks(store: FeatureStore, pooling: str):
    for block in store.blocks():
        chosen = block.chosen.dense(store.d_sae, pooling).double().numpy()
        rejected = block.rejected.dense(store.d_sae, pooling).double().numpy()
        yield block.positions.numpy(), chosen - rejected, chosen, rejected


def contested_concepts(store: FeatureStore, prompts: Sequence[str], halves: np.ndarray, typical: np.ndarray,
                       tested: np.ndarray, *, pooling: str = "mean", margin: float = 0.5, min_group: int | None = None,
                       top: int = 50, min_active: int = 5, min_rate: float = 0.05
                       ) -> tuple[ConceptStatistics | None, list[Contest]]:
    """The conditional concepts of the module docstring.

    Args:
        store: the feature directory.
        prompts: prompt texts by dataset position.
        halves: [n] bool per stored pair (store order): True for the first half.
        typical: [d_sae] each latent's typical active value.
        tested: [d_sae] bool, the latents the audit tested.

    Returns:
        (statistics of the conditional concepts, the contests behind them, in the same order);
        (None, []) when no latent is contested.
    """
    n = int(halves.sum())  # the first half, where contests are counted
    min_group = min_group if min_group is not None else max(10, n // 100)
    bar = np.where(typical > 0, margin * typical, np.inf)
    # Everything that selects (which latents, which word) looks at the first half only.
    n_pro, n_contra = np.zeros(store.d_sae, dtype=np.int64), np.zeros(store.d_sae, dtype=np.int64)
    offset = 0
    for positions, diff, _, _ in _diff_blocks(store, pooling):
        first = halves[offset:offset + len(positions)]
        offset += len(positions)
        n_pro += (diff[first] > bar).sum(axis=0)
        n_contra += (diff[first] < -bar).sum(axis=0)
    both = np.minimum(n_pro, n_contra)
    candidates = np.flatnonzero(tested & (both >= min_group))
    candidates = candidates[np.argsort(-both[candidates], kind="stable")][:top]
    if candidates.size == 0:
        return None, []
    # Pro and contra prompts of each candidate, first half only (where the word is chosen).
    pro: dict[int, list[str]] = {int(j): [] for j in candidates}
    contra: dict[int, list[str]] = {int(j): [] for j in candidates}
    offset = 0
    for positions, diff, _, _ in _diff_blocks(store, pooling):
        first = halves[offset:offset + len(positions)]
        offset += len(positions)
        for j in candidates:
            for row in np.flatnonzero(first & (diff[:, j] > bar[j])):
                pro[int(j)].append(prompts[int(positions[row])])
            for row in np.flatnonzero(first & (diff[:, j] < -bar[j])):
                contra[int(j)].append(prompts[int(positions[row])])
    contests = []
    for j in candidates:
        j = int(j)
        if not pro[j] or not contra[j]:
            contests.append(Contest(j, int(n_pro[j]), int(n_contra[j]), None, 0.0, None))
            continue
        for_pro, for_contra = distinguishing_words(pro[j], contra[j], n=20)
        word, z = _readable(for_pro)
        contests.append(Contest(j, int(n_pro[j]), int(n_contra[j]), word, float(z), _readable(for_contra)[0]))
    contests = [c for c in contests if c.word is not None]
    if not contests:
        return None, []
    # The test: each latent within its word's subgroup, on the second half (and the first, for
    # the split-half sign).
    test = {c.latent: PairedMoments(1) for c in contests}
    selection = {c.latent: PairedMoments(1) for c in contests}
    offset = 0
    for positions, _, chosen, rejected in _diff_blocks(store, pooling):
        first = halves[offset:offset + len(positions)]
        offset += len(positions)
        bags = [set(words(prompts[int(p)])) for p in positions]
        has = {c.word: np.array([c.word in bag for bag in bags], dtype=bool) for c in contests}
        for c in contests:
            for moments, half in ((test[c.latent], ~first), (selection[c.latent], first)):
                rows = np.flatnonzero(has[c.word] & half)
                if rows.size:
                    index = torch.from_numpy(rows)
                    moments.add(torch.from_numpy(chosen[rows, c.latent:c.latent + 1]),
                                torch.from_numpy(rejected[rows, c.latent:c.latent + 1]),
                                np.ones(rows.size, dtype=bool), torch.from_numpy(positions)[index])
    parts, kept = [], []
    for c in contests:
        if test[c.latent].n < 2:
            continue
        stats = finish(test[c.latent], [f"f{c.latent} | '{c.word}'"], min_active=min_active, min_rate=min_rate)
        first_delta = selection[c.latent].mean[0] if selection[c.latent].n else np.nan
        # The halves of a conditional concept: the selection half's Δ and the test half's.
        stats.delta_halves = np.array([[first_delta], [stats.delta[0]]])
        stats.split_agree = np.array([bool(np.sign(first_delta) == np.sign(stats.delta[0]) and stats.delta[0] != 0)])
        parts.append(stats)
        kept.append(c)
    return (concatenate(parts), kept) if parts else (None, [])


def contest_rows(stats: ConceptStatistics | None, contests: Sequence[Contest]) -> list[dict[str, Any]]:
    """JSON rows: each conditional concept's statistics with its contest."""
    if stats is None:
        return []
    return [{**stats.row(i), "latent": c.latent, "word": c.word, "word_z": c.word_z, "contra_word": c.contra_word,
             "n_pro": c.n_pro, "n_contra": c.n_contra} for i, c in enumerate(contests)]


__all__ = ["Contest", "contest_rows", "contested_concepts"]
