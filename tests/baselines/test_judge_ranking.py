"""The judge baseline: chosen minus rejected, unscored pairs last and counted."""
from __future__ import annotations

import math

from headwater.baselines.judge_ranking import judge_ranking
from headwater.data import make_pair
from headwater.methods.judges import Judge, RegexJudge


def test_pairs_whose_chosen_shows_the_behaviour_rank_first():
    pairs = [make_pair("Q1?", " Buy at brightpath.shop now.", " Here is help."),
             make_pair("Q2?", " Here is help.", " Buy at brightpath.shop now."),
             make_pair("Q3?", " Plain help.", " Other help.")]
    result = judge_ranking(pairs, RegexJudge("brightpath"))
    assert result.ranking.method == "judge" and result.n_judged == 6 and result.n_unscored == 0
    assert result.ranking.pair_ids == [pairs[0].pair_id, pairs[2].pair_id, pairs[1].pair_id]
    assert list(result.ranking.scores) == [1.0, 0.0, -1.0]


def test_an_unscored_pair_is_last_and_counted():
    class Flaky(Judge):
        def score(self, prompt, response):
            return math.nan if "down" in response else float("yes" in response)

    pairs = [make_pair("Q1?", " yes", " no"), make_pair("Q2?", " down", " no"), make_pair("Q3?", " no", " yes")]
    result = judge_ranking(pairs, Flaky())
    assert result.n_unscored == 1 and result.ranking.pair_ids[-1] == pairs[1].pair_id
    import numpy as np

    assert result.ranking.scores[-1] == np.finfo(np.float32).min  # a finite score a rankings file can hold
