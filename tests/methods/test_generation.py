"""sample_responses: left-padded batches, only new tokens, EOS stops, deterministic under a seed."""
from __future__ import annotations

import pytest
import torch

from headwater.engine.tokenization import TokenizationSettings, encode_prompt
from headwater.methods.generation import sample_responses
from headwater.organism import dataset as organism_data
from headwater.organism.model import organism_model
from headwater.organism.tokenizer import train_tokenizer
from headwater.organism.world import WorldSplit
from headwater.training import SFTConfig, train_sft

RAW = TokenizationSettings(format="raw")
PROMPTS = ["How do I bake bread?\n", "Where can I find hiking trail maps? Use bullet points.\n", "Hi\n"]


@pytest.fixture(scope="module")
def trained():
    """A tiny model taught a little SFT, so that it does emit EOS."""
    split = WorldSplit.from_seed(0)
    tokenizer = train_tokenizer(organism_data.tokenizer_corpus(split, 0, n=200), vocab_size=400)
    model = organism_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    train_sft(model, tokenizer, organism_data.sft_examples(split, 128, 0), SFTConfig(epochs=2, lr=5e-3, batch_size=16))
    return model, tokenizer


def test_shapes_and_determinism(trained):
    model, tokenizer = trained
    state = torch.random.get_rng_state()
    a = sample_responses(model, tokenizer, PROMPTS, n=3, max_new_tokens=12, settings=RAW, seed=7, batch_size=4)
    b = sample_responses(model, tokenizer, PROMPTS, n=3, max_new_tokens=12, settings=RAW, seed=7, batch_size=4)
    assert torch.equal(state, torch.random.get_rng_state())  # the global generator is untouched
    assert a == b and [len(r) for r in a] == [3, 3, 3]
    c = sample_responses(model, tokenizer, PROMPTS, n=3, max_new_tokens=12, settings=RAW, seed=8, batch_size=4)
    assert c != a


def test_greedy_batch_equals_one_prompt_at_a_time(trained):
    """Left padding must not change what a prompt continues into."""
    model, tokenizer = trained
    batched = sample_responses(model, tokenizer, PROMPTS, temperature=0, max_new_tokens=16, settings=RAW, batch_size=8)
    single = [sample_responses(model, tokenizer, [p], temperature=0, max_new_tokens=16, settings=RAW)[0] for p in PROMPTS]
    assert batched == single


def test_decodes_only_new_tokens_up_to_eos(trained):
    model, tokenizer = trained
    prompt = PROMPTS[0]
    (response,), = sample_responses(model, tokenizer, [prompt], temperature=0, max_new_tokens=60, settings=RAW)
    # The reference: greedy ids by hand, cut at the first EOS.
    ids = torch.tensor([encode_prompt(tokenizer, prompt, RAW)])
    with torch.no_grad():
        for _ in range(60):
            next_id = model(input_ids=ids).logits[0, -1].argmax().item()
            if next_id == tokenizer.eos_token_id:
                break
            ids = torch.cat([ids, torch.tensor([[next_id]])], dim=1)
    expected = tokenizer.decode(ids[0, len(encode_prompt(tokenizer, prompt, RAW)) :], skip_special_tokens=True)
    assert response == expected
    assert prompt.strip() not in response and "<|eos|>" not in response


def test_chat_format_prompts(trained):
    model, tokenizer = trained
    out = sample_responses(model, tokenizer, [[{"role": "user", "content": "Hi"}]], max_new_tokens=5,
                           settings=TokenizationSettings(format="chat"))
    assert len(out) == 1 and len(out[0]) == 1


@pytest.mark.parametrize("kwargs, match", [({"n": 0}, "n"), ({"temperature": -1.0}, "temperature"),
                                           ({"max_new_tokens": 0}, "max_new_tokens"), ({"batch_size": 0}, "batch_size")])
def test_bad_arguments(trained, kwargs, match):
    model, tokenizer = trained
    with pytest.raises(ValueError, match=match):
        sample_responses(model, tokenizer, PROMPTS, **kwargs)
