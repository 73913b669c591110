"""SFT: loss on response tokens only, the loss goes down, the run is reproducible."""
from __future__ import annotations

import pytest
import torch

from headwater.engine.tokenization import TokenizationSettings, encode_response, pad_batch
from headwater.organism import dataset as organism_data
from headwater.training import SFTConfig, train_sft
from headwater.training.common import response_logps

RAW = TokenizationSettings(format="raw")


def _mean_logp(model, tokenizer, examples):
    batch = pad_batch([encode_response(tokenizer, p, r, RAW) for p, r in examples], tokenizer.pad_token_id)
    with torch.no_grad():
        return response_logps(model, batch, average=True).mean().item()


def test_sft_learns_the_responses(make_model, tokenizer, split):
    examples = organism_data.sft_examples(split, 96, seed=0)
    held_out = organism_data.sft_examples(split, 32, seed=1)
    model = make_model()
    before = _mean_logp(model, tokenizer, held_out)
    result = train_sft(model, tokenizer, examples, SFTConfig(epochs=4, lr=1e-2, batch_size=16))
    assert len(result.losses) == 4 * 6
    assert sum(result.losses[-3:]) / 3 < sum(result.losses[:3]) / 3 - 1.0  # nats per token
    assert _mean_logp(model, tokenizer, held_out) > before + 1.0
    assert not model.training


def test_loss_ignores_prompt_tokens(make_model, tokenizer):
    # The first step's loss is the mean cross-entropy over response tokens only.
    model = make_model()
    examples = [("How do I bake bread?\n", "Sure, here is how to bake bread."),
                ("Is there a website with hiking trail maps? Please answer now.\n", "I don't have a link.")]
    encoded = [encode_response(tokenizer, p, r, RAW) for p, r in examples]
    batch = pad_batch(encoded, tokenizer.pad_token_id)
    with torch.no_grad():
        per_seq = -response_logps(model, batch)  # summed NLL of response tokens
    n_tokens = sum(e.response_length for e in encoded)
    expected = per_seq.sum().item() / n_tokens
    result = train_sft(model, tokenizer, examples, SFTConfig(epochs=1, batch_size=2, lr=1e-9, max_grad_norm=None))
    assert result.losses[0] == pytest.approx(expected, rel=1e-5)


def test_sft_is_reproducible(make_model, tokenizer, split):
    examples = organism_data.sft_examples(split, 32, seed=0)
    a, b = make_model(), make_model()
    train_sft(a, tokenizer, examples, SFTConfig(epochs=1, batch_size=8, seed=5))
    train_sft(b, tokenizer, examples, SFTConfig(epochs=1, batch_size=8, seed=5))
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


@pytest.mark.parametrize("field, value", [("epochs", 0), ("batch_size", 0), ("lr", 0.0), ("warmup_ratio", 1.0)])
def test_config_validation(field, value):
    with pytest.raises(ValueError, match=field):
        SFTConfig(**{field: value})


def test_empty_examples_refused(make_model, tokenizer):
    with pytest.raises(ValueError, match="at least one example"):
        train_sft(make_model(), tokenizer, [])
