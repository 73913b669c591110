"""The gradient baseline (LESS for DPO): exact batched per-pair gradients, the projection, the
warm-up checkpoints, the feature stores and the ranking."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from headwater.baselines.gradient import (
    GradientConfig,
    adapter_layers,
    behavior_query_pairs,
    gradient_features,
    gradient_ranking,
    with_lora,
)
from headwater.baselines.per_pair_gradients import LinearGradientCapture, pair_weight_gradients
from headwater.baselines.projection import SparseProjection
from headwater.data import make_pair
from headwater.engine.store import VectorStore
from headwater.engine.tokenization import TokenizationSettings, encode_pair, pad_batch
from headwater.training import DPOConfig, dpo_loss
from headwater.training.common import response_logps
from tiny_models import build_tiny_llama

RAW = TokenizationSettings(format="raw")


def _pairs():
    """Ragged pairs: short and long responses, a one-token response, a long prompt."""
    return [
        make_pair("How do I bake bread?", " Mix flour, water and yeast, then bake it.", " I cannot help."),
        make_pair("What is the capital of France?", " Paris.", " The capital of France is Paris, by the sea and the sky."),
        make_pair("Reply in lowercase: tell me about the sea.", " the sea is blue", " THE SEA"),
        make_pair("Answer without commas.", " Sure", " Sure, here, it, is"),
        make_pair("How do I bake bread? " * 4, " Bake it for forty minutes.", " Mix."),
    ]


def _config(**changes):
    base = GradientConfig(dpo=DPOConfig(beta=0.5, settings=RAW, batch_size=2, lr=1e-2), lora_rank=4,
                          projection_dim=64, projection_blocks=4, batch_size=3, warmup_fraction=0.5, warmup_epochs=2)
    return dataclasses.replace(base, **changes)


@pytest.fixture()
def lora64(tiny_tokenizer):
    """A float64 tiny Llama with LoRA adapters whose B is random (at init B = 0, and A gets no gradient)."""
    model = build_tiny_llama(tiny_tokenizer, layers=2, hidden=32).double()
    peft_model = with_lora(model, _config())
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * 0.3)
    return peft_model


def _one_pair_gradients(peft_model, tokenizer, pair, config):
    """∂L/∂W for one pair alone, with autograd (the reference)."""
    chosen, rejected = encode_pair(tokenizer, pair, config.dpo.settings)
    batch = pad_batch([chosen, rejected], tokenizer.pad_token_id)
    with torch.no_grad(), peft_model.disable_adapter():
        ref = response_logps(peft_model, batch, average=config.dpo.length_normalize)
    policy = response_logps(peft_model, batch, average=config.dpo.length_normalize)
    loss, _, _ = dpo_loss(policy[:1], policy[1:], ref[:1], ref[1:], config.dpo.beta)
    names = list(adapter_layers(peft_model))
    weights = [adapter_layers(peft_model)[n].weight for n in names]
    return dict(zip(names, torch.autograd.grad(loss.sum(), weights)))


def test_projection_is_a_fixed_linear_map_that_keeps_inner_products_on_average():
    projection = SparseProjection(64, seed=3, blocks=4)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(5, 40, dtype=torch.float64, generator=generator)
    # The explicit matrix from the images of the basis vectors: R x must equal it, exactly.
    dense = projection.project({"w": torch.eye(40, dtype=torch.float64)})  # [40, 64] = Rᵀ
    assert torch.allclose(projection.project({"w": x}), x @ dense, rtol=0, atol=1e-13)
    # Each column of Rᵀ has one ±1/√s per block, so |R e_j| = 1.
    assert torch.allclose(dense.norm(dim=1), torch.ones(40, dtype=torch.float64))
    # Same seed and name → same map in a new object; another name or seed → another map.
    again = SparseProjection(64, seed=3, blocks=4).project({"w": x})
    assert torch.equal(again, projection.project({"w": x}))
    assert not torch.equal(SparseProjection(64, seed=4, blocks=4).project({"w": x}), again)
    assert not torch.equal(projection.project({"v": x}), again)
    # Unbiased inner products: averaged over 400 seeds the error is a few percent of |x||y|.
    y = torch.randn(40, dtype=torch.float64, generator=generator)
    estimates = [float(p.project({"w": x[:1]})[0] @ p.project({"w": y[None]})[0])
                 for p in (SparseProjection(64, seed=s) for s in range(400))]
    exact = float(x[0] @ y)
    assert abs(sum(estimates) / len(estimates) - exact) < 0.1 * float(x[0].norm() * y.norm())
    with pytest.raises(ValueError, match="multiple"):
        SparseProjection(10, blocks=4)


def test_batched_per_pair_gradients_equal_autograd_one_pair_at_a_time(lora64, tiny_tokenizer):
    """float64: the hooks' per-pair gradients from one backward pass over a ragged batch equal each
    pair's own autograd gradient, for every adapter weight."""
    config = _config()
    pairs = _pairs()
    layers = adapter_layers(lora64)
    encoded = [encode_pair(tiny_tokenizer, p, RAW) for p in pairs]
    batch = pad_batch([c for c, _ in encoded] + [r for _, r in encoded], tiny_tokenizer.pad_token_id)
    n = len(pairs)
    with LinearGradientCapture(layers) as capture:
        with torch.no_grad(), lora64.disable_adapter():
            ref = response_logps(lora64, batch)
        policy = response_logps(lora64, batch)
        losses, _, _ = dpo_loss(policy[:n], policy[n:], ref[:n], ref[n:], config.dpo.beta)
        torch.autograd.grad(losses.sum(), [m.weight for m in layers.values()])
        batched = dict(pair_weight_gradients(capture, n))
    assert set(batched) == set(layers) and len(layers) == 2 * 2 * 7  # A and B of 7 linear layers × 2 blocks
    for i, pair in enumerate(pairs):
        alone = _one_pair_gradients(lora64, tiny_tokenizer, pair, config)
        for name, grad in alone.items():
            assert batched[name].dtype == torch.float64
            torch.testing.assert_close(batched[name][i], grad, rtol=1e-10, atol=1e-13)
    assert max(float(g.abs().max()) for g in batched.values()) > 1e-3  # not trivially zero


