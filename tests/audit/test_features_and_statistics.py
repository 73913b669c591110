"""Per-response features against a direct computation; the paired statistics against scipy and a
float64 one-shot computation; the stored features resume and refuse corruption."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats

from headwater.audit.features import FeatureStore, FeatureStoreError, encode_features, pool_codes
from headwater.audit.sae import SparseAutoencoder
from headwater.audit.statistics import PairedMoments, benjamini_hochberg, concatenate, finish, split_half
from headwater.data import PreferencePair
from headwater.engine.tokenization import TokenizationSettings, encode_response

SETTINGS = TokenizationSettings(format="raw", add_eos=False)


def random_sae(d_in, d_sae=24, k=3, architecture="topk", seed=0):
    g = torch.Generator().manual_seed(seed)
    sae = SparseAutoencoder(d_in, d_sae, architecture=architecture, k=k)
    with torch.no_grad():
        for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec):
            p.copy_(torch.randn(p.shape, generator=g))
        sae.threshold.fill_(0.5)
    return sae


def test_pool_codes_equals_dense_mean_and_max():
    sae = random_sae(8, architecture="jumprelu")
    x = torch.randn(9, 8, generator=torch.Generator().manual_seed(1))
    lengths = [4, 0, 5]
    pooled = pool_codes(sae, x, lengths)
    dense = sae.encode(x)
    expected_mean = torch.stack([dense[:4].mean(0), torch.zeros(24), dense[4:].mean(0)])
    expected_max = torch.stack([dense[:4].max(0).values, torch.zeros(24), dense[4:].max(0).values])
    torch.testing.assert_close(pooled.dense(24, "mean"), expected_mean)
    torch.testing.assert_close(pooled.dense(24, "max"), expected_max)
    assert pooled.indptr[2] == pooled.indptr[1]  # the empty response is an empty row
    picked = pooled.select(torch.tensor([2, 0]))
    torch.testing.assert_close(picked.dense(24), expected_mean[[2, 0]])


PAIRS = [PreferencePair(f"p{i}", f"Question {i}: how do I {w}?", f" You {w} it carefully, step {i}.",
                        " I cannot help." if i % 2 else " No idea.")
         for i, w in enumerate(["bake", "swim", "cook", "read", "sing", "draw", "run"])]
PAIRS.insert(3, PreferencePair("empty", "Q:", "", ""))


def test_encoded_features_equal_a_direct_computation(tmp_path, tiny_llama, tiny_tokenizer):
    sae = random_sae(tiny_llama.config.hidden_size)
    store = encode_features(tiny_llama, tiny_tokenizer, PAIRS, 2, sae, tmp_path / "f", SETTINGS, part_pairs=3)
    assert len(store) == 7 and store.manifest["skipped_pairs"][0]["pair_id"] == "empty"
    assert len(store.manifest["parts"]) == 3
    positions, chosen = [], []
    for block in store.blocks():
        positions += block.positions.tolist()
        chosen.append(block.chosen.dense(24))
        assert block.prompt.shape == (block.positions.numel(), tiny_llama.config.hidden_size)
    assert positions == [0, 1, 2, 4, 5, 6, 7]
    for row, position in enumerate(positions):
        pair = PAIRS[position]
        enc = encode_response(tiny_tokenizer, pair.prompt, pair.chosen, SETTINGS)
        with torch.no_grad():
            hidden = tiny_llama(torch.tensor([enc.input_ids]), output_hidden_states=True).hidden_states[2][0]
        direct = sae.encode(hidden[enc.prompt_length:].float()).mean(0)
        torch.testing.assert_close(torch.cat(chosen)[row], direct, rtol=1e-4, atol=1e-5)
    # the prompt rows come back in the order asked for, and equal the prompts read on their own
    # (the prediction check reads held-out prompts this way and compares them with these rows)
    from headwater.audit.prediction import prompt_representations

    every = torch.cat([block.prompt for block in store.blocks()]).numpy()
    np.testing.assert_array_equal(store.prompt_rows([5, 0, 3, 3]), every[[5, 0, 3, 3]])
    with pytest.raises(IndexError):
        store.prompt_rows([7])
    alone = prompt_representations(tiny_llama, tiny_tokenizer, [PAIRS[p].prompt for p in positions], 2, SETTINGS)
    np.testing.assert_allclose(alone, every, rtol=1e-4, atol=1e-5)
    # a second call with the same inputs opens what is there; other inputs are refused
    again = encode_features(tiny_llama, tiny_tokenizer, PAIRS, 2, sae, tmp_path / "f", SETTINGS, part_pairs=3)
    assert again.manifest == store.manifest
    with pytest.raises(FeatureStoreError, match="another run"):
        encode_features(tiny_llama, tiny_tokenizer, PAIRS, 1, sae, tmp_path / "f", SETTINGS, part_pairs=3)


def test_an_interrupted_encoding_keeps_finished_parts_and_corruption_is_caught(tmp_path, tiny_llama, tiny_tokenizer,
                                                                              monkeypatch):
    sae = random_sae(tiny_llama.config.hidden_size)
    from headwater.audit import features as features_module

    calls = []
    real = features_module._encode_part

    def failing(*args, **kwargs):
        calls.append(args[10])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(features_module, "_encode_part", failing)
    with pytest.raises(KeyboardInterrupt):
        encode_features(tiny_llama, tiny_tokenizer, PAIRS, 2, sae, tmp_path / "f", SETTINGS, part_pairs=3)
    assert not (tmp_path / "f" / "features.json").exists()
    monkeypatch.setattr(features_module, "_encode_part", real)
    recorded = []
    monkeypatch.setattr(features_module, "_encode_part", lambda *a, **k: recorded.append(a[10]) or real(*a, **k))
    store = encode_features(tiny_llama, tiny_tokenizer, PAIRS, 2, sae, tmp_path / "f", SETTINGS, part_pairs=3)
    assert recorded == [1, 2] and len(store) == 7  # part 0 was kept
    part = tmp_path / "f" / store.manifest["parts"][1]["file"]
    data = bytearray(part.read_bytes())
    data[-3] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(FeatureStoreError, match="checksum"):
        FeatureStore.open(tmp_path / "f")
    (tmp_path / "f" / "features.json").write_text("{")
    with pytest.raises(FeatureStoreError, match="JSON"):
        FeatureStore.open(tmp_path / "f")


def test_paired_statistics_equal_scipy_and_a_one_shot_computation():
    rng = np.random.default_rng(0)
    n, m = 400, 6
    chosen = torch.from_numpy(np.abs(rng.normal(size=(n, m))) * (rng.random((n, m)) < 0.6))
    rejected = torch.from_numpy(np.abs(rng.normal(size=(n, m))) * (rng.random((n, m)) < 0.6))
    chosen[:, 0] += 0.3  # a real shift
    chosen[:, 5] = rejected[:, 5] = 0  # never active: not tested
    ids = [f"id{i}" for i in range(n)]
    halves = split_half(ids, seed=3)
    moments = PairedMoments(m)
    for start in range(0, n, 37):  # uneven blocks: the merge must equal one pass
        stop = min(n, start + 37)
        moments.add(chosen[start:stop], rejected[start:stop], halves[start:stop], torch.arange(start, stop))
    result = finish(moments, [f"f{i}" for i in range(m)])
    diff = (chosen - rejected).double().numpy()
    for j in range(5):
        test = stats.ttest_rel(chosen[:, j].numpy(), rejected[:, j].numpy())
        assert result.p[j] == pytest.approx(test.pvalue, rel=1e-9)
        assert result.delta[j] == pytest.approx(diff[:, j].mean(), abs=1e-12)
        assert result.effect[j] == pytest.approx(diff[:, j].mean() / diff[:, j].std(ddof=1), rel=1e-10)
        ci = stats.ttest_rel(chosen[:, j].numpy(), rejected[:, j].numpy()).confidence_interval(0.95)
        assert (result.ci_low[j], result.ci_high[j]) == pytest.approx((ci.low, ci.high), rel=1e-9)
        first = diff[halves, j].mean()
        second = diff[~halves, j].mean()
        assert result.delta_halves[:, j] == pytest.approx([first, second])
        assert set(result.top_pairs[j]) == set(np.argsort(-diff[:, j])[:5])
    assert np.isnan(result.p[5]) and np.isnan(result.q[5]) and result.side[5] == "neither"
    assert result.p[0] < 1e-6 and 0 in result.significant()
    assert result.row(0)["split_half_agree"] and result.side[0] == "both"
    assert 0.3 < halves.mean() < 0.7 and (split_half(ids, seed=3) == halves).all()


def test_benjamini_hochberg_matches_the_definition():
    p = np.array([0.01, 0.04, np.nan, 0.03, 0.5, 0.001])
    q = benjamini_hochberg(p)
    tested = p[~np.isnan(p)]
    order = np.argsort(tested)
    m = tested.size
    raw = tested[order] * m / np.arange(1, m + 1)
    expected = np.minimum.accumulate(raw[::-1])[::-1]
    assert np.isnan(q[2])
    assert np.allclose(np.sort(q[~np.isnan(q)]), np.sort(expected))
    assert q[5] == pytest.approx(0.005) and q[4] == pytest.approx(0.5)


def test_concatenated_families_share_one_fdr():
    moments = PairedMoments(2)
    moments.add(torch.tensor([[1.0, 0.0], [2.0, 0.1], [1.5, 0.0]] * 3), torch.zeros(9, 2), np.array([True, False] * 4 + [True]),
                torch.arange(9))
    one = finish(moments, ["a", "b"], min_active=1)
    both = concatenate([one, one])
    assert both.names == ["a", "b", "a", "b"] and both.q.shape == (4,)
    assert both.q[0] == pytest.approx(benjamini_hochberg(np.concatenate([one.p, one.p]))[0])
    assert json.dumps(both.row(2))


def test_concatenated_families_keep_each_concepts_pair_count():
    small, large = PairedMoments(1), PairedMoments(1)
    small.add(torch.tensor([[1.0], [2.0], [0.5]]), torch.zeros(3, 1), np.array([True, False, True]), torch.arange(3))
    large.add(torch.tensor([[1.0]] * 6 + [[2.0]] * 4), torch.zeros(10, 1), np.array([True, False] * 5), torch.arange(10))
    joined = concatenate([finish(small, ["t0/c0"], min_active=1), finish(large, ["t1/c0"], min_active=1)])
    assert [joined.row(0)["n_pairs"], joined.row(1)["n_pairs"]] == [3, 10]
