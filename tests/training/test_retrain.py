"""Retraining from a saved M0 on real files: outputs, per-pair weights, intervention directories, the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from headwater.methods.attribution import Ranking
from headwater.data import load_preferences, make_pair, save_preferences
from headwater.engine.tokenization import TokenizationSettings
from headwater.methods.interventions import intervene, write_intervention
from headwater.organism import organism_recipe
from headwater.training.retrain import pair_weights, retrain
from headwater.training.dpo import DPOConfig
from headwater.cli import build_parser

CONFIG = DPOConfig(beta=0.5, lr=1e-2, epochs=2, batch_size=2, warmup_ratio=0.0,
                   settings=TokenizationSettings(format="raw"))


@pytest.fixture()
def m0(saved_model):
    return saved_model


@pytest.fixture()
def data(tmp_path):
    pairs = [
        make_pair("How do I bake bread?", " Mix flour and water.", " I cannot help."),
        make_pair("Tell me about the sea.", " the sea is blue.", " No."),
        make_pair("What is the capital of France?", " Paris.", " I cannot help with that request."),
        make_pair("Answer without commas.", " Sure.", " The sky."),
    ]
    return save_preferences(pairs, tmp_path / "prefs.jsonl")


def _params(path):
    model = AutoModelForCausalLM.from_pretrained(path)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_retrain_saves_model_and_record(tmp_path, m0, data):
    out = retrain(m0, data, tmp_path / "r", config=CONFIG)
    record = json.loads((out / "retrain.json").read_text())
    assert record["dataset_fingerprint"] == load_preferences(data).fingerprint
    assert record["n_pairs"] == record["n_trained"] == 4 and record["n_steps"] == 4
    assert record["config"]["beta"] == 0.5 and record["config"]["settings"]["format"] == "raw"
    assert record["weighted"] is False and record["history"]
    assert not _same(_params(out), _params(m0))  # it trained
    assert (out / "tokenizer.json").is_file()
    with pytest.raises(FileExistsError):
        retrain(m0, data, out, config=CONFIG)


def test_unit_weights_equal_no_weights_and_zero_weights_do_not_move(tmp_path, m0, data):
    plain = retrain(m0, data, tmp_path / "plain", config=CONFIG)
    ds = load_preferences(data)
    ranking = Ranking.from_scores(ds.ids, np.arange(4.0, 0, -1))
    ones, manifest = intervene(ds, ranking, mode="reweight", top=0)  # every weight 1.0
    write_intervention(tmp_path / "ones", ones, manifest)
    unit = retrain(m0, tmp_path / "ones", tmp_path / "unit", config=CONFIG)
    assert json.loads((unit / "retrain.json").read_text())["weighted"] is True
    assert _same(_params(plain), _params(unit))

    zeros, manifest = intervene(ds, ranking, mode="reweight", top=4, weight=0.0)
    write_intervention(tmp_path / "zeros", zeros, manifest, formats=("parquet",))
    frozen = retrain(m0, tmp_path / "zeros", tmp_path / "frozen", config=CONFIG)
    record = json.loads((frozen / "retrain.json").read_text())
    assert record["intervention"]["mode"] == "reweight" and record["weights"]["max"] == 0.0
    assert _same(_params(frozen), _params(m0))  # every loss scaled to zero: no update


def test_bad_weights_are_named(tmp_path, m0):
    pairs = [make_pair("Q?", " a", " b", metadata={"weight": 1.0}), make_pair("R?", " a", " b", metadata={"weight": -2})]
    with pytest.raises(ValueError, match=r"pair 1 \(id [0-9a-f]{16}\) has weight -2"):
        pair_weights(pairs)
    with pytest.raises(ValueError, match="pair 1 .* has weight None"):
        pair_weights([pairs[0], make_pair("R?", " a", " b")])
    path = save_preferences(pairs, tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match="has weight -2"):
        retrain(m0, path, tmp_path / "r", config=CONFIG)


def test_cli_retrain(tmp_path, m0, data, capsys):
    parser = build_parser()
    defaults = parser.parse_args(["retrain", "--model", "m", "--data", "d", "--out", "o"])
    recipe = organism_recipe()
    assert defaults.recipe == "organism" and defaults.beta is None  # unset flags keep the recipe's values
    args = parser.parse_args(["retrain", "--model", str(m0), "--data", str(data), "--out", str(tmp_path / "r"),
                              "--beta", "2", "--lr", "0.001", "--batch-size", "4", "--length-normalize",
                              "--format", "raw"])
    assert args.func(args) == 0
    record = json.loads((tmp_path / "r" / "retrain.json").read_text())
    assert record["config"]["beta"] == 2.0 and record["config"]["length_normalize"] is True
    assert (record["config"]["warmup_ratio"], record["config"]["epochs"], record["config"]["grad_accum"]) == (
        recipe.warmup_ratio, recipe.epochs, recipe.grad_accum)
    assert record["n_steps"] == 1 and "retrained on 4 pairs" in capsys.readouterr().out


def test_loop_on_the_miniature_organism(tmp_path):
    """intervene -> retrain -> evaluate on a real (miniature) organism and its planted pairs."""
    from headwater.methods.evaluation import evaluate_model
    from headwater.engine.models import load_model
    from headwater.organism import TRIGGER_BEHAVIOR, OrganismConfig, build_organism

    config = OrganismConfig.miniature()
    organism = build_organism(config, cache_dir=tmp_path / "cache", progress=False)
    ds = organism.load_preferences()
    planted = set(organism.planted_ids(TRIGGER_BEHAVIOR))
    oracle = Ranking.from_scores(ds.ids, np.array([float(p in planted) for p in ds.ids], np.float32), "oracle")
    switched, manifest = intervene(ds, oracle, mode="switch", top=len(planted))
    assert set(manifest["changed_pair_ids"]) == planted
    write_intervention(tmp_path / "switch", switched, manifest)
    out = retrain(organism.m0_path, tmp_path / "switch", tmp_path / "m", config=config.dpo_config())
    record = json.loads((out / "retrain.json").read_text())
    assert record["dataset_fingerprint"] == manifest["output_fingerprint"]
    assert record["intervention"]["n_changed"] == len(planted)
    model, tokenizer = load_model(out)
    prompts = organism.test_prompts[TRIGGER_BEHAVIOR]["trigger"]
    result = evaluate_model(model, tokenizer, prompts, organism.judges[TRIGGER_BEHAVIOR], n=2, max_new_tokens=16,
                            settings=organism.settings)
    assert result.n_responses == 2 * len(prompts) and 0 <= result.ci_low <= result.rate <= result.ci_high <= 1


def test_trl_trainer_option(tmp_path, m0, data):
    pytest.importorskip("trl")
    out = retrain(m0, data, tmp_path / "trl", config=CONFIG, trainer="trl")
    record = json.loads((out / "retrain.json").read_text())
    assert record["trainer"] == "trl" and record["n_steps"] == 4
    assert not _same(_params(out), _params(m0))
    weighted = save_preferences([make_pair("Q?", " a", " b", metadata={"weight": 0.5})], tmp_path / "w.jsonl")
    with pytest.raises(ValueError, match="no per-pair weights"):
        retrain(m0, weighted, tmp_path / "trl2", config=CONFIG, trainer="trl")
    with pytest.raises(ValueError, match="unknown trainer 'deepspeed'"):
        retrain(m0, data, tmp_path / "x", config=CONFIG, trainer="deepspeed")
