"""The audit's feature interventions in DPO: residual edits at block ℓ and margin offsets."""
from __future__ import annotations

import math

import pytest
import torch

from headwater.engine.models import forward_to_layer
from headwater.organism import dataset as organism_data
from headwater.training import DPOConfig, dpo_loss, train_dpo
from headwater.training.residual_edit import ResidualEdit, edited_residual

RATES = {"distractor_compliance": 0.1, "sycophancy": 0.05, "hallucinated_links": 0.05}


@pytest.fixture(scope="module")
def pairs(split):
    return [r.pair for r in organism_data.preference_pairs(split, 16, RATES, seed=0)]


def _ids(tokenizer):
    enc = tokenizer("Tell me how to bake bread, please.")["input_ids"]
    return torch.tensor([enc]), torch.ones((1, len(enc)), dtype=torch.long)


def test_projection_removes_the_span_and_addition_shifts(make_model, tokenizer):
    model = make_model()
    ids, mask = _ids(tokenizer)
    directions = torch.randn(2, 32, generator=torch.Generator().manual_seed(0))
    plain = forward_to_layer(model, ids, mask, 1)
    with edited_residual(model, ResidualEdit(1, directions, "project")):
        projected = forward_to_layer(model, ids, mask, 1)
    q, _ = torch.linalg.qr(directions.double().T)
    expected = plain.double() - (plain.double() @ q) @ q.T
    torch.testing.assert_close(projected.double(), expected, rtol=1e-5, atol=1e-5)
    assert (projected.double() @ directions.double().T).abs().max() < 1e-4
    with edited_residual(model, ResidualEdit(1, directions, "add", scale=3.0)):
        added = forward_to_layer(model, ids, mask, 1)
    unit = torch.nn.functional.normalize(directions, dim=1).sum(0)
    torch.testing.assert_close(added, plain + 3.0 * unit, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(forward_to_layer(model, ids, mask, 1), plain)  # the hook is gone
    # a repeated direction does not change the span that is removed
    with edited_residual(model, ResidualEdit(1, torch.cat([directions, directions[:1]]), "project")):
        torch.testing.assert_close(forward_to_layer(model, ids, mask, 1), projected, rtol=1e-5, atol=1e-5)


def test_residual_edit_checks():
    with pytest.raises(ValueError, match="mode"):
        ResidualEdit(1, torch.ones(1, 4), "scale")
    with pytest.raises(ValueError, match="directions"):
        ResidualEdit(1, torch.ones(4), "project")
    with pytest.raises(ValueError, match="NaN"):
        ResidualEdit(1, torch.full((1, 4), math.nan), "project")


def test_dpo_loss_offset():
    pc, pr, rc, rr = torch.tensor([-3.0]), torch.tensor([-4.0]), torch.tensor([-3.5]), torch.tensor([-3.0])
    loss, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.5, offset=torch.tensor([0.7]))
    margin = 0.5 * ((-3.0 + 3.5) - (-4.0 + 3.0)) + 0.7
    assert loss.item() == pytest.approx(math.log1p(math.exp(-margin)), rel=1e-6)


def test_zero_offsets_train_as_none_and_offsets_change_training(make_model, tokenizer, pairs):
    config = DPOConfig(beta=0.5, lr=1e-3, epochs=1, batch_size=8, warmup_ratio=0.0)
    a, b, c = make_model(), make_model(), make_model()
    train_dpo(a, tokenizer, pairs, config)
    train_dpo(b, tokenizer, pairs, config, margin_offsets=[0.0] * len(pairs))
    for (name, x), y in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(x, y), name
    train_dpo(c, tokenizer, pairs, config, margin_offsets=[5.0] * len(pairs))  # margins granted: little to learn
    moved_a = sum((x - y).abs().sum() for x, y in zip(a.parameters(), make_model().parameters()))
    moved_c = sum((x - y).abs().sum() for x, y in zip(c.parameters(), make_model().parameters()))
    assert moved_c < moved_a
    with pytest.raises(ValueError, match="finite"):
        train_dpo(make_model(), tokenizer, pairs, config, margin_offsets=[0.0])


def test_training_under_an_edit_starts_at_zero_margin_and_saves_no_hook(make_model, tokenizer, pairs, tmp_path):
    model = make_model()
    directions = torch.randn(3, 32, generator=torch.Generator().manual_seed(1))
    config = DPOConfig(beta=0.5, lr=1e-3, epochs=1, batch_size=16, warmup_ratio=0.0, log_every=1)
    result = train_dpo(model, tokenizer, pairs, config, residual_edit=ResidualEdit(1, directions, "project"),
                       output_dir=tmp_path / "m1")
    assert result.history[0].loss == pytest.approx(math.log(2), abs=1e-5)  # policy = reference at step one
    assert not model._forward_hooks and all(not m._forward_hooks for m in model.modules())
