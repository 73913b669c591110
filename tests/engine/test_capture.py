"""Pooled activations equal a direct computation from transformers' own hidden states."""
from __future__ import annotations

import pytest
import torch

from headwater.data import PreferencePair
from headwater.engine.capture import length_bucketed_batches, pair_activations, pool_responses, response_activations
from headwater.engine.tokenization import TokenizationSettings, encode_response

PROMPTS = ["How do I bake bread?", "Reply in lowercase: tell me about the sea.", "Q:", "What is the capital of France?"]
RESPONSES = [" Mix flour and water, then bake.", " the sea is blue.", " yes", " Paris, the capital of France."]


def _reference_pool(model, enc, layer):
    """ā from a full forward with output_hidden_states, one sequence at a time, in float64."""
    ids = torch.tensor([enc.input_ids])
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states[layer][0].double()
    return hidden[enc.prompt_length :].mean(0)


@pytest.mark.parametrize("budget", [1, 40, 100000])
def test_pool_responses_matches_hidden_states(tiny_llama, tiny_tokenizer, budget):
    encoded = [encode_response(tiny_tokenizer, p, r) for p, r in zip(PROMPTS, RESPONSES)]
    pooled = pool_responses(tiny_llama, encoded, 2, pad_token_id=tiny_tokenizer.pad_token_id, max_tokens_per_batch=budget)
    assert pooled.shape == (len(PROMPTS), tiny_llama.config.hidden_size) and pooled.dtype == torch.float32
    for row, enc in enumerate(encoded):
        torch.testing.assert_close(pooled[row].double(), _reference_pool(tiny_llama, enc, 2), atol=1e-5, rtol=1e-5)


def test_length_bucketed_batches_cover_every_index_within_budget():
    lengths = [5, 17, 3, 17, 9, 1, 30, 2]
    batches = list(length_bucketed_batches(lengths, 34))
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 34
    with pytest.raises(ValueError):
        list(length_bucketed_batches(lengths, 0))


def test_pair_activations_and_skips(tiny_llama, tiny_tokenizer):
    pairs = [
        PreferencePair("a", PROMPTS[0], RESPONSES[0], " No."),
        PreferencePair("b", "Q:", "", ""),  # empty responses without EOS: skipped with a reason
        PreferencePair("c", PROMPTS[1], RESPONSES[1], " I cannot help."),
    ]
    settings = TokenizationSettings(format="raw", add_eos=False)
    acts = pair_activations(tiny_llama, tiny_tokenizer, pairs, 1, settings)
    assert acts.kept == [0, 2] and acts.skipped[0][0] == 1 and "empty" in acts.skipped[0][1]
    direct = response_activations(tiny_llama, tiny_tokenizer, [PROMPTS[0], PROMPTS[0]], [RESPONSES[0], " No."], 1, settings)
    torch.testing.assert_close(acts.differences[0], direct[0] - direct[1])


def test_response_activations_names_the_bad_response(tiny_llama, tiny_tokenizer):
    with pytest.raises(ValueError, match="response 1"):
        response_activations(tiny_llama, tiny_tokenizer, ["Q:", "Q:"], [" a", ""], 1, TokenizationSettings("raw", add_eos=False))
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        response_activations(tiny_llama, tiny_tokenizer, ["Q:", "Q:"], [" a"], 1)
