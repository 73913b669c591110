"""The judge baseline (the attribution paper's LLM-judge ranking): score the chosen and the
rejected response of every pair for the behaviour and rank by chosen − rejected.

A pair the judge could not score on either side (a failed call, an unparsable reply) is not given
a made-up score: it is ranked last (the lowest float32, which files can hold) and counted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from headwater.data import PreferencePair
from headwater.methods.attribution import Ranking
from headwater.methods.judges import Judge


@dataclass
class JudgeRanking:
    """The ranking and what it cost.

    Attributes:
        ranking: pairs by judge(chosen) − judge(rejected), ``method="judge"``.
        n_unscored: pairs with a side the judge could not score (ranked last).
        n_judged: responses sent to the judge (2 per pair).
    """

    ranking: Ranking
    n_unscored: int
    n_judged: int


def judge_ranking(pairs: Sequence[PreferencePair], judge: Judge) -> JudgeRanking:
    """Rank ``pairs`` by ``judge.score(prompt, chosen) − judge.score(prompt, rejected)`` in one
    batched call (a remote judge sees every response at once)."""
    if not pairs:
        raise ValueError("judge_ranking needs at least one pair")
    prompts = [p.prompt for p in pairs]
    texts = [p.chosen if isinstance(p.chosen, str) else "\n".join(m["content"] for m in p.chosen) for p in pairs]
    texts += [p.rejected if isinstance(p.rejected, str) else "\n".join(m["content"] for m in p.rejected) for p in pairs]
    scores = judge.score_batch(prompts + prompts, texts)
    n = len(pairs)
    differences = [c - r for c, r in zip(scores[:n], scores[n:])]
    unscored = sum(math.isnan(d) for d in differences)
    last = np.finfo(np.float32).min
    values = np.array([last if math.isnan(d) else d for d in differences], np.float32)
    return JudgeRanking(Ranking.from_scores([p.pair_id for p in pairs], values, "judge"), unscored, 2 * n)


__all__ = ["JudgeRanking", "judge_ranking"]
