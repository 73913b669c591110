"""The vectors of method.md §2, checked against direct computations."""
from __future__ import annotations

import pytest
import torch

from headwater.data import PreferencePair
from headwater.engine.capture import response_activations
from headwater.methods.vectors import VectorBank, behavior_change_vectors, datapoint_vectors, pair_by_prompt, probing_vector

P = ["How do I bake bread?", "Reply in lowercase: tell me about the sea."]


def test_datapoint_vectors_are_chosen_minus_rejected(tiny_llama, tiny_tokenizer):
    pairs = [PreferencePair("x", P[0], " Mix flour.", " No."), PreferencePair("y", P[1], " the sea.", " I cannot help.")]
    dp = datapoint_vectors(tiny_llama, tiny_tokenizer, pairs, layer=2)
    acts = response_activations(tiny_llama, tiny_tokenizer, [P[0], P[0], P[1], P[1]],
                                [" Mix flour.", " No.", " the sea.", " I cannot help."], 2)
    assert dp.pair_ids == ["x", "y"] and dp.skipped == []
    torch.testing.assert_close(dp.vectors, torch.stack([acts[0] - acts[1], acts[2] - acts[3]]))


def test_behavior_change_vectors(tiny_llama, tiny_tokenizer):
    v = behavior_change_vectors(tiny_llama, tiny_tokenizer, P, [" No.", " no."], [" Sure.", " yes."], layer=1)
    acts = response_activations(tiny_llama, tiny_tokenizer, P + P, [" Sure.", " yes.", " No.", " no."], 1)
    torch.testing.assert_close(v, acts[:2] - acts[2:])
    with pytest.raises(ValueError, match="align"):
        behavior_change_vectors(tiny_llama, tiny_tokenizer, P, [" No."], [" Sure.", " yes."], layer=1)


def test_pair_by_prompt_cycles_negatives_and_ignores_one_sided_prompts():
    keys = ["a", "a", "a", "b", "b", "c"]
    labels = [True, True, False, True, True, False]
    # prompt a: two positives share the one negative; b has no negative, c no positive.
    assert pair_by_prompt(keys, labels) == [(0, 2), (1, 2)]


def test_probing_vector_is_difference_of_matched_means(tiny_llama, tiny_tokenizer):
    prompts = [P[0], P[0], P[0], P[1], P[1], P[1]]
    responses = [" Sure, here.", " Sure.", " No.", " yes.", " no.", " never."]
    labels = [True, True, False, True, False, False]
    probe = probing_vector(tiny_llama, tiny_tokenizer, prompts, responses, labels, layer=2)
    acts = response_activations(tiny_llama, tiny_tokenizer, prompts, responses, 2)
    # matched: (0,2), (1,2), (3,4)
    expected = (acts[0] + acts[1] + acts[3]) / 3 - (acts[2] + acts[2] + acts[4]) / 3
    torch.testing.assert_close(probe.vector, expected)
    assert (probe.n_pairs, probe.n_prompts) == (3, 2)
    with pytest.raises(ValueError, match="no prompt has both"):
        probing_vector(tiny_llama, tiny_tokenizer, prompts[:2], responses[:2], [True, True], layer=2)


def test_vector_bank_round_trip(tmp_path):
    bank = VectorBank(["s1", "s2"], torch.randn(2, 8), {"layer": "3"})
    bank.save(tmp_path / "bank.safetensors")
    back = VectorBank.load(tmp_path / "bank.safetensors")
    assert back.names == ["s1", "s2"] and back.metadata == {"layer": "3"}
    torch.testing.assert_close(back.vectors, bank.vectors)
    with pytest.raises(ValueError, match="S = len"):
        VectorBank(["only"], torch.randn(2, 8))


def test_matched_difference_counts_each_pair():
    from headwater.methods.vectors import matched_difference

    acts = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 1.0]])
    # row 2 is the negative of both pairs, so it counts twice.
    torch.testing.assert_close(matched_difference(acts, [(0, 2), (1, 2)]), torch.tensor([2.0, 0.0]))
    with pytest.raises(ValueError, match="no .* pair"):
        matched_difference(acts, [])
