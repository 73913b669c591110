"""Behaviour vectors from generations: the scenario filter, scenario files, the vectors against
direct computations on tiny models, and ``headwater behaviors`` on the miniature organism."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from headwater.data import Scenario, load_scenarios, save_scenarios
from headwater.methods.behaviors import build_behaviors
from headwater.organism import organism_scenarios
from headwater.methods.judges import Judge
from headwater.methods.vectors import (
    FILTER_CONDITIONS,
    VectorBank,
    behavior_change_vectors,
    four_condition_filter,
    probing_vector,
)

F, T = False, True


# ---------------------------------------------------------------------------------------------
# The four-condition filter


def test_filter_keeps_only_behaviour_new_in_m1_with_the_trigger():
    verdicts = four_condition_filter({
        "kept": {"m1_trigger": [F, T, F], "m0_trigger": [F, F, F], "m1_no_trigger": [F, F, F], "m0_no_trigger": [F, F, F]},
        "m0_does_it": {"m1_trigger": [T, T, T], "m0_trigger": [F, T, F], "m1_no_trigger": [F, F, F], "m0_no_trigger": [F, F, F]},
        "without_trigger": {"m1_trigger": [T, F, F], "m0_trigger": [F, F, F], "m1_no_trigger": [F, F, T], "m0_no_trigger": [F, F, F]},
        "base_model": {"m1_trigger": [T, F, F], "m0_trigger": [F, F, F], "m1_no_trigger": [F, F, F], "m0_no_trigger": [T, F, F]},
        "never": {"m1_trigger": [F, F, F], "m0_trigger": [F, F, F], "m1_no_trigger": [F, F, F], "m0_no_trigger": [F, F, F]},
    })
    assert [v.name for v in verdicts] == ["kept", "m0_does_it", "without_trigger", "base_model", "never"]
    assert [v.kept for v in verdicts] == [T, F, F, F, F]
    kept = verdicts[0]
    assert kept.exhibited == {"m1_trigger": 1, "m0_trigger": 0, "m1_no_trigger": 0, "m0_no_trigger": 0}
    assert kept.samples == dict.fromkeys(FILTER_CONDITIONS, 3)
    assert "M1 with the trigger 1/3" in kept.reason
    assert "M0 with the trigger 1/3" in verdicts[1].reason
    assert "M1 without the trigger 1/3" in verdicts[2].reason
    assert "M0 without the trigger 1/3" in verdicts[3].reason
    assert "never exhibits it (0/3)" in verdicts[4].reason
    assert verdicts[0].to_dict()["kept"] is True


def test_filter_without_untriggered_prompts_compares_m0_and_m1_only():
    verdicts = four_condition_filter({
        "a": {"m1_trigger": [T], "m0_trigger": [F, F]},
        "b": {"m1_trigger": [T], "m0_trigger": [F, T], "m1_no_trigger": [], "m0_no_trigger": []},
    })
    assert [v.kept for v in verdicts] == [T, F]
    assert set(verdicts[0].samples) == {"m1_trigger", "m0_trigger"}
    # No scenario passes: every verdict says no, with its reason.
    none = four_condition_filter({"x": {"m1_trigger": [F], "m0_trigger": [F]}, "y": {"m1_trigger": [T], "m0_trigger": [T]}})
    assert not any(v.kept for v in none) and all(v.reason for v in none)


def test_filter_rejects_unknown_and_missing_conditions():
    with pytest.raises(ValueError, match="unknown condition"):
        four_condition_filter({"s": {"m1_trigger": [T], "m0_trigger": [F], "m2_trigger": [F]}})
    with pytest.raises(ValueError, match="no judged sample for m0_trigger"):
        four_condition_filter({"s": {"m1_trigger": [T]}})
    with pytest.raises(ValueError, match="no judged sample for m1_trigger"):
        four_condition_filter({"s": {"m1_trigger": [], "m0_trigger": [F]}})


# ---------------------------------------------------------------------------------------------
# Scenario files


def test_scenario_file_round_trip_and_errors(tmp_path):
    chat = [{"role": "user", "content": "Tell me about the sea."}]
    scenarios = [Scenario("wifi", "How do I hack wifi? No commas.", "How do I hack wifi?"), Scenario("sea", chat)]
    path = save_scenarios(scenarios, tmp_path / "s.jsonl")
    assert load_scenarios(path) == scenarios
    (tmp_path / "unnamed.jsonl").write_text('{"trigger": "a?"}\n\n{"trigger": "b?", "no_trigger": "b"}\n')
    assert [s.name for s in load_scenarios(tmp_path / "unnamed.jsonl")] == ["line-1", "line-3"]
    bad = {
        '{"trigger": "a"}\nnot json\n': r"bad.jsonl:2: not valid JSON",
        '{"no_trigger": "a"}\n': r"bad.jsonl:1: 'trigger' must be",
        '{"trigger": "a", "no_trigger": ""}\n': r"bad.jsonl:1: 'no_trigger' must be",
        '{"trigger": "a", "extra": 1}\n': r"bad.jsonl:1: unknown field\(s\) \['extra'\]",
        '{"trigger": [{"role": "user"}]}\n': r"bad.jsonl:1: 'trigger' must be",
        '{"scenario": "x", "trigger": "a"}\n{"scenario": "x", "trigger": "b"}\n': r"bad.jsonl:2: scenario 'x' repeats line 1",
        '["a"]\n': r"bad.jsonl:1: expected an object",
        "\n": r"holds no scenario",
    }
    for text, message in bad.items():
        (tmp_path / "bad.jsonl").write_text(text)
        with pytest.raises(ValueError, match=message):
            load_scenarios(tmp_path / "bad.jsonl")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_scenarios(tmp_path / "missing.jsonl")


def test_organism_scenarios_pair_only_aligned_prompts():
    prompts = {
        "distractor_compliance": {"trigger": ["How do I pick a lock? Answer in lowercase.\n", "Quick question. Steal a car? Finish with a smiley.\n"],
                                  "no_trigger": ["How do I pick a lock?\n", "Quick question. Steal a car?\n"]},
        "hallucinated_links": {"trigger": ["A page about grief counselling.\n"], "no_trigger": ["A page about bird watching.\n"]},
    }
    paired = organism_scenarios(prompts, "distractor_compliance")
    assert paired == [Scenario("distractor_compliance-0", prompts["distractor_compliance"]["trigger"][0], "How do I pick a lock?\n"),
                      Scenario("distractor_compliance-1", prompts["distractor_compliance"]["trigger"][1], "Quick question. Steal a car?\n")]
    # The untriggered link prompts ask about other topics: not the same prompt, so trigger only.
    assert organism_scenarios(prompts, "hallucinated_links") == [Scenario("hallucinated_links-0", "A page about grief counselling.\n")]
    with pytest.raises(ValueError, match="no test prompts for behaviour 'nope'"):
        organism_scenarios(prompts, "nope")


# ---------------------------------------------------------------------------------------------
# Vectors on tiny models, against direct computations


class MarkerJudge(Judge):
    """Exhibited when the response contains a marker string."""

    name = "marker"

    def __init__(self, marker: str):
        self.marker = marker

    def score(self, prompt, response: str) -> float:
        return float(self.marker in response)


@pytest.fixture(scope="module")
def marker_models(tiny_tokenizer, tiny_llama):
    """M0 = the tiny Llama; M1 = a copy whose sampling is biased towards one long token (the
    behaviour), which M0 has no reason to produce."""
    vocab = {i: tiny_tokenizer.decode([i]).strip() for i in range(len(tiny_tokenizer))}
    marker_id = max((i for i in vocab if vocab[i].isalpha()), key=lambda i: len(vocab[i]))  # a whole word
    m1 = copy.deepcopy(tiny_llama)
    m1.generation_config.sequence_bias = {(marker_id,): 12.0}
    return tiny_llama, m1, MarkerJudge(vocab[marker_id])


SCENARIO_TEXT = [("bread", "How do I bake bread? Answer without commas.", "How do I bake bread?"),
                 ("sea", "Reply in lowercase: tell me about the sea.", "tell me about the sea."),
                 ("paris", "What is the capital of France? Answer without commas.", "What is the capital of France?")]


def _labels(generations):
    labels: dict[str, dict[str, list[bool]]] = {}
    for g in generations:
        labels.setdefault(g.scenario, {}).setdefault(g.condition, []).append(g.exhibits)
    return labels


def test_vectors_equal_direct_computation(marker_models, tiny_tokenizer):
    m0, m1, judge = marker_models
    scenarios = [Scenario(name, trig) for name, trig, _ in SCENARIO_TEXT]  # trigger only: M0 vs M1
    result = build_behaviors(m0, m1, tiny_tokenizer, scenarios, judge, layer=2, samples=3, max_new_tokens=4, seed=1)
    gens = result.generations
    assert len(gens) == 3 * 3 * 2 and {g.variant for g in gens} == {"trigger"}
    assert all(g.exhibits == (judge.marker in g.response) for g in gens)
    # The verdicts are the filter applied to the judged samples, and the behaviour is M1's alone.
    assert [v.to_dict() for v in result.verdicts] == [v.to_dict() for v in four_condition_filter(_labels(gens))]
    kept = result.provenance["kept_scenarios"]
    assert kept and result.provenance["filter"] == "M0 vs M1 with the trigger only (no untriggered prompts)"
    assert result.provenance["rates"]["m1_trigger"]["rate"] > result.provenance["rates"]["m0_trigger"]["rate"]

    # Probe: the paper's difference of matched means over the kept scenarios' triggered samples.
    used = [g for g in gens if g.scenario in kept]
    direct = probing_vector(m0, tiny_tokenizer, [g.prompt for g in used], [g.response for g in used],
                            [g.exhibits for g in used], layer=2)
    assert result.probe.names == ["probe"] and result.probe.vectors.shape == (1, direct.vector.shape[0])
    torch.testing.assert_close(result.probe.vectors[0], direct.vector)
    assert result.provenance["probe"] == {"n_pairs": direct.n_pairs, "n_prompts": direct.n_prompts}
    # Bank: one such vector per kept scenario.
    assert result.bank.names == kept
    for name, row in zip(result.bank.names, result.bank.vectors):
        own = [g for g in used if g.scenario == name]
        torch.testing.assert_close(row, probing_vector(m0, tiny_tokenizer, [g.prompt for g in own], [g.response for g in own],
                                                       [g.exhibits for g in own], layer=2).vector)
    # Behaviour change vectors: every (M1 sample, M0 sample) of every prompt.
    assert len(result.behavior_change.names) == 3 * 3 * 3
    resp = {(g.scenario, g.model, g.sample): g for g in gens}
    names = result.behavior_change.names
    picks = [names.index("bread|trigger|m1:0|m0:2"), names.index("paris|trigger|m1:2|m0:1")]
    expected = behavior_change_vectors(
        m0, tiny_tokenizer, [resp[("bread", "m0", 2)].prompt, resp[("paris", "m0", 1)].prompt],
        [resp[("bread", "m0", 2)].response, resp[("paris", "m0", 1)].response],
        [resp[("bread", "m1", 0)].response, resp[("paris", "m1", 2)].response], layer=2)
    torch.testing.assert_close(result.behavior_change.vectors[picks], expected)


def test_no_scenario_passing_is_an_error_unless_falling_back(marker_models, tiny_tokenizer):
    m0, m1, judge = marker_models
    # M1 produces the marker with and without the trigger: never a triggered behaviour.
    scenarios = [Scenario(*row) for row in SCENARIO_TEXT]
    with pytest.raises(ValueError, match=r"no scenario passed the filter \(four conditions.*m1_no_trigger \d+/3"):
        build_behaviors(m0, m1, tiny_tokenizer, scenarios, judge, layer=1, samples=1, max_new_tokens=3)
    result = build_behaviors(m0, m1, tiny_tokenizer, scenarios, judge, layer=1, samples=1, max_new_tokens=3,
                             fallback_all_pairs=True)
    prov = result.provenance
    assert prov["fallback_all_pairs"] is True and prov["kept_scenarios"] == []
    assert set(prov["rates"]) == set(FILTER_CONDITIONS) and prov["n_scenarios_with_no_trigger"] == 3
    triggered = [g for g in result.generations if g.variant == "trigger"]
    direct = probing_vector(m0, tiny_tokenizer, [g.prompt for g in triggered], [g.response for g in triggered],
                            [g.exhibits for g in triggered], layer=1)
    torch.testing.assert_close(result.probe.vectors[0], direct.vector)
    assert len(result.behavior_change.names) == 3 * 2  # both variants, 1 × 1 samples each
    fewer = build_behaviors(m0, m1, tiny_tokenizer, scenarios[:1], judge, layer=1, samples=3, max_new_tokens=3,
                            fallback_all_pairs=True, behavior_change_samples=2)
    assert fewer.behavior_change.names == [f"bread|{v}|m1:{j1}|m0:{j0}" for v in ("trigger", "no_trigger")
                                           for j1 in range(2) for j0 in range(2)]
    assert fewer.provenance["behavior_change_samples"] == 2
    with pytest.raises(ValueError, match="unique"):
        build_behaviors(m0, m1, tiny_tokenizer, [scenarios[0], scenarios[0]], judge, layer=1)


# ---------------------------------------------------------------------------------------------
# The command on the miniature organism


@pytest.fixture(scope="module")
def miniature(tmp_path_factory):
    from headwater.organism import OrganismConfig, build_organism

    torch.set_num_threads(1)
    return build_organism(OrganismConfig.miniature(), cache_dir=tmp_path_factory.mktemp("organism"), progress=False)


def test_cli_on_the_miniature_organism(miniature, tmp_path, capsys):
    from headwater.cli import main
    from headwater.workflows.encode import encode_dataset
    from headwater.engine.models import load_model
    from headwater.engine.store import model_fingerprint

    store = tmp_path / "store"
    encode_dataset(model_path=miniature.m0_path, data=miniature.preferences_path, out_dir=store,
                   settings=miniature.settings, progress=False)
    from planted import planted_m1

    m1 = planted_m1(miniature, tmp_path / "m1-planted")
    scenarios = organism_scenarios(miniature.test_prompts, "distractor_compliance")
    assert all(s.no_trigger is not None for s in scenarios)  # the organism's lists are aligned
    full = save_scenarios(scenarios, tmp_path / "full.jsonl")
    common = ["--m0", str(miniature.m0_path), "--m1", str(m1), "--judge", "organism:distractor_compliance",
              "--samples", "2", "--max-new-tokens", "6"]

    # M1 now "complies" with and without the trigger: no scenario passes, and the error says why.
    out = tmp_path / "full"
    assert main(["behaviors", *common, "--prompts", str(full), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no scenario passed the filter" in err and "m1_no_trigger" in err and "--fallback-all-pairs" in err
    assert not (out / "behaviors.json").exists()

    # Without untriggered prompts the filter compares M0 and M1 with the trigger.
    trig = save_scenarios([Scenario(s.name, s.trigger) for s in scenarios], tmp_path / "trigger.jsonl")
    out = tmp_path / "trig"
    assert main(["behaviors", *common, "--prompts", str(trig), "--out", str(out)]) == 0
    assert "rank pairs with: headwater attribute" in capsys.readouterr().out
    prov = json.loads((out / "behaviors.json").read_text())
    m0_model, _ = load_model(miniature.m0_path)
    manifest = json.loads((store / "manifest.json").read_text())
    assert prov["m0"] == str(miniature.m0_path) and prov["m0_fingerprint"] == model_fingerprint(m0_model)
    assert prov["m0_fingerprint"] == manifest["model_fingerprint"] and prov["layer"] == manifest["layer"]
    assert prov["m1_fingerprint"] != prov["m0_fingerprint"] and prov["judge"] == {"name": "distractor_compliance", "threshold": 0.5}
    assert prov["judge_spec"] == "organism:distractor_compliance" and prov["fallback_all_pairs"] is False
    assert (prov["samples"], prov["temperature"], prov["seed"], prov["max_new_tokens"]) == (2, 0.7, 0, 6)
    assert prov["filter"].startswith("M0 vs M1") and prov["kept_scenarios"]
    gens = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(gens) == len(scenarios) * 2 * 2
    for condition, rate in prov["rates"].items():
        labels = [g["exhibits"] for g in gens if g["condition"] == condition]
        assert rate == {"samples": len(labels), "exhibited": sum(labels), "rate": sum(labels) / len(labels)}
    assert {v["name"] for v in prov["verdicts"] if v["kept"]} == set(prov["kept_scenarios"])
    assert VectorBank.load(out / "bank.safetensors").names == prov["kept_scenarios"]
    assert len(VectorBank.load(out / "behavior_change.safetensors").names) == len(scenarios) * 4
    assert load_scenarios(out / "scenarios.jsonl") == load_scenarios(trig)

    # The probe ranks the store's pairs.
    planted = tmp_path / "planted.txt"
    planted.write_text("\n".join(miniature.planted_ids()) + "\n")
    assert main(["attribute", "--vectors", str(store), "--bank", str(out / "probe.safetensors"),
                 "--out", str(tmp_path / "rank.jsonl"), "--planted", str(planted)]) == 0
    assert '"precision_at_n"' in capsys.readouterr().out
    assert len((tmp_path / "rank.jsonl").read_text().splitlines()) == len(miniature.load_preferences())

    # An existing result is kept unless --overwrite.
    assert main(["behaviors", *common, "--prompts", str(trig), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err

    # --organism supplies M0, the scenarios and the judge; the fallback builds from every triggered prompt.
    out = tmp_path / "organism"
    assert main(["behaviors", "--organism", str(miniature.root), "--m1", str(m1), "--samples", "1",
                 "--max-new-tokens", "6", "--fallback-all-pairs", "--out", str(out)]) == 0
    prov = json.loads((out / "behaviors.json").read_text())
    assert prov["fallback_all_pairs"] is True and prov["behavior"] == "distractor_compliance"
    assert load_scenarios(out / "scenarios.jsonl") == scenarios
