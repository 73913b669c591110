"""build_organism on the miniature config: files, ground truth, cache reuse, rebuild, determinism."""
from __future__ import annotations

import json

import pytest
import torch

from headwater.data import load_preferences
from headwater.organism import (
    BEHAVIORS,
    OrganismConfig,
    behavior_rates,
    build_organism,
    load_organism,
    organism_dir,
)
from headwater.engine.models import cache_root
from headwater.organism import build as build_module


def test_layout_and_ground_truth(miniature):
    root = miniature.root
    for name in ("m0/config.json", "m0/tokenizer.json", "m1/model.safetensors", "m1/tokenizer.json",
                 "preferences.jsonl", "ground_truth.json", "test_prompts.json", "COMPLETE"):
        assert (root / name).is_file(), name
    truth = json.loads(miniature.ground_truth_path.read_text())
    config = OrganismConfig.miniature()
    assert truth["seed"] == 0 and OrganismConfig.from_dict(truth["config"]) == config
    assert root == organism_dir(config, root.parent.parent)
    dataset = load_preferences(miniature.preferences_path)
    assert len(dataset) == config.n_pairs == truth["n_pairs"] == len(truth["pairs"])
    for behavior in BEHAVIORS:
        planted = miniature.planted_ids(behavior)
        assert len(planted) == round(config.planted_rates[behavior] * config.n_pairs)
        assert all(pid in dataset for pid in planted)
    assert [row["pair_id"] for row in truth["pairs"]] == dataset.ids
    assert set(miniature.test_prompts) == set(BEHAVIORS) == set(miniature.judges)
    with pytest.raises(KeyError, match="no planted behaviour"):
        miniature.planted_ids("nonsense")


def test_models_load_and_differ(miniature):
    m0, m1 = miniature.load_model("m0"), miniature.load_model("m1")
    tokenizer = miniature.load_tokenizer()
    assert m0.config.vocab_size == len(tokenizer)
    assert any(not torch.equal(a, b) for a, b in zip(m0.parameters(), m1.parameters()))
    rates = behavior_rates(m1, tokenizer, miniature.test_prompts, miniature.judges, n=1, max_new_tokens=8)
    for behavior in BEHAVIORS:
        for condition in ("trigger", "no_trigger"):
            r = rates[behavior][condition]
            assert r.n_responses == OrganismConfig.miniature().n_test_prompts and 0 <= r.rate <= 1


def test_cache_is_reused(miniature, organism_cache, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a complete cached organism must not be rebuilt")

    monkeypatch.setattr(build_module, "_build_steps", fail)
    again = build_organism(OrganismConfig.miniature(), cache_dir=organism_cache, progress=False)
    assert again.root == miniature.root and again.ground_truth == miniature.ground_truth


def test_incomplete_build_is_redone(tmp_path):
    config = OrganismConfig.miniature(seed=3)
    target = organism_dir(config, tmp_path)
    target.mkdir(parents=True)
    (target / "ground_truth.json").write_text("half-written")
    with pytest.raises(ValueError, match="not a complete organism"):
        load_organism(target)
    organism = build_organism(config, cache_dir=tmp_path, progress=False)
    assert organism.root == target and (target / "COMPLETE").is_file()
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]  # no temporary left over


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(build_module, "_build_steps", boom)
    with pytest.raises(RuntimeError, match="interrupted"):
        build_organism(OrganismConfig.miniature(seed=4), cache_dir=tmp_path, progress=False)
    assert list((tmp_path / "organism").iterdir()) == []


def test_deterministic_under_seed(miniature, tmp_path):
    again = build_organism(OrganismConfig.miniature(), cache_dir=tmp_path, progress=False)
    assert again.root != miniature.root
    assert again.preferences_path.read_bytes() == miniature.preferences_path.read_bytes()
    assert again.ground_truth["planted"] == miniature.ground_truth["planted"]
    for which in ("m0", "m1"):
        a, b = miniature.load_model(which).state_dict(), again.load_model(which).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), which


def test_cache_root_and_fingerprint(monkeypatch, tmp_path):
    monkeypatch.setenv("HEADWATER_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    config = OrganismConfig.miniature()
    assert organism_dir(config) == tmp_path / "organism" / config.fingerprint()
    assert OrganismConfig.miniature(seed=1).fingerprint() != config.fingerprint()
    assert OrganismConfig.miniature().fingerprint() == config.fingerprint()
    assert hash(config) == hash(OrganismConfig.miniature())


@pytest.mark.parametrize("kwargs, match", [
    ({"planted_rates": {"nonsense": 0.1}}, "unknown behaviour"),
    ({"planted_rates": {"sycophancy": 1.5}}, "planted_rates"),
    ({"sft_slip_rates": {"sycophancy": -0.1}}, "sft_slip_rates"),
    ({"sft_slip_rates": {"nonsense": 0.1}}, "sft_slip_rates"),
    ({"n_pairs": 0}, "n_pairs"),
    ({"hidden_size": 30, "num_heads": 4}, "divisible"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OrganismConfig(**kwargs)