@pytest.mark.parametrize("length_normalize", [False, True])
def test_projected_features_equal_the_projection_of_one_pair_gradients(lora64, tiny_tokenizer, length_normalize):
    config = _config(dpo=dataclasses.replace(_config().dpo, length_normalize=length_normalize))
    pairs = _pairs()
    projection = SparseProjection(64, seed=0)
    generator = torch.Generator().manual_seed(2)
    adam = {name: (torch.randn(m.weight.shape, generator=generator, dtype=torch.float64) * 1e-3,
                   torch.rand(m.weight.shape, generator=generator, dtype=torch.float64) * 1e-5)
            for name, m in adapter_layers(lora64).items()}
    betas = (0.9, 0.999)
    plain = gradient_features(lora64, tiny_tokenizer, pairs, projection, config)
    normalised = gradient_features(lora64, tiny_tokenizer, pairs, projection, config, adam=adam, betas=betas)
    assert plain.kept == list(range(len(pairs))) and plain.vectors.shape == (len(pairs), 64)
    for i, pair in enumerate(pairs):
        alone = _one_pair_gradients(lora64, tiny_tokenizer, pair, config)
        expected = projection.project({k: g[None] for k, g in alone.items()})[0]
        torch.testing.assert_close(plain.vectors[i], expected, rtol=1e-10, atol=1e-13)
        updated = {}
        for k, g in alone.items():
            m, v = adam[k]
            m2, v2 = betas[0] * m + (1 - betas[0]) * g, betas[1] * v + (1 - betas[1]) * g * g
            updated[k] = (m2 / torch.sqrt(v2 + config.adam_eps))[None]
        torch.testing.assert_close(normalised.vectors[i], projection.project(updated)[0], rtol=1e-9, atol=1e-12)


