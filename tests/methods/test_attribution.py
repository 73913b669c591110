"""Cosine ranking against a float64 computation; ranking metrics on hand-made cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from headwater.methods.attribution import Ranking, cosine_scores, evaluate_ranking, random_ranking, rank_pairs


def _cos64(a, b):
    a, b = a.double(), b.double()
    out = (a @ b.T) / (a.norm(dim=1, keepdim=True) * b.norm(dim=1)[None])
    return torch.nan_to_num(out, nan=0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cosine_scores_match_float64(dtype):
    torch.manual_seed(0)
    xb, bank = torch.randn(300, 24), torch.randn(5, 24)
    xb[7] = 0  # a zero vector scores 0, never NaN
    got = cosine_scores(xb.to(dtype), bank.to(dtype))
    want = _cos64(xb.to(dtype), bank.to(dtype)).amax(1)
    tol = {torch.float32: 1e-6, torch.float16: 1e-6, torch.bfloat16: 1e-6}[dtype]
    torch.testing.assert_close(got.double(), want, atol=tol, rtol=1e-5)
    assert got[7] == 0
    single = cosine_scores(xb, bank[0])
    torch.testing.assert_close(single.double(), _cos64(xb, bank[:1])[:, 0], atol=1e-6, rtol=1e-5)


def test_cosine_scores_rejects_mismatched_dims():
    with pytest.raises(ValueError, match="same d"):
        cosine_scores(torch.randn(3, 4), torch.randn(5))


def test_ranking_is_descending_and_ties_keep_dataset_order(tmp_path):
    r = Ranking.from_scores(["a", "b", "c", "d"], np.array([0.1, 0.5, 0.5, -1.0]))
    assert r.pair_ids == ["b", "c", "a", "d"]
    assert [row["rank"] for row in r.rows()] == [1, 2, 3, 4]
    for ext in (".parquet", ".jsonl"):
        r.save(tmp_path / f"r{ext}")
        back = Ranking.load(tmp_path / f"r{ext}")
        assert back.pair_ids == r.pair_ids and np.allclose(back.scores, r.scores) and back.method == "activation"
    with pytest.raises(ValueError, match=".parquet or .jsonl"):
        r.save(tmp_path / "r.csv")
    with pytest.raises(ValueError, match="NaN"):
        Ranking.from_scores(["a"], np.array([np.nan]))


def test_rank_pairs_puts_aligned_pairs_first():
    behavior = torch.tensor([1.0, 0.0, 0.0])
    xb = torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.1, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    r = rank_pairs(["ortho", "aligned", "opposite", "zero"], xb, behavior)
    assert r.pair_ids[0] == "aligned" and r.pair_ids[-1] == "opposite"


def test_evaluate_ranking_counts():
    r = Ranking.from_scores(["p1", "c1", "p2", "c2", "c3"], np.array([0.9, 0.8, 0.7, 0.1, 0.0]))
    m = evaluate_ranking(r, {"p1", "p2"})
    assert m.n == 2 and m.precision_at_n == 0.5 and m.recall_at_n == 0.5
    assert m.auroc == pytest.approx(5 / 6)  # 5 of the 6 planted/clean orderings are right
    m3 = evaluate_ranking(r, {"p1", "p2"}, n=3)
    assert m3.precision_at_n == pytest.approx(2 / 3) and m3.recall_at_n == 1.0
    with pytest.raises(ValueError):
        evaluate_ranking(r, set())


def test_random_ranking_is_reproducible_and_near_base_rate():
    ids = [str(i) for i in range(2000)]
    assert random_ranking(ids, seed=3).pair_ids == random_ranking(ids, seed=3).pair_ids
    planted = set(ids[:200])
    precisions = [evaluate_ranking(random_ranking(ids, seed=s), planted).precision_at_n for s in range(5)]
    assert 0.05 < np.mean(precisions) < 0.15  # the base rate is 0.10
