"""The prediction check's pieces: the first-order prediction, measured shifts, agreement."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from headwater.audit.prediction import (
    agreement,
    first_order_shift,
    local_first_order_shift,
    measured_shifts,
    pair_token_likelihoods,
    scoped_shifts,
    topics_from_neighbours,
)
from headwater.data import PreferencePair
from headwater.engine.tokenization import TokenizationSettings, encode_pair, pad_batch
from headwater.training.common import response_logps


def test_first_order_shift_equals_the_formula():
    rng = np.random.default_rng(0)
    chosen, rejected = rng.random((20, 3)), rng.random((20, 3))
    lp_c, lp_r = -rng.random(20) * 3, -rng.random(20) * 3
    m = rng.random(3)
    expected = np.zeros(3)
    norm = 0.0
    for i in range(20):
        expected += math.exp(lp_c[i]) * (chosen[i] - m) - math.exp(lp_r[i]) * (rejected[i] - m)
        norm += math.exp(lp_c[i]) + math.exp(lp_r[i])
    np.testing.assert_allclose(first_order_shift(chosen, rejected, lp_c, lp_r, m), expected / norm, rtol=1e-12)
    # a side the model never writes (log-likelihood -inf) moves nothing
    only_chosen = first_order_shift(chosen, rejected, lp_c, np.full(20, -np.inf), m)
    weights = np.exp(lp_c)
    np.testing.assert_allclose(only_chosen, (weights[:, None] * (chosen - m)).sum(0) / weights.sum(), rtol=1e-12)


def test_local_first_order_shift_equals_an_explicit_loop():
    rng = np.random.default_rng(1)
    n, n_concepts, d, n_prompts = 30, 4, 6, 7
    chosen, rejected = rng.random((n, n_concepts)), rng.random((n, n_concepts))
    lp_c, lp_r = -rng.random(n) * 3, -rng.random(n) * 3
    lp_r[4] = -np.inf  # a side M0 never writes
    pair_prompts, eval_prompts = rng.standard_normal((n, d)), rng.standard_normal((n_prompts, d))
    m = rng.random((n_prompts, n_concepts))
    for neighbours in (1, 5, n):
        expected = np.zeros(n_concepts)
        for x in range(n_prompts):
            cosine = [float(eval_prompts[x] @ pair_prompts[i]) / np.linalg.norm(eval_prompts[x]) / np.linalg.norm(pair_prompts[i])
                      for i in range(n)]
            near = sorted(range(n), key=lambda i: -cosine[i])[:neighbours]
            moved, norm = np.zeros(n_concepts), 0.0
            for i in near:
                moved += math.exp(lp_c[i]) * (chosen[i] - m[x]) - math.exp(lp_r[i]) * (rejected[i] - m[x])
                norm += math.exp(lp_c[i]) + math.exp(lp_r[i])
            expected += moved / norm
        got = local_first_order_shift(chosen, rejected, lp_c, lp_r, pair_prompts, eval_prompts, m,
                                      neighbours=neighbours, chunk=3)
        np.testing.assert_allclose(got, expected / n_prompts, rtol=1e-10)
    # every pair a neighbour of every prompt, one centre for all: the global first-order prediction
    same = np.repeat(m[:1], n_prompts, axis=0)
    np.testing.assert_allclose(local_first_order_shift(chosen, rejected, lp_c, lp_r, pair_prompts, eval_prompts, same,
                                                       neighbours=10 * n),
                               first_order_shift(chosen, rejected, lp_c, lp_r, m[0]), rtol=1e-10)
    with pytest.raises(ValueError, match="neighbours"):
        local_first_order_shift(chosen, rejected, lp_c, lp_r, pair_prompts, eval_prompts, m, neighbours=0)
    with pytest.raises(ValueError, match="shapes do not match"):
        local_first_order_shift(chosen, rejected, lp_c, lp_r, pair_prompts[:, :3], eval_prompts, m)


def test_a_held_out_prompt_takes_its_neighbours_most_common_topic():
    pair_topics = np.array([0, 1, 1, 2, 2])
    near = np.array([[0, 1, 2], [3, 0, 1], [1, 3, 4], [0, 3, 1]])  # topics [0,1,1], [2,0,1], [1,2,2], [0,2,1]
    # majority where there is one; a tie goes to the nearer pair's topic
    np.testing.assert_array_equal(topics_from_neighbours(near, pair_topics), [1, 2, 2, 0])


def test_scoped_shifts_read_each_concept_over_its_topics_prompts():
    rng = np.random.default_rng(2)
    n, n_prompts, samples = 24, 6, 3
    chosen, rejected = rng.random((n, 2)), rng.random((n, 2))
    lp_c, lp_r = -rng.random(n) * 2, -rng.random(n) * 2
    pair_topics = np.arange(n) % 3
    near = np.stack([rng.permutation(n)[:5] for _ in range(n_prompts)])
    eval_topics = np.array([0, 0, 1, 1, 1, 2])
    owners = np.repeat(np.arange(n_prompts), samples)
    m0, m1 = rng.random((owners.size, 2)), rng.random((owners.size, 2))
    concept_topics = [1, 2]
    out = scoped_shifts(chosen, rejected, lp_c, lp_r, pair_topics, near, eval_topics, m0, m1, owners, concept_topics)
    for j, topic in enumerate(concept_topics):
        prompts = [x for x in range(n_prompts) if eval_topics[x] == topic]
        diff = [m1[owners == x, j].mean() - m0[owners == x, j].mean() for x in prompts]
        assert out["shift"][j] == pytest.approx(np.mean(diff)) and out["n_prompts"][j] == len(prompts)
        local = 0.0
        for x in prompts:
            m = m0[owners == x, j].mean()
            wc, wr = np.exp(lp_c[near[x]]), np.exp(lp_r[near[x]])
            local += (wc * (chosen[near[x], j] - m) - wr * (rejected[near[x], j] - m)).sum() / (wc.sum() + wr.sum())
        assert out["local_first_order"][j] == pytest.approx(local / len(prompts), rel=1e-10)
        mine = pair_topics == topic
        centre = m0[np.isin(owners, prompts), j].mean()
        expected = first_order_shift(chosen[mine][:, [j]], rejected[mine][:, [j]], lp_c[mine], lp_r[mine],
                                     np.array([centre]))[0]
        assert out["first_order"][j] == pytest.approx(expected, rel=1e-10)
    # a topic no held-out prompt falls in: NaN and no prompts, not an error
    none = scoped_shifts(chosen, rejected, lp_c, lp_r, pair_topics, near, eval_topics, m0, m1, owners, [1, 3])
    assert none["n_prompts"][1] == 0 and math.isnan(none["local_first_order"][1]) and math.isnan(none["shift"][1])


def test_measured_shifts_and_agreement():
    before = np.array([[1.0, 0.0], [3.0, 0.0], [2.0, 1.0], [2.0, 1.0]])
    after = np.array([[2.0, 0.0], [4.0, 0.0], [2.0, 3.0], [2.0, 3.0]])
    owners = [0, 0, 1, 1]
    shifts = measured_shifts(before, after, owners, owners, n_boot=200)
    np.testing.assert_allclose(shifts["shift"], [0.5, 1.0])
    assert np.all(shifts["low"] <= shifts["shift"]) and np.all(shifts["shift"] <= shifts["high"])
    with pytest.raises(ValueError, match="one model only"):
        measured_shifts(before, after[:2], owners, [0, 0])
    line = agreement([1, 2, 3, 4], [3, 5, 7, 9])
    assert line["r2"] == pytest.approx(1.0) and line["slope"] == pytest.approx(2.0) and line["intercept"] == pytest.approx(1.0)
    assert math.isnan(agreement([1, 1, 1], [1, 2, 3])["r2"]) and agreement([1, 2], [1, 2])["n"] == 2


def test_pair_token_likelihoods_equal_one_pair_at_a_time(tiny_llama, tiny_tokenizer):
    settings = TokenizationSettings(format="raw", add_eos=False)
    pairs = [PreferencePair("a", "How do I bake bread?", " Mix flour and water, then bake.", " No."),
             PreferencePair("b", "Q:", "", ""),
             PreferencePair("c", "Tell me about the sea.", " It is blue.", " I cannot help with that at all.")]
    got = pair_token_likelihoods(tiny_llama, tiny_tokenizer, pairs, settings, batch=1)
    assert got["pair_ids"].tolist() == ["a", "c"]
    for k, pair in enumerate([pairs[0], pairs[2]]):
        c, r = encode_pair(tiny_tokenizer, pair, settings)
        with torch.no_grad():
            one = response_logps(tiny_llama, pad_batch([c], tiny_tokenizer.pad_token_id), average=True)
            two = response_logps(tiny_llama, pad_batch([r], tiny_tokenizer.pad_token_id), average=True)
        assert got["chosen"][k] == pytest.approx(float(one), rel=1e-5)
        assert got["rejected"][k] == pytest.approx(float(two), rel=1e-5)
    batched = pair_token_likelihoods(tiny_llama, tiny_tokenizer, pairs, settings, batch=8)
    np.testing.assert_allclose(batched["chosen"], got["chosen"], rtol=1e-5)


def test_the_check_refuses_a_bad_neighbour_count_before_any_work(tmp_path):
    from headwater.workflows.audit_feedback import check_predictions

    with pytest.raises(ValueError, match="neighbours must be a positive int"):
        check_predictions(model_path=str(tmp_path / "none"), trained_path=str(tmp_path / "none"), audit_dir=tmp_path,
                          data=str(tmp_path / "none.jsonl"), prompts=["a"], neighbours=0)
