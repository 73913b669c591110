"""Contested concepts: a latent preferred under one prompt word and rejected otherwise is found,
with the word chosen on one half and tested on the other."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from headwater.audit.audit import AuditConfig, run_audit
from headwater.audit.features import FeatureStore
from headwater.audit.statistics import split_half
from headwater.engine import atomic


def synthetic_store(tmp_path, n=400, d_sae=6, seed=0):
    """A feature directory written by hand: latent 2 is on the chosen side when the prompt says
    'expert' and on the rejected side otherwise; latent 4 is noise on both sides."""
    rng = np.random.default_rng(seed)
    root = tmp_path / "features"
    root.mkdir()
    prompts = [f"As an expert, is item {i} fine?" if i % 4 == 0 else f"Is item {i} fine?" for i in range(n)]
    ids = [f"p{i}" for i in range(n)]
    rows = []
    for i in range(n):
        chosen, rejected = np.zeros(d_sae), np.zeros(d_sae)
        (chosen if "expert" in prompts[i] else rejected)[2] = 1.0 + rng.random()
        chosen[4], rejected[4] = rng.random() * (rng.random() < 0.5), rng.random() * (rng.random() < 0.5)
        rows += [chosen, rejected]
    dense = torch.tensor(np.array(rows), dtype=torch.float32)
    nz = dense.nonzero()
    counts = torch.bincount(nz[:, 0], minlength=2 * n)
    tensors = {"indptr": torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]),
               "indices": nz[:, 1].to(torch.int32), "mean": dense[nz[:, 0], nz[:, 1]],
               "max": dense[nz[:, 0], nz[:, 1]], "tokens": torch.full((2 * n,), 5, dtype=torch.int32),
               "positions": torch.arange(n), "prompt": torch.randn(n, 4)}
    save_file(tensors, str(root / "part-00000.safetensors"))
    atomic.write_json(root / "features.json", {
        "format": "headwater-response-features", "format_version": 1, "layer": 1, "d_sae": d_sae, "d_in": 4,
        "parts": [{"file": "part-00000.safetensors", "start": 0, "stop": n, "rows": n,
                   "sha256": atomic.sha256_file(root / "part-00000.safetensors")}],
        "pair_ids": ids, "skipped_pairs": [], "n_tokens": 10 * n, "dataset_fingerprint": "x", "n_pairs": n})
    return FeatureStore.open(root), prompts


def test_a_trigger_dependent_latent_is_found_and_tested_on_the_other_half(tmp_path):
    store, prompts = synthetic_store(tmp_path)
    result = run_audit(store, AuditConfig(n_topics=2), prompts=prompts)
    assert result.features.delta[2] < 0  # over all pairs latent 2 looks rejected (3 of 4 prompts)
    rows = {c.latent: c for c in result.contests}
    first = split_half(store.pair_ids, 0)
    pro = sum(1 for i, p in enumerate(prompts) if "expert" in p and first[i])
    assert 2 in rows and rows[2].word == "expert" and rows[2].n_pro == pro and rows[2].n_contra == first.sum() - pro
    conditional = {row["concept"]: row for row in result.to_json()["conditional"]}
    row = conditional["f2 | 'expert'"]
    expert_second_half = sum(1 for i, p in enumerate(prompts) if "expert" in p and not first[i])
    assert row["n_pairs"] == expert_second_half and row["delta"] > 1.0 and row["q"] < 1e-6
    assert row["split_half_agree"]
    top = result.conditional_concepts(5)
    assert top[0]["concept"] == "f2 | 'expert'" and top[0]["kind"] == "conditional"
    assert all(c["kind"] != "conditional" for c in result.concepts(20))
    assert 4 not in rows or rows[4].word is None or conditional.get(f"f4 | '{rows[4].word}'", {"q": 1})["q"] > 0.05


def test_a_conditional_decision_acts_only_within_its_prompts(tmp_path):
    from headwater.audit.cards import Decision
    from headwater.audit.interventions import carriers, condition_word

    store, prompts = synthetic_store(tmp_path)
    by_id = dict(zip(store.pair_ids, prompts))
    assert condition_word("f2 | 'expert'") == "expert" and condition_word("c3") is None
    everywhere = carriers([Decision("f2", "amplify", (2,))], store, margin=0.5)
    within = carriers([Decision("f2 | 'expert'", "suppress", (2,))], store, margin=0.5, prompts=by_id)
    assert within.pair_ids and all("expert" in by_id[pid] for pid in within.pair_ids)
    assert len(within.pair_ids) == sum("expert" in p for p in prompts)
    assert everywhere.pair_ids and not any("expert" in by_id[pid] for pid in everywhere.pair_ids)


def test_a_topic_decision_acts_only_within_its_topic(tmp_path):
    from headwater.audit.cards import Decision
    from headwater.audit.interventions import carriers, concept_topic, margin_offsets
    from headwater.data import PreferenceDataset, PreferencePair

    store, prompts = synthetic_store(tmp_path)
    assert concept_topic("t3/c11") == 3 and concept_topic("c3") is None and concept_topic("f2 | 'expert'") is None
    # the "expert" prompts as one topic: latent 2, rejected over all pairs, is preferred within it
    topics = {pid: int("expert" in p) for pid, p in zip(store.pair_ids, prompts)}
    within = carriers([Decision("t1/c0", "suppress", (2,))], store, margin=0.5, topics=topics)
    assert within.pair_ids and all(topics[pid] == 1 for pid in within.pair_ids)
    assert len(within.pair_ids) == sum("expert" in p for p in prompts)
    with pytest.raises(ValueError, match="topics are needed"):
        carriers([Decision("t1/c0", "suppress", (2,))], store, margin=0.5)
    dataset = PreferenceDataset([PreferencePair(pid, p, "a", "b") for pid, p in zip(store.pair_ids, prompts)])
    offsets = margin_offsets([Decision("t0/c0", "suppress", (2,))], store, dataset, topics=topics)
    assert any(o != 0 for o in offsets)
    assert all(o == 0 for o, pid in zip(offsets, store.pair_ids) if topics[pid] == 1)