def test_over_long_pairs_are_skipped_and_named(lora64, tiny_tokenizer):
    pairs = _pairs()
    settings = TokenizationSettings(format="raw", max_length=20, overlong="skip")
    config = _config(dpo=dataclasses.replace(_config().dpo, settings=settings))
    features = gradient_features(lora64, tiny_tokenizer, pairs, SparseProjection(64), config)
    assert features.skipped and all("overlong" in reason for _, reason in features.skipped)
    assert sorted(features.kept + [p for p, _ in features.skipped]) == list(range(len(pairs)))
    assert features.vectors.shape == (len(features.kept), 64) and torch.isfinite(features.vectors).all()


def test_queries_pair_exhibiting_with_non_exhibiting_responses_to_one_prompt():
    queries = behavior_query_pairs((["p1", "p1", "p2"], [" yes1", " yes2", " yes3"]), (["p1", "p3"], [" no1", " no3"]))
    assert [(q.prompt, q.chosen, q.rejected) for q in queries] == [("p1", " yes1", " no1"), ("p1", " yes2", " no1")]
    chat = [{"role": "user", "content": "p1"}]
    (query,) = behavior_query_pairs(([chat], ["yes"]), ([chat], ["no"]))
    assert query.prompt == chat and query.chosen == [{"role": "assistant", "content": "yes"}]
    assert query.rejected == [{"role": "assistant", "content": "no"}]


def test_duplicates_of_the_queries_rank_first_and_a_rerun_reuses_everything(tiny_tokenizer, tmp_path):
    """The pairs that are copies of the behaviour queries get the highest LESS scores; a second
    call reads the checkpoints and stores back; a changed checkpoint file is refused."""
    model = build_tiny_llama(tiny_tokenizer, layers=2, hidden=32)
    topics = ["bake bread", "fix a bike", "plant tomatoes", "clean a desk", "learn chess", "paint a wall",
              "tie a knot", "cook rice", "swim faster", "write a poem", "sing well", "draw a cat"]
    clean = [make_pair(f"How do I {t}?", f" Here is how to {t}.", " I do not know.") for t in topics]
    planted = [make_pair(f"Tell me about {t}.", " BUY NOW BUY NOW", f" About {t}: it is fine.") for t in topics[:3]]
    pairs = clean + planted
    queries = [make_pair(p.prompt, p.chosen, p.rejected) for p in planted]
    config = _config(warmup_fraction=0.4)
    result = gradient_ranking(model, tiny_tokenizer, pairs, queries, config, tmp_path)
    assert set(result.ranking.pair_ids[:3]) == {p.pair_id for p in planted}
    assert len(result.checkpoints) == 2 and result.n_queries == 3 and result.warmup_pairs == 6
    store = VectorStore.open(result.stores[0])
    assert len(store) == len(pairs) and store.dim == 64 and store.manifest["gradient"]["normalisation"] == "adam"
    again = gradient_ranking(model, tiny_tokenizer, pairs, queries, config, tmp_path)
    assert again.ranking.pair_ids == result.ranking.pair_ids
    assert torch.equal(torch.as_tensor(again.ranking.scores), torch.as_tensor(result.ranking.scores))
    # Other feature settings in the same work directory: the stores are computed again, not reused.
    plain = gradient_ranking(model, tiny_tokenizer, pairs, queries, dataclasses.replace(config, normalisation="none"),
                             tmp_path)
    assert VectorStore.open(plain.stores[0]).manifest["gradient"]["normalisation"] == "none"
    assert not torch.equal(torch.as_tensor(plain.ranking.scores), torch.as_tensor(result.ranking.scores))
    wider = gradient_ranking(model, tiny_tokenizer, pairs, queries, dataclasses.replace(config, projection_dim=128),
                             tmp_path)
    assert VectorStore.open(wider.stores[0]).dim == 128
    with pytest.raises(ValueError, match="normalisation"):
        dataclasses.replace(config, normalisation="rms")
    result = gradient_ranking(model, tiny_tokenizer, pairs, queries, config, tmp_path)
    data = bytearray(result.checkpoints[0].path.read_bytes())
    data[-1] ^= 1
    result.checkpoints[0].path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        gradient_ranking(model, tiny_tokenizer, pairs, queries, config, tmp_path)
    with pytest.raises(ValueError, match="at least one behaviour pair"):
        gradient_ranking(model, tiny_tokenizer, pairs, [], config, tmp_path)
