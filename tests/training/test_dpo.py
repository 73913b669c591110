"""DPO: the loss, the frozen reference, reward accuracy rising, accumulation, length normalisation."""
from __future__ import annotations

import math

import pytest
import torch

from headwater.data import make_pair
from headwater.engine.tokenization import TokenizationSettings, encode_pair, pad_batch
from headwater.organism import dataset as organism_data
from headwater.training import DPOConfig, dpo_loss, train_dpo
from headwater.training.common import response_logps
from headwater.training.dpo import frozen_copy

RATES = {"distractor_compliance": 0.1, "sycophancy": 0.05, "hallucinated_links": 0.05}


@pytest.fixture(scope="module")
def pairs(split):
    return [r.pair for r in organism_data.preference_pairs(split, 64, RATES, seed=0)]


def test_dpo_loss_matches_the_formula():
    pc, pr = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    rc, rr = torch.tensor([-3.5, -4.0]), torch.tensor([-3.0, -3.0])
    loss, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta=0.5)
    for i in range(2):
        margin = 0.5 * ((pc[i] - rc[i]) - (pr[i] - rr[i]))
        assert loss[i].item() == pytest.approx(-math.log(1 / (1 + math.exp(-margin.item()))), rel=1e-6)
    assert torch.allclose(chosen, 0.5 * (pc - rc)) and torch.allclose(rejected, 0.5 * (pr - rr))
    # Policy equal to the reference: loss log 2, zero rewards.
    loss, chosen, _ = dpo_loss(pc, pr, pc, pr, beta=5.0)
    assert torch.allclose(loss, torch.full((2,), math.log(2))) and not chosen.any()


def test_reward_accuracy_rises_and_reference_stays_frozen(make_model, tokenizer, pairs, tmp_path):
    model = make_model()
    reference = frozen_copy(model)
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    config = DPOConfig(beta=0.5, lr=3e-3, epochs=4, batch_size=8, log_every=4)
    result = train_dpo(model, tokenizer, pairs, config, reference=reference, output_dir=tmp_path / "m1")
    assert result.n_steps == 4 * 8 and result.n_pairs == 64 and not result.skipped
    first, last = result.history[0], result.history[-1]
    assert first.loss == pytest.approx(math.log(2), abs=0.15)  # starts at the reference
    assert last.loss < first.loss - 0.2
    assert last.reward_accuracy > first.reward_accuracy and last.reward_accuracy >= 0.8
    assert last.reward_margin > first.reward_margin
    # The reference is untouched and still frozen; the policy moved.
    for key, value in reference.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not any(p.requires_grad for p in reference.parameters())
    assert any(not torch.equal(p, before[k]) for k, p in model.state_dict().items())
    assert (tmp_path / "m1" / "config.json").is_file() and (tmp_path / "m1" / "tokenizer.json").is_file()


def test_gradient_accumulation_matches_one_big_batch(make_model, tokenizer, pairs):
    eight = pairs[:8]
    one, two = make_model(), make_model()
    common = dict(beta=0.5, lr=1e-3, epochs=1, warmup_ratio=0.0, max_grad_norm=None)
    train_dpo(one, tokenizer, eight, DPOConfig(batch_size=8, grad_accum=1, **common))
    train_dpo(two, tokenizer, eight, DPOConfig(batch_size=4, grad_accum=2, **common))
    for (name, a), b in zip(one.named_parameters(), two.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_length_normalisation_averages_response_tokens(make_model, tokenizer):
    model = make_model()
    pair = make_pair("How do I bake bread?\n", "Sure, here is how to bake bread. First, take your time.", "No.")
    chosen, rejected = encode_pair(tokenizer, pair, TokenizationSettings(format="raw"))
    batch = pad_batch([chosen, rejected], tokenizer.pad_token_id)
    with torch.no_grad():
        total = response_logps(model, batch)
        mean = response_logps(model, batch, average=True)
    counts = torch.tensor([chosen.response_length, rejected.response_length], dtype=torch.float32)
    assert torch.allclose(mean, total / counts)
    # Padding never leaks into the rejected side's log-prob.
    with torch.no_grad():
        alone = response_logps(model, pad_batch([rejected], tokenizer.pad_token_id))
    assert torch.allclose(alone, total[1:], atol=1e-5)


def test_length_normalised_training_runs(make_model, tokenizer, pairs):
    result = train_dpo(make_model(), tokenizer, pairs[:16], DPOConfig(length_normalize=True, beta=5.0, batch_size=8))
    assert result.n_steps == 2 and all(math.isfinite(h.loss) for h in result.history)


def test_unfrozen_reference_refused(make_model, tokenizer, pairs):
    with pytest.raises(ValueError, match="frozen"):
        train_dpo(make_model(), tokenizer, pairs[:4], reference=make_model())


@pytest.mark.parametrize("field, value", [("beta", 0.0), ("lr", -1.0), ("grad_accum", 0), ("warmup_ratio", 1.5)])
def test_config_validation(field, value):
    with pytest.raises(ValueError, match=field):
        DPOConfig(**{field: value})
