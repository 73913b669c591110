"""The steering check: scale · v added to block ℓ's output, removed afterwards; rates per scale."""
from __future__ import annotations

import pytest
import torch

from headwater.engine.models import decoder_blocks
from headwater.methods.judges import RegexJudge
from headwater.methods.steering import steered, steering_rates


def _block_output(model, tokenizer, layer):
    """Block ``layer``'s output as the next block receives it, and the logits."""
    seen = {}
    hook = decoder_blocks(model)[layer].register_forward_pre_hook(lambda m, args: seen.update(x=args[0].clone()))
    try:
        ids = tokenizer(["How do I bake bread?"], return_tensors="pt")
        with torch.no_grad():
            logits = model(**ids).logits
    finally:
        hook.remove()
    return seen["x"], logits


def test_steering_adds_the_vector_at_the_block_and_only_inside_the_context(tiny_tokenizer):
    from tiny_models import build_tiny_llama

    tiny_llama = build_tiny_llama(tiny_tokenizer)  # its own model: the session's may carry other tests' hooks
    hooks_before = [len(block._forward_hooks) for block in decoder_blocks(tiny_llama)]
    d = tiny_llama.config.hidden_size
    vector = torch.randn(d, generator=torch.Generator().manual_seed(0))
    before, logits = _block_output(tiny_llama, tiny_tokenizer, 2)  # the input of block 3 = block 2's output
    with steered(tiny_llama, vector, 2, 3.0):
        inside, steered_logits = _block_output(tiny_llama, tiny_tokenizer, 2)
    torch.testing.assert_close(inside, before + 3.0 * vector, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(steered_logits, logits)
    after, logits_after = _block_output(tiny_llama, tiny_tokenizer, 2)
    assert torch.equal(after, before) and torch.equal(logits_after, logits)
    assert [len(block._forward_hooks) for block in decoder_blocks(tiny_llama)] == hooks_before
    with steered(tiny_llama, vector, -2, 0.0):  # scale 0: the model is unchanged
        _, zero_logits = _block_output(tiny_llama, tiny_tokenizer, 2)
    assert torch.equal(zero_logits, logits)


def test_bad_vectors_are_refused(tiny_llama):
    with pytest.raises(ValueError, match="hidden size"):
        with steered(tiny_llama, torch.ones(3), 1, 1.0):
            pass
    with pytest.raises(ValueError, match="inf or NaN"):
        with steered(tiny_llama, torch.full((tiny_llama.config.hidden_size,), float("nan")), 1, 1.0):
            pass


def test_rates_per_scale_with_intervals(tiny_llama, tiny_tokenizer):
    """A large push along the unembedding row of one token makes the model say it: the rate of a
    judge for that token rises from the unsteered model's (greedy: a random tiny model's logits are
    all small, so sampling would blur the push)."""
    import re

    # the longest all-letter token of the vocabulary, and a judge for it
    word, token = max(((tiny_tokenizer.decode([i]).strip(), i) for i in range(len(tiny_tokenizer))
                       if tiny_tokenizer.decode([i]).strip().isalpha()), key=lambda t: len(t[0]))
    direction = tiny_llama.lm_head.weight[token].detach().clone()
    judge = RegexJudge(re.escape(word))
    rates = steering_rates(tiny_llama, tiny_tokenizer, ["Tell me about the sea.", "What is rain?"], judge,
                           direction / direction.norm(), layer=-1, scales=[0.0, 200.0], n=4, temperature=0.0,
                           max_new_tokens=6, seed=0, n_boot=200)
    assert [r["scale"] for r in rates] == [0.0, 200.0]
    assert rates[1]["rate"] > rates[0]["rate"] and rates[1]["rate"] >= 0.9
    assert all(r["ci_low"] <= r["rate"] <= r["ci_high"] and r["n_responses"] == 8 for r in rates)
